"""Tests for L{omega_ws.timers}: heartbeat and monitor sweeps on a fake clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent

from omega_ws.registry import ClientInfo, Connection, ConnectionState, Registry
from omega_ws.timers import HeartbeatService, MonitorService


class FakeConnection:
    """A L{omega_ws.registry.Connection} that records what the sweeps asked of it."""

    def __init__(self, client_id: str, registry: Registry, clock: Clock,
                 answers: bool = False, transport: str = "raw") -> None:
        self.info = ClientInfo(client_id, "tcp4:127.0.0.1:1", transport, clock.seconds())
        self.registry, self.clock, self.answers = registry, clock, answers
        self.heartbeats: list[float] = []
        self.dropped: list[float] = []
        self.closed_inactive: list[float] = []
        registry.add(self)

    def send_heartbeat(self) -> None:
        self.heartbeats.append(self.clock.seconds())
        if self.answers:  # as the real protocol's onPong does
            self.info.last_message = self.clock.seconds()
            self.info.ping_sent_at = None

    def close_inactive(self) -> None:
        self.closed_inactive.append(self.clock.seconds())
        self.registry.transition(self, ConnectionState.DISCONNECTED, "Inactive client")

    def drop_unresponsive(self) -> None:
        self.dropped.append(self.clock.seconds())
        self.registry.transition(self, ConnectionState.ERROR, "no pong")

    def close_for_shutdown(self) -> None:
        pass

    def abort(self) -> None:
        pass


class FlakyRegistry(Registry):
    """A registry whose next C{failures} walks raise, as a bug in a sweep would."""

    failures = 0

    def __iter__(self) -> Iterator[Connection]:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("sweep is broken")
        return super().__iter__()


def _heartbeat(interval: float, timeout: float) -> tuple[HeartbeatService, Registry, Clock]:
    clock, registry = Clock(), FlakyRegistry()
    service = HeartbeatService(registry, clock, interval, timeout)
    service.startService()
    return service, registry, clock


def _ours(events: Sequence[LogEvent]) -> list[LogEvent]:
    return [e for e in events if e.get("log_namespace") == "omega_ws.timers"]


def _raise(*args: object) -> None:
    raise RuntimeError("connection is broken")


def test_pings_every_interval() -> None:
    service, registry, clock = _heartbeat(20, 10)
    a = FakeConnection("a", registry, clock, answers=True)
    b = FakeConnection("b", registry, clock, answers=True)
    clock.pump([1] * 19)
    assert a.heartbeats == []
    clock.pump([1] * 81)
    assert a.heartbeats == [20, 40, 60, 80, 100]
    assert b.heartbeats == a.heartbeats
    assert service.running


def test_answering_connection_is_never_dropped() -> None:
    for interval, timeout in [(20, 10), (20, 30), (5, 5)]:
        _, registry, clock = _heartbeat(interval, timeout)
        a = FakeConnection("a", registry, clock, answers=True)
        clock.pump([1] * 500)
        assert a.dropped == []
        assert len(a.heartbeats) == 500 // interval
        assert registry.get("a") is a


@pytest.mark.parametrize(("timeout", "pings"), [(10, [20]), (30, [20, 40])])
def test_silent_connection_dropped_timeout_after_its_first_ping(
        timeout: int, pings: list[int]) -> None:
    _, registry, clock = _heartbeat(20, timeout)
    clock.advance(5)
    silent = FakeConnection("s", registry, clock)
    alive = FakeConnection("a", registry, clock, answers=True)
    due = 20 + timeout
    clock.pump([1] * (due - 6))  # t = due - 1
    assert silent.heartbeats == pings
    assert silent.info.ping_sent_at == 20  # the oldest unanswered ping is kept
    assert silent.dropped == []
    clock.advance(1)
    assert silent.dropped == [due]
    assert silent.info.state is ConnectionState.ERROR
    clock.pump([1] * 100)
    assert silent.dropped == [due]
    assert alive.dropped == []
    assert [c.info.client_id for c in registry] == ["a"]


def test_connection_added_after_a_sweep_is_judged_from_its_own_first_ping() -> None:
    _, registry, clock = _heartbeat(20, 30)
    clock.pump([1] * 25)
    late = FakeConnection("late", registry, clock)
    clock.pump([1] * 25)  # t=50: the check for the sweep at 20 must spare it
    assert late.heartbeats == [40]
    assert late.dropped == []
    clock.pump([1] * 19)
    assert late.dropped == []
    clock.advance(1)  # t=70 = 40 + 30
    assert late.dropped == [70]


def test_answer_after_missing_some_pings_saves_the_connection() -> None:
    _, registry, clock = _heartbeat(10, 25)
    slow = FakeConnection("slow", registry, clock)
    clock.pump([1] * 22)
    assert slow.info.ping_sent_at == 10
    slow.info.ping_sent_at = None  # a pong arrives at t=22
    clock.pump([1] * 30)  # t=52: ping at 30 unanswered, due at 55
    assert slow.dropped == []
    assert slow.info.ping_sent_at == 30
    clock.pump([1] * 3)
    assert slow.dropped == [55]


def test_stop_service_stops_the_loop_and_cancels_checks() -> None:
    service, registry, clock = _heartbeat(20, 30)
    silent = FakeConnection("s", registry, clock)
    clock.pump([1] * 45)  # sweeps at 20 and 40, checks pending at 50 and 70
    assert len(clock.getDelayedCalls()) == 3
    service.stopService()
    assert not service.running
    assert clock.getDelayedCalls() == []
    clock.pump([1] * 200)
    assert silent.heartbeats == [20, 40]
    assert silent.dropped == []


def test_exception_in_a_tick_is_logged_and_the_loop_keeps_running() -> None:
    service, registry, clock = _heartbeat(20, 10)
    a = FakeConnection("a", registry, clock, answers=True)
    assert isinstance(registry, FlakyRegistry)
    registry.failures = 1
    with capturedLogs() as events:
        clock.pump([1] * 20)
    failures = _ours(events)
    assert len(failures) == 1
    assert failures[0]["log_level"] is LogLevel.critical
    assert failures[0]["sweep"] == "HeartbeatService"
    assert failures[0]["log_failure"].check(RuntimeError) is RuntimeError
    clock.pump([1] * 40)
    assert a.heartbeats == [40, 60]
    assert service.running


@pytest.mark.parametrize("method", ["send_heartbeat", "drop_unresponsive"])
def test_one_broken_connection_does_not_shield_the_others(method: str) -> None:
    # SPEC §7: every client is pinged, and dropped when it does not answer,
    # whatever another connection does (as the hub isolates subscribers).
    _, registry, clock = _heartbeat(20, 10)
    silent = [FakeConnection(f"s{i}", registry, clock) for i in range(3)]
    setattr(silent[0], method, _raise)
    with capturedLogs():
        clock.pump([1] * 30)
    assert [c.heartbeats for c in silent[1:]] == [[20], [20]]
    assert [c.dropped for c in silent[1:]] == [[30], [30]]


Hooks = tuple[Callable[[float], None], ...]


def _monitor(idle_timeout: float, hooks: Hooks = ()) -> tuple[MonitorService, Registry, Clock]:
    clock, registry = Clock(), FlakyRegistry()
    counters = {"messages_in": 5, "published": 4, "delivered": 12}
    service = MonitorService(registry, clock, 60, idle_timeout, lambda: dict(counters),
                             housekeeping=hooks)
    service.startService()
    return service, registry, clock


def test_monitor_closes_only_connections_idle_for_idle_timeout() -> None:
    _, registry, clock = _monitor(100)
    idle = FakeConnection("idle", registry, clock)  # last frame at t=0
    clock.advance(20)
    busy = FakeConnection("busy", registry, clock)  # last frame at t=20
    edge = FakeConnection("edge", registry, clock)
    almost = FakeConnection("almost", registry, clock)
    almost.info.last_message = 20.5
    clock.advance(40)  # t=60: nobody idle for 100 s yet
    assert (idle.closed_inactive, busy.closed_inactive) == ([], [])
    busy.info.last_message = 110
    clock.advance(60)  # t=120: idle 120 s, edge exactly 100 s -> closed; almost 99.5 s
    assert (idle.closed_inactive, edge.closed_inactive) == ([120], [120])
    assert (busy.closed_inactive, almost.closed_inactive) == ([], [])
    assert [c.info.client_id for c in registry] == ["busy", "almost"]
    clock.advance(60)  # t=180: busy idle 70 s
    assert busy.closed_inactive == []
    clock.advance(60)  # t=240: busy idle 130 s
    assert busy.closed_inactive == [240]
    assert almost.closed_inactive == [180]
    assert len(registry) == 0


def test_monitor_runs_housekeeping_with_the_current_time() -> None:
    first: list[float] = []
    second: list[float] = []
    _, _, clock = _monitor(300, hooks=(first.append, second.append))
    clock.pump([30] * 6)
    assert first == [60, 120, 180]
    assert second == [60, 120, 180]


def test_monitor_logs_a_one_line_summary() -> None:
    _, registry, clock = _monitor(100)
    FakeConnection("idle", registry, clock)
    clock.advance(30)
    FakeConnection("r", registry, clock)
    FakeConnection("c", registry, clock, transport="centrifuge")
    resuming = FakeConnection("x", registry, clock)
    registry.transition(resuming, ConnectionState.RECONNECTING, "resume")
    with capturedLogs() as events:
        clock.advance(70)  # t=100
    (event,) = _ours(events)
    assert event["log_level"] is LogLevel.info
    assert event["connections"] == 3
    assert event["by_state"] == "CONNECTED 2, RECONNECTING 1"
    assert event["idle"] == 1
    assert (event["messages_in"], event["published"], event["delivered"]) == (5, 4, 12)
    text = formatEvent(event)
    assert "\n" not in text
    assert text == ("monitor: 3 connections (CONNECTED 2, RECONNECTING 1); 1 closed as "
                    "inactive; messages in 5, published 4, delivered 12")


def test_monitor_summary_with_no_connections() -> None:
    _, _, clock = _monitor(100)
    with capturedLogs() as events:
        clock.advance(60)
    (event,) = _ours(events)
    assert (event["connections"], event["by_state"], event["idle"]) == (0, "none", 0)


def test_monitor_tick_failure_is_logged_and_the_loop_continues() -> None:
    calls: list[float] = []
    service, registry, clock = _monitor(100, hooks=(calls.append,))
    assert isinstance(registry, FlakyRegistry)
    registry.failures = 1
    with capturedLogs() as events:
        clock.pump([60] * 3)
    failures = [e for e in _ours(events) if "log_failure" in e]
    assert len(failures) == 1
    assert failures[0]["sweep"] == "MonitorService"
    assert failures[0]["log_failure"].check(RuntimeError) is RuntimeError
    assert len([e for e in _ours(events) if "by_state" in e]) == 2
    assert calls == [120, 180]
    service.stopService()
    assert clock.getDelayedCalls() == []


def test_one_failing_close_does_not_stop_the_monitor_sweep() -> None:
    # SPEC §7: the monitor closes idle connections, expires sessions and logs,
    # whatever one connection does.
    expired: list[float] = []
    _, registry, clock = _monitor(30, hooks=(expired.append,))
    idle = [FakeConnection(f"i{i}", registry, clock) for i in range(3)]
    idle[0].close_inactive = _raise  # type: ignore[method-assign]
    with capturedLogs() as events:
        clock.advance(60)
    assert [c.closed_inactive for c in idle[1:]] == [[60], [60]]
    assert expired == [60]
    assert [e["idle"] for e in _ours(events) if "idle" in e] == [3]
