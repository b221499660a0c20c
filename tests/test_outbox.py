"""The per-connection outbox: one write per turn, back-pressure, overflow; task.Clock only."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from omega_ws.outbox import FlushScheduler, Outbox


class Recorder(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


def make(limit: int = 100) -> tuple[Clock, Recorder, Outbox, list[object], list[str]]:
    clock = Clock()
    transport = Recorder()
    written: list[object] = []
    events: list[str] = []
    outbox = Outbox(transport, FlushScheduler(clock), limit,
                    lambda: events.append("overflow"), written.append)
    return clock, transport, outbox, written, events


def test_frames_of_one_turn_go_out_in_one_write() -> None:
    clock, transport, outbox, written, _ = make()
    for n in range(3):
        outbox.put(b"frame%d" % n, mark=n)
    assert transport.writes == []  # nothing before the turn ends
    clock.advance(0)
    assert transport.writes == [b"frame0frame1frame2"]
    assert written == [2]  # the last mark handed to the transport
    outbox.put(b"next")
    clock.advance(0)
    assert transport.writes[-1] == b"next" and written == [2]


def test_one_scheduler_flushes_many_outboxes_once_per_turn() -> None:
    clock = Clock()
    scheduler = FlushScheduler(clock)
    transports = [Recorder() for _ in range(3)]
    outboxes = [Outbox(t, scheduler, 100, lambda: None) for t in transports]
    for outbox in outboxes:
        outbox.put(b"a")
        outbox.put(b"b")
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert [t.writes for t in transports] == [[b"ab"]] * 3
    assert clock.getDelayedCalls() == []


def test_paused_outbox_keeps_frames_and_resumes() -> None:
    clock, transport, outbox, written, events = make(limit=100)
    outbox.pauseProducing()
    outbox.put(b"x" * 60, mark="a")
    clock.advance(0)
    assert transport.writes == [] and outbox.size == 60
    outbox.resumeProducing()
    clock.advance(0)
    assert transport.writes == [b"x" * 60] and written == ["a"] and events == []


def test_a_paused_outbox_past_its_limit_overflows_once_and_drops_its_frames() -> None:
    clock, transport, outbox, written, events = make(limit=100)
    outbox.pauseProducing()
    outbox.put(b"x" * 60, mark="a")
    outbox.put(b"y" * 60, mark="b")
    assert events == ["overflow"] and outbox.size == 0 and outbox.overflowed
    outbox.put(b"z" * 500)  # nothing more is queued for a connection being dropped
    outbox.resumeProducing()
    clock.advance(0)
    assert outbox.size == 0 and transport.writes == [] and written == []
    assert events == ["overflow"]


def test_an_unpaused_burst_is_not_an_overflow() -> None:
    clock, transport, outbox, _, events = make(limit=100)
    outbox.put(b"x" * 1000)  # a large turn for a reader that keeps up
    clock.advance(0)
    assert events == [] and transport.writes == [b"x" * 1000]
