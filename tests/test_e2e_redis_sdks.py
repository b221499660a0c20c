"""
Several omega-ws nodes over one Redis, end to end with the Centrifuge
SDKs (centrifuge-python in this event loop, the npm C{centrifuge} SDK in
Node through tests/js/driver.js): delivery across nodes, recovery on
another node than the one a client left, presence, join/leave and the
surveys (channels, info, disconnect).  A client "moves" between nodes
through L{Switch}, a TCP forwarder on 127.0.0.1 whose target changes
while the client is away, as a load balancer would send it elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import jwt
import pytest
import pytest_twisted
from centrifuge import (
    Client,
    Subscription,
)
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults

from omega_ws import Server
from omega_ws.broker.redis import cluster

from .conftest import StartServer
from .jsdriver import JsDriver, JsDrivers, js_drivers, node_available
from .redis_server import RedisServer
from .support import aio, api, connect, nothing_arrives
from .test_e2e_centrifuge_python import ClientEvents, SubEvents
from .test_e2e_redis_nodes import (
    api_ok,
    compact,
    frames,
    health,
    history,
    raw_url,
    redis_node,
    sleep,
    subscribed_nodes,
    until,
)

__all__ = ["js_drivers"]  # the fixture "js", imported to be found

ensure_deferred = pytest_twisted.ensureDeferred

WAIT = 10.0
SECRET = "omega-ws redis e2e tests, an HS256 secret"
PATH = "/connection/websocket"


def centrifuge_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}{PATH}"


def token(sub: str) -> str:
    return jwt.encode({"sub": sub}, SECRET, algorithm="HS256")


# -- centrifuge-python, its events recorded ------------------------------------------------


# The same recorders as the one-node centrifuge-python tests.
ClientLog, SubLog = ClientEvents, SubEvents


MakeClient = Callable[..., tuple[Client, ClientLog]]


@pytest_twisted.async_yield_fixture
async def sdk(serve: StartServer) -> AsyncIterator[MakeClient]:
    """C{sdk(port, **options)}: a centrifuge-python Client and its events; disconnected after."""
    made: list[Client] = []

    def make(port: int, **options: Any) -> tuple[Client, ClientLog]:
        events = ClientLog()
        options.setdefault("proxy", None)
        options.setdefault("min_reconnect_delay", 0.05)
        options.setdefault("max_reconnect_delay", 0.2)
        client = Client(centrifuge_url(port), events=events, **options)
        made.append(client)
        return client, events

    yield make
    for client in made:  # before the servers stop: no reconnect loops
        with contextlib.suppress(Exception):
            await aio(client.disconnect())


async def py_connected(make: MakeClient, port: int, **options: Any) -> tuple[Client, ClientLog]:
    client, events = make(port, **options)
    await aio(client.connect())
    await aio(client.ready(), WAIT)
    return client, events


async def py_subscribed(client: Client, channel: str, **options: Any
                        ) -> tuple[Subscription, SubLog]:
    events = SubLog()
    options.setdefault("min_resubscribe_delay", 0.05)
    options.setdefault("max_resubscribe_delay", 0.2)
    sub = client.new_subscription(channel, events=events, **options)
    await aio(sub.subscribe())
    await aio(sub.ready(), WAIT)
    return sub, events


# -- a client moves from one node to another -------------------------------------------------


class Switch:
    """A TCP forwarder on 127.0.0.1 to port C{target}; change C{target} to move clients."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> Switch:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, upstream}

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                sink.transport.abort()

        await asyncio.gather(pump(reader, upstream), pump(upstream_reader, writer))
        self._writers -= {writer, upstream}

    def drop(self) -> None:
        """Cut every forwarded connection at once (no close frames)."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop()


@pytest_twisted.async_yield_fixture
async def switches() -> AsyncIterator[Callable[[int], Deferred[Switch]]]:
    made: list[Switch] = []

    def start(target: int) -> Deferred[Switch]:
        switch = Switch(target)
        made.append(switch)
        return aio(switch.start())

    yield start
    for switch in made:
        await aio(switch.stop())


async def healthy(server: Server) -> None:
    """Wait until the node's /health says 200 (it found Redis again)."""
    await until(lambda: health(server.admin_port), lambda s: s == 200,
                f"/health of the node on {server.port}", timeout=WAIT)


# -- 1. every kind of publisher, subscribers of both kinds on both nodes ----------------


@ensure_deferred
async def test_every_publisher_reaches_every_subscriber_on_both_nodes_once_in_one_order(
    serve: StartServer, redis_server: RedisServer, sdk: MakeClient
) -> None:
    a = await redis_node(serve, redis_server.url)
    b = await redis_node(serve, redis_server.url)
    channel = "everyone"
    raw_a = [await connect(raw_url(a, channel)) for _ in range(2)]
    raw_b = [await connect(raw_url(b, channel)) for _ in range(2)]
    py_a, _ = await py_connected(sdk, a.port)
    py_b, _ = await py_connected(sdk, b.port)
    _, subs_a = await py_subscribed(py_a, channel, recoverable=True)
    sub_b, subs_b = await py_subscribed(py_b, channel, recoverable=True)
    await subscribed_nodes(redis_server, channel, 2)

    expected: dict[str, str] = {}  # id -> the exact text raw subscribers get
    rounds = 3
    for r in range(rounds):
        ids = [f"raw-{r}", f"api-{r}", f"sdk-{r}", f"server-{r}"]
        expected[ids[0]] = f'{{"id" :  "{ids[0]}",  "ü": "x" ,"n" :[1 , 2.50, null]}}'
        data = {i: {"id": i, "ü": "é", "✓": [1, None]} for i in ids[1:]}
        expected.update({i: compact(d) for i, d in data.items()})
        await gatherResults([  # at once: the order is what Redis numbered
            aio(raw_a[0].send(expected[ids[0]])),
            ensureDeferred(api_ok(b.admin_port, "publish",
                                  {"channel": channel, "data": data[ids[1]]})),
            aio(sub_b.publish(data[ids[2]])),
            a.publish(channel, data[ids[3]]),
        ])
    total = 4 * rounds

    # Everything arrived (the raw frames too, which nothing above waited
    # for): now history has it all.
    got = {ws: await frames(ws, total) for ws in raw_a + raw_b}
    for events in (subs_a, subs_b):
        await events.got(total)
    kept = await history(b.admin_port, channel)
    assert kept == await history(a.admin_port, channel)
    assert [p["offset"] for p in kept["publications"]] == list(range(1, total + 1))
    order = [p["data"]["id"] for p in kept["publications"]]
    assert sorted(order) == sorted(expected)
    epoch = kept["epoch"]

    for ws in raw_a + raw_b:
        assert got[ws] == [expected[i] for i in order]  # byte for byte
        assert await nothing_arrives(ws)
    for events in (subs_a, subs_b):
        assert [p.offset for p in events.pubs] == list(range(1, total + 1))
        assert [p.data for p in events.pubs] == [json.loads(expected[i]) for i in order]
        (subscribed,) = events.log.of("subscribed")
        assert subscribed.stream_position.epoch == epoch
    await sleep(0.3)
    assert len(subs_a.pubs) == len(subs_b.pubs) == total  # nothing twice
    for ws in raw_a + raw_b:
        await aio(ws.close())


# -- 3. recovery on the other node ---------------------------------------------------


def node_available_or_fail() -> None:
    # Not a skip: without Node these tests would prove nothing (tests/run.sh installs it).
    assert node_available() is None, node_available()


async def js_subscribed(driver: JsDriver, channel: str) -> dict[str, Any]:
    await driver.send("subscribe", channel=channel, recoverable=True)
    return await driver.expect("subscribed", channel=channel)


async def js_publications(driver: JsDriver, channel: str, count: int) -> list[dict[str, Any]]:
    return [await driver.expect("publication", channel=channel) for _ in range(count)]


@pytest.mark.parametrize("redis_restart", [False, True], ids=["same-redis", "redis-emptied"])
@ensure_deferred
async def test_js_sdk_recovers_on_the_other_node(
    serve: StartServer, redis_server: RedisServer, js: JsDrivers,
    switches: Callable[[int], Deferred[Switch]], redis_restart: bool
) -> None:
    node_available_or_fail()
    a = await redis_node(serve, redis_server.url)
    b = await redis_node(serve, redis_server.url)
    switch = await switches(a.port)
    channel = "moving-js"
    driver = await js.start(centrifuge_url(switch.port))
    await driver.send("connect")
    await driver.expect("connected")
    first = await js_subscribed(driver, channel)
    assert first["recoverable"] is True
    epoch = first["streamPosition"]["epoch"]
    for n in (1, 2):
        await api_ok(a.admin_port, "publish", {"channel": channel, "data": {"n": n}})
    assert [p["offset"] for p in await js_publications(driver, channel, 2)] == [1, 2]

    await driver.send("disconnect")
    await driver.expect("disconnected")
    if redis_restart:
        await aio(asyncio.to_thread(redis_server.restart, keep_data=False), 20)
        await healthy(a)
        await healthy(b)
    for n in range(3, 8):  # missed while away, published on the other node
        await api_ok(b.admin_port, "publish", {"channel": channel, "data": {"n": n}})
    switch.target = b.port
    await driver.send("connect")
    await driver.expect("connected")
    again = await driver.expect("subscribed", channel=channel)
    assert again["wasRecovering"] is True
    assert [c.info.transport for c in b.registry] == ["centrifuge"]
    assert list(a.registry) == []

    if redis_restart:  # the stream is gone: another epoch, nothing to recover
        assert again["recovered"] is False, driver.log()
        assert again["hasRecoveredPublications"] is False
        assert again["streamPosition"]["epoch"] != epoch
        assert again["streamPosition"]["offset"] == 5
        await api_ok(a.admin_port, "publish", {"channel": channel, "data": {"n": 8}})
        (live,) = await js_publications(driver, channel, 1)
        assert (live["data"], live["offset"]) == ({"n": 8}, 6)
        assert await driver.absent("publication", within=0.3)
        assert [p["data"]["n"] for p in driver.seen("publication")] == [1, 2, 8]
    else:
        assert again["recovered"] is True, driver.log()
        assert again["streamPosition"]["epoch"] == epoch
        missed = await js_publications(driver, channel, 5)
        assert [(p["data"]["n"], p["offset"]) for p in missed] == [(n, n) for n in range(3, 8)]
        await api_ok(a.admin_port, "publish", {"channel": channel, "data": {"n": 8}})  # live
        (live,) = await js_publications(driver, channel, 1)
        assert (live["data"], live["offset"]) == ({"n": 8}, 8)
        assert await driver.absent("publication", within=0.3)
        assert [p["offset"] for p in driver.seen("publication")] == list(range(1, 9))
    assert driver.errors() == []


@pytest.mark.parametrize("redis_restart", [False, True], ids=["same-redis", "redis-emptied"])
@ensure_deferred
async def test_python_sdk_recovers_on_the_other_node(
    serve: StartServer, redis_server: RedisServer, sdk: MakeClient,
    switches: Callable[[int], Deferred[Switch]], redis_restart: bool
) -> None:
    a = await redis_node(serve, redis_server.url)
    b = await redis_node(serve, redis_server.url)
    switch = await switches(a.port)
    channel = "moving-py"
    client, _ = await py_connected(sdk, switch.port)
    _, events = await py_subscribed(client, channel, recoverable=True)
    (first,) = events.log.of("subscribed")
    assert first.recoverable and not first.was_recovering
    epoch = first.stream_position.epoch
    for n in (1, 2):
        await api_ok(a.admin_port, "publish", {"channel": channel, "data": {"n": n}})
    await events.got(2)

    await aio(client.disconnect())
    if redis_restart:
        await aio(asyncio.to_thread(redis_server.restart, keep_data=False), 20)
        await healthy(a)
        await healthy(b)
    for n in range(3, 8):
        await api_ok(b.admin_port, "publish", {"channel": channel, "data": {"n": n}})
    switch.target = b.port
    await aio(client.connect())
    again = await events.log.first("subscribed", lambda c: c.was_recovering)
    assert [c.info.transport for c in b.registry] == ["centrifuge"]
    assert list(a.registry) == []

    await api_ok(a.admin_port, "publish", {"channel": channel, "data": {"n": 8}})  # live
    if redis_restart:
        assert again.recovered is False
        assert again.stream_position.epoch != epoch
        assert again.stream_position.offset == 5
        await events.got(3)
        assert [(p.data["n"], p.offset) for p in events.pubs] == [(1, 1), (2, 2), (8, 6)]
    else:
        assert again.recovered is True
        assert again.stream_position.epoch == epoch
        await events.got(8)
        assert [(p.data["n"], p.offset) for p in events.pubs] == [(n, n) for n in range(1, 9)]
    await sleep(0.3)
    assert len(events.pubs) == (3 if redis_restart else 8)  # nothing twice


# -- 5. presence, join/leave and the surveys span the nodes ------------------------------

PRESENCE_WAIT = 5.0


@pytest.fixture
def quick_presence(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Nodes write their members to Redis every PRESENCE_INTERVAL (5 s), so a
    client on another node shows up in presence (and leaves it) that late.
    Shortened for nodes started after this, to keep the tests short: the
    lag is not what they test.
    """
    monkeypatch.setattr(cluster, "PRESENCE_INTERVAL", 0.5)


async def two_token_nodes(serve: StartServer, redis: RedisServer) -> tuple[Server, Server]:
    a = await redis_node(serve, redis.url, auth={"token_secret": SECRET})
    b = await redis_node(serve, redis.url, auth={"token_secret": SECRET})
    return a, b


@ensure_deferred
async def test_join_and_leave_reach_the_other_node_and_disconnect_reaches_across(
    serve: StartServer, redis_server: RedisServer, sdk: MakeClient
) -> None:
    a, b = await two_token_nodes(serve, redis_server)
    channel = "lobby"
    alice, _ = await py_connected(sdk, a.port, token=token("alice"))
    bob, bob_events = await py_connected(sdk, b.port, token=token("bob"))
    carol, _ = await py_connected(sdk, a.port, token=token("carol"))
    _, alice_sub = await py_subscribed(alice, channel, join_leave=True)
    bob_handle, bob_sub = await py_subscribed(bob, channel, join_leave=True)

    # B -> A: bob's join reaches alice; A -> B: carol's reaches bob.
    join = await alice_sub.log.first("join", lambda c: c.info.client == bob.client_id)
    assert join.info.user == "bob"
    carol_handle, _ = await py_subscribed(carol, channel)
    join = await bob_sub.log.first("join", lambda c: c.info.client == carol.client_id)
    assert join.info.user == "carol"
    await alice_sub.log.first("join", lambda c: c.info.client == carol.client_id)
    await aio(carol_handle.unsubscribe())
    leave = await bob_sub.log.first("leave", lambda c: c.info.client == carol.client_id)
    assert leave.info.user == "carol"

    await aio(bob_handle.unsubscribe())
    leave = await alice_sub.log.first("leave", lambda c: c.info.client == bob.client_id)
    assert leave.info.user == "bob"
    # Nobody hears of themselves, nor anything twice.
    assert not [e for e in bob_sub.log.of("join") if e.info.client == bob.client_id]
    assert [e.info.user for e in alice_sub.log.of("join")] == ["bob", "carol"]
    assert [e.info.user for e in alice_sub.log.of("leave")] == ["carol", "bob"]

    # Bob back on B, then disconnected through node A's API.
    await aio(bob_handle.subscribe())
    await aio(bob_handle.ready(), WAIT)
    await alice_sub.log.until(lambda: len(alice_sub.log.of("join")) == 3)
    status, body = await api(a.admin_port, "disconnect", {
        "user": "bob", "disconnect": {"code": 3503, "reason": "go away"}})
    gone = await bob_events.log.first("disconnected")
    assert (gone.code, gone.reason) == (3503, "go away")
    await until(lambda: _count(b), lambda n: n == 0, "bob's connection on node B closed")
    await alice_sub.log.until(lambda: len(alice_sub.log.of("leave")) == 3)  # carol, bob, bob
    assert sorted(c.info.user for c in a.registry) == ["alice", "carol"]
    assert (status, body) == (200, {"result": {}})


@ensure_deferred
async def test_presence_channels_and_info_span_the_nodes(
    serve: StartServer, redis_server: RedisServer, sdk: MakeClient, quick_presence: None
) -> None:
    a, b = await two_token_nodes(serve, redis_server)
    channel = "room"
    alice, _ = await py_connected(sdk, a.port, token=token("alice"))
    bob, _ = await py_connected(sdk, b.port, token=token("bob"))
    await py_subscribed(alice, channel)
    bob_handle, _ = await py_subscribed(bob, channel)
    both = {alice.client_id: "alice", bob.client_id: "bob"}

    async def from_sdk() -> dict[str, str]:
        result = await aio(alice.presence(channel))
        return {c: i.user for c, i in result.clients.items()}

    await until(from_sdk, lambda p: p == both, "presence from the SDK on A", PRESENCE_WAIT)
    stats = await aio(bob.presence_stats(channel))
    assert (stats.num_clients, stats.num_users) == (2, 2)

    async def presence(port: int) -> dict[str, str]:
        result = await api_ok(port, "presence", {"channel": channel})
        return {c: info["user"] for c, info in result["presence"].items()}

    for port in (a.admin_port, b.admin_port):
        await until(partial(presence, port), lambda p: p == both,
                    "presence with both clients", PRESENCE_WAIT)
        stats = await api_ok(port, "presence_stats", {"channel": channel})
        assert stats == {"num_clients": 2, "num_users": 2}
        channels = await api_ok(port, "channels", {})
        assert channels == {"channels": {channel: {"num_clients": 2}}}, channels
        info = await api_ok(port, "info", {})
        assert {n["uid"] for n in info["nodes"]} == {a.service.node_id, b.service.node_id}
        assert len(info["nodes"]) == 2
        assert sum(n["num_clients"] for n in info["nodes"]) == 2

    await aio(bob_handle.unsubscribe())
    for port in (a.admin_port, b.admin_port):
        await until(partial(presence, port), lambda p: p == {alice.client_id: "alice"},
                    "presence without bob", PRESENCE_WAIT)
    assert await api_ok(a.admin_port, "channels", {}) == {
        "channels": {channel: {"num_clients": 1}}}


async def _count(server: Server) -> int:
    return len(list(server.registry))
