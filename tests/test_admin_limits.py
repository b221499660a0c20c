"""
The admin listener's limits: cross-site requests (CSRF), bodies refused
from the head, request deadlines (slowloris) and the connection cap.

The first tests judge request heads in memory; the rest attack a real
server on 127.0.0.1 with raw sockets, every wait bounded by L{aio}.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.http_headers import Headers

from omega_ws import Server
from omega_ws.admin import MAX_BODY, AdminPolicy, own_origin

from .conftest import StartServer
from .support import aio, api, connect, http, nothing_arrives, recv

ensure_deferred = pytest_twisted.ensureDeferred

LOCAL = IPv4Address("TCP", "127.0.0.1", 9888)
EVIL = "http://evil.example"


# -- judging a head, in memory -----------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host", "local", "own"),
    [
        ("http://127.0.0.1:9888", b"127.0.0.1:9888", LOCAL, True),
        ("http://localhost:9888", b"localhost:9888", LOCAL, True),
        ("http://LOCALHOST:9888", b"localhost:9888", LOCAL, True),
        ("http://[::1]:9888", b"[::1]:9888", IPv6Address("TCP", "::1", 9888), True),
        ("http://127.0.0.1:9888", b"127.0.0.1:9888",
         IPv6Address("TCP", "::ffff:127.0.0.1", 9888), True),
        ("http://10.1.2.3", b"10.1.2.3", IPv4Address("TCP", "10.1.2.3", 80), True),
        ("http://localhost:9888", b"127.0.0.1:9888", LOCAL, False),  # another origin
        ("http://127.0.0.1:9889", b"127.0.0.1:9888", LOCAL, False),  # another port
        ("http://127.0.0.1:9889", b"127.0.0.1:9889", LOCAL, False),  # not our port
        ("https://127.0.0.1:9888", b"127.0.0.1:9888", LOCAL, False),  # another scheme
        ("http://127.0.0.1", b"127.0.0.1", LOCAL, False),  # port 80 is not ours
        # DNS rebinding: a name that resolves to us is not us.
        ("http://evil.example:9888", b"evil.example:9888", LOCAL, False),
        ("http://localhost:9888", b"localhost:9888", IPv4Address("TCP", "10.1.2.3", 9888),
         False),
        ("http://10.1.2.4:9888", b"10.1.2.4:9888", IPv4Address("TCP", "10.1.2.3", 9888), False),
        ("null", b"127.0.0.1:9888", LOCAL, False),
        ("http://127.0.0.1:9888/x", b"127.0.0.1:9888", LOCAL, False),
        ("http://u@127.0.0.1:9888", b"u@127.0.0.1:9888", LOCAL, False),
        ("http://127.0.0.1:9888", None, LOCAL, False),
        ("http://127.0.0.1:9888", b"127.0.0.1:x", LOCAL, False),
    ],
)
def test_own_origin(origin: str, host: bytes | None, local: IPv4Address, own: bool) -> None:
    assert own_origin(origin, host, local) is own


def _screen(policy: AdminPolicy, method: bytes = b"POST", target: bytes = b"/api/publish",
            length: int | None = 10, **headers: str) -> tuple[int, int] | None:
    raw = Headers({b"host": [b"127.0.0.1:9888"]})
    for name, value in headers.items():
        raw.setRawHeaders(name.replace("_", "-").encode(), [value.encode()])
    refusal = policy.screen(method, target, raw, length, LOCAL)
    return None if refusal is None else (refusal.status, refusal.code)


def test_screen_refuses_cross_site_before_the_key() -> None:
    policy = AdminPolicy("key")
    assert _screen(policy, origin=EVIL, x_api_key="key") == (403, 103)
    assert _screen(policy, origin=EVIL) == (403, 103)
    assert _screen(policy, sec_fetch_site="cross-site", x_api_key="key") == (403, 103)
    assert _screen(policy, sec_fetch_site="Same-Site", x_api_key="key") == (403, 103)
    assert _screen(policy, sec_fetch_site="same-origin", x_api_key="key") is None
    assert _screen(policy, sec_fetch_site="none", x_api_key="key") is None
    assert _screen(policy, origin="http://127.0.0.1:9888", x_api_key="key") is None
    assert _screen(policy) == (401, 101)
    assert _screen(policy, authorization="apikey key") is None
    # Percent-encoding reaches the same resource, so it is judged the same.
    assert _screen(policy, target=b"/%61pi/publish", origin=EVIL) == (403, 103)


def test_screen_allow_list_overrides_sec_fetch_site() -> None:
    policy = AdminPolicy(None, ("https://*.example.com", "null"))
    assert _screen(policy, origin="https://dash.example.com", sec_fetch_site="cross-site") is None
    assert _screen(policy, origin="null") is None
    assert _screen(policy, origin="https://example.com.evil.example") == (403, 103)
    assert _screen(policy, origin="http://dash.example.com") == (403, 103)


def test_screen_bodies() -> None:
    policy = AdminPolicy(None)
    assert _screen(policy, length=MAX_BODY) is None
    assert _screen(policy, length=MAX_BODY + 1) == (413, 107)
    assert _screen(policy, length=None) is None  # chunked: counted as it arrives
    assert _screen(policy, method=b"PUT") == (405, 104)
    assert _screen(policy, method=b"GET", length=0) is None  # answered 405 by the resource
    assert _screen(policy, method=b"GET", target=b"/health", length=0) is None
    assert _screen(policy, method=b"GET", target=b"/health", length=1) == (413, 107)
    assert _screen(policy, method=b"POST", target=b"/metrics?x", length=None) == (413, 107)
    # Cross-site requests to the rest are not the API's business.
    assert _screen(policy, method=b"GET", target=b"/metrics", length=0, origin=EVIL) is None


def test_screen_preflight_needs_no_key() -> None:
    policy = AdminPolicy("key", ("https://dash.example.com",))
    assert _screen(policy, method=b"OPTIONS", length=0,
                   origin="https://dash.example.com") is None
    assert _screen(policy, method=b"OPTIONS", length=0, origin=EVIL) == (403, 103)


# -- over real sockets -------------------------------------------------------------------


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await aio(asyncio.open_connection("127.0.0.1", port))


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes (EOF or reset)."""
    data = b""
    while True:
        try:
            chunk = await reader.read(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


async def _read_all(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """L{_until_closed}; fails past C{timeout}."""
    return await aio(_until_closed(reader), timeout)


def _parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return int(status_line.split()[1]), headers, body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2:]


async def _raw(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send C{data}, read until the server closes, parse the (first) response."""
    reader, writer = await _open(port)
    writer.write(data)
    response = await _read_all(reader, timeout)
    writer.close()
    return _parse(response)


def _post(port: int, path: str, body: bytes, *headers: str, host: str | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}",
             f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _refusals(server: Server) -> dict[str, float]:
    status, _, text = await http("GET", "127.0.0.1", server.admin_port, "/metrics")
    assert status == 200
    counts = {}
    for line in text.decode().splitlines():
        if line.startswith("omega_ws_admin_refusals_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            counts[reason] = float(line.rsplit(" ", 1)[1])
    return counts


PUBLISH = b'{"channel": "csrf", "data": {"hit": 1}}'


@ensure_deferred
async def test_a_cross_site_text_plain_post_is_refused_key_or_no_key(serve: StartServer) -> None:
    """What a page's fetch(url, {method: "POST", body}) sends: no preflight, an Origin."""
    for api_key in (None, "s3cret"):
        server = await serve(admin={"api_key": api_key} if api_key else {})
        port = server.admin_port
        ws = await connect(f"ws://127.0.0.1:{server.port}/csrf")
        key = [f"X-API-Key: {api_key}"] if api_key else []
        for headers in (
            [f"Origin: {EVIL}", "Content-Type: text/plain;charset=UTF-8",
             "Sec-Fetch-Site: cross-site", "Sec-Fetch-Mode: no-cors"],
            [f"Origin: {EVIL}", "Content-Type: text/plain", *key],
            ["Sec-Fetch-Site: same-site", "Content-Type: text/plain", *key],
            [f"Origin: http://evil.example:{port}", "Content-Type: text/plain", *key],
            ["Origin: null", "Content-Type: text/plain", *key],
        ):
            status, response_headers, body = await _raw(port, _post(
                port, "/api/publish", PUBLISH, *headers, "Connection: close"))
            assert status == 403, headers
            assert json.loads(body) == {"error": {
                "code": 103, "message": "permission denied: cross-site request"}}
            assert "access-control-allow-origin" not in response_headers
        # DNS rebinding: the page's origin and Host name evil.example, which resolves to us.
        status, _, _ = await _raw(port, _post(
            port, "/api/disconnect", b'{"user": "u"}', f"Origin: http://evil.example:{port}",
            "Connection: close", *key, host=f"evil.example:{port}"))
        assert status == 403
        assert await nothing_arrives(ws)
        # The same request from our own origin (a page the listener served) acts.
        status, _, body = await _raw(port, _post(
            port, "/api/publish", PUBLISH, f"Origin: http://127.0.0.1:{port}",
            "Sec-Fetch-Site: same-origin", "Content-Type: text/plain", "Connection: close",
            *key))
        assert (status, json.loads(body)["result"]["offset"]) == (200, 1)
        assert await recv(ws) == '{"hit":1}'
        assert (await _refusals(server))["origin"] == 6


@ensure_deferred
async def test_a_server_side_clients_work_with_any_content_type(serve: StartServer) -> None:
    server = await serve(admin={"api_key": "s3cret"})
    port = server.admin_port
    for content_type in ([], ["Content-Type: text/plain"],
                         ["Content-Type: application/x-www-form-urlencoded"],
                         ["Content-Type: multipart/form-data; boundary=x"]):
        status, _, body = await _raw(port, _post(
            port, "/api/publish", PUBLISH, "X-API-Key: s3cret", "Connection: close",
            *content_type))
        assert status == 200, content_type
    # Sec-Fetch-Site: none is a user typing the URL; it carries no Origin.
    status, _, _ = await _raw(port, _post(
        port, "/api/info", b"{}", "X-API-Key: s3cret", "Sec-Fetch-Site: none",
        "Connection: close"))
    assert status == 200


@ensure_deferred
async def test_a_allowed_origin_gets_a_narrow_preflight_and_its_answers(
        serve: StartServer) -> None:
    dash = "https://dash.example.com"
    server = await serve(admin={"api_key": "s3cret", "allowed_origins": ["https://*.example.com"]})
    port = server.admin_port
    preflight = (f"OPTIONS /api/publish HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                 "Origin: {origin}\r\nAccess-Control-Request-Method: POST\r\n"
                 "Access-Control-Request-Headers: content-type,x-api-key\r\n"
                 "Sec-Fetch-Site: cross-site\r\nConnection: close\r\n\r\n")
    status, headers, _ = await _raw(port, preflight.format(origin=dash).encode())
    assert status == 204
    assert headers["access-control-allow-origin"] == dash
    assert headers["access-control-allow-methods"] == "POST"
    assert set(headers["access-control-allow-headers"].split(", ")) == {
        "content-type", "x-api-key", "authorization"}
    assert headers["vary"] == "origin"
    assert "access-control-allow-credentials" not in headers
    status, headers, _ = await _raw(port, preflight.format(origin=EVIL).encode())
    assert status == 403
    assert not any(name.startswith("access-control-") for name in headers)
    status, headers, body = await _raw(port, _post(
        port, "/api/publish", PUBLISH, f"Origin: {dash}", "Sec-Fetch-Site: cross-site",
        "Content-Type: application/json", "X-API-Key: s3cret", "Connection: close"))
    assert (status, headers["access-control-allow-origin"]) == (200, dash)
    assert json.loads(body)["result"]["offset"] == 1
    # Allowed is not authorized: the key is still needed.
    status, headers, _ = await _raw(port, _post(
        port, "/api/publish", PUBLISH, f"Origin: {dash}", "Content-Type: application/json"))
    assert status == 401


HUGE = 2 * 1024**3


@ensure_deferred
async def test_b_a_huge_body_without_the_key_is_refused_from_its_head(
        serve: StartServer) -> None:
    server = await serve(admin={"api_key": "s3cret", "request_timeout": 1})
    port = server.admin_port
    reader, writer = await _open(port)
    writer.write(f"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                 f"Content-Length: {HUGE}\r\nContent-Type: application/json\r\n\r\n".encode())
    # The answer comes before one byte of the body is sent...
    status, headers, body = _parse(await _read_all(reader))
    assert (status, json.loads(body)["error"]["code"]) == (401, 101)
    assert headers["connection"] == "close"
    # ...and whoever goes on sending is cut off after a little (kernel buffers
    # plus at most 1 MiB that the server reads and drops), not 2 GB.
    sent = await _send_until_refused(writer, HUGE)
    assert sent < 256 * 1024**2
    assert await _open_connections(server, 0)


async def _send_until_refused(writer: asyncio.StreamWriter, limit: int,
                              chunk: bytes = b"\0" * 65536) -> int:
    """Bytes written before the server reset the connection (fails if it never does)."""

    async def send() -> int:
        sent = 0
        while sent < limit:
            try:
                writer.write(chunk)
                await writer.drain()
            except (ConnectionResetError, BrokenPipeError):
                return sent
            sent += len(chunk)
        raise AssertionError("the server read the whole body")

    try:
        return await aio(send(), 10.0)
    finally:
        writer.transport.abort()


async def _open_connections(server: Server, count: int) -> bool:
    """Wait (bounded) until the admin listener has C{count} connections open."""
    assert server.service.admin is not None
    site: Any = server.service.admin.factory

    async def wait() -> bool:
        while site.open_connections != count:
            await asyncio.sleep(0.01)
        return True

    return await aio(wait(), 5.0)


@ensure_deferred
async def test_b_content_length_over_the_cap_is_413_at_once(serve: StartServer) -> None:
    server = await serve(admin={"request_timeout": 1})
    port = server.admin_port
    for length in (MAX_BODY + 1, HUGE):
        reader, writer = await _open(port)
        writer.write(f"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n".encode())
        response = await _read_all(reader)
        # No "100 Continue" first: the client need not send the body at all.
        assert response.startswith(b"HTTP/1.1 413 ")
        assert json.loads(_parse(response)[2])["error"]["code"] == 107
        writer.close()
    status, body = await api(port, "publish", {"channel": "a", "data": "x" * 1000})
    assert status == 200


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


@ensure_deferred
async def test_b_a_chunked_body_is_counted_as_it_streams(serve: StartServer) -> None:
    server = await serve(admin={"request_timeout": 2})
    port = server.admin_port
    # Under the cap, chunked works.
    status, _, body = await _raw(port, (
        f"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
        + _chunk(PUBLISH[:10]) + _chunk(PUBLISH[10:]) + b"0\r\n\r\n")
    assert (status, json.loads(body)["result"]["offset"]) == (200, 1)
    # Past it, 413 while it streams, and the rest is not read.
    reader, writer = await _open(port)
    writer.write(f"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode())
    answer = asyncio.ensure_future(_until_closed(reader))
    sent = await _send_until_refused(writer, 1024**3, _chunk(b"\0" * 65536))
    assert MAX_BODY - 1024**2 < sent < MAX_BODY + 256 * 1024**2
    status, _, body = _parse(await aio(answer))
    assert (status, json.loads(body)["error"]["code"]) == (413, 107)
    assert (await _refusals(server))["body_too_large"] == 1


@ensure_deferred
async def test_b_health_and_metrics_take_no_body(serve: StartServer) -> None:
    server = await serve()
    port = server.admin_port
    for head in (f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 5\r\n\r\n",
                 f"POST /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n"):
        status, headers, _ = await _raw(port, head.encode())
        assert (status, headers["connection"]) == (413, "close")
    status, _, _ = await http("GET", "127.0.0.1", port, "/health")
    assert status == 200


@ensure_deferred
async def test_c_a_slowloris_head_is_closed_at_the_deadline(serve: StartServer) -> None:
    server = await serve(admin={"request_timeout": 0.5})
    port = server.admin_port

    async def trickle() -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        for n in range(100):  # a header line every 50 ms, never the blank line
            try:
                writer.write(b"X-%d: y\r\n" % n)
                await writer.drain()
                if await asyncio.wait_for(reader.read(1), 0.05) == b"":
                    return "closed"
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return "closed"
        return "still open after 5 s"

    assert await aio(asyncio.gather(*(trickle() for _ in range(20))), 10.0) == ["closed"] * 20
    assert await _open_connections(server, 0)
    assert (await _refusals(server))["timeout"] == 20


@ensure_deferred
async def test_c_keep_alive_gets_a_new_deadline_after_each_response(serve: StartServer) -> None:
    server = await serve(admin={"request_timeout": 0.5})
    port = server.admin_port
    reader, writer = await _open(port)
    request = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    for _ in range(3):  # each prompt request on the kept-alive connection is served
        writer.write(request)
        head = await aio(reader.readuntil(b"\r\n\r\n"))
        assert head.startswith(b"HTTP/1.1 200 ")
        length = int(_parse(head)[1]["content-length"])
        await aio(reader.readexactly(length))
    # Then an idle one is closed.
    assert await _read_all(reader) == b""
    writer.close()
    # A body that stalls is closed too.
    reader, writer = await _open(port)
    writer.write(_post(port, "/api/publish", PUBLISH)[:-10])
    assert await _read_all(reader) == b""
    writer.close()
    assert (await _refusals(server))["timeout"] == 2


@ensure_deferred
async def test_d_connections_past_the_cap_get_503_and_are_closed(serve: StartServer) -> None:
    server = await serve(admin={"max_connections": 8})
    port = server.admin_port
    held = [await _open(port) for _ in range(8)]  # accepted in order, before the others
    for _, writer in held:  # each is busy with a request (a head sent, its body not yet)
        writer.write(_post(port, "/api/info", b"")[:-4].replace(
            b"Content-Length: 0", b"Content-Length: 100") + b"\r\n\r\n")
    assert await _open_connections(server, 8)
    await aio(asyncio.sleep(0.1))
    busy = 0
    for _ in range(32):
        status, headers, body = await _raw(port, b"")
        assert (status, headers["connection"]) == (503, "close")
        assert json.loads(body)["error"]["code"] == 106
        busy += 1
    assert await _open_connections(server, 8)
    # The WebSocket listener is another matter.
    ws = await connect(f"ws://127.0.0.1:{server.port}/d")
    await aio(ws.close())
    for _, writer in held:
        writer.close()
    assert await _open_connections(server, 0)
    assert (await _refusals(server))["connections"] == busy



@ensure_deferred
async def test_d_slow_heads_make_room_for_a_health_check(serve: StartServer) -> None:
    """A slowloris that holds every admin slot cannot keep /health from answering."""
    server = await serve(admin={"max_connections": 8})
    port = server.admin_port
    slow = [await _open(port) for _ in range(8)]
    for _, writer in slow:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x")  # and never the rest
    assert await _open_connections(server, 8)
    for _ in range(3):
        status, _, body = await http("GET", "127.0.0.1", port, "/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
    assert (await _refusals(server))["evicted"] >= 1  # a slow one made room
    for _, writer in slow:
        writer.close()
