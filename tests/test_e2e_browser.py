"""
End to end in a real browser: Debian's headless Chromium (C{/usr/bin/chromium}),
driven by Playwright's async API on the asyncio reactor that runs the server
too, against an omega-ws started in this process with a self-signed
certificate.  What only a browser shows: it offers ALPN on every TLS
handshake, sends C{Origin: null} from sandboxed frames, reports a close's
C{wasClean}, runs the npm C{centrifuge} SDK's browser bundle, and makes
cross-site requests to the admin listener (SPEC.md sections 4, 5, 8, 9).

The pages are C{tests/browser/} (helpers in C{harness.js} and C{sdk.js}),
served by a twisted.web site on 127.0.0.1, port 0; tests call the helpers
with C{evaluate} and check what the browser saw, and the server's side where
that matters.  Every wait is bounded in the page and again here.  After each
test a screenshot of its page is saved in its C{tmp_path} (the path is
printed; C{pytest -s} shows it).

C{tests/setup/chromium.sh} installs Chromium and Playwright; without them
these tests fail, they never skip.  Playwright's own browser download
(C{playwright install}) is not used.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web.server import Site
from twisted.web.static import File

from omega_ws import Server

from .conftest import StartServer
from .support import aio, api

ensure_deferred = pytest_twisted.ensureDeferred

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--ignore-certificate-errors",
]
PAGES = Path(__file__).parent / "browser"
SDK_BUNDLE = Path(__file__).parent / "js/node_modules/centrifuge/dist/centrifuge.js"
WAIT = 10.0  # bound of one call into the browser, in seconds (the page's own waits are 5 s)


def browser_missing() -> str | None:
    """Why these tests cannot run here, or None when they can."""
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (bash tests/setup/chromium.sh installs it)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing (bash tests/setup/chromium.sh installs it)"
    if not SDK_BUNDLE.is_file():
        return f"{SDK_BUNDLE} is missing (npm ci --prefix tests/js)"
    return None


def test_chromium_and_playwright_are_installed() -> None:
    # Not a skip: without them this file would prove nothing (tests/run.sh installs them).
    assert browser_missing() is None, browser_missing()


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture
def tls(cert_pair: tuple[Path, Path]) -> dict[str, str]:
    """The C{server} section for a wss:// listener with a fresh self-signed pair."""
    cert, key = cert_pair
    return {"cert": str(cert), "key": str(key)}


@pytest_twisted.async_yield_fixture
async def site() -> AsyncIterator[int]:
    """The test pages on http://127.0.0.1:<port>/, the SDK's bundle at /centrifuge.js."""
    root = File(str(PAGES))
    root.putChild(b"centrifuge.js", File(str(SDK_BUNDLE)))
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")  # type: ignore[attr-defined]
    yield port.getHost().port
    await port.stopListening()


@pytest_twisted.async_yield_fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium, for one test."""
    missing = browser_missing()
    if missing is not None:
        pytest.fail(missing)
    from playwright.async_api import async_playwright

    playwright = await aio(async_playwright().start(), 20)
    try:
        chromium = await aio(playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=15_000), 20)
        try:
            yield chromium
        finally:
            await aio(chromium.close(), WAIT)
    finally:
        await aio(playwright.stop(), WAIT)


@pytest_twisted.async_yield_fixture
async def page(browser: Any, tmp_path: Path, request: pytest.FixtureRequest
               ) -> AsyncIterator[Any]:
    """A fresh page; its screenshot is saved in tmp_path after the test."""
    context = await aio(browser.new_context(ignore_https_errors=True), WAIT)
    tab = await aio(context.new_page(), WAIT)
    console: list[str] = []
    tab.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    tab.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    try:
        yield tab
    finally:
        shot = tmp_path / f"{request.node.name}.png"
        try:
            await aio(tab.screenshot(path=str(shot), full_page=True, timeout=5_000), WAIT)
            print(f"screenshot: {shot}")
        except Exception as e:  # the artefact is a bonus; never hide the test's own result
            print(f"no screenshot: {e!r}")
        if console:
            print("browser console:\n  " + "\n  ".join(console))
        await aio(context.close(), WAIT)


# -- helpers --------------------------------------------------------------------------


async def evaluate(target: Any, expression: str, arg: Any = None) -> Any:
    """C{target.evaluate(expression, arg)} on a Page or Frame, bounded."""
    return await aio(target.evaluate(expression, arg), WAIT)


async def visit(tab: Any, url: str) -> None:
    await aio(tab.goto(url, timeout=5_000), WAIT)


async def null_origin_frame(tab: Any, name: str = "sandboxed") -> Any:
    """A sandboxed iframe in C{tab}'s page, whose origin is "null", with the harness."""
    await evaluate(tab, "name => harness.nullOriginFrame(name)", name)
    element = await aio(tab.wait_for_selector(f'iframe[name="{name}"]', timeout=5_000), WAIT)
    frame = await aio(element.content_frame(), WAIT)
    assert frame is not None
    await aio(frame.wait_for_function("() => self.harness !== undefined", timeout=5_000), WAIT)
    assert await evaluate(frame, "harness.origin()") == "null"
    return frame


async def connect(target: Any, url: str) -> dict[str, Any]:
    """C{{id, opened, close}} of a WebSocket opened in the page (or frame) C{target}."""
    result: dict[str, Any] = await evaluate(target, "url => harness.connect(url)", url)
    return result


async def next_bytes(target: Any, socket: dict[str, Any]) -> bytes:
    """The UTF-8 bytes of the next text message the page got on C{socket}."""
    return bytes(await evaluate(target, "id => harness.nextBytes(id)", socket["id"]))


def refusals(server: Server, reason: str) -> float:
    """The server's C{omega_ws_handshake_refusals_total} for C{reason}."""
    value = server.service.metrics.registry.get_sample_value(
        "omega_ws_handshake_refusals_total", {"reason": reason})
    return value or 0.0


# -- (a) wss:// and ws:// from a page ----------------------------------------------------


@ensure_deferred
async def test_wss_and_ws_from_a_page_deliver_byte_for_byte(
    serve: StartServer, tls: dict[str, str], site: int, page: Any
) -> None:
    server = await serve(server=tls)
    await visit(page, f"http://127.0.0.1:{site}/index.html")
    # Chromium offers ALPN (h2, http/1.1) on every TLS handshake: the wss://
    # listener must still complete it (Twisted 26 aborts it with alert 80 when
    # the wrapped factory cannot negotiate).
    secure = await connect(page, f"wss://127.0.0.1:{server.tls_port}/alerts")
    assert secure["opened"], f"wss:// did not open: {secure}"
    plain = await connect(page, f"ws://127.0.0.1:{server.port}/alerts")
    assert plain["opened"], f"ws:// did not open: {plain}"

    data = {"level": "high", "text": "crue \u00e9 \u2713 \U0001f30a", "values": [1, 2.5, None]}
    publication = await server.publish("alerts", data)
    assert json.loads(publication.data) == data
    assert await next_bytes(page, secure) == publication.data
    assert await next_bytes(page, plain) == publication.data

    # What a page publishes is delivered verbatim, odd spacing and all, on both.
    sent = '{ "from" : "browser",  "\u00e9": [1, 2.50, 1e3] }'
    await evaluate(page, "([id, text]) => harness.send(id, text)", [secure["id"], sent])
    assert await next_bytes(page, plain) == sent.encode()
    assert await next_bytes(page, secure) == sent.encode()

    assert len(server.registry) == 2  # both browser sockets, still connected


# -- (b) Origin: null and the origin allow-list ----------------------------------------------


@ensure_deferred
async def test_null_origin_page_connects_under_the_default_allow_list(
    serve: StartServer, site: int, page: Any
) -> None:
    server = await serve()  # server.allowed_origins is ["*"]
    await visit(page, f"http://127.0.0.1:{site}/index.html")
    frame = await null_origin_frame(page)
    socket = await connect(frame, f"ws://127.0.0.1:{server.port}/alerts")
    assert socket["opened"], f"Origin: null was refused under allowed_origins ['*']: {socket}"
    publication = await server.publish("alerts", {"to": "a sandboxed frame"})
    assert await next_bytes(frame, socket) == publication.data
    assert refusals(server, "bad_request") == 0


@ensure_deferred
async def test_origin_allow_list_refuses_other_origins_with_403(
    serve: StartServer, site: int, page: Any
) -> None:
    page_origin = f"http://127.0.0.1:{site}"
    server = await serve(server={"allowed_origins": ["https://example.com", page_origin]})
    await visit(page, f"{page_origin}/index.html")
    # The allowed origin connects: the refusals below are about the origin.
    allowed = await connect(page, f"ws://127.0.0.1:{server.port}/alerts")
    assert allowed["opened"], allowed

    frame = await null_origin_frame(page)
    refused = await connect(frame, f"ws://127.0.0.1:{server.port}/alerts")
    assert not refused["opened"]
    # A browser never shows a refused handshake's status: only close 1006.
    assert refused["close"]["code"] == 1006 and refused["close"]["wasClean"] is False

    await visit(page, f"http://localhost:{site}/index.html")  # another origin, same page
    assert await evaluate(page, "harness.origin()") == f"http://localhost:{site}"
    other = await connect(page, f"ws://127.0.0.1:{server.port}/alerts")
    assert not other["opened"] and other["close"]["code"] == 1006

    # The server's side: both were refused with 403 (reason "forbidden"), not 400.
    counted = {reason: refusals(server, reason) for reason in ("forbidden", "bad_request")}
    assert counted == {"forbidden": 2, "bad_request": 0}, f"refusals by reason: {counted}"


# -- (c) clean closes for bad input ---------------------------------------------------------


@ensure_deferred
async def test_invalid_message_gets_a_clean_1003_close(
    serve: StartServer, site: int, page: Any
) -> None:
    server = await serve()
    await visit(page, f"http://127.0.0.1:{site}/index.html")
    for bad in ["this is not JSON", "[1, 2, 3]"]:
        socket = await connect(page, f"ws://127.0.0.1:{server.port}/bad")
        assert socket["opened"], socket
        await evaluate(page, "([id, text]) => harness.send(id, text)", [socket["id"], bad])
        closed = await evaluate(page, "id => harness.closed(id)", socket["id"])
        assert closed == {"code": 1003, "reason": "Invalid message format", "wasClean": True,
                          "messages": []}, bad


@ensure_deferred
async def test_publishing_when_not_allowed_gets_a_clean_1008_close(
    serve: StartServer, site: int, page: Any
) -> None:
    server = await serve(channels={"allow_client_publish": False})
    await visit(page, f"http://127.0.0.1:{site}/index.html")
    socket = await connect(page, f"ws://127.0.0.1:{server.port}/readonly")
    assert socket["opened"], socket
    publication = await server.publish("readonly", {"still": "delivered"})
    assert await next_bytes(page, socket) == publication.data
    await evaluate(page, "([id, text]) => harness.send(id, text)",
                   [socket["id"], '{"valid": "but not allowed"}'])
    closed = await evaluate(page, "id => harness.closed(id)", socket["id"])
    assert closed == {"code": 1008, "reason": "Publishing is not allowed", "wasClean": True,
                      "messages": []}


# -- (d) the npm centrifuge SDK's browser bundle ---------------------------------------------


@ensure_deferred
async def test_centrifuge_sdk_in_the_browser_over_wss_recovers(
    serve: StartServer, tls: dict[str, str], site: int, page: Any
) -> None:
    server = await serve(server=tls)
    await visit(page, f"http://127.0.0.1:{site}/centrifuge.html")
    started = await evaluate(page, "([url, channel]) => sdk.start(url, channel)",
                             [f"wss://127.0.0.1:{server.tls_port}/connection/websocket", "news"])
    client_id = started["connected"]["client"]
    assert isinstance(client_id, str) and client_id
    assert started["connected"]["transport"] == "websocket"
    assert started["subscribed"]["recoverable"] is True
    assert started["subscribed"]["wasRecovering"] is False

    first = await server.publish("news", {"n": 1, "text": "\u00e9\u2713"})
    [got] = await evaluate(page, "() => sdk.until('sub.publication', 1)")
    assert got["data"] == {"n": 1, "text": "\u00e9\u2713"}
    assert got["offset"] == first.offset

    # Forced reconnect, as a back-end does it: the admin API closes the
    # connection with a code the SDK reconnects after (3000-3499); what is
    # published meanwhile must come back through recovery.
    status, body = await api(server.admin_port, "disconnect", {
        "user": "", "client": client_id, "disconnect": {"code": 3000, "reason": "reconnect"}})
    assert (status, body) == (200, {"result": {}})
    missed = [await server.publish("news", {"n": n}) for n in (2, 3)]

    subscribed = await evaluate(page, "() => sdk.until('sub.subscribed', 2)")
    assert subscribed[1]["wasRecovering"] is True
    assert subscribed[1]["recovered"] is True, subscribed[1]
    assert subscribed[1]["hasRecoveredPublications"] is True  # not delivered live
    publications = await evaluate(page, "() => sdk.until('sub.publication', 3)")
    assert [p["data"]["n"] for p in publications] == [1, 2, 3]
    assert [p["offset"] for p in publications] == [first.offset] + [p.offset for p in missed]
    # The SDK took 3000 as "reconnect" (state connecting, never disconnected), and did.
    assert await evaluate(page, "() => sdk.events('disconnected')") == []
    connecting = await evaluate(page, "() => sdk.events('connecting')")
    assert [(c["code"], c["reason"]) for c in connecting[1:]] == [(3000, "reconnect")]
    assert await evaluate(page, "() => sdk.state()") == {"client": "connected",
                                                         "sub": "subscribed"}
    # Nothing arrived twice, nothing more arrived.
    assert len(await evaluate(page, "() => sdk.events('sub.publication')")) == 3


# -- (e) the admin API is not a CSRF target ----------------------------------------------------


def api_publications(server: Server) -> float:
    """The server's C{omega_ws_messages_published_total} from the admin API."""
    value = server.service.metrics.registry.get_sample_value(
        "omega_ws_messages_published_total", {"source": "api"})
    return value or 0.0


@ensure_deferred
async def test_admin_api_cannot_be_driven_from_a_browser_page(
    serve: StartServer, site: int, page: Any
) -> None:
    server = await serve()
    publish = f"http://127.0.0.1:{server.admin_port}/api/publish"
    body = json.dumps({"channel": "x", "data": {"a": 1}})
    form = json.dumps({"channel": "x", "data": {"a": 2}, "pad": "z"})
    published: list[str] = []

    async def attempt(what: str, target: Any) -> None:
        # A no-cors fetch (a "simple" request: no preflight) and a plain HTML form
        # post, each fully answered before the next: the count is then exact.
        before = api_publications(server)
        answer = await evaluate(target, "([url, body]) => harness.postNoCors(url, body)",
                                [publish, body])
        assert answer == "opaque", f"{what}: the fetch got no HTTP answer: {answer}"
        if api_publications(server) != before:
            published.append(f"fetch from {what}")
        before = api_publications(server)
        await evaluate(target, "([url, json]) => harness.postForm(url, json)", [publish, form])
        if api_publications(server) != before:
            published.append(f"form from {what}")

    # A page on another port of the same host (Sec-Fetch-Site: same-site), a
    # sandboxed frame in it (Origin: null), a page on another host name (cross-site).
    await visit(page, f"http://127.0.0.1:{site}/index.html")
    await attempt(f"http://127.0.0.1:{site}", page)
    await attempt("a null-origin frame", await null_origin_frame(page))
    await visit(page, f"http://localhost:{site}/index.html")
    await attempt(f"http://localhost:{site}", page)
    assert published == [], f"the admin API published for a browser page: {published}"

    # Server-side clients (no Origin, no Sec-Fetch-Site) still can; "x" was untouched.
    status, result = await api(server.admin_port, "publish",
                               {"channel": "x", "data": {"from": "server side"}})
    assert (status, result["result"]["offset"]) == (200, 1), result
