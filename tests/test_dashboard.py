"""
The live dashboard on the admin listener, in process: the page and its
files, what a snapshot says (and never: a secret), the feed's
Server-Sent Events framing, its key and origin checks, its cap, that the
admin listener's deadlines leave a long-lived feed alone, that a client
that stops reading is dropped, and that the WebSocket port serves none
of it.  Real sockets on 127.0.0.1, every wait bounded by L{aio}.  (The
page in a real browser: test_dashboard_browser.py.)
"""

from __future__ import annotations

import asyncio
import json
import re
from importlib import resources
from typing import Any

import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from omega_ws import Server
from omega_ws.admin import AdminPolicy
from omega_ws.config import AdminConfig, Config
from omega_ws.dashboard import config_summary, feed_limit
from omega_ws.dashboard.feed import STALLED, Feed

from .conftest import StartServer
from .redis_server import RedisServer
from .support import aio, api, closed, connect, http, recv, send

ensure_deferred = pytest_twisted.ensureDeferred

KEY = "dash-KEY-0123456789"
TOKEN_SECRET = "token-SECRET-of-at-least-32-bytes-0123456789"
LOCAL = IPv4Address("TCP", "127.0.0.1", 9888)


# -- a feed over a raw socket ------------------------------------------------------------


class EventStream:
    """C{GET /dashboard/events} on a raw socket: the head, then events (dechunked)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.raw = b""
        self.body = b""
        self.ended = False
        self.status = 0
        self.headers: dict[str, str] = {}

    @classmethod
    async def open(cls, port: int, *headers: str, path: str = "/dashboard/events"
                   ) -> EventStream:
        async def go() -> EventStream:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            stream = cls(reader, writer)
            lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
                     "Accept: text/event-stream", *headers]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            await stream._head()
            return stream

        return await aio(go())

    async def _more(self) -> bool:
        data = await self.reader.read(65536)
        self.raw += data
        if not data:
            self.ended = True
        return bool(data)

    async def _head(self) -> None:
        while b"\r\n\r\n" not in self.raw:
            assert await self._more(), f"closed before a response head: {self.raw!r}"
        head, _, self.raw = self.raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.strip().lower(): v.strip()
                        for k, _, v in (line.partition(":") for line in lines)}

    async def whole_body(self) -> bytes:
        """The body of a refusal (Content-Length, then closed)."""
        async def go() -> bytes:
            length = int(self.headers["content-length"])
            while len(self.raw) < length:
                assert await self._more()
            return self.raw[:length]

        return await aio(go())

    def _dechunk(self) -> None:
        while not self.ended:
            line, found, rest = self.raw.partition(b"\r\n")
            if not found:
                return
            size = int(line, 16)
            if size == 0:
                self.ended = True
                return
            if len(rest) < size + 2:
                return
            self.body += rest[:size]
            self.raw = rest[size + 2:]

    async def block(self, timeout: float = 5.0) -> str:
        """The next event block (the text before a blank line). @raise EOFError: it ended."""
        async def go() -> str:
            self._dechunk()
            while b"\n\n" not in self.body:
                if self.ended or not await self._more():
                    raise EOFError(self.body)
                self._dechunk()
            block, _, self.body = self.body.partition(b"\n\n")
            return block.decode()

        return await aio(go(), timeout)

    async def snapshot(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next C{snapshot} event's data."""
        while True:
            fields = parse_block(await self.block(timeout))
            if fields.get("event") == "snapshot":
                result: dict[str, Any] = json.loads(fields["data"])
                return result

    def close(self) -> None:
        self.writer.transport.abort()


def parse_block(block: str) -> dict[str, str]:
    """One SSE event's fields (C{data} lines joined), comments under C{":"}."""
    fields: dict[str, str] = {}
    for line in block.split("\n"):
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        key = name or ":"
        fields[key] = f"{fields[key]}\n{value}" if key in fields else value
    return fields


async def centrifuge_client(port: int, channel: str) -> Any:
    ws = await connect(f"ws://127.0.0.1:{port}/connection/websocket")
    await send(ws, json.dumps({"id": 1, "connect": {}}))
    assert "connect" in json.loads(await recv(ws))
    await send(ws, json.dumps({"id": 2, "subscribe": {"channel": channel}}))
    assert json.loads(await recv(ws))["id"] == 2
    return ws


async def until(predicate: Any, timeout: float = 5.0) -> None:
    async def wait() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await aio(wait(), timeout)


# -- the page -----------------------------------------------------------------------------


def test_the_page_loads_nothing_from_elsewhere() -> None:
    files = resources.files("omega_ws.dashboard")
    for name in ("index.html", "app.js", "style.css"):
        text = files.joinpath(name).read_text()
        assert not re.search(r"https?:|wss?:|@import|url\(|//[\w.-]+\.[a-z]{2,}/", text), name
    html = files.joinpath("index.html").read_text()
    assert re.findall(r'(?:src|href)="([^"]*)"', html) == [
        "data:,", "dashboard/style.css", "dashboard/app.js"]
    # Values from the server are set as text, never as markup.
    assert "innerHTML" not in files.joinpath("app.js").read_text()


@ensure_deferred
async def test_get_root_serves_the_page_and_its_files(serve: StartServer) -> None:
    server = await serve()
    port = server.admin_port
    status, headers, body = await http("GET", "127.0.0.1", port, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert b"<title>omega-ws dashboard</title>" in body
    assert b'name="omega-ws-api-key" content="none"' in body
    for path, kind in (("/dashboard/app.js", "text/javascript"),
                       ("/dashboard/style.css", "text/css")):
        status, headers, body = await http("GET", "127.0.0.1", port, path)
        assert (status, headers["content-type"].split(";")[0]) == (200, kind)
        assert headers["x-content-type-options"] == "nosniff"
    status, _, _ = await http("GET", "127.0.0.1", port, "/dashboard/nope.js")
    assert status == 404


@ensure_deferred
async def test_the_page_says_when_a_key_is_needed_and_gives_it_to_anyone(
        serve: StartServer) -> None:
    server = await serve(admin={"api_key": KEY})
    status, _, body = await http("GET", "127.0.0.1", server.admin_port, "/")
    assert status == 200  # the page holds no data: the feed and the API need the key
    assert b'name="omega-ws-api-key" content="required"' in body
    assert KEY.encode() not in body


@ensure_deferred
async def test_nothing_of_the_dashboard_is_on_the_websocket_port(serve: StartServer) -> None:
    server = await serve()
    for path in ("/", "/dashboard/events", "/dashboard/app.js", "/dashboard/style.css"):
        status, _, body = await http("GET", "127.0.0.1", server.port, path)
        assert status == 426, (path, status)  # a WebSocket upgrade, or nothing
        assert b"dashboard" not in body and b"snapshot" not in body
    # The admin listener is not the WebSocket one either.
    assert server.admin_port != server.port


# -- the snapshot --------------------------------------------------------------------------


@ensure_deferred
async def test_a_snapshot_shows_clients_channels_positions_rates_and_counters(
        serve: StartServer) -> None:
    server = await serve()
    service = server.service
    raw = await connect(f"ws://127.0.0.1:{server.port}/news")
    cf = await centrifuge_client(server.port, "news")
    await until(lambda: len(service.registry) == 2)
    for n in range(5):
        await server.publish("news", {"n": n})
    assert await recv(raw) == '{"n":0}'
    await until(lambda: service.dashboard.positions.get("news", (0, ""))[0] == 5)
    service.dashboard.sample()
    snapshot = service.dashboard.snapshot(with_history=True)

    assert snapshot["connections"]["total"] == 2
    by = snapshot["connections"]["by"]
    assert by["raw"]["CONNECTED"] == 1 and by["centrifuge"]["CONNECTED"] == 1
    clients = {c["transport"]: c for c in snapshot["clients"]["shown"]}
    assert set(clients) == {"raw", "centrifuge"}
    assert clients["raw"]["channels"] == ["news"] and clients["centrifuge"]["channels"] == ["news"]
    [news] = snapshot["channels"]["shown"]
    epoch = (await server.publish("news", {"n": 5})).epoch
    assert (news["name"], news["subscribers"], news["offset"], news["epoch"]) == (
        "news", 2, 5, epoch)
    # The last sample covers the five publications, each delivered twice.
    assert snapshot["history"] and snapshot["history"][-1] == snapshot["rate"]
    _, _received, published, delivered = snapshot["rate"]
    assert published > 0 and delivered > 0
    assert snapshot["counters"]["slow_consumer_drops"] == {"total": 0.0}
    assert snapshot["broker"]["kind"] == "memory" and snapshot["broker"]["healthy"]
    assert snapshot["version"] and snapshot["node"] == service.node_id
    service.dashboard.survey()
    assert [node["uid"] for node in service.dashboard.nodes] == [service.node_id]

    await aio(raw.close())
    assert await closed(raw) == (1000, "")
    await until(lambda: len(service.registry) == 1)
    closes = service.dashboard.snapshot()["counters"]["closes"]
    assert closes.get("1000") == 1.0
    await aio(cf.close())


@ensure_deferred
async def test_a_channel_nothing_was_published_on_gets_its_position_from_the_broker(
        serve: StartServer) -> None:
    server = await serve()
    first = await server.publish("quiet", {"before": True})
    ws = await connect(f"ws://127.0.0.1:{server.port}/quiet")
    dashboard = server.service.dashboard
    await until(lambda: server.service.hub.channels().get("quiet") == 1)
    dashboard.snapshot()  # asks the broker: the memory broker answers at once
    await until(lambda: "quiet" in dashboard.positions)
    [quiet] = dashboard.snapshot()["channels"]["shown"]
    assert (quiet["offset"], quiet["epoch"]) == (1, first.epoch)
    await aio(ws.close())
    await until(lambda: not server.service.hub.channels())
    dashboard.tick()
    assert "quiet" not in dashboard.positions  # forgotten with its last subscriber


@ensure_deferred
async def test_with_redis_each_node_sharing_it_has_its_figures(
        serve: StartServer, redis_server: RedisServer) -> None:
    first = await serve(broker={"url": redis_server.url})
    second = await serve(broker={"url": redis_server.url})
    ws = await connect(f"ws://127.0.0.1:{first.port}/shared")
    await until(lambda: len(first.service.registry) == 1)
    # The feed of the second node: this node first, then the other.
    stream = await EventStream.open(second.admin_port)
    try:
        for _ in range(10):
            broker = (await stream.snapshot(timeout=3))["broker"]
            if len(broker["nodes"]) == 2:
                break
        assert broker["kind"] == "redis" and broker["healthy"]
        assert broker["url"] == redis_server.url
        me, other = broker["nodes"]
        assert (me["uid"], me["self"], me["num_clients"]) == (second.service.node_id, True, 0)
        assert (other["uid"], other["self"], other["num_clients"]) == (
            first.service.node_id, False, 1)
    finally:
        stream.close()
        await aio(ws.close())


def test_the_configuration_summary_shows_no_secret() -> None:
    config = Config.from_mapping({
        "auth": {"token_secret": TOKEN_SECRET},
        "admin": {"api_key": KEY},
        "broker": {"url": "redis://alice:pa55w0rd-SECRET@10.0.0.1:6379/0,"
                          "redis://:other-SECRET@10.0.0.2:6379"},
    })
    summary = config_summary(config, ["ws://127.0.0.1:9886"])
    text = json.dumps(summary)
    for secret in (KEY, TOKEN_SECRET, "pa55w0rd", "other-SECRET", "SECRET"):
        assert secret not in text, secret
    assert summary["broker"]["url"] == ("redis://alice:***@10.0.0.1:6379/0,"
                                        "redis://:***@10.0.0.2:6379")
    assert summary["admin"]["api_key"] == "set"
    assert summary["auth"] == {"tokens": "HMAC secret", "anonymous": False}
    assert summary["listeners"] == ["ws://127.0.0.1:9886"]


@ensure_deferred
async def test_nothing_the_feed_sends_holds_a_secret(serve: StartServer) -> None:
    server = await serve(admin={"api_key": KEY}, auth={"token_secret": TOKEN_SECRET})
    stream = await EventStream.open(server.admin_port, f"X-API-Key: {KEY}")
    try:
        text = json.dumps(await stream.snapshot())
        assert KEY not in text and TOKEN_SECRET not in text
        assert '"api_key": "set"' in text
    finally:
        stream.close()


# -- the feed ---------------------------------------------------------------------------------


@ensure_deferred
async def test_the_feed_is_server_sent_events_a_snapshot_a_second(serve: StartServer) -> None:
    server = await serve()
    stream = await EventStream.open(server.admin_port)
    try:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert stream.headers["cache-control"] == "no-store"
        assert stream.headers["transfer-encoding"] == "chunked"
        assert await stream.block() == "retry: 2000"
        first = parse_block(await stream.block())
        assert set(first) == {"event", "data"} and first["event"] == "snapshot"
        assert "\n" not in first["data"]  # one data line: one line of JSON
        assert "history" in json.loads(first["data"])
        # The next ones come every second, with the last sample and no history.
        started = asyncio.get_running_loop().time()
        second = await stream.snapshot(timeout=3)
        third = await stream.snapshot(timeout=3)
        assert "history" not in second and "history" not in third
        assert 0.5 < third["t"] - second["t"] < 1.6
        assert asyncio.get_running_loop().time() - started < 3
        assert third["rate"] is not None and len(third["rate"]) == 4
    finally:
        stream.close()


def test_the_screen_guards_the_feed_like_the_api() -> None:
    def screen(policy: AdminPolicy, target: bytes, **headers: str) -> tuple[int, int] | None:
        raw = Headers({b"host": [b"127.0.0.1:9888"]})
        for name, value in headers.items():
            raw.setRawHeaders(name.replace("_", "-").encode(), [value.encode()])
        refusal = policy.screen(b"GET", target, raw, 0, LOCAL)
        return None if refusal is None else (refusal.status, refusal.code)

    keyed = AdminPolicy(KEY)
    for target in (b"/dashboard/events", b"/dashboard/events?x=1", b"/%64ashboard/ev%65nts",
                   b"/dashboard/events/more"):
        assert screen(keyed, target) == (401, 101), target
        assert screen(keyed, target, x_api_key=KEY) is None
        assert screen(keyed, target, origin="http://evil.example", x_api_key=KEY) == (403, 103)
    assert screen(keyed, b"/dashboard/events", authorization=f"apikey {KEY}") is None
    assert screen(keyed, b"/dashboard/events", origin="http://127.0.0.1:9888",
                  x_api_key=KEY) is None
    # The page and its files are open: they hold no data.
    for target in (b"/", b"/dashboard/app.js", b"/dashboard/style.css"):
        assert screen(keyed, target) is None
    assert screen(AdminPolicy(None), b"/dashboard/events",
                  sec_fetch_site="cross-site") == (403, 103)


@ensure_deferred
async def test_the_feed_needs_the_key_when_one_is_set(serve: StartServer) -> None:
    server = await serve(admin={"api_key": KEY})
    port = server.admin_port
    for headers in ((), ("X-API-Key: wrong",), ("Authorization: Bearer " + KEY,)):
        stream = await EventStream.open(port, *headers)
        try:
            assert (stream.status, stream.headers["connection"]) == (401, "close"), headers
            assert json.loads(await stream.whole_body())["error"]["code"] == 101
        finally:
            stream.close()
    for header in (f"X-API-Key: {KEY}", f"Authorization: apikey {KEY}"):
        stream = await EventStream.open(port, header)
        try:
            assert stream.status == 200
            assert "connections" in await stream.snapshot()
        finally:
            stream.close()
    stream = await EventStream.open(port, f"X-API-Key: {KEY}", "Origin: http://evil.example")
    try:
        assert stream.status == 403
    finally:
        stream.close()


@ensure_deferred
async def test_the_deadlines_leave_an_open_feed_alone(serve: StartServer) -> None:
    # Twisted's own idle timeout is 2 x request_timeout (1 s here); the head
    # deadline 0.5 s: a feed outlives both, and keeps getting snapshots.
    server = await serve(admin={"request_timeout": 0.5})
    stream = await EventStream.open(server.admin_port)
    try:
        await stream.snapshot()
        times = [(await stream.snapshot(timeout=2))["t"] for _ in range(3)]
        assert times == sorted(times) and times[-1] - times[0] >= 1.5
        assert not stream.ended
    finally:
        stream.close()
    # ...while a connection that sends no head is still closed at its deadline.
    reader, writer = await aio(asyncio.open_connection("127.0.0.1", server.admin_port))
    assert await aio(reader.read(), 3) == b""
    writer.close()


async def _open_connections(server: Server, count: int) -> None:
    assert server.service.admin is not None
    site: Any = server.service.admin.factory
    await until(lambda: site.open_connections == count)


@ensure_deferred
async def test_feeds_are_capped_and_count_as_admin_connections(serve: StartServer) -> None:
    server = await serve(admin={"max_connections": 4})
    assert feed_limit(server.config.admin) == 2
    assert feed_limit(AdminConfig()) == 16  # the default admin.max_connections is 64
    feeds = [await EventStream.open(server.admin_port) for _ in range(2)]
    try:
        assert [f.status for f in feeds] == [200, 200]
        await _open_connections(server, 2)
        refused = await EventStream.open(server.admin_port)
        assert refused.status == 503
        body = json.loads(await refused.whole_body())
        assert body["error"]["code"] == 106 and "at most 2" in body["error"]["message"]
        refused.close()
        # Room is left for the rest of the listener.
        status, _, _ = await http("GET", "127.0.0.1", server.admin_port, "/health")
        assert status == 200
        status, _ = await api(server.admin_port, "info", {})
        assert status == 200
        assert len(server.service.dashboard.feeds) == 2
    finally:
        for feed in feeds:
            feed.close()
    await until(lambda: not server.service.dashboard.feeds)
    await _open_connections(server, 0)


@ensure_deferred
async def test_stopping_the_server_ends_the_feeds(serve: StartServer) -> None:
    server = await serve()
    stream = await EventStream.open(server.admin_port)
    await stream.snapshot()
    await server.stop()
    while True:
        try:
            await stream.block()
        except EOFError:
            break
    assert stream.ended and not server.service.dashboard.feeds


class _Transport:
    aborted = False

    def abortConnection(self) -> None:  # noqa: N802 (Twisted's name)
        self.aborted = True

    def loseConnection(self) -> None:  # noqa: N802
        self.aborted = True


class _Request:
    """What a Feed uses of a twisted.web Request."""

    _disconnected = False
    finished = False

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.channel = type("Channel", (), {"transport": _Transport()})()

    def getClientAddress(self) -> IPv4Address:  # noqa: N802
        return LOCAL

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_a_feed_whose_client_stops_reading_is_dropped() -> None:
    clock = Clock()
    dashboard: Any = type("D", (), {"feeds": set(), "encode": staticmethod(lambda s: b"{}"),
                                    "snapshot": lambda self, with_history: {}})()
    request = _Request()
    feed = Feed(dashboard, request, clock)  # type: ignore[arg-type]
    clock.advance(1)
    feed.event(b"snapshot", b"{1}")
    assert request.written == [b"event: snapshot\ndata: {1}\n\n"]
    feed.pauseProducing()  # the connection's buffer is full
    clock.advance(STALLED / 2)
    feed.event(b"snapshot", b"{2}")
    feed.comment(b"keep-alive")
    assert len(request.written) == 1  # nothing more piles up
    feed.resumeProducing()
    feed.event(b"snapshot", b"{3}")  # behind: the next one is whole, with its history
    assert request.written[-1] == b"event: snapshot\ndata: {}\n\n"
    feed.pauseProducing()
    clock.advance(STALLED + 1)
    feed.event(b"snapshot", b"{4}")
    assert request.channel.transport.aborted
