"""Tests for L{omega_ws.hub}: pure fan-out over a memory broker, no reactor."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from omega_ws.broker import MemoryBroker, Publication
from omega_ws.hub import Hub, Subscriber


class Recorder:
    """A subscriber that records what it is given, then runs an optional action."""

    def __init__(self, name: str, action: Callable[[Publication], None] | None = None) -> None:
        self.name = name
        self.received: list[Publication] = []
        self.action = action

    def deliver(self, publication: Publication) -> None:
        self.received.append(publication)
        if self.action is not None:
            self.action(publication)

    def __repr__(self) -> str:
        return f"<Recorder {self.name}>"


class Exploding:
    def __init__(self) -> None:
        self.calls = 0

    def deliver(self, publication: Publication) -> None:
        self.calls += 1
        raise RuntimeError("subscriber is broken")


class SpyBroker(MemoryBroker):
    """A memory broker that records the hub's subscribe/unsubscribe calls."""

    def __init__(self) -> None:
        super().__init__(Clock())
        self.start()
        self.calls: list[tuple[str, str]] = []

    def subscribe(self, channel: str) -> None:
        self.calls.append(("subscribe", channel))

    def unsubscribe(self, channel: str) -> None:
        self.calls.append(("unsubscribe", channel))


def _make() -> tuple[Hub, SpyBroker, list[tuple[Publication, int]]]:
    broker = SpyBroker()
    dispatched: list[tuple[Publication, int]] = []
    hub = Hub(broker, on_dispatch=lambda p, n: dispatched.append((p, n)))
    broker.start()
    return hub, broker, dispatched


def _result(d: Deferred[Publication]) -> Publication:
    results: list[object] = []
    d.addBoth(results.append)
    assert len(results) == 1 and isinstance(results[0], Publication), results
    return results[0]


def test_delivers_to_every_subscriber_of_the_channel_only() -> None:
    hub, _, dispatched = _make()
    a1, a2, b1 = Recorder("a1"), Recorder("a2"), Recorder("b1")
    hub.subscribe("a", a1)
    hub.subscribe("a", a2)
    hub.subscribe("b", b1)
    publication = _result(hub.publish("a", b'{"n": 1}'))
    assert (publication.channel, publication.offset, publication.data) == ("a", 1, b'{"n": 1}')
    assert a1.received == [publication]
    assert a2.received == [publication]
    assert b1.received == []
    assert dispatched == [(publication, 2)]


def test_publications_arrive_in_order_with_the_same_object_for_all() -> None:
    hub, _, _ = _make()
    a1, a2 = Recorder("a1"), Recorder("a2")
    hub.subscribe("a", a1)
    hub.subscribe("a", a2)
    for n in range(3):
        hub.publish("a", b'{"n": %d}' % n)
    assert [p.offset for p in a1.received] == [1, 2, 3]
    assert [p.data for p in a1.received] == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
    assert all(x is y for x, y in zip(a1.received, a2.received, strict=True))


def test_publish_without_subscribers_still_numbers_but_skips_the_hook() -> None:
    hub, _, dispatched = _make()
    assert _result(hub.publish("nobody", b"{}")).offset == 1
    assert _result(hub.publish("nobody", b"{}")).offset == 2
    assert dispatched == []


def test_subscribing_twice_counts_once() -> None:
    hub, broker, dispatched = _make()
    a = Recorder("a")
    hub.subscribe("c", a)
    hub.subscribe("c", a)
    assert hub.subscriber_count("c") == 1
    hub.publish("c", b"{}")
    assert len(a.received) == 1
    assert dispatched[0][1] == 1
    assert broker.calls == [("subscribe", "c")]


def test_unsubscribed_subscriber_gets_nothing_more() -> None:
    hub, _, dispatched = _make()
    a, b = Recorder("a"), Recorder("b")
    hub.subscribe("c", a)
    hub.subscribe("c", b)
    hub.publish("c", b"{}")
    hub.unsubscribe("c", a)
    hub.publish("c", b"{}")
    assert [p.offset for p in a.received] == [1]
    assert [p.offset for p in b.received] == [1, 2]
    assert [n for _, n in dispatched] == [2, 1]


def test_subscriber_unsubscribing_itself_during_delivery() -> None:
    hub, broker, dispatched = _make()
    others = [Recorder(f"o{i}") for i in range(4)]
    leaver = Recorder("leaver", action=lambda p: hub.unsubscribe("c", leaver))
    for subscriber in [*others, leaver]:
        hub.subscribe("c", subscriber)
    hub.publish("c", b"{}")
    # Everyone in the snapshot got it, the leaver included, exactly once.
    assert [len(s.received) for s in [*others, leaver]] == [1, 1, 1, 1, 1]
    assert dispatched[0][1] == 5
    assert hub.subscriber_count("c") == 4
    hub.publish("c", b"{}")
    assert len(leaver.received) == 1
    assert [len(s.received) for s in others] == [2, 2, 2, 2]
    assert broker.calls == [("subscribe", "c")]


def test_subscriber_unsubscribing_another_during_delivery_uses_the_snapshot() -> None:
    hub, _, dispatched = _make()
    victim = Recorder("victim")
    killer = Recorder("killer", action=lambda p: hub.unsubscribe("c", victim))
    hub.subscribe("c", victim)
    hub.subscribe("c", killer)
    hub.publish("c", b"{}")
    # Whatever the iteration order, the victim was in the snapshot.
    assert len(victim.received) == 1
    assert len(killer.received) == 1
    assert dispatched[0][1] == 2
    hub.publish("c", b"{}")
    assert len(victim.received) == 1
    assert len(killer.received) == 2
    assert hub.channels() == {"c": 1}


def test_last_subscriber_leaving_during_delivery_releases_the_channel() -> None:
    hub, broker, dispatched = _make()
    only = Recorder("only", action=lambda p: hub.unsubscribe("c", only))
    hub.subscribe("c", only)
    hub.publish("c", b"{}")
    assert len(only.received) == 1
    assert dispatched[0][1] == 1
    assert hub.channels() == {}
    assert broker.calls == [("subscribe", "c"), ("unsubscribe", "c")]


def test_subscriber_added_during_delivery_waits_for_the_next_one() -> None:
    hub, _, _ = _make()
    late = Recorder("late")
    early = Recorder("early", action=lambda p: hub.subscribe("c", late))
    hub.subscribe("c", early)
    hub.publish("c", b"{}")
    assert late.received == []
    hub.publish("c", b"{}")
    assert [p.offset for p in late.received] == [2]


def test_raising_subscriber_does_not_stop_the_others_and_is_logged() -> None:
    hub, _, dispatched = _make()
    good = [Recorder(f"g{i}") for i in range(5)]
    bad = Exploding()
    subscribers: list[Subscriber] = [*good[:2], bad, *good[2:]]
    for subscriber in subscribers:
        hub.subscribe("c", subscriber)
    with capturedLogs() as events:
        publication = _result(hub.publish("c", b"{}"))
    assert [s.received for s in good] == [[publication]] * 5
    assert bad.calls == 1
    assert dispatched == [(publication, 6)]
    failures = [e for e in events if e.get("log_namespace") == "omega_ws.hub"]
    assert len(failures) == 1
    event = failures[0]
    assert event["log_level"] is LogLevel.critical
    assert event["publication"] is publication
    assert event["subscriber"] is bad
    assert event["log_failure"].check(RuntimeError) is RuntimeError
    assert hub.subscriber_count("c") == 6  # the broken one stays subscribed


def test_channels_and_subscriber_count_bookkeeping() -> None:
    hub, _, _ = _make()
    a, b, c = Recorder("a"), Recorder("b"), Recorder("c")
    assert hub.channels() == {}
    assert hub.subscriber_count("x") == 0
    hub.subscribe("x", a)
    hub.subscribe("x", b)
    hub.subscribe("y", a)
    assert hub.channels() == {"x": 2, "y": 1}
    assert (hub.subscriber_count("x"), hub.subscriber_count("y")) == (2, 1)
    hub.unsubscribe("x", c)  # not a member: nothing changes
    hub.unsubscribe("z", a)  # unknown channel: nothing changes
    assert hub.channels() == {"x": 2, "y": 1}
    hub.unsubscribe("x", a)
    assert hub.channels() == {"x": 1, "y": 1}
    hub.unsubscribe("y", a)
    assert hub.channels() == {"x": 1}
    assert hub.subscriber_count("y") == 0
    snapshot = hub.channels()
    snapshot["x"] = 99
    assert hub.channels() == {"x": 1}


def test_broker_subscribe_on_first_and_unsubscribe_on_last_subscriber() -> None:
    hub, broker, _ = _make()
    a, b = Recorder("a"), Recorder("b")
    hub.subscribe("x", a)
    assert broker.calls == [("subscribe", "x")]
    hub.subscribe("x", b)
    hub.subscribe("y", a)
    assert broker.calls == [("subscribe", "x"), ("subscribe", "y")]
    hub.unsubscribe("x", a)
    assert broker.calls[-1] == ("subscribe", "y")
    hub.unsubscribe("x", b)
    assert broker.calls[-1] == ("unsubscribe", "x")
    hub.unsubscribe("x", b)  # already gone: no second broker call
    hub.unsubscribe("q", b)
    assert len(broker.calls) == 3
    hub.subscribe("x", b)  # first subscriber again
    assert broker.calls[-1] == ("subscribe", "x")
    assert len(broker.calls) == 4


def test_hub_without_dispatch_hook_delivers() -> None:
    broker = MemoryBroker(Clock())
    broker.start()
    hub = Hub(broker)
    a = Recorder("a")
    hub.subscribe("c", a)
    hub.publish("c", b"{}")
    assert [p.offset for p in a.received] == [1]
    assert hub.broker is broker


def test_dispatch_from_the_broker_reaches_subscribers_directly() -> None:
    # A broker (e.g. Redis) may hand the hub publications made elsewhere.
    hub, _, dispatched = _make()
    a = Recorder("a")
    hub.subscribe("c", a)
    foreign = Publication("c", 41, "remote-epoch", b'{"from":"node-b"}')
    hub._dispatch(foreign)
    hub._dispatch(Publication("other", 1, "remote-epoch", b"{}"))
    assert a.received == [foreign]
    assert dispatched == [(foreign, 1)]
