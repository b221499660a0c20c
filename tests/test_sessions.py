"""Tests for L{omega_ws.broker.sessions}: the reconnect threshold and the memory store."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from omega_ws.broker.history import StreamPosition
from omega_ws.broker.sessions import Admission, MemorySessions, Session, admit

DELAY = 5.0
MAX = 3


def _result(d: Deferred[Any]) -> object:
    """The result of an already-fired Deferred."""
    results: list[object] = []
    d.addBoth(results.append)
    assert len(results) == 1, "Deferred has not fired"
    return results[0]


def _cycle(session: Session, disconnect: float, reconnect: float,
           delay: float = DELAY, max_attempts: int = MAX) -> Admission:
    """The client disconnects at C{disconnect} and tries to come back at C{reconnect}."""
    session.disconnected_at = disconnect
    return admit(session, reconnect, delay, max_attempts)


def _connected_session() -> Session:
    session = Session("c1")
    assert admit(session, 0.0, DELAY, MAX) == Admission(True)
    return session


# -- admit() --------------------------------------------------------------------


def test_first_connection_is_allowed() -> None:
    session = Session("c1")
    assert admit(session, 100.0, DELAY, MAX) == Admission(True, 0)
    assert session.rapid_reconnects == 0


def test_fourth_rapid_reconnect_is_refused() -> None:
    session = _connected_session()
    assert _cycle(session, 1.0, 2.0) == Admission(True)
    assert _cycle(session, 3.0, 4.0) == Admission(True)
    assert _cycle(session, 5.0, 6.0) == Admission(True)
    assert _cycle(session, 7.0, 8.0) == Admission(False, 5)


def test_refused_until_delay_has_passed_then_reset() -> None:
    session = _connected_session()
    for t in (1.0, 3.0, 5.0):
        assert _cycle(session, t, t + 1).allowed
    assert _cycle(session, 7.0, 8.0) == Admission(False, 5)  # blocked until 13
    # Refused handshakes never connected, so they do not disconnect either.
    assert admit(session, 9.0, DELAY, MAX) == Admission(False, 4)
    assert admit(session, 12.5, DELAY, MAX) == Admission(False, 1)
    assert admit(session, 13.0, DELAY, MAX) == Admission(True)
    assert session.rapid_reconnects == 0
    # The run starts over: three more rapid reconnects are allowed, the fourth is not.
    for t in (14.0, 16.0, 18.0):
        assert _cycle(session, t, t + 1).allowed
    assert _cycle(session, 20.0, 21.0) == Admission(False, 5)


def test_reconnect_after_more_than_delay_resets_the_run() -> None:
    session = _connected_session()
    assert _cycle(session, 1.0, 2.0).allowed
    assert _cycle(session, 3.0, 4.0).allowed
    assert _cycle(session, 5.0, 6.0).allowed
    assert session.rapid_reconnects == 3
    assert _cycle(session, 7.0, 12.5) == Admission(True)  # 5.5 s > delay
    assert session.rapid_reconnects == 0
    assert _cycle(session, 13.0, 14.0).allowed
    assert _cycle(session, 15.0, 16.0).allowed
    assert _cycle(session, 17.0, 18.0).allowed
    assert _cycle(session, 19.0, 20.0) == Admission(False, 5)


def test_slow_reconnects_are_never_refused() -> None:
    session = _connected_session()
    for n in range(20):
        t = 10.0 * n
        assert _cycle(session, t, t + 6.0) == Admission(True)


def test_zero_attempts_means_no_limit() -> None:
    session = Session("c1")
    for n in range(50):
        assert _cycle(session, float(n), n + 0.1, max_attempts=0) == Admission(True)


def test_one_attempt() -> None:
    session = Session("c1")
    assert _cycle(session, 0.0, 1.0, max_attempts=1) == Admission(True)
    assert _cycle(session, 1.0, 2.0, max_attempts=1) == Admission(False, 5)


def test_retry_after_rounds_up() -> None:
    session = Session("c1")
    for t in (0.0, 1.0, 2.0):
        assert _cycle(session, t, t + 0.5, delay=2.5).allowed
    assert _cycle(session, 3.0, 3.5, delay=2.5) == Admission(False, 3)  # blocked until 6.0
    assert admit(session, 4.2, 2.5, MAX) == Admission(False, 2)
    assert admit(session, 5.9, 2.5, MAX) == Admission(False, 1)
    assert admit(session, 6.0, 2.5, MAX) == Admission(True)


def test_retry_after_is_at_least_one() -> None:
    session = Session("c1")
    for t in (0.0, 1.0, 2.0):
        assert _cycle(session, t, t + 0.1, delay=0.3).allowed
    assert _cycle(session, 3.0, 3.1, delay=0.3) == Admission(False, 1)
    assert admit(session, 3.35, 0.3, MAX) == Admission(False, 1)


# -- MemorySessions ---------------------------------------------------------------


def test_put_then_get() -> None:
    clock = Clock()
    store = MemorySessions(clock)
    session = Session("c1", user="u", positions={"a": StreamPosition("e", 3)},
                      message_count=7, error_count=1, reconnect_count=2)
    assert _result(store.put(session, 60.0)) is None
    assert _result(store.get("c1")) is session
    assert _result(store.get("c2")) is None
    assert len(store) == 1


def test_get_after_ttl_is_none() -> None:
    clock = Clock()
    store = MemorySessions(clock)
    store.put(Session("c1"), 60.0)
    clock.advance(59.9)
    assert isinstance(_result(store.get("c1")), Session)
    clock.advance(0.2)
    assert _result(store.get("c1")) is None


def test_put_again_replaces_and_renews() -> None:
    clock = Clock()
    store = MemorySessions(clock)
    store.put(Session("c1", message_count=1), 10.0)
    clock.advance(8.0)
    newer = Session("c1", message_count=2)
    store.put(newer, 10.0)
    clock.advance(8.0)
    assert _result(store.get("c1")) is newer
    assert len(store) == 1


def test_delete() -> None:
    clock = Clock()
    store = MemorySessions(clock)
    store.put(Session("c1"), 60.0)
    store.put(Session("c2"), 60.0)
    assert _result(store.delete("c1")) is None
    assert _result(store.delete("missing")) is None
    assert _result(store.get("c1")) is None
    assert isinstance(_result(store.get("c2")), Session)
    assert len(store) == 1


def test_expire_drops_only_expired_sessions() -> None:
    clock = Clock()
    store = MemorySessions(clock)
    store.put(Session("short"), 10.0)
    store.put(Session("long"), 100.0)
    store.expire(50.0)
    assert len(store) == 1
    assert _result(store.get("short")) is None
    assert isinstance(_result(store.get("long")), Session)
    store.expire(101.0)
    assert len(store) == 0


def test_replacing_a_live_connection_counts_as_a_rapid_reconnect() -> None:
    session = Session("c")  # live: never disconnected
    results = [admit(session, 100.0 + i, delay=5.0, max_attempts=3, replacing=True).allowed
               for i in range(5)]
    assert results == [True, True, True, False, False]


def test_sessions_are_capped_least_recently_stored_first() -> None:
    store = MemorySessions(Clock(), max_sessions=3)
    for name in "abcd":
        store.put(Session(name), ttl=60.0)
    store.put(Session("b"), ttl=60.0)  # stored again: now the most recent
    store.put(Session("e"), ttl=60.0)
    assert len(store) == 3 and store.evicted == 2
    held = [name for name in "abcde" if _result(store.get(name)) is not None]
    assert held == ["b", "d", "e"]
