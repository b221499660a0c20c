"""
End to end: the Redis broker when Redis fails (omega_ws/broker/redis/;
docs/several-nodes.md, "Failures"), against a real redis-server on
127.0.0.1 (tests/redis_server.py) killed, restarted (with its data or
empty), frozen (SIGSTOP), its pub/sub client killed or wedged, or never
there; with real clients: raw ones on a bare socket (their pings are
counted) and the npm centrifuge SDK (tests/jsdriver.py).

Each test prints what it measured (run with C{-s} to see the figures):
how long /health took to turn 503 and back to 200, how long a publish took
to fail, how long a resync took.  The bounds asserted are the ones the
design states ("within ~3 s", "within a few seconds": 6 s), not speeds.

A proxy (L{RedisProxy}) fails one of a node's two connections to Redis:
the pub/sub one wedged (open, delivering nothing), or the command one slow.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from omega_ws import Server
from omega_ws.broker.redis import scripts

from .conftest import StartNode, StartServer
from .jsdriver import DriverFailure, JsDriver, JsDrivers, js_drivers, node_available
from .nodes import LOOPBACK_ARGS, PYTHON_M, TWISTD, clean_env
from .rawsocket import CLOSE, PING, PONG, TEXT, RawSocket
from .redis_server import HOST, RedisServer, free_port
from .resp import encode, read_reply
from .support import aio, api, http

__all__ = ["js_drivers"]  # the fixture "js", imported to be found

ensure_deferred = pytest_twisted.ensureDeferred

# The bounds the design states (see the module docstring).
DOWN_WITHIN = 3.5  # /health 503 "within 3.5 s" (reply timeout 2 s + watchdog 0.5 s)
BACK_WITHIN = 6.0  # "within a few seconds"
FAIL_FAST_WITHIN = 3.0  # a publish while Redis is frozen answers (fails) within ~3 s
RESYNC_WITHIN = 6.0  # position check every 2 s, one check of grace
PREFIX = "omega-ws"  # broker.prefix, default

# Short heartbeats, so that an outage spans several of them.
HEARTBEAT = {"ping_interval": 1.0, "ping_timeout": 2.0}


def test_node_and_the_sdk_are_installed() -> None:
    # Not a skip: without them the Centrifuge half of these tests would prove nothing.
    assert node_available() is None, node_available()


# -- helpers -------------------------------------------------------------------------------


async def sleep(seconds: float) -> None:
    await aio(asyncio.sleep(seconds), seconds + 5)


async def until(check: Callable[[], Awaitable[bool] | bool], timeout: float, what: str,
                interval: float = 0.05) -> float:
    """Poll C{check} until true; the seconds it took.  @raise AssertionError: not in time."""
    start = time.monotonic()
    while True:
        outcome = check()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await sleep(interval)


async def health(admin_port: int) -> tuple[int, dict[str, Any]]:
    status, _, body = await http("GET", "127.0.0.1", admin_port, "/health")
    return status, json.loads(body)


async def health_turns(admin_port: int, status: int, timeout: float
                       ) -> tuple[float, dict[str, Any]]:
    """Wait until /health answers C{status}: (seconds it took, the body then)."""
    seen: list[dict[str, Any]] = []

    async def check() -> bool:
        code, body = await health(admin_port)
        seen.append(body)
        return code == status

    took = await until(check, timeout, f"/health {status} (last: {seen[-1:]})")
    return took, seen[-1]


async def publish(admin_port: int, channel: str, data: Any) -> tuple[int, Any, float]:
    """POST /api/publish: (HTTP status, body, seconds it took to answer)."""
    start = time.monotonic()
    status, body = await api(admin_port, "publish", {"channel": channel, "data": data})
    return status, body, time.monotonic() - start


async def history(admin_port: int, channel: str) -> dict[str, Any]:
    status, body = await api(admin_port, "history", {"channel": channel, "limit": -1})
    assert status == 200, body
    return dict(body["result"])


class RawPeer:
    """
    A raw client on a bare socket (tests/rawsocket.py), read in the
    background: it answers every ping (and notes when it came), keeps the
    text frames, and notes the close frame or the end of the connection.
    """

    def __init__(self, sock: RawSocket) -> None:
        self.sock = sock
        self.texts: list[str] = []
        self.pings: list[float] = []
        self.close_frame: tuple[int, str] | None = None
        self.ended = False
        self._task = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, port: int, path: str) -> RawPeer:
        return cls(await RawSocket.open(port, path))

    async def _read(self) -> None:
        reader = self.sock.reader
        try:
            while True:
                first, second = await reader.readexactly(2)
                length = second & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", await reader.readexactly(8))
                opcode, payload = first & 0x0F, await reader.readexactly(length)
                if opcode == PING:
                    self.pings.append(time.monotonic())
                    self.sock.send(PONG, payload)
                elif opcode == TEXT:
                    self.texts.append(payload.decode())
                elif opcode == CLOSE:
                    (code,) = struct.unpack("!H", payload[:2])
                    self.close_frame = (code, payload[2:].decode())
        except (asyncio.IncompleteReadError, ConnectionError):
            self.ended = True

    @property
    def open_still(self) -> bool:
        return not self.ended and self.close_frame is None

    def publish(self, text: str) -> None:
        self.sock.send(TEXT, text.encode())

    async def texts_reach(self, count: int, timeout: float = 5.0) -> list[str]:
        await until(lambda: len(self.texts) >= count, timeout,
                    f"{count} messages on the raw client (has {self.texts})")
        return self.texts

    async def close(self) -> None:
        self._task.cancel()
        self.sock.close()
        await sleep(0)


async def _handshake(port: int, path: str) -> tuple[str, dict[str, str]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    status_line, *lines = head.decode("latin-1").strip().split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status_line, headers


def handshake(port: int, path: str) -> Any:
    """A WebSocket handshake, then hang up: (status line, headers) of the answer."""
    return aio(_handshake(port, path))


def url_of(port: int) -> str:
    return f"ws://127.0.0.1:{port}/connection/websocket"


async def sdk_subscribed(js: JsDrivers, port: int, channel: str, **options: Any
                         ) -> tuple[JsDriver, dict[str, Any]]:
    """A connected SDK client subscribed to C{channel}, and its "subscribed" event."""
    driver = await js.start(url_of(port), **options)
    await driver.send("connect")
    await driver.expect("connected")
    await driver.send("subscribe", channel=channel)
    return driver, await driver.expect("subscribed", channel=channel)


def offsets(driver: JsDriver, channel: str) -> list[int]:
    return [p["offset"] for p in driver.seen("publication", channel=channel)]


def reconnects(driver: JsDriver) -> list[tuple[Any, Any]]:
    """(code, reason) of every reconnect after the first connect."""
    return [(e["code"], e["reason"]) for e in driver.seen("connecting")][1:]


def no_driver_errors(*drivers: JsDriver) -> None:
    for driver in drivers:
        assert driver.errors() == [], driver.errors()


async def redis_node(serve: StartServer, redis: RedisServer, **sections: dict[str, Any]
                     ) -> Server:
    """An in-process node on C{redis}."""
    return await serve(broker={"url": redis.url}, **sections)


def pipeline(redis: RedisServer, *commands: tuple[Any, ...]) -> list[Any]:
    """Several commands in one write on one connection: Redis runs them back to back."""
    with socket.create_connection((HOST, redis.port), timeout=5) as sock:
        sock.sendall(b"".join(encode(*c) for c in commands))
        with sock.makefile("rb") as stream:
            return [read_reply(stream) for _ in commands]


def meta_key(channel: str) -> str:
    return f"{PREFIX}.meta.{{{channel}}}"


def stream_key(channel: str) -> str:
    return f"{PREFIX}.stream.{{{channel}}}"


def lost_publication(channel: str, offset: int, data: bytes, now: int) -> list[tuple[Any, ...]]:
    """
    What the publish script does for publication C{offset}, minus the
    PUBLISH: the stream and the meta have it, no node was told (a message
    pub/sub dropped, or a publisher that died between the two).
    """
    return [("XADD", stream_key(channel), "MAXLEN", 1000, f"{offset}-0", "d", data, "t", now),
            ("HINCRBY", meta_key(channel), "s", 1)]


def redis_now(redis: RedisServer) -> int:
    reply = redis.command("TIME")
    assert isinstance(reply, list) and isinstance(reply[0], bytes)
    return int(reply[0])


class Proxied:
    """One connection through the L{RedisProxy}: what it is, and whether Redis's bytes flow."""

    def __init__(self) -> None:
        self.kind = ""  # "commands" (it loads scripts first), "pub/sub" (it subscribes first)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.closed = False


class RedisProxy:
    """
    A TCP proxy between nodes and one Redis, to fail one connection of a
    node's two: C{hold(kind)} stops Redis's bytes to the connections of
    that kind (they stay open: a wedged connection), C{hold_new} holds
    connections of a kind as they are made, C{release} lets them flow.
    """

    def __init__(self, redis: RedisServer) -> None:
        self.redis = redis
        self.connections: list[Proxied] = []
        self.hold_new: set[str] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Future[Any]] = set()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, HOST, 0)

    def start(self) -> Any:
        return aio(self._start())

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"redis://{HOST}:{self._server.sockets[0].getsockname()[1]}/0"

    def of_kind(self, kind: str) -> list[Proxied]:
        return [c for c in self.connections if c.kind == kind and not c.closed]

    def hold(self, kind: str) -> int:
        held = self.of_kind(kind)
        for connection in held:
            connection.flowing.clear()
        return len(held)

    def release(self) -> None:
        self.hold_new.clear()
        for connection in self.connections:
            connection.flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Proxied()
        self.connections.append(connection)
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.redis.port)
        except OSError:
            connection.closed = True
            writer.close()
            return
        pumps = [asyncio.ensure_future(self._to_redis(reader, up_writer, connection)),
                 asyncio.ensure_future(self._to_node(up_reader, writer, connection))]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        connection.closed = True
        for pump in pumps:
            pump.cancel()
        for w in (writer, up_writer):
            w.close()

    async def _to_redis(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        connection: Proxied) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if not connection.kind:  # a node's first write tells which connection it is
                    connection.kind = "pub/sub" if b"SUBSCRIBE" in data.upper() else "commands"
                    if connection.kind in self.hold_new:
                        connection.flowing.clear()
                writer.write(data)
                await writer.drain()

    async def _to_node(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       connection: Proxied) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                await connection.flowing.wait()
                writer.write(data)
                await writer.drain()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()

    def stop(self) -> Any:
        return aio(self._stop())


def fds_and_rss(pid: int | str = "self") -> tuple[int, int]:
    """Open file descriptors and resident set size (kB) of process C{pid}."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return fds, int(line.split()[1])
    raise AssertionError("no VmRSS in /proc")


# -- 1. Redis killed, then back with its data ----------------------------------------------


@ensure_deferred
async def test_redis_killed_then_restarted_with_its_data(
        serve: StartServer, redis_server: RedisServer, js: JsDrivers) -> None:
    redis = redis_server
    server = await redis_node(serve, redis, heartbeat=HEARTBEAT)
    raw = await RawPeer.open(server.port, "/news")
    # maxServerPingDelay 1.5 s: a server ping missing for 2.5 s would make the SDK reconnect.
    sdk, sub = await sdk_subscribed(js, server.port, "news", maxServerPingDelay=1500)
    epoch = sub["streamPosition"]["epoch"]
    status, body, _ = await publish(server.admin_port, "news", {"n": 1})
    assert (status, body) == (200, {"result": {"offset": 1, "epoch": epoch}})
    assert await raw.texts_reach(1) == ['{"n":1}']
    assert (await sdk.expect("publication", channel="news"))["offset"] == 1

    redis.command("SAVE")  # what the restarted Redis will load: everything so far
    killed = time.monotonic()
    redis.kill()
    down, problem = await health_turns(server.admin_port, 503, DOWN_WITHIN)
    print(f"\n[kill] /health 503 after {down:.2f} s: {problem}")
    assert problem["status"] == "unavailable"
    assert any("broker unreachable" in p and "Redis" in p for p in problem["problems"]), problem

    # Publishing fails at once, with what the admin API and the protocol promise.
    status, body, took = await publish(server.admin_port, "news", {"n": "lost"})
    print(f"[kill] API publish: HTTP {status} in {took * 1000:.0f} ms: {body}")
    assert status == 503 and body["error"]["code"] == 100, body
    assert body["error"]["message"].startswith("broker unavailable: "), body
    assert took < FAIL_FAST_WITHIN
    with pytest.raises(DriverFailure) as refused:
        await sdk.call("publish", channel="news", data={"n": "lost too"})
    print(f"[kill] SDK publish: error {refused.value.code} {refused.value.message!r}")
    assert refused.value.code == 100
    # A raw client's message cannot be taken: that client is told so, with 1013.
    raw_publisher = await RawPeer.open(server.port, "/news")
    raw_publisher.publish('{"n": "refused"}')
    await until(lambda: raw_publisher.close_frame is not None, 5.0, "the raw publisher closed")
    print(f"[kill] raw client's message: close {raw_publisher.close_frame}")
    assert raw_publisher.close_frame == (1013, "Broker unavailable")
    await raw_publisher.close()
    # A raw handshake with a client_id (its session is in Redis): 503, try again soon.
    status_line, headers = await handshake(server.port, "/news?client_id=later-1")
    print(f"[kill] raw handshake with client_id: {status_line}, Retry-After "
          f"{headers.get('retry-after')}")
    assert status_line.split()[1] == "503" and headers.get("retry-after") == "1", status_line

    # The outage lasts a few heartbeats: connections stay open, pings go on.
    pings_before = len(raw.pings)
    await sleep(3.5)
    assert raw.open_still, raw.close_frame
    pings_during = len(raw.pings) - pings_before
    print(f"[kill] raw client: {pings_during} pings during 3.5 s of outage")
    assert pings_during >= 2
    assert reconnects(sdk) == [] and sdk.seen("disconnected") == [], sdk.log()

    restarted = time.monotonic()
    redis.restart(keep_data=True)
    back, _ = await health_turns(server.admin_port, 200, BACK_WITHIN)
    print(f"[kill] Redis down {restarted - killed:.2f} s; /health 200 {back:.2f} s "
          f"after it was back")

    # Another Redis process holds the data now: it may have lost writes (a
    # snapshot, a lagging replica), so the stream goes on in a new epoch and
    # its subscribers resync (docs/several-nodes.md).
    status, body, _ = await publish(server.admin_port, "news", {"n": 2})
    assert status == 200 and body["result"]["offset"] == 1, body
    assert body["result"]["epoch"] != epoch
    assert await raw.texts_reach(2) == ['{"n":1}', '{"n":2}']
    await until(lambda: bool(reconnects(sdk)), RESYNC_WITHIN, "the SDK subscriber resynced")
    assert reconnects(sdk) == [(3010, "insufficient state")], sdk.log()
    again = await sdk.expect("subscribed", channel="news")
    assert again.get("recovered") is False, again
    assert await sdk.call("publish", channel="news", data={"n": 3}) == {}
    assert await raw.texts_reach(3) == ['{"n":1}', '{"n":2}', '{"n":3}']
    # The raw connection stayed open all along (replayed what the new epoch has).
    assert raw.open_still
    no_driver_errors(sdk)
    await raw.close()


# -- 2. Redis back empty: a new epoch ------------------------------------------------------


@ensure_deferred
async def test_redis_restarted_empty_starts_a_new_epoch(
        serve: StartServer, redis_server: RedisServer, js: JsDrivers) -> None:
    redis = redis_server
    server = await redis_node(serve, redis)
    port, admin = server.port, server.admin_port
    stays = await RawPeer.open(port, "/feed")  # a raw subscriber that stays connected
    session_url = "/feed?client_id=resumer-1"
    resumer = await RawPeer.open(port, session_url)  # a raw client that will resume
    sdk, sub = await sdk_subscribed(js, port, "feed")  # a Centrifuge one that stays
    old_epoch = sub["streamPosition"]["epoch"]
    for n in (1, 2, 3):
        status, body, _ = await publish(admin, "feed", {"old": n})
        assert (status, body["result"]["epoch"]) == (200, old_epoch)
    expected_old = [f'{{"old":{n}}}' for n in (1, 2, 3)]
    assert await stays.texts_reach(3) == expected_old
    assert await resumer.texts_reach(3) == expected_old
    for offset in (1, 2, 3):
        assert (await sdk.expect("publication", channel="feed"))["offset"] == offset
    # A raw client that left before the restart: its held session is lost with Redis.
    left = await RawPeer.open(port, "/feed?client_id=left-1")
    await left.texts_reach(0)
    await left.close()
    # A second SDK client that goes away now and recovers later, from offset 3.
    away, _ = await sdk_subscribed(js, port, "feed")
    await away.send("disconnect")
    await away.expect("disconnected")

    restarted = time.monotonic()
    redis.restart(keep_data=False)
    back, _ = await health_turns(admin, 200, BACK_WITHIN)
    print(f"\n[empty] /health 200 {back:.2f} s after Redis came back empty")
    assert redis.command("GET", f"{PREFIX}.generation") is not None  # the node made a new one

    # The subscriber that stayed connected is resynced: the SDK by 3010, then it
    # recovers from its old position: recovered false (the stream is gone).
    await until(lambda: bool(reconnects(sdk)), BACK_WITHIN, "the SDK client disconnected")
    print(f"[empty] SDK subscriber resynced {time.monotonic() - restarted:.2f} s after the "
          f"restart: {reconnects(sdk)}")
    assert reconnects(sdk) == [(3010, "insufficient state")], sdk.log()
    again = await sdk.expect("subscribed", channel="feed")
    assert again["wasRecovering"] is True and again["recovered"] is False, again
    new_epoch = again["streamPosition"]["epoch"]
    assert new_epoch != old_epoch and again["streamPosition"]["offset"] == 0, again

    # The resumer goes away (its session is written now, in the new Redis).
    await resumer.close()
    await sleep(0.2)

    status, body, _ = await publish(admin, "feed", {"new": 1})
    assert status == 200, body
    print(f"[empty] next publication: {body['result']} (epoch was {old_epoch})")
    assert body["result"] == {"offset": 1, "epoch": new_epoch}
    status, body, _ = await publish(admin, "feed", {"new": 2})
    assert body["result"] == {"offset": 2, "epoch": new_epoch}
    expected_new = ['{"new":1}', '{"new":2}']

    # The raw subscriber that stayed keeps receiving, on the same connection.
    assert await stays.texts_reach(5) == expected_old + expected_new
    assert stays.open_still
    # The SDK subscriber gets the new epoch's publications live.
    for offset in (1, 2):
        assert (await sdk.expect("publication", channel="feed"))["offset"] == offset
    # The resuming raw client gets what the new epoch has (documented: history
    # no longer covers the gap, so what it still has, oldest first).
    resumed = await RawPeer.open(port, session_url)
    assert await resumed.texts_reach(2) == expected_new
    # The raw client whose session was held during the restart starts afresh.
    afresh = await RawPeer.open(port, "/feed?client_id=left-1")
    await sleep(0.5)
    assert afresh.texts == [] and afresh.open_still
    # The SDK client that was away recovers from its old position: recovered false.
    await away.send("connect")
    recovering = await away.expect("subscribed", channel="feed")
    assert recovering["wasRecovering"] is True and recovering["recovered"] is False, recovering
    assert recovering["streamPosition"] == {"offset": 2, "epoch": new_epoch}
    assert await away.absent("publication", within=0.5)
    await sleep(0.3)
    assert resumed.texts == expected_new and stays.texts == expected_old + expected_new
    assert offsets(sdk, "feed") == [1, 2, 3, 1, 2]
    no_driver_errors(sdk, away)
    for peer in (stays, resumed, afresh):
        await peer.close()


@ensure_deferred
async def test_redis_back_empty_resyncs_when_pubsub_is_ready_before_commands(
        serve: StartServer, redis_server: RedisServer, js: JsDrivers) -> None:
    """
    The same restart, in the order that the previous test meets by chance
    half of the time: the pub/sub connection is ready (and resubscribed)
    before the command connection is (a proxy holds the command
    connection's replies for 1 s, as a slow SCRIPT LOAD would).  The
    subscribers that stayed must still be resynced at once, not only when
    the next publication shows the new epoch.
    """
    redis = redis_server
    proxy = RedisProxy(redis)
    await proxy.start()
    try:
        server = await serve(broker={"url": proxy.url})
        stays = await RawPeer.open(server.port, "/feed")
        sdk, sub = await sdk_subscribed(js, server.port, "feed")
        old_epoch = sub["streamPosition"]["epoch"]
        for n in (1, 2):
            await publish(server.admin_port, "feed", {"old": n})
        assert await stays.texts_reach(2) == ['{"old":1}', '{"old":2}']
        for offset in (1, 2):
            assert (await sdk.expect("publication", channel="feed"))["offset"] == offset
        before = len(proxy.connections)
        proxy.hold_new.add("commands")
        restarted = time.monotonic()
        redis.restart(keep_data=False)

        def new(kind: str) -> list[Proxied]:
            return [c for c in proxy.connections[before:] if c.kind == kind and not c.closed]

        await until(lambda: bool(new("commands")) and bool(new("pub/sub")), BACK_WITHIN,
                    "both connections made again")
        await sleep(1.0)  # the pub/sub connection resubscribes meanwhile
        assert not new("commands")[0].flowing.is_set()
        proxy.release()
        back, _ = await health_turns(server.admin_port, 200, BACK_WITHIN)
        print(f"\n[empty, pub/sub first] /health 200 {time.monotonic() - restarted:.2f} s "
              f"after the restart")
        resynced = await until(lambda: bool(reconnects(sdk)), RESYNC_WITHIN,
                               "the SDK subscriber resynced (3010) before any publication")
        print(f"[empty, pub/sub first] SDK subscriber resynced {resynced:.2f} s after "
              f"/health 200")
        assert reconnects(sdk) == [(3010, "insufficient state")], sdk.log()
        again = await sdk.expect("subscribed", channel="feed")
        assert again["recovered"] is False and again["streamPosition"]["epoch"] != old_epoch
        status, body, _ = await publish(server.admin_port, "feed", {"new": 1})
        assert body["result"] == {"offset": 1, "epoch": again["streamPosition"]["epoch"]}
        # Live, to both: the SDK client was resynced before it, not because of it.
        pub = await sdk.expect("publication", channel="feed")
        assert (pub["offset"], pub["data"]) == (1, {"new": 1})
        assert await stays.texts_reach(3) == ['{"old":1}', '{"old":2}', '{"new":1}']
        no_driver_errors(sdk)
        await stays.close()
    finally:
        await server.stop()
        await proxy.stop()


# -- 3. Redis frozen (SIGSTOP) -------------------------------------------------------------


@ensure_deferred
async def test_redis_frozen_then_thawed(
        serve: StartServer, redis_server: RedisServer, js: JsDrivers) -> None:
    redis = redis_server
    server = await redis_node(serve, redis, heartbeat=HEARTBEAT)
    admin = server.admin_port
    raw = await RawPeer.open(server.port, "/live")
    sdk, _ = await sdk_subscribed(js, server.port, "live", maxServerPingDelay=1500)
    status, _, _ = await publish(admin, "live", {"n": 1})
    assert status == 200
    assert await raw.texts_reach(1) == ['{"n":1}']
    assert (await sdk.expect("publication", channel="live"))["offset"] == 1

    paused = time.monotonic()
    redis.pause()
    try:
        # A publish sent just after the freeze waits for the reply timeout, no longer.
        status, body, first = await publish(admin, "live", {"n": "frozen 1"})
        print(f"\n[sigstop] first API publish: HTTP {status} after {first:.2f} s: {body}")
        assert status == 503 and body["error"]["code"] == 100, body
        assert first < FAIL_FAST_WITHIN
        down, problem = await health_turns(admin, 503, DOWN_WITHIN)
        print(f"[sigstop] /health 503 {time.monotonic() - paused:.2f} s after SIGSTOP: "
              f"{problem['problems']}")
        assert any("Redis" in p for p in problem["problems"]), problem
        assert time.monotonic() - paused < DOWN_WITHIN
        answers = []
        while time.monotonic() - paused < 5.0:
            status, body, took = await publish(admin, "live", {"n": "frozen"})
            answers.append(took)
            assert status == 503 and body["error"]["code"] == 100, body
            assert took < FAIL_FAST_WITHIN
            await sleep(0.25)
        print(f"[sigstop] {len(answers)} more API publishes during the freeze: 503 each, "
              f"slowest in {max(answers) * 1000:.0f} ms")
        start = time.monotonic()
        with pytest.raises(DriverFailure) as refused:
            await sdk.call("publish", channel="live", data={"n": "frozen sdk"})
        print(f"[sigstop] SDK publish: error {refused.value.code} after "
              f"{time.monotonic() - start:.2f} s")
        assert refused.value.code == 100
        await sleep(max(0.0, 6.0 - (time.monotonic() - paused)))
        assert raw.open_still and reconnects(sdk) == [], sdk.log()
        pings = [t for t in raw.pings if t > paused]
        print(f"[sigstop] raw client: {len(pings)} pings during the "
              f"{time.monotonic() - paused:.1f} s freeze")
        assert len(pings) >= 4
    finally:
        redis.resume()
    thawed = time.monotonic()
    back, _ = await health_turns(admin, 200, BACK_WITHIN)
    print(f"[sigstop] /health 200 {back:.2f} s after SIGCONT")
    # Healthy for good (a second drop right after would turn it 503 again).
    flaps = []
    while time.monotonic() - thawed < back + 4.0:
        code, body = await health(admin)
        if code != 200:
            flaps.append((round(time.monotonic() - thawed, 2), body))
        await sleep(0.1)
    print(f"[sigstop] /health after recovery, 4 s sampled: {flaps or 'always 200'}")
    for n in (2, 3):
        status, body, _ = await publish(admin, "live", {"n": n})
        assert status == 200, body
    # A publish answered 503 when its reply timed out may still have been
    # made: Redis, thawed, runs what was already in its socket buffer
    # (documented). So between 1 and 2 there may be such ones.
    await until(lambda: '{"n":3}' in raw.texts, 5.0, f"n=3 on the raw client ({raw.texts})")
    texts = raw.texts
    assert texts[0] == '{"n":1}' and texts[-2:] == ['{"n":2}', '{"n":3}'], texts
    kept = await history(admin, "live")
    await until(lambda: len(offsets(sdk, "live")) >= len(kept["publications"]), 5.0,
                "every publication on the SDK")
    # Nothing missing, nothing twice: the raw subscriber has exactly the history.
    assert texts == [json.dumps(p["data"], separators=(",", ":")) for p in kept["publications"]]
    assert offsets(sdk, "live") == [p["offset"] for p in kept["publications"]]
    assert raw.open_still
    assert flaps == []
    no_driver_errors(sdk)
    await raw.close()


# -- 4. a publication pub/sub never delivered ----------------------------------------------


@ensure_deferred
async def test_a_dropped_or_stalled_publication_is_repaired_from_history(
        serve: StartServer, redis_server: RedisServer, js: JsDrivers) -> None:
    redis = redis_server
    publisher = await redis_node(serve, redis)
    other = await redis_node(serve, redis)
    raw = await RawPeer.open(other.port, "/ticks")
    local_raw = await RawPeer.open(publisher.port, "/ticks")
    sdk, _ = await sdk_subscribed(js, other.port, "ticks")
    for n in (1, 2, 3):
        status, body, _ = await publish(publisher.admin_port, "ticks", {"n": n})
        assert (status, body["result"]["offset"]) == (200, n)
    await raw.texts_reach(3)
    for offset in (1, 2, 3):
        assert (await sdk.expect("publication", channel="ticks"))["offset"] == offset

    # Publication 4 reaches the stream but not pub/sub; 5 is published as usual:
    # the nodes see 5 after 3.
    pipeline(redis, *lost_publication("ticks", 4, b'{"n":4}', redis_now(redis)))
    sent = time.monotonic()
    status, body, _ = await publish(publisher.admin_port, "ticks", {"n": 5})
    assert body["result"]["offset"] == 5
    expected = [f'{{"n":{n}}}' for n in range(1, 6)]
    assert await raw.texts_reach(5) == expected
    print(f"\n[gap] raw subscriber on the other node had 4 and 5 "
          f"{time.monotonic() - sent:.2f} s after 5 was published")
    assert await local_raw.texts_reach(5) == expected
    await until(lambda: bool(reconnects(sdk)), 5.0, "the SDK subscriber resynced")
    assert reconnects(sdk) == [(3010, "insufficient state")], sdk.log()
    again = await sdk.expect("subscribed", channel="ticks")
    assert again["wasRecovering"] is True and again["recovered"] is True, again
    for offset in (4, 5):
        assert (await sdk.expect("publication", channel="ticks"))["offset"] == offset
    print(f"[gap] SDK subscriber resynced and recovered 4 and 5 "
          f"{time.monotonic() - sent:.2f} s after 5 was published")

    # Publication 6 reaches the stream, and nothing else ever comes: the
    # periodic position check must notice.
    pipeline(redis, *lost_publication("ticks", 6, b'{"n":6}', redis_now(redis)))
    stalled = time.monotonic()
    expected.append('{"n":6}')
    took = await until(lambda: len(raw.texts) >= 6, RESYNC_WITHIN,
                       "the stalled publication on the other node's raw subscriber")
    print(f"[stall] raw subscriber on the other node had 6 after {took:.2f} s")
    assert raw.texts == expected
    assert await local_raw.texts_reach(6, RESYNC_WITHIN) == expected
    await until(lambda: len(reconnects(sdk)) == 2, RESYNC_WITHIN, "the SDK resynced again")
    again = await sdk.expect("subscribed", channel="ticks")
    assert again["recovered"] is True, again
    assert (await sdk.expect("publication", channel="ticks"))["offset"] == 6
    print(f"[stall] SDK subscriber recovered 6 {time.monotonic() - stalled:.2f} s after it "
          f"was written")

    # Then on as usual; nothing missing, nothing twice.
    await publish(publisher.admin_port, "ticks", {"n": 7})
    expected.append('{"n":7}')
    assert await raw.texts_reach(7) == expected
    assert await local_raw.texts_reach(7) == expected
    assert (await sdk.expect("publication", channel="ticks"))["offset"] == 7
    await sleep(0.3)
    kept = await history(other.admin_port, "ticks")
    assert [p["offset"] for p in kept["publications"]] == list(range(1, 8))
    assert raw.texts == expected and local_raw.texts == expected
    assert offsets(sdk, "ticks") == list(range(1, 8))
    assert raw.open_still and local_raw.open_still
    no_driver_errors(sdk)
    for peer in (raw, local_raw):
        await peer.close()


# -- 5. the subscriber connection killed, or wedged ----------------------------------------


def publish_by_script(redis: RedisServer, channel: str, data: bytes) -> tuple[Any, ...]:
    """The broker's own PUBLISH script, run as a node runs it (default settings)."""
    info = redis.command("INFO", "server")
    assert isinstance(info, bytes)
    run_id = next(line[7:].strip() for line in info.splitlines()
                  if line.startswith(b"run_id:"))
    return ("EVAL", scripts.PUBLISH.text, 3, meta_key(channel), stream_key(channel),
            f"{PREFIX}.generation", data, 1000, 300, 7200,
            f"{PREFIX}.pub.{{{channel}}}".encode(), channel, "0badc0de0badc0de", run_id)


def pubsub_clients(redis: RedisServer) -> list[str]:
    listing = redis.command("CLIENT", "LIST", "TYPE", "pubsub")
    assert isinstance(listing, bytes)
    return [line.split()[0] for line in listing.decode().splitlines()]


@ensure_deferred
async def test_subscriber_connection_killed_resubscribes_and_resyncs(
        serve: StartServer, redis_server: RedisServer, js: JsDrivers) -> None:
    redis = redis_server
    server = await redis_node(serve, redis)
    raw = await RawPeer.open(server.port, "/wire")
    sdk, _ = await sdk_subscribed(js, server.port, "wire")
    for n in (1, 2):
        await publish(server.admin_port, "wire", {"n": n})
    await raw.texts_reach(2)
    for offset in (1, 2):
        assert (await sdk.expect("publication", channel="wire"))["offset"] == offset
    before = pubsub_clients(redis)
    assert len(before) == 1, before
    # The kill, and a publication in the same breath: Redis runs both before the
    # node can connect again, so pub/sub has nobody to give 3 to.
    killed = time.monotonic()
    killed_count, reply = pipeline(redis, ("CLIENT", "KILL", "TYPE", "pubsub"),
                                   publish_by_script(redis, "wire", b'{"n":3}'))
    assert killed_count == 1 and reply[0] == 3, (killed_count, reply)
    # Health recovers (it may have been 503 for the reconnect: ~0.1 s).
    back, _ = await health_turns(server.admin_port, 200, BACK_WITHIN)
    await until(lambda: len(pubsub_clients(redis)) == 1, BACK_WITHIN, "subscribed again")
    assert pubsub_clients(redis) != before
    expected = ['{"n":1}', '{"n":2}', '{"n":3}']
    assert await raw.texts_reach(3, RESYNC_WITHIN) == expected
    print(f"\n[client kill] resubscribed; raw subscriber had 3 (made while pub/sub was "
          f"gone) {time.monotonic() - killed:.2f} s after the kill; /health 200 at {back:.2f} s")
    await until(lambda: bool(reconnects(sdk)), RESYNC_WITHIN, "the SDK subscriber resynced")
    assert reconnects(sdk) == [(3010, "insufficient state")], sdk.log()
    again = await sdk.expect("subscribed", channel="wire")
    assert again["recovered"] is True, again
    assert (await sdk.expect("publication", channel="wire"))["offset"] == 3
    # Delivery goes on live.
    await publish(server.admin_port, "wire", {"n": 4})
    expected.append('{"n":4}')
    assert await raw.texts_reach(4) == expected
    assert (await sdk.expect("publication", channel="wire"))["offset"] == 4
    await sleep(0.3)
    assert raw.texts == expected and offsets(sdk, "wire") == [1, 2, 3, 4]
    no_driver_errors(sdk)
    await raw.close()


@ensure_deferred
async def test_a_wedged_subscriber_connection_is_dropped_and_resynced(
        serve: StartServer, redis_server: RedisServer, js: JsDrivers) -> None:
    """
    The subscriber connection stays open but delivers nothing (a proxy
    holds what Redis sends on it): the probe (every 1 s through the node's
    own pub/sub channel, 3 s to come back) must notice, drop it, and the
    resubscription must resync what was published meanwhile.
    """
    redis = redis_server
    proxy = RedisProxy(redis)
    await proxy.start()
    try:
        server = await serve(broker={"url": proxy.url})
        admin = server.admin_port
        raw = await RawPeer.open(server.port, "/wedge")
        sdk, _ = await sdk_subscribed(js, server.port, "wedge")
        await publish(admin, "wedge", {"n": 1})
        await raw.texts_reach(1)
        assert (await sdk.expect("publication", channel="wedge"))["offset"] == 1
        assert proxy.hold("pub/sub") == 1
        wedged = time.monotonic()
        for n in (2, 3):
            status, body, _ = await publish(admin, "wedge", {"n": n})
            assert (status, body["result"]["offset"]) == (200, n)
        statuses: list[tuple[float, int]] = []

        async def arrived() -> bool:
            statuses.append((time.monotonic() - wedged, (await health(admin))[0]))
            return len(raw.texts) >= 3

        took = await until(arrived, RESYNC_WITHIN, "what was published while wedged")
        unhealthy = [round(t, 2) for t, code in statuses if code != 200]
        print(f"\n[wedge] raw subscriber had 2 and 3 {took:.2f} s after the wedge; "
              f"/health was 503 at {unhealthy or 'no sample'}")
        assert raw.texts == ['{"n":1}', '{"n":2}', '{"n":3}']
        await health_turns(admin, 200, BACK_WITHIN)
        await until(lambda: bool(reconnects(sdk)), RESYNC_WITHIN, "the SDK subscriber resynced")
        assert reconnects(sdk) == [(3010, "insufficient state")], sdk.log()
        again = await sdk.expect("subscribed", channel="wedge")
        assert again["recovered"] is True, again
        for offset in (2, 3):
            assert (await sdk.expect("publication", channel="wedge"))["offset"] == offset
        await publish(admin, "wedge", {"n": 4})
        assert (await raw.texts_reach(4))[-1] == '{"n":4}'
        assert (await sdk.expect("publication", channel="wedge"))["offset"] == 4
        assert offsets(sdk, "wedge") == [1, 2, 3, 4]
        no_driver_errors(sdk)
        await raw.close()
    finally:
        await server.stop()
        await proxy.stop()


@ensure_deferred
async def test_pubsub_wedged_across_reconnects_loses_nothing(
        serve: StartServer, redis_server: RedisServer, js: JsDrivers) -> None:
    """
    Pub/sub delivers nothing for ~12 s, across the node's reconnects (each
    new subscriber connection is held too), while commands work and
    publications are made: the position check's resync comes while no
    subscription can be confirmed.  Once pub/sub flows again, every
    subscriber must have what was published meanwhile (it is all in history).
    """
    redis = redis_server
    proxy = RedisProxy(redis)
    await proxy.start()
    try:
        server = await serve(broker={"url": proxy.url})
        admin = server.admin_port
        raw = await RawPeer.open(server.port, "/cut")
        sdk, _ = await sdk_subscribed(js, server.port, "cut")
        await publish(admin, "cut", {"n": 1})
        await raw.texts_reach(1)
        assert (await sdk.expect("publication", channel="cut"))["offset"] == 1
        first = proxy.of_kind("pub/sub")
        assert len(first) == 1
        proxy.hold_new.add("pub/sub")
        proxy.hold("pub/sub")
        cut = time.monotonic()
        await until(lambda: first[0].closed and bool(proxy.of_kind("pub/sub")), BACK_WITHIN,
                    "the wedged subscriber connection dropped and made again")
        print(f"\n[pub/sub cut] first drop {time.monotonic() - cut:.2f} s after the cut")
        for n in (2, 3):
            status, body, _ = await publish(admin, "cut", {"n": n})
            assert (status, body["result"]["offset"]) == (200, n)
        published = time.monotonic()
        codes = []
        while time.monotonic() - published < 9.0:
            codes.append((await health(admin))[0])
            await sleep(0.1)
        made = len([c for c in proxy.connections if c.kind == "pub/sub"])
        print(f"[pub/sub cut] {made} subscriber connections made while cut; /health 503 in "
              f"{codes.count(503)} of {len(codes)} samples")
        proxy.release()
        released = time.monotonic()
        await health_turns(admin, 200, BACK_WITHIN)
        await until(lambda: offsets(sdk, "cut")[-1:] == [3], RESYNC_WITHIN,
                    "the SDK subscriber recovered 2 and 3")
        print(f"[pub/sub cut] SDK subscriber had 2 and 3 {time.monotonic() - released:.2f} s "
              f"after pub/sub flowed again")
        assert offsets(sdk, "cut") == [1, 2, 3]
        assert all(e["recovered"] for e in sdk.seen("subscribed", channel="cut")[1:]), sdk.log()
        await until(lambda: len(raw.texts) >= 3, RESYNC_WITHIN,
                    f"2 and 3 on the raw subscriber after pub/sub flows again (has {raw.texts})")
        print(f"[pub/sub cut] raw subscriber had 2 and 3 {time.monotonic() - released:.2f} s "
              f"after pub/sub flowed again")
        assert raw.texts == ['{"n":1}', '{"n":2}', '{"n":3}']
        await publish(admin, "cut", {"n": 4})
        assert (await raw.texts_reach(4))[-1] == '{"n":4}'
        await raw.close()
    finally:
        await server.stop()
        await proxy.stop()


# -- 6. a broker.url that cannot work ------------------------------------------------------


BAD_URLS = [
    ("redis://127.0.0.1:notaport", "port"),
    ("foo://x", "scheme"),
    ("UNREACHABLE", "cannot start"),
]


@pytest.mark.parametrize("via", ["twistd --broker", "twistd OMEGA_WS_BROKER",
                                 "python -m --broker"])
@pytest.mark.parametrize(("url", "message"), BAD_URLS, ids=["bad-port", "bad-scheme",
                                                              "unreachable"])
def test_bad_broker_url_is_one_clear_line(tmp_path: Path, url: str, message: str,
                                          via: str) -> None:
    if url == "UNREACHABLE":
        url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    command = PYTHON_M if via.startswith("python") else TWISTD
    args, env = ([], {"OMEGA_WS_BROKER": url}) if "OMEGA" in via else (["--broker", url], {})
    start = time.monotonic()
    result = subprocess.run(command + LOOPBACK_ARGS + args, env=clean_env(**env),
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - start
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("omega-ws: error: ")]
    print(f"\n[bad url {url!r} via {via}] exit {result.returncode} after {took:.1f} s: "
          f"{errors}")
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    assert len(errors) == 1, output
    assert errors[0].startswith("omega-ws: error: broker.url") and message in errors[0], output
    assert result.stderr.strip().splitlines() == errors, result.stderr
    assert "listening on" not in output


# -- 7. Redis away longer than the backoff cap ---------------------------------------------

# The reconnect delay doubles up to 5 s, times a jitter of 0.75..1.25: once
# at the cap, Redis may be back up to 6.25 s before the next attempt.
AFTER_LONG_OUTAGE_WITHIN = 5.0 * 1.25 + 1.0


@ensure_deferred
async def test_reconnects_after_a_long_outage(serve: StartServer,
                                              redis_server: RedisServer) -> None:
    redis = redis_server
    server = await redis_node(serve, redis)
    raw = await RawPeer.open(server.port, "/idle")
    await publish(server.admin_port, "idle", {"n": 1})
    await raw.texts_reach(1)
    redis.kill()
    await health_turns(server.admin_port, 503, DOWN_WITHIN)
    await sleep(8.5)  # idle, past the 5 s backoff cap
    assert (await health(server.admin_port))[0] == 503
    redis.restart(keep_data=False)
    back, _ = await health_turns(server.admin_port, 200, AFTER_LONG_OUTAGE_WITHIN)
    print(f"\n[long outage] /health 200 {back:.2f} s after Redis came back from 8.5 s away")
    status, _, _ = await publish(server.admin_port, "idle", {"n": 2})
    assert status == 200
    assert await raw.texts_reach(2) == ['{"n":1}', '{"n":2}']
    assert raw.open_still
    await raw.close()


# -- no leaks across outages ---------------------------------------------------------------


@ensure_deferred
async def test_nothing_leaks_across_ten_kills(nodes: StartNode,
                                              redis_server: RedisServer) -> None:
    redis = redis_server
    node = nodes("--broker", redis.url)
    raw = await RawPeer.open(node.ws_port, "/cycles")
    await publish(node.admin_port, "cycles", {"n": 0})
    await raw.texts_reach(1)
    await sleep(1.0)  # settled: timers started, presence written
    fds_before, rss_before = fds_and_rss(node.pid)
    backs = []
    for n in range(1, 11):
        redis.kill()
        redis.restart(keep_data=False)
        back, _ = await health_turns(node.admin_port, 200, BACK_WITHIN)
        backs.append(back)
        status, body, _ = await publish(node.admin_port, "cycles", {"n": n})
        assert status == 200, body
        await raw.texts_reach(n + 1)
    await sleep(1.0)
    fds_after, rss_after = fds_and_rss(node.pid)
    print(f"\n[10 kills] /health 200 after restart: {min(backs):.2f}..{max(backs):.2f} s; "
          f"node fds {fds_before} -> {fds_after}, RSS {rss_before} -> {rss_after} kB")
    assert raw.texts == [f'{{"n":{n}}}' for n in range(11)]
    assert raw.open_still
    assert abs(fds_after - fds_before) <= 3
    assert rss_after - rss_before < 20_000
    assert "Traceback" not in node.output(), node.output()
    await raw.close()
