"""
Prometheus metrics, one L{CollectorRegistry} per server so that several
embedded servers (and tests) never share counters.

Connection gauges are read from the client registry when scraped, so the
hot path pays nothing for them; counters on the fan-out path are bumped
once per publication, not once per subscriber.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .registry import ClientInfo, ConnectionState

__all__ = ["Metrics"]

_STATES = [state.value for state in ConnectionState]
TRANSPORTS = ("raw", "centrifuge")


class Metrics:
    """The server's counters; C{render()} gives the text exposition format."""

    def __init__(
        self,
        connection_counts: Callable[[], dict[tuple[str, str], int]],
        broker_healthy: Callable[[], bool],
        broker_stats: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages_received = Counter(
            "omega_ws_messages_received", "Data messages received from clients",
            ["transport"], registry=r)
        self.messages_published = Counter(
            "omega_ws_messages_published", "Publications accepted, by source",
            ["source"], registry=r)
        self.messages_delivered = Counter(
            "omega_ws_messages_delivered", "Publications handed to local subscribers",
            registry=r)
        self.bytes_out = Counter(
            "omega_ws_bytes_out", "Payload bytes handed to local subscribers", registry=r)
        self.closes = Counter(
            "omega_ws_closes", "Closed connections by WebSocket close code",
            ["code"], registry=r)
        self.transitions = Counter(
            "omega_ws_state_transitions", "Client registry entries entering a state",
            ["state"], registry=r)
        self.handshake_refusals = Counter(
            "omega_ws_handshake_refusals", "Opening handshakes refused, by reason",
            ["reason"], registry=r)
        self.invalid_messages = Counter(
            "omega_ws_invalid_messages", "Connections closed for bad input, by reason",
            ["reason"], registry=r)
        self.recovery_gaps = Counter(
            "omega_ws_recovery_gaps", "Resumes or recoveries that history no longer covered",
            ["transport"], registry=r)
        self.slow_consumer_drops = Counter(
            "omega_ws_slow_consumer_drops", "Connections closed for unsent output over the bound",
            registry=r)
        self.rate_limited = Counter(
            "omega_ws_rate_limited", "Commands refused by a rate limit, by limit",
            ["limit"], registry=r)
        r.register(_LiveCollector(connection_counts, broker_healthy, broker_stats))

    def on_transition(
        self, info: ClientInfo, old: ConnectionState | None, new: ConnectionState
    ) -> None:
        self.transitions.labels(new.value).inc()

    def totals(self) -> dict[str, int]:
        """Message totals for the monitor's summary line."""

        def total(counter: Counter) -> int:
            return int(sum(sample.value for metric in counter.collect()
                           for sample in metric.samples if sample.name.endswith("_total")))

        return {"messages_in": total(self.messages_received),
                "published": total(self.messages_published),
                "delivered": total(self.messages_delivered)}

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    """Gauges computed at scrape time."""

    def __init__(
        self,
        connection_counts: Callable[[], dict[tuple[str, str], int]],
        broker_healthy: Callable[[], bool],
        broker_stats: Callable[[], dict[str, int]],
    ) -> None:
        self._connection_counts = connection_counts
        self._broker_healthy = broker_healthy
        self._broker_stats = broker_stats

    def collect(self) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            "omega_ws_connections", "Live connections by transport and state",
            labels=["transport", "state"])
        counts = self._connection_counts()
        for transport in TRANSPORTS:
            for state in _STATES:
                connections.add_metric([transport, state], counts.get((transport, state), 0))
        yield connections
        yield GaugeMetricFamily(
            "omega_ws_broker_up", "1 when the broker takes publications",
            value=1 if self._broker_healthy() else 0)
        stats = self._broker_stats()
        for name, kind, text in _BROKER_FIGURES:
            if name in stats:
                yield kind(f"omega_ws_{name}", text, value=stats[name])


_BROKER_FIGURES: list[tuple[str, type[GaugeMetricFamily] | type[CounterMetricFamily], str]] = [
    ("streams", GaugeMetricFamily, "Channel streams kept (offsets, epoch, history)"),
    ("history_bytes", GaugeMetricFamily, "Bytes of publication data kept in history"),
    ("history_dropped", CounterMetricFamily,
     "Publications dropped from history early by channels.history_max_bytes or "
     "history_total_bytes"),
    ("streams_evicted", CounterMetricFamily,
     "Streams forgotten early to stay within channels.max_streams"),
    ("sessions", GaugeMetricFamily,
     "Raw client sessions held (Redis broker: those live on this node)"),
    ("sessions_evicted", CounterMetricFamily,
     "Raw sessions dropped early to stay within reconnect.max_sessions"),
    # The Redis broker's.
    ("resyncs", CounterMetricFamily,
     "Channels resynced because their live stream broke (a gap, a foreign epoch, a stall)"),
    ("redis_shards_up", GaugeMetricFamily,
     "Redis shards this node can publish to and hear from"),
]
