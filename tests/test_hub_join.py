"""
Tests for L{omega_ws.hub.Hub.join}: joining a subscriber to a stream from
now or from a position, against a memory broker that delivers inline and
one that delivers on a later turn (as a broker in another process does).

The broker's reads can be held open (L{GatedBroker}) so that publications
are made and delivered while a join is pending, and answered either as the
stream was when the read was asked or as it is when it is answered.
Whatever the interleaving, a joined subscriber gets every publication past
its starting point exactly once, in order: first in L{Joined.publications},
then live.  No reactor: a L{Clock} runs the later deliveries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from omega_ws.broker import (
    BrokerUnavailable,
    MemoryBroker,
    Publication,
    Recovery,
    StreamPosition,
)
from omega_ws.hub import Hub, Joined, Subscriber
from omega_ws.registry import ClientInfo

T = TypeVar("T")

Answer = Literal["asked", "answered"]


class _Read:
    """One read held open by a L{GatedBroker}."""

    def __init__(self, name: str, read: Callable[[], Deferred[Any]], answer: Answer) -> None:
        self.name = name
        self.deferred: Deferred[Any] = Deferred()
        self._read = read
        # As the stream is now, or as it will be when answered.
        self._early = read() if answer == "asked" else None

    def answer(self) -> None:
        (self._early or self._read()).chainDeferred(self.deferred)

    def fail(self) -> None:
        if self._early is not None:
            self._early.addErrback(lambda _: None)
        self.deferred.errback(BrokerUnavailable("lost the broker mid-read"))


class GatedBroker(MemoryBroker):
    """
    A memory broker whose reads (position, recover, history) wait while
    C{gated}, and those named in C{failing} fail with L{BrokerUnavailable};
    it records the hub's subscribe/unsubscribe calls.
    """

    def __init__(self, clock: Clock, *, deliver_later: bool, answer: Answer = "asked",
                 **limits: Any) -> None:
        super().__init__(clock, deliver_later=deliver_later, **limits)
        self.answer = answer
        self.gated = False
        self.failing: set[str] = set()
        self.waiting: list[_Read] = []
        self.calls: list[tuple[str, str]] = []

    def _gate(self, name: str, read: Callable[[], Deferred[T]]) -> Deferred[T]:
        if name in self.failing:
            return fail(BrokerUnavailable(f"{name} failed"))
        if not self.gated:
            return read()
        held = _Read(name, read, self.answer)
        self.waiting.append(held)
        return held.deferred

    def release(self) -> None:
        """Answer every read held, and those they ask in turn."""
        while self.waiting:
            self.waiting.pop(0).answer()

    def position(self, channel: str) -> Deferred[StreamPosition]:
        return self._gate("position", lambda: MemoryBroker.position(self, channel))

    def recover(self, channel: str, since: StreamPosition) -> Deferred[Recovery]:
        return self._gate("recover", lambda: MemoryBroker.recover(self, channel, since))

    def history(self, channel: str, since: StreamPosition | None, limit: int | None,
                reverse: bool) -> Deferred[tuple[list[Publication], StreamPosition]]:
        return self._gate("history", lambda: MemoryBroker.history(
            self, channel, since, limit, reverse))

    def subscribe(self, channel: str) -> None:
        self.calls.append(("subscribe", channel))

    def unsubscribe(self, channel: str) -> None:
        self.calls.append(("unsubscribe", channel))


class Member:
    """A subscriber with presence information, recording what it is given."""

    def __init__(self, client_id: str) -> None:
        self.info = ClientInfo(client_id, "tcp4:10.0.0.1:1234", "raw", 0.0)
        self.received: list[Publication] = []

    def deliver(self, publication: Publication) -> None:
        self.received.append(publication)

    def __repr__(self) -> str:
        return f"<Member {self.info.client_id}>"


@dataclass
class Scene:
    clock: Clock
    broker: GatedBroker
    hub: Hub
    published: list[Publication] = field(default_factory=list)

    def settle(self) -> None:
        """Every publication made so far reaches the hub."""
        self.clock.advance(0)

    def publish(self, count: int = 1, channel: str = "c") -> list[Publication]:
        made = [_result(self.broker.publish(channel, b'{"n":%d}' % i)) for i in range(count)]
        self.published.extend(made)
        return made

    def after(self, offset: int) -> list[Publication]:
        return [p for p in self.published if p.offset > offset]


Mode = Literal["memory", "memory-deliver-later"]


@pytest.fixture(params=["memory", "memory-deliver-later"])
def mode(request: pytest.FixtureRequest) -> Mode:
    chosen: Mode = request.param
    return chosen


MakeScene = Callable[..., Scene]


@pytest.fixture
def make(mode: Mode) -> MakeScene:
    def make(answer: Answer = "asked", **limits: Any) -> Scene:
        clock = Clock()
        broker = GatedBroker(clock, deliver_later=mode == "memory-deliver-later",
                             answer=answer, **limits)
        broker.start()
        return Scene(clock, broker, Hub(broker))
    return make


def _outcome(d: Deferred[Any]) -> object:
    outcomes: list[object] = []
    d.addBoth(outcomes.append)
    assert outcomes, "the Deferred has not fired"
    return outcomes[0]


def _result(d: Deferred[T]) -> T:
    outcome = _outcome(d)
    if isinstance(outcome, Failure):
        outcome.raiseException()
    return outcome  # type: ignore[return-value]


def _offsets(publications: list[Publication]) -> list[int]:
    return [p.offset for p in publications]


def _assert_exactly_once(joined: Joined, member: Member, expected: list[Publication]) -> None:
    """What the join gave, then what came live: each expected one once, in order."""
    got = [(p.epoch, p.offset) for p in [*joined.publications, *member.received]]
    assert got == [(p.epoch, p.offset) for p in expected]


def _members_only(scene: Scene, channel: str, *members: Subscriber) -> None:
    """The hub holds C{members} themselves on C{channel}: no stand-in, none left over."""
    assert scene.hub._channels.get(channel, set()) == set(members)
    assert not [key for key in scene.hub._standins if key[0] == channel]


# -- from now -------------------------------------------------------------------------


def test_join_from_now_gives_the_position_and_no_publications(make: MakeScene) -> None:
    scene = make()
    scene.publish(3)
    scene.settle()
    member = Member("m")
    joined = _result(scene.hub.join("c", member))
    epoch = scene.published[0].epoch
    assert joined == Joined(StreamPosition(epoch, 3), [], True, 0)
    scene.publish(2)
    scene.settle()
    assert _offsets(member.received) == [4, 5]
    _members_only(scene, "c", member)


def test_join_from_now_on_a_channel_never_published_to(make: MakeScene) -> None:
    scene = make()
    member = Member("m")
    joined = _result(scene.hub.join("c", member))
    assert joined.position.offset == 0 and joined.publications == []
    first = scene.publish()[0]
    scene.settle()
    assert member.received == [first]
    assert first.epoch == joined.position.epoch
    assert scene.broker.calls == [("subscribe", "c")]


def test_join_from_now_drops_what_the_broker_delivers_after_answering(make: MakeScene) -> None:
    # Numbered before the position was read, delivered (deliver-later) after:
    # already behind the position, so not the subscriber's.
    scene = make()
    scene.publish(2)
    member = Member("m")
    joined = _result(scene.hub.join("c", member))
    assert joined.position.offset == 2
    scene.settle()
    assert member.received == []
    scene.publish()
    scene.settle()
    assert _offsets(member.received) == [3]
    _members_only(scene, "c", member)


# -- with recovery --------------------------------------------------------------------


def test_join_with_recovery_gives_the_missed_then_live(make: MakeScene) -> None:
    scene = make()
    scene.publish(5)
    scene.settle()
    member = Member("m")
    epoch = scene.published[0].epoch
    joined = _result(scene.hub.join("c", member, StreamPosition(epoch, 2)))
    assert (joined.recovered, joined.missed) == (True, 3)
    assert joined.position == StreamPosition(epoch, 5)
    assert _offsets(joined.publications) == [3, 4, 5]
    scene.publish(2)
    scene.settle()
    _assert_exactly_once(joined, member, scene.after(2))


def test_join_with_recovery_drops_the_late_duplicate_at_the_joint(make: MakeScene) -> None:
    # The broker numbered 3..5 and answered the recovery with them before it
    # delivered them (deliver-later): the stand-in must not pass them on again.
    scene = make()
    scene.publish(2)
    scene.settle()
    scene.publish(3)
    member = Member("m")
    epoch = scene.published[0].epoch
    joined = _result(scene.hub.join("c", member, StreamPosition(epoch, 1)))
    assert _offsets(joined.publications) == [2, 3, 4, 5]
    scene.settle()
    assert member.received == []
    scene.publish()
    scene.settle()
    _assert_exactly_once(joined, member, scene.after(1))
    _members_only(scene, "c", member)


@pytest.mark.parametrize("answer", ["asked", "answered"])
@pytest.mark.parametrize("delivered_during", [True, False],
                         ids=["delivered-during", "delivered-after"])
@pytest.mark.parametrize("since", [None, 1], ids=["from-now", "from-1"])
def test_publications_made_while_the_join_is_pending(
        make: MakeScene, answer: Answer, delivered_during: bool, since: int | None) -> None:
    scene = make(answer)
    scene.publish(3)
    scene.settle()
    epoch = scene.published[0].epoch
    member = Member("m")
    scene.broker.gated = True
    d = scene.hub.join("c", member, None if since is None else StreamPosition(epoch, since))
    assert scene.broker.waiting, "the read is pending"
    scene.publish(2)  # 4 and 5, made while the join waits
    if delivered_during:
        scene.settle()
    scene.broker.release()
    joined = _result(d)
    # Answered as asked: the position is 3; as answered: 5.
    assert joined.position == StreamPosition(epoch, 3 if answer == "asked" else 5)
    scene.settle()
    scene.publish(2)
    scene.settle()
    start = joined.position.offset if since is None else since
    _assert_exactly_once(joined, member, scene.after(start))
    if since is not None:
        assert _offsets(joined.publications[:joined.missed]) == list(
            range(2, joined.position.offset + 1))
    _members_only(scene, "c", member)


@pytest.mark.parametrize("since", [None, 1], ids=["from-now", "from-1"])
def test_held_publications_the_answer_already_covers_are_dropped(
        make: MakeScene, since: int | None) -> None:
    # Numbered before the read was asked, delivered (deliver-later) while it
    # is pending: held, but behind the position the broker answers with.
    scene = make("asked")
    scene.publish(3)
    epoch = scene.published[0].epoch
    member = Member("m")
    scene.broker.gated = True
    d = scene.hub.join("c", member, None if since is None else StreamPosition(epoch, since))
    scene.settle()
    scene.broker.release()
    joined = _result(d)
    assert joined.position == StreamPosition(epoch, 3)
    assert _offsets(joined.publications) == ([] if since is None else [2, 3])
    scene.publish()
    scene.settle()
    _assert_exactly_once(joined, member, scene.after(3 if since is None else 1))
    _members_only(scene, "c", member)


def test_two_subscribers_joining_at_once_each_get_everything_once(make: MakeScene) -> None:
    scene = make()
    scene.publish(2)
    scene.settle()
    epoch = scene.published[0].epoch
    early, late = Member("early"), Member("late")
    scene.broker.gated = True
    d_early = scene.hub.join("c", early, StreamPosition(epoch, 0))
    scene.publish()
    scene.settle()
    d_late = scene.hub.join("c", late)
    scene.publish()
    scene.settle()
    scene.broker.release()
    scene.publish()
    scene.settle()
    joined_early, joined_late = _result(d_early), _result(d_late)
    _assert_exactly_once(joined_early, early, scene.after(0))
    _assert_exactly_once(joined_late, late, scene.after(3))
    _members_only(scene, "c", early, late)
    assert scene.broker.calls == [("subscribe", "c")]


# -- recovery not covered -------------------------------------------------------------


def test_best_effort_gives_what_history_still_has(make: MakeScene) -> None:
    scene = make(history_size=3)
    scene.publish(6)
    scene.settle()
    epoch = scene.published[0].epoch
    member = Member("m")
    joined = _result(scene.hub.join("c", member, StreamPosition(epoch, 1), best_effort=True))
    assert (joined.recovered, joined.missed) == (False, 3)
    assert _offsets(joined.publications) == [4, 5, 6]
    assert joined.position == StreamPosition(epoch, 6)
    scene.publish()
    scene.settle()
    assert _offsets(member.received) == [7]


def test_best_effort_from_another_epoch_gives_the_whole_history(make: MakeScene) -> None:
    scene = make(history_size=3)
    scene.publish(5)
    scene.settle()
    member = Member("m")
    joined = _result(scene.hub.join("c", member, StreamPosition("gone", 2), best_effort=True))
    assert (joined.recovered, joined.missed) == (False, 3)
    assert _offsets(joined.publications) == [3, 4, 5]
    assert {p.epoch for p in joined.publications} == {joined.position.epoch}


def test_best_effort_with_publications_while_pending(make: MakeScene) -> None:
    scene = make("answered", history_size=3)
    scene.publish(6)
    scene.settle()
    epoch = scene.published[0].epoch
    member = Member("m")
    scene.broker.gated = True
    d = scene.hub.join("c", member, StreamPosition(epoch, 1), best_effort=True)
    scene.publish()  # 7, while the recovery is read
    scene.settle()
    scene.broker.waiting.pop(0).answer()  # not recovered; now history is read
    assert [read.name for read in scene.broker.waiting] == ["history"]
    scene.publish()  # 8, while the history is read
    scene.settle()
    scene.broker.release()
    joined = _result(d)
    assert (joined.recovered, joined.missed) == (False, 3)
    assert _offsets(joined.publications) == [6, 7, 8]
    scene.settle()
    scene.publish()
    scene.settle()
    assert _offsets(member.received) == [9]
    _members_only(scene, "c", member)


def test_without_best_effort_a_gap_gives_nothing_missed_but_live_from_the_position(
        make: MakeScene) -> None:
    scene = make(history_size=3)
    scene.publish(6)
    scene.settle()
    epoch = scene.published[0].epoch
    member = Member("m")
    joined = _result(scene.hub.join("c", member, StreamPosition(epoch, 1)))
    assert joined == Joined(StreamPosition(epoch, 6), [], False, 0)
    scene.publish()
    scene.settle()
    assert _offsets(member.received) == [7]


def test_recovery_not_asked_versus_asked_with_an_empty_epoch(make: MakeScene) -> None:
    scene = make()
    scene.publish(4)
    scene.settle()
    epoch = scene.published[0].epoch
    not_asked, empty_epoch, fresh = Member("not-asked"), Member("empty-epoch"), Member("fresh")
    joined = _result(scene.hub.join("c", not_asked))
    assert joined == Joined(StreamPosition(epoch, 4), [], True, 0)
    joined = _result(scene.hub.join("c", empty_epoch, StreamPosition("", 2)))
    assert (joined.recovered, joined.missed, _offsets(joined.publications)) == (True, 2, [3, 4])
    assert joined.position == StreamPosition(epoch, 4)
    joined = _result(scene.hub.join("quiet", fresh, StreamPosition("", 0)))
    assert (joined.recovered, joined.missed, joined.publications) == (True, 0, [])
    assert joined.position.offset == 0


# -- leaving and failing ----------------------------------------------------------------


def test_unsubscribe_while_the_join_is_pending(make: MakeScene) -> None:
    scene = make()
    scene.publish(2)
    scene.settle()
    member = Member("m")
    scene.broker.gated = True
    d = scene.hub.join("c", member, StreamPosition(scene.published[0].epoch, 0))
    scene.publish()
    scene.settle()  # held for the member
    scene.hub.unsubscribe("c", member)
    assert scene.hub.subscriber_count("c") == 0
    assert scene.hub.subscribers("c") == ()
    assert scene.hub.channels() == {}
    assert scene.hub._standins == {}
    assert scene.broker.calls == [("subscribe", "c"), ("unsubscribe", "c")]
    scene.broker.release()
    _outcome(d)  # whatever it says, the member is gone
    scene.publish()
    scene.settle()
    assert member.received == []
    assert scene.hub.subscriber_count("c") == 0
    assert scene.hub._standins == {}
    assert scene.broker.calls == [("subscribe", "c"), ("unsubscribe", "c")]


def test_unsubscribe_while_pending_leaves_the_others(make: MakeScene) -> None:
    scene = make()
    stays, leaves = Member("stays"), Member("leaves")
    scene.hub.subscribe("c", stays)
    scene.broker.gated = True
    d = scene.hub.join("c", leaves)
    scene.hub.unsubscribe("c", leaves)
    scene.broker.release()
    _outcome(d)
    scene.publish()
    scene.settle()
    assert (_offsets(stays.received), leaves.received) == ([1], [])
    _members_only(scene, "c", stays)


def test_unsubscribe_after_the_join_before_anything_live(make: MakeScene) -> None:
    # The joint's stand-in is still there: unsubscribing removes it.
    scene = make()
    member = Member("m")
    _result(scene.hub.join("c", member))
    assert scene.hub._channels["c"] != {member}
    scene.hub.unsubscribe("c", member)
    scene.publish()
    scene.settle()
    assert member.received == []
    assert scene.hub.channels() == {} and scene.hub._standins == {}


@pytest.mark.parametrize("read", ["position", "recover"])
def test_a_broker_failure_fails_the_join_and_unsubscribes(make: MakeScene, read: str) -> None:
    scene = make()
    scene.publish(2)
    scene.settle()
    scene.broker.failing.add(read)
    member = Member("m")
    since = StreamPosition(scene.published[0].epoch, 1) if read == "recover" else None
    failure = _outcome(scene.hub.join("c", member, since))
    assert isinstance(failure, Failure) and failure.check(BrokerUnavailable)
    assert scene.hub.subscriber_count("c") == 0
    assert scene.hub._standins == {}
    assert scene.broker.calls == [("subscribe", "c"), ("unsubscribe", "c")]
    scene.publish()
    scene.settle()
    assert member.received == []


def test_a_broker_failure_while_pending_delivers_nothing_held(make: MakeScene) -> None:
    scene = make()
    stays, member = Member("stays"), Member("m")
    scene.hub.subscribe("c", stays)
    scene.broker.gated = True
    d = scene.hub.join("c", member, StreamPosition("", 0))
    scene.publish(2)
    scene.settle()
    scene.broker.waiting.pop().fail()
    failure = _outcome(d)
    assert isinstance(failure, Failure) and failure.check(BrokerUnavailable)
    scene.publish()
    scene.settle()
    assert member.received == []
    assert _offsets(stays.received) == [1, 2, 3]
    _members_only(scene, "c", stays)
    assert scene.broker.calls == [("subscribe", "c")]


def test_a_history_failure_in_best_effort_fails_the_join(make: MakeScene) -> None:
    scene = make(history_size=2)
    scene.publish(5)
    scene.settle()
    scene.broker.failing.add("history")
    member = Member("m")
    failure = _outcome(scene.hub.join(
        "c", member, StreamPosition(scene.published[0].epoch, 1), best_effort=True))
    assert isinstance(failure, Failure) and failure.check(BrokerUnavailable)
    assert scene.hub.channels() == {} and scene.hub._standins == {}


def test_a_failed_join_leaves_a_later_join_of_the_same_subscriber_alone(
        make: MakeScene) -> None:
    # Join, leave, join again while the first read is still out; the first
    # read then fails: only the first join may be undone.
    scene = make()
    member = Member("m")
    scene.broker.gated = True
    first = scene.hub.join("c", member)
    scene.hub.unsubscribe("c", member)
    second = scene.hub.join("c", member)
    scene.broker.waiting.pop(0).fail()
    assert isinstance(_outcome(first), Failure)
    scene.broker.release()
    joined = _result(second)
    scene.publish()
    scene.settle()
    _assert_exactly_once(joined, member, scene.after(0))


# -- who is there -------------------------------------------------------------------


def test_presence_and_subscribers_show_the_subscriber_itself_throughout(
        make: MakeScene) -> None:
    scene = make()
    member, other = Member("m"), Member("other")
    scene.hub.subscribe("c", other)

    def check() -> None:
        assert sorted(i.client_id for i in scene.hub.members("c")) == ["m", "other"]
        assert set(scene.hub.subscribers("c")) == {member, other}
        assert scene.hub.subscriber_count("c") == 2
        assert scene.hub.channels() == {"c": 2}

    scene.broker.gated = True
    d = scene.hub.join("c", member, StreamPosition("", 0))
    check()  # pending
    scene.publish()
    scene.settle()
    scene.broker.release()
    _result(d)
    check()  # joined, behind the joint
    scene.publish()
    scene.settle()
    check()  # past the joint


def test_past_the_joint_the_subscriber_itself_is_in_the_channel(make: MakeScene) -> None:
    scene = make()
    scene.publish(2)
    member = Member("m")
    joined = _result(scene.hub.join("c", member, StreamPosition("", 0)))
    assert member not in scene.hub._channels["c"]  # a stand-in guards the joint
    scene.settle()  # deliver-later: 1 and 2 arrive now, and are dropped
    assert member not in scene.hub._channels["c"]
    scene.publish()
    scene.settle()
    assert scene.hub._channels["c"] == {member}  # the hot path has no wrapper
    assert scene.hub._standins == {}
    scene.publish()
    scene.settle()
    _assert_exactly_once(joined, member, scene.after(0))
