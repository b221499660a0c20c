"""Tests for L{omega_ws.registry}: client entries and their state machine."""

from __future__ import annotations

from twisted.logger import capturedLogs

from omega_ws.registry import ClientInfo, Connection, ConnectionState, Registry

CONNECTED = ConnectionState.CONNECTED
DISCONNECTED = ConnectionState.DISCONNECTED
RECONNECTING = ConnectionState.RECONNECTING
ERROR = ConnectionState.ERROR

Transition = tuple[str, ConnectionState | None, ConnectionState]


class FakeConnection:
    """Satisfies L{omega_ws.registry.Connection}; records nothing but its info."""

    def __init__(self, client_id: str, transport: str = "raw", now: float = 0.0) -> None:
        self.info = ClientInfo(client_id, f"tcp4:10.0.0.1:{len(client_id)}", transport, now)

    def send_heartbeat(self) -> None:
        pass

    def close_inactive(self) -> None:
        pass

    def drop_unresponsive(self) -> None:
        pass

    def close_for_shutdown(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _make() -> tuple[Registry, list[Transition]]:
    seen: list[Transition] = []
    registry = Registry(on_transition=lambda info, old, new: seen.append(
        (info.client_id, old, new)))
    return registry, seen


def test_connection_states() -> None:
    assert [s.value for s in ConnectionState] == [
        "CONNECTED", "DISCONNECTED", "RECONNECTING", "ERROR"]
    assert [s.name for s in ConnectionState] == [s.value for s in ConnectionState]


def test_client_info_defaults() -> None:
    info = ClientInfo("c1", "tcp4:1.2.3.4:5678", "centrifuge", 123.5)
    assert info.client_id == "c1"
    assert info.peer == "tcp4:1.2.3.4:5678"
    assert info.transport == "centrifuge"
    assert info.state is CONNECTED
    assert info.connected_at == 123.5
    assert info.last_message == 123.5
    assert (info.message_count, info.error_count, info.reconnect_count) == (0, 0, 0)
    assert info.channels == set()
    assert info.ping_sent_at is None
    assert ClientInfo("c2", "p", "raw", 0).channels is not info.channels


def test_client_info_as_dict() -> None:
    info = ClientInfo("c1", "tcp4:1.2.3.4:5678", "raw", 10.0)
    info.state = RECONNECTING
    info.last_message = 12.25
    info.message_count, info.error_count, info.reconnect_count = 7, 2, 1
    info.channels.update({"zeta", "alpha", "mid"})
    info.ping_sent_at = 11.0
    assert info.as_dict() == {
        "client_id": "c1",
        "user": "",
        "state": "RECONNECTING",
        "peer": "tcp4:1.2.3.4:5678",
        "transport": "raw",
        "connected_at": 10.0,
        "last_message": 12.25,
        "message_count": 7,
        "error_count": 2,
        "reconnect_count": 1,
        "channels": ["alpha", "mid", "zeta"],
    }


def test_add_registers_and_reports_a_new_entry() -> None:
    registry, seen = _make()
    a = FakeConnection("a")
    with capturedLogs() as events:
        assert registry.add(a) is None
    assert len(registry) == 1
    assert registry.get("a") is a
    assert registry.get("b") is None
    assert seen == [("a", None, CONNECTED)]
    logged = [e for e in events if e.get("log_namespace") == "omega_ws.registry"]
    assert [(e["client_id"], e["state"], e["transport"]) for e in logged] == [
        ("a", "CONNECTED", "raw")]


def test_add_in_reconnecting_state_reports_that_state() -> None:
    registry, seen = _make()
    a = FakeConnection("a")
    a.info.state = RECONNECTING
    registry.add(a)
    assert seen == [("a", None, RECONNECTING)]
    assert registry.counts() == {("raw", "RECONNECTING"): 1}


def test_add_with_same_client_id_replaces_and_returns_previous() -> None:
    registry, seen = _make()
    first, second, other = FakeConnection("a"), FakeConnection("a"), FakeConnection("b")
    assert registry.add(first) is None
    assert registry.add(other) is None
    assert registry.add(second) is first
    assert registry.get("a") is second
    assert len(registry) == 2
    assert seen == [("a", None, CONNECTED), ("b", None, CONNECTED), ("a", None, CONNECTED)]


def test_replaced_connection_closing_leaves_the_new_one_live() -> None:
    registry, seen = _make()
    first, second = FakeConnection("a"), FakeConnection("a")
    registry.add(first)
    registry.add(second)
    registry.transition(first, DISCONNECTED, "replaced")
    assert first.info.state is DISCONNECTED
    assert registry.get("a") is second
    assert len(registry) == 1
    assert seen[-1] == ("a", CONNECTED, DISCONNECTED)
    registry.transition(first, ERROR, "late error")
    assert registry.get("a") is second
    registry.transition(second, ERROR, "no pong")
    assert registry.get("a") is None
    assert len(registry) == 0


def test_transition_to_closed_states_leaves_the_live_set() -> None:
    registry, seen = _make()
    a, b, c = FakeConnection("a"), FakeConnection("b"), FakeConnection("c")
    for connection in (a, b, c):
        registry.add(connection)
    registry.transition(a, DISCONNECTED, "client closed")
    registry.transition(b, ERROR, "tcp reset")
    assert [x.info.client_id for x in registry] == ["c"]
    assert (a.info.state, b.info.state, c.info.state) == (DISCONNECTED, ERROR, CONNECTED)
    assert seen[3:] == [("a", CONNECTED, DISCONNECTED), ("b", CONNECTED, ERROR)]


def test_transition_between_live_states_keeps_the_entry() -> None:
    registry, seen = _make()
    a = FakeConnection("a")
    a.info.state = RECONNECTING
    registry.add(a)
    with capturedLogs() as events:
        registry.transition(a, CONNECTED, "resumed")
    assert registry.get("a") is a
    assert a.info.state is CONNECTED
    assert seen == [("a", None, RECONNECTING), ("a", RECONNECTING, CONNECTED)]
    logged = [e for e in events if e.get("log_namespace") == "omega_ws.registry"]
    assert [(e["client_id"], e["old_state"], e["state"], e["reason"]) for e in logged] == [
        ("a", "RECONNECTING", "CONNECTED", "resumed")]


def test_transition_to_the_same_state_is_a_no_op() -> None:
    registry, seen = _make()
    a = FakeConnection("a")
    registry.add(a)
    with capturedLogs() as events:
        registry.transition(a, CONNECTED, "again")
    assert seen == [("a", None, CONNECTED)]
    assert [e for e in events if e.get("log_namespace") == "omega_ws.registry"] == []
    registry.transition(a, ERROR, "boom")
    registry.transition(a, ERROR, "boom again")
    assert seen == [("a", None, CONNECTED), ("a", CONNECTED, ERROR)]


def test_transition_of_an_unregistered_connection_updates_its_info_only() -> None:
    registry, seen = _make()
    live, stray = FakeConnection("a"), FakeConnection("a")
    registry.add(live)
    registry.transition(stray, ERROR, "refused")
    assert stray.info.state is ERROR
    assert registry.get("a") is live
    assert seen[-1] == ("a", CONNECTED, ERROR)


def test_registry_without_hook() -> None:
    registry = Registry()
    a = FakeConnection("a")
    assert registry.add(a) is None
    registry.transition(a, DISCONNECTED, "bye")
    assert len(registry) == 0


def test_counts_by_transport_and_state() -> None:
    registry, _ = _make()
    assert registry.counts() == {}
    connections = [FakeConnection(f"r{i}") for i in range(3)]
    connections += [FakeConnection(f"c{i}", transport="centrifuge") for i in range(2)]
    for connection in connections:
        registry.add(connection)
    registry.transition(connections[0], RECONNECTING, "resuming")
    registry.transition(connections[3], RECONNECTING, "resuming")
    registry.transition(connections[4], DISCONNECTED, "closed")
    assert registry.counts() == {
        ("raw", "CONNECTED"): 2,
        ("raw", "RECONNECTING"): 1,
        ("centrifuge", "RECONNECTING"): 1,
    }


def test_iteration_is_a_snapshot_safe_against_removal() -> None:
    registry, _ = _make()
    connections = [FakeConnection(f"c{i}") for i in range(5)]
    for connection in connections:
        registry.add(connection)
    visited: list[Connection] = []
    for live in registry:
        visited.append(live)
        registry.transition(live, DISCONNECTED, "closing all")
        registry.add(FakeConnection(f"new-{live.info.client_id}"))
    assert visited == connections
    assert len(registry) == 5
    assert sorted(c.info.client_id for c in registry) == [f"new-c{i}" for i in range(5)]


def test_iteration_while_replacing() -> None:
    registry, _ = _make()
    a, b = FakeConnection("a"), FakeConnection("b")
    registry.add(a)
    registry.add(b)
    replacement = FakeConnection("b")
    seen = []
    for connection in registry:
        seen.append(connection)
        if connection is a:
            assert registry.add(replacement) is b
    assert seen == [a, b]
    assert list(registry) == [a, replacement]
