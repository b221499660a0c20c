"""Tests for L{omega_ws.metrics.Metrics}: Prometheus text and message totals."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from omega_ws.metrics import Metrics
from omega_ws.registry import ClientInfo, ConnectionState

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(metrics: Metrics) -> Samples:
    """Every sample of the rendered text, by (name, sorted labels); C{_created} left out."""
    text = metrics.render()
    assert isinstance(text, bytes)
    out: Samples = {}
    for family in text_string_to_metric_families(text.decode("utf-8")):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _connections(samples: Samples) -> dict[tuple[str, str], float]:
    return {(dict(labels)["transport"], dict(labels)["state"]): value
            for (name, labels), value in samples.items() if name == "omega_ws_connections"}


def test_connections_gauge_from_the_callable_at_render_time() -> None:
    counts = {("raw", "CONNECTED"): 3, ("centrifuge", "RECONNECTING"): 1}
    metrics = Metrics(lambda: counts, lambda: True)
    connections = _connections(_samples(metrics))
    assert len(connections) == 8  # every transport x state, zeros included
    assert connections[("raw", "CONNECTED")] == 3
    assert connections[("centrifuge", "RECONNECTING")] == 1
    assert sum(connections.values()) == 4
    assert {state for _, state in connections} == {
        "CONNECTED", "DISCONNECTED", "RECONNECTING", "ERROR"}
    assert {transport for transport, _ in connections} == {"raw", "centrifuge"}
    counts = {("raw", "CONNECTED"): 1}
    assert _connections(_samples(metrics)) == {
        **{key: 0.0 for key in connections}, ("raw", "CONNECTED"): 1.0}


def test_render_is_prometheus_text() -> None:
    metrics = Metrics(lambda: {("raw", "CONNECTED"): 2}, lambda: True)
    text = metrics.render().decode("utf-8")
    lines = text.splitlines()
    assert "# TYPE omega_ws_connections gauge" in lines
    assert 'omega_ws_connections{state="CONNECTED",transport="raw"} 2.0' in lines
    assert "# TYPE omega_ws_broker_up gauge" in lines
    assert "omega_ws_broker_up 1.0" in lines
    assert "# TYPE omega_ws_messages_delivered_total counter" in lines
    assert "omega_ws_messages_delivered_total 0.0" in lines
    assert text.endswith("\n")


def test_broker_up_follows_the_callable() -> None:
    healthy = [True]
    metrics = Metrics(dict, lambda: healthy[0])
    assert _samples(metrics)[("omega_ws_broker_up", ())] == 1
    healthy[0] = False
    assert _samples(metrics)[("omega_ws_broker_up", ())] == 0
    assert sum(_connections(_samples(metrics)).values()) == 0


def test_counters_are_rendered_with_their_labels() -> None:
    metrics = Metrics(dict, lambda: True)
    metrics.messages_received.labels("raw").inc(3)
    metrics.messages_received.labels("centrifuge").inc()
    metrics.messages_published.labels("api").inc(2)
    metrics.messages_delivered.inc(1000)
    metrics.bytes_out.inc(123456)
    metrics.closes.labels("1003").inc()
    metrics.handshake_refusals.labels("not_found").inc(4)
    metrics.invalid_messages.labels("invalid_utf8").inc()
    metrics.slow_consumer_drops.inc(2)
    samples = _samples(metrics)
    expected = {
        ("omega_ws_messages_received_total", (("transport", "raw"),)): 3,
        ("omega_ws_messages_received_total", (("transport", "centrifuge"),)): 1,
        ("omega_ws_messages_published_total", (("source", "api"),)): 2,
        ("omega_ws_messages_delivered_total", ()): 1000,
        ("omega_ws_bytes_out_total", ()): 123456,
        ("omega_ws_closes_total", (("code", "1003"),)): 1,
        ("omega_ws_handshake_refusals_total", (("reason", "not_found"),)): 4,
        ("omega_ws_invalid_messages_total", (("reason", "invalid_utf8"),)): 1,
        ("omega_ws_slow_consumer_drops_total", ()): 2,
    }
    assert {key: samples[key] for key in expected} == expected
    counters = {k: v for k, v in samples.items() if k[0].endswith("_total")}
    assert counters == expected


def test_on_transition_counts_the_state_entered() -> None:
    metrics = Metrics(dict, lambda: True)
    info = ClientInfo("c", "peer", "raw", 0.0)
    metrics.on_transition(info, None, ConnectionState.CONNECTED)
    metrics.on_transition(info, ConnectionState.CONNECTED, ConnectionState.DISCONNECTED)
    metrics.on_transition(info, None, ConnectionState.RECONNECTING)
    metrics.on_transition(info, ConnectionState.RECONNECTING, ConnectionState.CONNECTED)
    transitions = {dict(labels)["state"]: value for (name, labels), value
                   in _samples(metrics).items() if name == "omega_ws_state_transitions_total"}
    assert transitions == {"CONNECTED": 2, "DISCONNECTED": 1, "RECONNECTING": 1}


def test_totals() -> None:
    metrics = Metrics(dict, lambda: True)
    assert metrics.totals() == {"messages_in": 0, "published": 0, "delivered": 0}
    metrics.messages_received.labels("raw").inc(3)
    metrics.messages_received.labels("centrifuge").inc(4)
    metrics.messages_published.labels("raw").inc(2)
    metrics.messages_published.labels("api").inc(5)
    metrics.messages_delivered.inc(70)
    metrics.bytes_out.inc(9999)  # not a message count
    assert metrics.totals() == {"messages_in": 7, "published": 7, "delivered": 70}
    totals = metrics.totals()
    assert all(type(value) is int for value in totals.values())


def test_two_instances_do_not_share_counters() -> None:
    one = Metrics(lambda: {("raw", "CONNECTED"): 1}, lambda: True)
    two = Metrics(lambda: {("raw", "ERROR"): 5}, lambda: False)
    one.messages_received.labels("raw").inc(10)
    one.messages_delivered.inc(3)
    two.messages_published.labels("api").inc()
    assert one.totals() == {"messages_in": 10, "published": 0, "delivered": 3}
    assert two.totals() == {"messages_in": 0, "published": 1, "delivered": 0}
    assert one.registry is not two.registry
    s1, s2 = _samples(one), _samples(two)
    assert _connections(s1)[("raw", "CONNECTED")] == 1
    assert _connections(s1)[("raw", "ERROR")] == 0
    assert _connections(s2)[("raw", "ERROR")] == 5
    assert (s1[("omega_ws_broker_up", ())], s2[("omega_ws_broker_up", ())]) == (1, 0)
    # A third instance after the others were used starts from zero too.
    three = Metrics(dict, lambda: True)
    assert three.totals() == {"messages_in": 0, "published": 0, "delivered": 0}
