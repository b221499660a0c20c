"""
The dashboard in a real browser: Debian's headless Chromium, driven by
Playwright (the launch of test_e2e_browser.py), against a real
C{twistd -n omega-ws} process (tests/nodes.py) on 127.0.0.1.

Twice, without and with C{admin.api_key} (C{OMEGA_WS_API_KEY}): the page
loads with no console error (a Content-Security-Policy violation is one);
with a key it asks for it, says so when a wrong one is given, keeps the
right one for the tab (a reload does not ask again); it shows the raw and
the Centrifuge client the test connects, their channel with its offset
and epoch; its delivery rate moves while the test publishes; its publish
form reaches both subscribers; its disconnect form, filled by picking the
raw client in the list, closes that client.  Screenshots of the page at
1280x800 and at a phone's 390x844 (where nothing may be wider than the
screen) are saved in C{test-artifacts/dashboard/} at the repository's root.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from .conftest import StartNode
from .nodes import REPO, Node
from .support import aio, api, closed, connect, recv, send
from .test_e2e_browser import browser  # noqa: F401 (the fixture: one headless Chromium)

ensure_deferred = pytest_twisted.ensureDeferred

KEY = "dashboard-test-key-5f1c"
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
WAIT = 10.0  # bound of one call into the browser, in seconds
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest_twisted.async_yield_fixture
async def tab(browser: Any) -> AsyncIterator[tuple[Any, list[str]]]:  # noqa: F811
    """A fresh 1280x800 page, and the console errors and page errors it reports."""
    context = await aio(browser.new_context(viewport=DESKTOP), WAIT)
    page = await aio(context.new_page(), WAIT)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda error: errors.append(f"pageerror: {error}"))
    try:
        yield page, errors
    finally:
        await aio(context.close(), WAIT)


async def until(page: Any, expression: str, arg: Any = None, timeout: float = 8.0) -> Any:
    """Wait until C{expression} (a function of C{arg}) is truthy in the page; its value."""
    handle = await aio(page.wait_for_function(expression, arg=arg, timeout=timeout * 1000),
                       timeout + 2)
    return await aio(handle.json_value(), WAIT)


async def text(page: Any, selector: str) -> str:
    return str(await aio(page.text_content(selector, timeout=5_000), WAIT))


async def centrifuge_client(port: int, channel: str) -> tuple[Any, str]:
    """A Centrifuge client (its JSON protocol over `websockets`) subscribed to C{channel}."""
    ws = await connect(f"ws://127.0.0.1:{port}/connection/websocket")
    await send(ws, json.dumps({"id": 1, "connect": {}}))
    client_id = json.loads(await recv(ws))["connect"]["client"]
    await send(ws, json.dumps({"id": 2, "subscribe": {"channel": channel}}))
    assert json.loads(await recv(ws))["id"] == 2
    return ws, client_id


async def received(ws: Any, wanted: Any, centrifuge: bool = False) -> None:
    """Read C{ws} until a publication of C{wanted} arrives (bounded)."""
    for _ in range(1000):
        message = json.loads(await recv(ws, 5))
        if centrifuge:
            message = message.get("push", {}).get("pub", {}).get("data")
        if message == wanted:
            return
    raise AssertionError(f"{wanted!r} never arrived")


async def publish_steadily(port: int, key: str | None, stop: list[bool]) -> int:
    """Publish on "news" ten times a second until C{stop} is not empty; how many."""
    count = 0
    while not stop:
        status, _ = await api(port, "publish", {"channel": "news", "data": {"tick": count}},
                              api_key=key)
        assert status == 200
        count += 1
        await aio(asyncio.sleep(0.1))
    return count


async def open_dashboard(page: Any, node: Node, key: str | None) -> None:
    """Load the page, give the key when it asks, and wait for the live feed."""
    await aio(page.goto(node.admin_url + "/", timeout=5_000), WAIT)
    if key is not None:
        await until(page, "() => !document.getElementById('key-form').hidden")
        await screenshot(page, "with-key-prompt-1280x800", full_page=False)
        await aio(page.fill("#key-input", "not-the-key"), WAIT)
        await aio(page.click("#key-form button"), WAIT)
        assert "refused" in await until(
            page, "() => !document.getElementById('key-error').hidden"
                  " && document.getElementById('key-error').textContent")
        await aio(page.fill("#key-input", key), WAIT)
        await aio(page.click("#key-form button"), WAIT)
    await until(page, "() => document.getElementById('feed').textContent === 'live'")
    assert await aio(page.is_hidden("#key-form"), WAIT)


async def screenshot(page: Any, name: str, full_page: bool = True) -> Path:
    """The page (all of it, by default) in C{test-artifacts/dashboard/NAME.png}."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await aio(page.screenshot(path=str(path), full_page=full_page, timeout=5_000), WAIT)
    print(f"screenshot: {path}")
    return path


@pytest.mark.parametrize("key", [None, KEY], ids=["open", "with-key"])
@ensure_deferred
async def test_the_dashboard_in_chromium(nodes: StartNode, tab: tuple[Any, list[str]],
                                         key: str | None) -> None:
    page, errors = tab
    node = nodes(env={"OMEGA_WS_API_KEY": key} if key else {})
    raw = await connect(f"{node.ws_url}/news")
    cf, cf_id = await centrifuge_client(node.ws_port, "news")

    await open_dashboard(page, node, key)
    if key is not None:  # kept for the tab: a reload does not ask again
        await aio(page.reload(timeout=5_000), WAIT)
        await until(page, "() => document.getElementById('feed').textContent === 'live'")
        assert await aio(page.is_hidden("#key-form"), WAIT)

    # (1) both clients, by transport, and their channel.
    transports = await until(page, """() => {
        const rows = [...document.querySelectorAll('#clients tbody tr')];
        const seen = rows.map(r => r.cells[2].textContent).sort();
        return seen.length === 2 && seen.join() === 'centrifuge,raw' && seen;
    }""")
    assert transports == ["centrifuge", "raw"]
    assert await until(page, f"() => document.querySelector('#clients tr[data-key=\"{cf_id}\"]')"
                             " !== null")
    assert await text(page, "#conn-total") == "2"
    connections = await until(page, """() => [...document.querySelectorAll(
        '#connections tbody tr')].map(r => [...r.cells].map(c => c.textContent))""")
    assert ["connected", "1", "1", "2"] in connections  # state, raw, centrifuge, all

    # (2) the delivery rate moves while the test publishes.
    assert await text(page, "#rate-out") == "0"
    stop: list[bool] = []
    publishing = defer.ensureDeferred(publish_steadily(node.admin_port, key, stop))
    started = time.monotonic()
    try:
        await until(page, "() => Number(document.getElementById('rate-out').textContent) > 0")
        await until(page, "() => document.getElementById('line-out').getAttribute('points')"
                          ".split(' ').some(p => Number(p.split(',')[1]) < 140)")
        # A few seconds more, for a chart worth a look in the screenshots.
        await aio(asyncio.sleep(max(0.0, 4 - (time.monotonic() - started))), 5)
    finally:
        stop.append(True)
    published = await publishing
    assert published > 0
    channel = await until(page, """published => {
        const row = document.querySelector('#channels tr[data-key="news"]');
        return row && Number(row.cells[2].textContent.replace(/,/g, '')) >= published &&
            [...row.cells].map(c => c.textContent);
    }""", published)
    assert channel[:2] == ["news", "2"] and channel[3]  # name, subscribers, offset, epoch

    # (3) the publish form reaches both subscribers.
    await aio(page.fill("#pub-channel", "news"), WAIT)
    await aio(page.fill("#pub-data", '{"from": "the dashboard", "n": [1, 2]}'), WAIT)
    await aio(page.click("#publish-form button"), WAIT)
    wanted = {"from": "the dashboard", "n": [1, 2]}
    await received(raw, wanted)
    await received(cf, wanted, centrifuge=True)
    assert "published on news at offset" in await until(
        page, "() => document.getElementById('pub-result').textContent.includes('offset')"
              " && document.getElementById('pub-result').textContent")

    # (4) pick the raw client in the list, disconnect it from the form.
    await aio(page.click("#clients tbody tr:has(td:text-is('raw')) button"), WAIT)
    raw_id = await aio(page.input_value("#dis-client"), WAIT)
    assert raw_id and raw_id != cf_id
    await aio(page.click("#disconnect-form button"), WAIT)
    code, _ = await closed(raw)
    assert code == 3503
    assert await until(page, "() => document.getElementById('dis-result').textContent"
                             ".startsWith('disconnected ')")
    await until(page, "() => document.querySelectorAll('#clients tbody tr').length === 1")
    assert await text(page, "#conn-total") == "1"

    # (5) how it looks: on a desk, and on a phone with nothing wider than the screen.
    name = "open" if key is None else "with-key"
    await until(page, "() => document.getElementById('feed').textContent === 'live'")
    await screenshot(page, f"{name}-desktop-1280x800")
    await aio(page.set_viewport_size(PHONE), WAIT)
    await aio(asyncio.sleep(1.2))  # a snapshot drawn at that width
    overflow = await aio(page.evaluate("""() => {
        const width = document.documentElement.clientWidth;
        return [...document.querySelectorAll('body *')].filter(e => {
            if (e.closest('.scroll')) return false;  // scrolled inside its card
            const box = e.getBoundingClientRect();
            return box.width > 0 && (box.right > width + 1 || box.left < -1);
        }).map(e => e.tagName + '#' + e.id + '.' + e.className);
    }"""), WAIT)
    assert overflow == [], f"wider than the phone's screen: {overflow}"
    assert await aio(page.evaluate(
        "() => document.documentElement.scrollWidth <= window.innerWidth"), WAIT)
    await screenshot(page, f"{name}-phone-390x844")

    expected = ["401 (Unauthorized)"] if key is not None else []  # the wrong key, once
    unexpected = [e for e in errors if not any(x in e for x in expected)]
    assert unexpected == [], unexpected
    assert len(errors) == len(expected)
    await aio(cf.close())
