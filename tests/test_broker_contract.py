"""
The contract every L{omega_ws.broker.Broker} keeps, as one suite run
against each implementation: numbering (offsets, epochs), delivery to the
handler, start/stop, history and its bounds, positions, all-or-nothing
recovery, sessions, housekeeping and the figures for the metrics.

An implementation is one L{Implementation} in L{IMPLEMENTATIONS}: a
L{BrokerFactory} that makes a broker (not yet started) from a clock and
the limits a test asks for, when it hands publications to the handler
relative to C{publish}'s Deferred firing, and how to run it until every
publication made so far was delivered.  Adding a broker (Redis) is one
more entry there.  Time is the clock's: a test moves it on with
L{Harness.advance}, never by sleeping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from omega_ws.broker import (
    Broker,
    BrokerUnavailable,
    MemoryBroker,
    Publication,
    Recovery,
    Session,
    StreamPosition,
)

T = TypeVar("T")


class BrokerFactory(Protocol):
    def __call__(self, clock: Clock, **limits: Any) -> Broker:
        """
        A broker not yet started, with C{limits} (C{history_size},
        C{history_ttl}, C{meta_ttl}, C{history_max_bytes},
        C{history_total_bytes}, C{max_streams}, C{max_sessions}); the
        implementation's defaults for the others.  C{clock} is its time.
        """


def _run_clock(clock: Clock) -> None:
    # Delivery scheduled with callLater(0), and whatever that schedules at once.
    clock.advance(0)


@dataclass(frozen=True)
class Implementation:
    """One broker implementation under the contract."""

    name: str
    factory: BrokerFactory
    # When the handler gets a publication, relative to publish's Deferred firing.
    delivery: Literal["before", "after", "either"]
    # Runs the broker until every publication made so far was delivered.
    settle: Callable[[Clock], None] = _run_clock
    # Moves the broker's time on.
    advance: Callable[[Clock, float], None] = Clock.advance


def _memory(clock: Clock, **limits: Any) -> Broker:
    return MemoryBroker(clock, **limits)


def _memory_deliver_later(clock: Clock, **limits: Any) -> Broker:
    return MemoryBroker(clock, deliver_later=True, **limits)


IMPLEMENTATIONS = [
    Implementation("memory", _memory, "before"),
    Implementation("memory-deliver-later", _memory_deliver_later, "after"),
]


@dataclass
class Harness:
    """One broker under test, its clock, and what its handler was given."""

    implementation: Implementation
    clock: Clock
    broker: Broker
    delivered: list[Publication] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.broker.set_handler(self.delivered.append)

    def settle(self) -> None:
        self.implementation.settle(self.clock)

    def advance(self, seconds: float) -> None:
        self.implementation.advance(self.clock, seconds)

    def outcome(self, d: Deferred[Any]) -> object:
        self.settle()
        outcomes: list[object] = []
        d.addBoth(outcomes.append)
        assert outcomes, "the Deferred has not fired"
        return outcomes[0]

    def result(self, d: Deferred[T]) -> T:
        """What C{d} fired with (it must not fail)."""
        outcome = self.outcome(d)
        if isinstance(outcome, Failure):
            outcome.raiseException()
        return outcome  # type: ignore[return-value]

    def failure(self, d: Deferred[Any]) -> Failure:
        outcome = self.outcome(d)
        assert isinstance(outcome, Failure), outcome
        return outcome

    def publish(self, channel: str, data: bytes = b"{}") -> Publication:
        return self.result(self.broker.publish(channel, data))

    def publish_many(self, channel: str, count: int) -> list[Publication]:
        return [self.publish(channel) for _ in range(count)]

    def position(self, channel: str) -> StreamPosition:
        return self.result(self.broker.position(channel))

    def recover(self, channel: str, since: StreamPosition) -> Recovery:
        return self.result(self.broker.recover(channel, since))

    def history(self, channel: str, since: StreamPosition | None = None,
                limit: int | None = None, reverse: bool = False) -> list[int]:
        """The offsets of the kept publications (and checks the position that comes along)."""
        publications, position = self.result(self.broker.history(channel, since, limit, reverse))
        assert position == self.position(channel)
        return [p.offset for p in publications]

    def stats(self) -> dict[str, int]:
        return self.broker.stats()


MakeBroker = Callable[..., Harness]


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda implementation: implementation.name)
def implementation(request: pytest.FixtureRequest) -> Implementation:
    chosen: Implementation = request.param
    return chosen


@pytest.fixture
def make(implementation: Implementation) -> Iterator[MakeBroker]:
    """C{make(**limits)}: a started broker with those limits (C{start=False}: not started)."""
    made: list[Harness] = []

    def make(*, start: bool = True, **limits: Any) -> Harness:
        clock = Clock()
        harness = Harness(implementation, clock, implementation.factory(clock, **limits))
        made.append(harness)
        if start:
            assert harness.result(harness.broker.start()) is None
        return harness

    yield make
    for harness in made:
        if harness.broker.healthy:
            harness.result(harness.broker.stop())


def _key(publication: Publication) -> tuple[str, str, int, bytes]:
    # A broker in another process hands back equal publications, not the same objects.
    return (publication.channel, publication.epoch, publication.offset, publication.data)


# -- numbering ---------------------------------------------------------------------


def test_offsets_count_from_one_per_channel(make: MakeBroker) -> None:
    h = make()
    numbered = [(channel, h.publish(channel).offset)
                for channel in ["a", "a", "b", "a", "b", "c"]]
    assert numbered == [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("b", 2), ("c", 1)]


def test_one_epoch_per_stream_and_distinct_epochs_across_channels(make: MakeBroker) -> None:
    h = make()
    channels = [f"ch{i}" for i in range(20)]
    epochs: dict[str, set[str]] = {channel: set() for channel in channels}
    for _ in range(3):
        for channel in channels:
            epochs[channel].add(h.publish(channel).epoch)
    assert all(len(seen) == 1 for seen in epochs.values())
    distinct = {seen.pop() for seen in epochs.values()}
    assert len(distinct) == len(channels)
    assert all(isinstance(epoch, str) and epoch for epoch in distinct)


def test_a_publication_carries_its_channel_and_data_verbatim(make: MakeBroker) -> None:
    h = make()
    data = '{"k": "vé",  "n":1}'.encode()
    publication = h.publish("market.trap", data)
    assert (publication.channel, publication.offset, publication.data) == ("market.trap", 1, data)


# -- delivery ----------------------------------------------------------------------


def test_every_publication_of_a_subscribed_channel_reaches_the_handler_in_order(
        make: MakeBroker) -> None:
    h = make()
    h.broker.subscribe("a")
    h.broker.subscribe("b")
    published = [h.publish("a" if i % 3 else "b", b'{"i":%d}' % i) for i in range(12)]
    h.settle()
    for channel in ["a", "b"]:
        got = [_key(p) for p in h.delivered if p.channel == channel]
        assert got == [_key(p) for p in published if p.channel == channel]
        assert [offset for _, _, offset, _ in got] == list(range(1, len(got) + 1))


def test_delivery_comes_before_or_after_publish_fires_as_declared(
        make: MakeBroker, implementation: Implementation) -> None:
    h = make()
    h.broker.subscribe("a")
    events: list[tuple[str, int]] = []
    h.broker.set_handler(lambda p: events.append(("delivered", p.offset)))
    for _ in range(3):
        h.broker.publish("a", b"{}").addCallback(
            lambda p: events.append(("published", p.offset)))
    h.settle()
    assert sorted(events) == [("delivered", n) for n in (1, 2, 3)] + [
        ("published", n) for n in (1, 2, 3)]
    for n in (1, 2, 3):
        delivered, published = events.index(("delivered", n)), events.index(("published", n))
        if implementation.delivery == "after":
            assert published < delivered, events
        elif implementation.delivery == "before":
            assert delivered < published, events
    # Delivered in offset order, whenever that is.
    assert [n for kind, n in events if kind == "delivered"] == [1, 2, 3]


def test_what_the_handler_has_when_publish_fires(
        make: MakeBroker, implementation: Implementation) -> None:
    h = make()
    h.broker.subscribe("a")
    handled_when_fired: list[int] = []
    for _ in range(2):
        h.broker.publish("a", b"{}").addCallback(
            lambda p: handled_when_fired.append(len(h.delivered)))
    if implementation.delivery == "after":
        assert handled_when_fired == [0, 0]  # publish fired; the handler has nothing yet
        assert h.delivered == []
    elif implementation.delivery == "before":
        assert handled_when_fired == [1, 2]  # each delivered before its publish fired
    h.settle()
    assert [p.offset for p in h.delivered] == [1, 2]


def test_set_handler_replaces_the_handler(make: MakeBroker) -> None:
    h = make()
    h.broker.subscribe("a")
    other: list[Publication] = []
    h.broker.set_handler(other.append)
    h.publish("a")
    h.settle()
    assert h.delivered == [] and [p.offset for p in other] == [1]


# -- start and stop -----------------------------------------------------------------


def test_start_and_stop_fire_and_the_broker_is_healthy_in_between(make: MakeBroker) -> None:
    h = make(start=False)
    assert h.broker.healthy is False
    assert h.result(h.broker.start()) is None
    assert h.broker.healthy is True
    assert h.result(h.broker.stop()) is None
    assert h.broker.healthy is False
    assert h.result(h.broker.start()) is None
    assert h.broker.healthy is True


def test_publish_fails_with_broker_unavailable_while_stopped(make: MakeBroker) -> None:
    h = make()
    h.broker.subscribe("a")
    first = h.publish("a")
    h.result(h.broker.stop())
    failure = h.failure(h.broker.publish("a", b"{}"))
    assert failure.check(BrokerUnavailable)
    h.settle()
    assert [p.offset for p in h.delivered] == [1]  # the refused one went nowhere
    h.result(h.broker.start())
    # Nothing was numbered meanwhile, and the stream outlives a stop.
    second = h.publish("a")
    assert (second.epoch, second.offset) == (first.epoch, 2)


def test_publish_before_start_fails_with_broker_unavailable(make: MakeBroker) -> None:
    h = make(start=False)
    assert h.failure(h.broker.publish("a", b"{}")).check(BrokerUnavailable)


# -- history ------------------------------------------------------------------------


def test_history_keeps_the_last_history_size_publications(make: MakeBroker) -> None:
    h = make(history_size=3)
    for _ in range(5):
        h.publish("a")
    h.publish("b")
    assert h.history("a") == [3, 4, 5]
    assert h.history("b") == [1]
    publications, position = h.result(h.broker.history("a", None, None, False))
    assert [p.data for p in publications] == [b"{}"] * 3
    assert position == StreamPosition(publications[0].epoch, 5)


def test_history_limit_and_reverse(make: MakeBroker) -> None:
    h = make()
    for _ in range(5):
        h.publish("a")
    assert h.history("a", limit=2) == [1, 2]
    assert h.history("a", reverse=True) == [5, 4, 3, 2, 1]
    assert h.history("a", limit=2, reverse=True) == [5, 4]
    assert h.history("a", limit=0) == []
    assert h.history("a", limit=99) == [1, 2, 3, 4, 5]


def test_history_since_a_position(make: MakeBroker) -> None:
    h = make()
    epoch = h.publish_many("a", 5)[-1].epoch
    for _ in range(4):
        h.publish("a")
    assert h.history("a", since=StreamPosition(epoch, 6)) == [7, 8, 9]
    assert h.history("a", since=StreamPosition(epoch, 6), limit=2) == [7, 8]
    # Going back: before the position, newest first.
    assert h.history("a", since=StreamPosition(epoch, 4), reverse=True) == [3, 2, 1]
    assert h.history("a", since=StreamPosition(epoch, 9)) == []
    # An empty epoch means the current one; another epoch, nothing.
    assert h.history("a", since=StreamPosition("", 7)) == [8, 9]
    assert h.history("a", since=StreamPosition("not-" + epoch, 6)) == []


def test_history_ttl_drops_old_publications(make: MakeBroker) -> None:
    h = make(history_ttl=10.0)
    h.publish("a")
    h.advance(5)
    h.publish("a")
    h.advance(4.5)
    assert h.history("a") == [1, 2]
    h.advance(1)  # the first is 10.5 s old
    assert h.history("a") == [2]
    h.advance(5)
    assert h.history("a") == []
    assert h.position("a").offset == 2  # numbering goes on
    assert h.publish("a").offset == 3


def test_history_is_bounded_in_bytes_per_channel(make: MakeBroker) -> None:
    h = make(history_max_bytes=250)
    for _ in range(5):
        h.publish("a", b"x" * 100)
    assert h.history("a") == [4, 5]
    assert h.stats()["history_bytes"] == 200
    assert h.stats()["history_dropped"] == 3  # by the byte bound, not by history_size
    big = h.publish("a", b"y" * 251)  # numbered, delivered, not kept
    assert big.offset == 6
    assert h.history("a") == [4, 5]
    assert h.stats()["history_bytes"] == 200


def test_history_is_bounded_in_total_bytes_oldest_first(make: MakeBroker) -> None:
    h = make(history_total_bytes=300)
    for channel in ["a", "b", "a", "b", "a"]:
        h.publish(channel, b"x" * 100)
        h.advance(1)
    # Published a1 b1 a2 b2 a3: the two oldest, across channels, went.
    assert h.history("a") == [2, 3]
    assert h.history("b") == [2]
    assert h.stats()["history_bytes"] == 300
    assert h.stats()["history_dropped"] == 2


def test_history_of_a_channel_never_published_to(make: MakeBroker) -> None:
    h = make()
    publications, position = h.result(h.broker.history("ghost", None, None, False))
    assert publications == [] and position.offset == 0


# -- positions ----------------------------------------------------------------------


def test_position_before_the_first_publication(make: MakeBroker) -> None:
    h = make()
    before = h.position("a")
    assert before.offset == 0
    assert isinstance(before.epoch, str) and before.epoch
    assert h.position("a") == before  # stable while nothing is published
    first = h.publish("a")
    assert (first.epoch, first.offset) == (before.epoch, 1)
    assert h.position("a") == StreamPosition(before.epoch, 1)


def test_position_follows_publications(make: MakeBroker) -> None:
    h = make()
    for _ in range(3):
        last = h.publish("a")
    h.publish("b")
    assert h.position("a") == StreamPosition(last.epoch, 3)


def test_the_epoch_read_before_the_first_publication_survives_another_stream_going(
        make: MakeBroker) -> None:
    # A client told (epoch, 0) for a quiet channel must be able to recover
    # from it once that channel publishes, whatever happened to other streams.
    h = make(meta_ttl=100.0, history_ttl=10.0)
    h.publish("busy")
    h.advance(50)
    before = h.position("quiet")
    h.advance(60)
    h.broker.housekeeping(h.clock.seconds())  # "busy" was idle past meta_ttl: forgotten
    assert h.stats()["streams"] == 0
    first = h.publish("quiet")
    assert first.epoch == before.epoch
    assert h.recover("quiet", before).recovered


# -- recovery -----------------------------------------------------------------------


def test_recovery_gives_exactly_what_was_missed(make: MakeBroker) -> None:
    h = make()
    published = [h.publish("a") for _ in range(5)]
    h.publish("b")
    epoch = published[0].epoch
    recovery = h.recover("a", StreamPosition(epoch, 2))
    assert recovery.recovered is True
    assert [_key(p) for p in recovery.publications] == [_key(p) for p in published[2:]]
    assert recovery.position == StreamPosition(epoch, 5)
    everything = h.recover("a", StreamPosition(epoch, 0))
    assert (everything.recovered, [p.offset for p in everything.publications]) == (
        True, [1, 2, 3, 4, 5])
    nothing_missed = h.recover("a", StreamPosition(epoch, 5))
    assert (nothing_missed.recovered, nothing_missed.publications) == (True, [])


def test_recovery_with_an_empty_epoch_uses_the_current_one(make: MakeBroker) -> None:
    h = make()
    epoch = h.publish_many("a", 3)[-1].epoch
    recovery = h.recover("a", StreamPosition("", 1))
    assert recovery.recovered is True
    assert [p.offset for p in recovery.publications] == [2, 3]
    assert recovery.position == StreamPosition(epoch, 3)


def test_no_recovery_when_history_no_longer_covers_the_gap(make: MakeBroker) -> None:
    h = make(history_size=3)
    epoch = h.publish_many("a", 6)[-1].epoch
    gap = h.recover("a", StreamPosition(epoch, 2))  # offset 3 is gone
    assert (gap.recovered, gap.publications) == (False, [])
    assert gap.position == StreamPosition(epoch, 6)
    covered = h.recover("a", StreamPosition(epoch, 3))  # all of 4..6 are kept
    assert (covered.recovered, [p.offset for p in covered.publications]) == (True, [4, 5, 6])


def test_no_recovery_when_history_expired(make: MakeBroker) -> None:
    h = make(history_ttl=10.0)
    epoch = h.publish("a").epoch
    h.advance(11)
    h.publish("a")
    assert not h.recover("a", StreamPosition(epoch, 0)).recovered
    assert [p.offset for p in h.recover("a", StreamPosition(epoch, 1)).publications] == [2]


def test_no_recovery_from_another_epoch(make: MakeBroker) -> None:
    h = make()
    epoch = h.publish_many("a", 3)[-1].epoch
    recovery = h.recover("a", StreamPosition("not-" + epoch, 1))
    assert (recovery.recovered, recovery.publications) == (False, [])
    assert recovery.position == StreamPosition(epoch, 3)


def test_no_recovery_from_a_position_ahead_of_the_stream(make: MakeBroker) -> None:
    h = make()
    epoch = h.publish_many("a", 3)[-1].epoch
    recovery = h.recover("a", StreamPosition(epoch, 4))
    assert (recovery.recovered, recovery.publications) == (False, [])
    assert recovery.position == StreamPosition(epoch, 3)


def test_recovery_on_a_channel_never_published_to(make: MakeBroker) -> None:
    h = make()
    position = h.position("ghost")
    assert h.recover("ghost", position) == Recovery(True, [], position)
    assert h.recover("ghost", StreamPosition("", 0)) == Recovery(True, [], position)
    assert not h.recover("ghost", StreamPosition(position.epoch, 1)).recovered
    assert not h.recover("ghost", StreamPosition("not-" + position.epoch, 0)).recovered


def test_reads_create_no_stream(make: MakeBroker) -> None:
    h = make()
    h.broker.subscribe("ghost")
    h.position("ghost")
    h.history("ghost")
    h.history("ghost", since=StreamPosition("", 0), limit=5, reverse=True)
    h.recover("ghost", StreamPosition("", 0))
    h.recover("ghost", StreamPosition("e", 3))
    h.broker.unsubscribe("ghost")
    assert h.stats()["streams"] == 0
    assert h.stats()["history_bytes"] == 0
    h.publish("real")
    assert h.stats()["streams"] == 1


# -- sessions -----------------------------------------------------------------------


def test_sessions_get_put_delete(make: MakeBroker) -> None:
    h = make()
    sessions = h.broker.sessions
    assert h.result(sessions.get("c1")) is None
    session = Session("c1", user="u", positions={"a": StreamPosition("e", 4)},
                      message_count=3, disconnected_at=12.5)
    assert h.result(sessions.put(session, 60.0)) is None
    assert h.result(sessions.get("c1")) == session
    assert h.result(sessions.get("c2")) is None
    assert h.stats()["sessions"] == 1
    assert h.result(sessions.delete("c1")) is None
    assert h.result(sessions.get("c1")) is None
    assert h.result(sessions.delete("c1")) is None  # again: harmless
    assert h.stats()["sessions"] == 0


def test_a_put_replaces_the_session_and_its_ttl(make: MakeBroker) -> None:
    h = make()
    sessions = h.broker.sessions
    h.result(sessions.put(Session("c1", message_count=1), 10.0))
    h.advance(8)
    h.result(sessions.put(Session("c1", message_count=2), 10.0))
    h.advance(8)  # 16 s after the first put, 8 after the second
    held = h.result(sessions.get("c1"))
    assert held is not None and held.message_count == 2
    assert h.stats()["sessions"] == 1


def test_a_session_expires_after_its_ttl(make: MakeBroker) -> None:
    h = make()
    sessions = h.broker.sessions
    h.result(sessions.put(Session("short"), 5.0))
    h.result(sessions.put(Session("long"), 50.0))
    h.advance(4.5)
    assert h.result(sessions.get("short")) is not None
    h.advance(1)
    assert h.result(sessions.get("short")) is None  # gone on read, before housekeeping
    assert h.result(sessions.get("long")) is not None


def test_max_sessions_evicts_the_least_recently_stored(make: MakeBroker) -> None:
    h = make(max_sessions=2)
    sessions = h.broker.sessions
    for client_id in ["a", "b"]:
        h.result(sessions.put(Session(client_id), 60.0))
    h.result(sessions.put(Session("a"), 60.0))  # stored again: now the most recent
    h.result(sessions.put(Session("c"), 60.0))
    assert [h.result(sessions.get(c)) is not None for c in "abc"] == [True, False, True]
    assert h.stats()["sessions"] == 2
    assert h.stats()["sessions_evicted"] == 1


# -- housekeeping and figures ---------------------------------------------------------


def test_housekeeping_expires_history(make: MakeBroker) -> None:
    h = make(history_ttl=10.0, meta_ttl=1000.0)
    h.publish("a", b"x" * 10)
    h.publish("b", b"x" * 10)
    h.advance(11)
    h.broker.housekeeping(h.clock.seconds())
    assert h.stats()["history_bytes"] == 0  # without a read of either channel
    assert h.stats()["streams"] == 2  # the streams are younger than meta_ttl
    assert h.history("a") == [] and h.position("a").offset == 1


def test_housekeeping_forgets_idle_streams_and_they_start_a_new_epoch(make: MakeBroker) -> None:
    h = make(history_ttl=10.0, meta_ttl=100.0)
    old = h.publish("a")
    h.publish("b")
    h.advance(60)
    h.publish("b")  # b stays in use
    h.advance(41)
    h.broker.housekeeping(h.clock.seconds())
    assert h.stats()["streams"] == 1
    assert h.position("a").offset == 0
    new = h.publish("a")
    assert new.offset == 1 and new.epoch != old.epoch
    assert not h.recover("a", StreamPosition(old.epoch, 1)).recovered
    assert h.publish("b").offset == 3


def test_housekeeping_expires_sessions(make: MakeBroker) -> None:
    h = make()
    sessions = h.broker.sessions
    h.result(sessions.put(Session("short"), 5.0))
    h.result(sessions.put(Session("long"), 50.0))
    h.advance(6)
    h.broker.housekeeping(h.clock.seconds())
    assert h.stats()["sessions"] == 1
    assert h.result(sessions.get("long")) is not None


def test_max_streams_forgets_the_least_recently_used(make: MakeBroker) -> None:
    h = make(max_streams=2)
    old = h.publish("a")
    h.publish("b")
    h.publish("c")
    assert h.stats()["streams"] == 2
    assert h.stats()["streams_evicted"] == 1
    assert h.position("a").offset == 0
    new = h.publish("a")
    assert new.offset == 1 and new.epoch != old.epoch


def test_stats_figures(make: MakeBroker) -> None:
    h = make()
    stats = h.stats()
    assert set(stats) >= {"streams", "history_bytes", "history_dropped", "streams_evicted",
                          "sessions", "sessions_evicted"}
    assert all(isinstance(value, int) and value == 0 for value in stats.values()), stats
    h.publish("a", b"x" * 7)
    h.publish("b", b"y" * 5)
    h.result(h.broker.sessions.put(Session("c1"), 60.0))
    stats = h.stats()
    assert (stats["streams"], stats["history_bytes"], stats["sessions"]) == (2, 12, 1)
    assert stats is not h.stats()  # a snapshot
