"""
What the dashboard shows, gathered in this process: L{Dashboard} samples
the message counters once a second into a ring buffer (the time chart,
the last L{HISTORY} seconds), remembers the last position seen on each
channel with local subscribers (the hub's dispatch hook, and a bounded
number of position reads from the broker for channels nothing was
published on yet), surveys the nodes sharing the broker at a low rate
while someone watches, and builds the snapshot that the feed
(C{feed.py}) sends.  Nothing it puts in a snapshot is secret: the
configuration summary is a whitelist, and the broker URL has its
password replaced (C{broker.redis.layout.redacted}).
"""

from __future__ import annotations

import heapq
import json
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._version import __version__
from ..broker import Broker, Publication, StreamPosition
from ..config import Config
from ..hub import Hub
from ..metrics import TRANSPORTS, Metrics
from ..registry import ConnectionState, Registry
from ..server_api import ServerApi

__all__ = ["HISTORY", "INTERVAL", "Dashboard", "Sink", "Source", "config_summary"]

_log = Logger()

INTERVAL = 1.0  # seconds between samples, and between snapshots on the feed
HISTORY = 300  # samples kept: five minutes
CHANNELS_SHOWN = 100  # channels in a snapshot, those with the most local subscribers
CLIENTS_SHOWN = 100  # clients in a snapshot, the newest
POSITION_READS = 8  # channel positions read from the broker per tick, at most
NODES_EVERY = 5  # ticks between surveys of the nodes sharing a Redis broker
KEEPALIVE_EVERY = 15  # ticks between keep-alive comments on the feed

# Counter families shown on the page, by the key they have in a snapshot.
_COUNTERS = {
    "omega_ws_closes": "closes",
    "omega_ws_slow_consumer_drops": "slow_consumer_drops",
    "omega_ws_invalid_messages": "invalid_messages",
    "omega_ws_handshake_refusals": "handshake_refusals",
    "omega_ws_rate_limited": "rate_limited",
    "omega_ws_recovery_gaps": "recovery_gaps",
    "omega_ws_state_transitions": "state_transitions",
    "omega_ws_admin_refusals": "admin_refusals",
    "omega_ws_history_dropped": "history_dropped",
    "omega_ws_streams_evicted": "streams_evicted",
    "omega_ws_sessions_evicted": "sessions_evicted",
    "omega_ws_resyncs": "resyncs",
}


class Source(Protocol):
    """What the dashboard reads of the server (an C{OmegaService})."""

    config: Config
    registry: Registry
    hub: Hub
    metrics: Metrics
    broker: Broker
    api: ServerApi
    started_at: float
    listeners: list[Any]

    def problems(self) -> list[str]: ...


class Sink(Protocol):
    """An open feed (C{feed.py}): takes events, already encoded."""

    def event(self, name: bytes, data: bytes) -> None: ...

    def comment(self, text: bytes) -> None: ...

    def close(self) -> None: ...


def _redacted(url: str) -> str:
    if url.startswith("memory://"):
        return url
    # Imported only when used, as make_broker does: memory:// needs no Redis client.
    from ..broker.redis.layout import redacted
    return ",".join(redacted(part.strip()) for part in url.split(","))


def config_summary(config: Config, listeners: Iterable[str] = ()) -> dict[str, Any]:
    """
    What the page shows of the configuration: a whitelist, never a key,
    a secret or a password (C{auth.token_secret}, C{admin.api_key} and the
    broker URL's password are reduced to whether they are set).
    """
    s, auth, admin, channels = (config.server, config.auth, config.admin, config.channels)
    tokens = ("HMAC secret" if auth.token_secret else
              "public key" if auth.token_public_key else "off")
    return {
        "listeners": list(listeners),
        "server": {"host": s.host, "tls": s.cert is not None,
                   "max_connections": s.max_connections,
                   "max_connections_per_ip": s.max_connections_per_ip,
                   "max_message_size": s.max_message_size, "max_queue_size": s.max_queue_size,
                   "allowed_origins": list(s.allowed_origins), "publish_rate": s.publish_rate,
                   "compression": s.compression},
        "heartbeat": {"ping_interval": config.heartbeat.ping_interval,
                      "ping_timeout": config.heartbeat.ping_timeout},
        "monitor": {"interval": config.monitor.interval,
                    "idle_timeout": config.monitor.idle_timeout},
        "channels": {"default": channels.default, "history_size": channels.history_size,
                     "history_ttl": channels.history_ttl,
                     "allow_client_publish": channels.allow_client_publish},
        "reconnect": {"session_ttl": config.reconnect.session_ttl},
        "auth": {"tokens": tokens, "anonymous": auth.anonymous_allowed},
        "admin": {"api_key": "set" if admin.api_key else "not set",
                  "allowed_origins": list(admin.allowed_origins),
                  "max_connections": admin.max_connections},
        "broker": {"url": _redacted(config.broker.url), "prefix": config.broker.prefix},
        "log": {"format": config.log.format, "level": config.log.level},
    }


def counter_values(metrics: Metrics) -> dict[str, dict[str, float]]:
    """The counters of L{_COUNTERS}: C{{key: {label values joined by ",": value}}}."""
    values: dict[str, dict[str, float]] = {key: {} for key in _COUNTERS.values()}
    for metric in metrics.registry.collect():
        key = _COUNTERS.get(metric.name)
        if key is None:
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                label = ",".join(sample.labels.values()) or "total"
                values[key][label] = sample.value
    return values


class Dashboard(Service):
    """
    The dashboard's figures and its open feeds: a tick every L{INTERVAL}
    seconds samples the rates, and when feeds are open sends each the
    same snapshot.  A child service of the server, started with the
    listeners; stopping it closes the feeds.
    """

    def __init__(self, server: Source, clock: IReactorTime) -> None:
        self.server = server
        self.clock = clock
        self.feeds: set[Sink] = set()
        # (time, received/s, published/s, delivered/s)
        self.history: deque[tuple[float, float, float, float]] = deque(maxlen=HISTORY)
        # The last (offset, epoch) seen on each channel with local subscribers.
        self.positions: dict[str, tuple[int, str]] = {}
        self.nodes: list[dict[str, Any]] = []
        self.nodes_error = ""
        self._reading: set[str] = set()  # channels whose position is being read
        self._surveying = False
        self._ticks = 0
        self._totals: tuple[float, dict[str, int]] | None = None
        self._loop: LoopingCall | None = None

    # -- the service --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._totals = None
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(INTERVAL, now=True).addErrback(
            lambda failure: _log.failure("dashboard tick failed", failure))

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        for feed in list(self.feeds):
            feed.close()
        self.feeds.clear()

    def seen(self, publication: Publication) -> None:
        """The hub dispatched C{publication} to local subscribers (a hot path)."""
        self.positions[publication.channel] = (publication.offset, publication.epoch)

    def tick(self) -> None:
        """Sample the rates; with feeds open, send them a snapshot."""
        try:
            self._ticks += 1
            self.sample()
            self._prune()
            if not self.feeds:
                return
            if self._ticks % (1 if self._memory else NODES_EVERY) == 0 or not self.nodes:
                self.survey()
            data = self.encode(self.snapshot())
            keepalive = self._ticks % KEEPALIVE_EVERY == 0
            for feed in list(self.feeds):
                feed.event(b"snapshot", data)
                if keepalive:
                    feed.comment(b"keep-alive")
        except Exception:
            _log.failure("dashboard tick failed")

    @property
    def _memory(self) -> bool:
        return self.server.config.broker.url.startswith("memory://")

    # -- figures --------------------------------------------------------------------

    def sample(self) -> None:
        """One point of the time chart: the rates since the last sample."""
        now = self.clock.seconds()
        totals = self.server.metrics.totals()
        if self._totals is not None:
            then, before = self._totals
            elapsed = now - then
            if elapsed > 0:
                rate = [round((totals[k] - before.get(k, 0)) / elapsed, 2)
                        for k in ("messages_in", "published", "delivered")]
                self.history.append((round(now, 3), rate[0], rate[1], rate[2]))
        self._totals = (now, totals)

    def _prune(self) -> None:
        """Forget positions of channels without local subscribers (bounded memory)."""
        if not self.positions:
            return
        channels = self.server.hub.channels()
        if len(self.positions) > len(channels):
            for name in [n for n in self.positions if n not in channels]:
                del self.positions[name]

    def _read_position(self, channel: str) -> None:
        """Read a channel's position from the broker (for one nothing was published on)."""
        if channel in self._reading or len(self._reading) >= POSITION_READS:
            return
        self._reading.add(channel)

        def read(position: StreamPosition) -> None:
            if channel in self.server.hub.channels():
                self.positions.setdefault(channel, (position.offset, position.epoch))

        def failed(failure: Failure) -> None:
            _log.debug("dashboard: no position for {channel}: {error}", channel=channel,
                       error=failure.getErrorMessage())

        d = self.server.hub.position(channel)
        d.addCallbacks(read, failed).addBoth(lambda _: self._reading.discard(channel))

    def survey(self) -> None:
        """Ask every node sharing the broker for its figures (C{api.info()})."""
        if self._surveying:
            return
        self._surveying = True

        def answered(result: Any) -> None:
            self._surveying = False
            nodes = result.get("nodes", []) if isinstance(result, dict) else []
            me = self.server.api.node_id
            self.nodes = sorted(({**node, "self": node.get("uid") == me} for node in nodes),
                                key=lambda node: (not node["self"], str(node.get("uid"))))
            self.nodes_error = ""

        def failed(failure: Failure) -> None:
            self._surveying = False
            self.nodes_error = failure.getErrorMessage() or failure.type.__name__

        try:
            answer = self.server.api.info()
        except Exception:
            failed(Failure())
            return
        if isinstance(answer, dict):
            answered(answer)
        else:
            answer.addCallbacks(answered, failed)

    # -- the snapshot ------------------------------------------------------------------

    @staticmethod
    def encode(snapshot: dict[str, Any]) -> bytes:
        """One line of JSON (what a feed's C{data:} line carries)."""
        return json.dumps(snapshot, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False).encode()

    def snapshot(self, with_history: bool = False) -> dict[str, Any]:
        """Everything the page shows, now; C{with_history}: the whole time chart too."""
        server = self.server
        now = self.clock.seconds()
        snapshot: dict[str, Any] = {
            "t": round(now, 3),
            "node": server.api.node_id,
            "version": __version__,
            "uptime": round(now - server.started_at, 1) if server.started_at else 0,
            "interval": INTERVAL,
            "connections": self._connections(),
            "clients": self._clients(),
            "channels": self._channels(),
            "rate": self.history[-1] if self.history else None,
            "counters": counter_values(server.metrics),
            "broker": self._broker(),
            "config": config_summary(server.config, self._listener_urls()),
        }
        if with_history:
            snapshot["history"] = list(self.history)
        return snapshot

    def _listener_urls(self) -> list[str]:
        return [str(getattr(listener, "url", "")) for listener in self.server.listeners]

    def _connections(self) -> dict[str, Any]:
        counts = self.server.registry.counts()
        by = {transport: {state.value: counts.get((transport, state.value), 0)
                          for state in ConnectionState} for transport in TRANSPORTS}
        return {"total": len(self.server.registry), "by": by}

    def _clients(self) -> dict[str, Any]:
        live = list(self.server.registry)
        newest = heapq.nlargest(CLIENTS_SHOWN, live, key=lambda c: c.info.connected_at)
        shown = []
        for connection in newest:
            info = connection.info
            channels = sorted(info.channels)
            shown.append({"client_id": info.client_id, "user": info.user,
                          "transport": info.transport, "state": info.state.value,
                          "peer": info.peer, "connected_at": round(info.connected_at, 3),
                          "channels": channels[:8], "channel_count": len(channels),
                          "messages": info.message_count, "errors": info.error_count})
        return {"total": len(live), "shown": shown}

    def _channels(self) -> dict[str, Any]:
        counts = self.server.hub.channels()
        top = heapq.nsmallest(CHANNELS_SHOWN, counts.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = []
        for name, subscribers in top:
            position = self.positions.get(name)
            if position is None:
                self._read_position(name)
            shown.append({"name": name, "subscribers": subscribers,
                          "offset": position[0] if position else None,
                          "epoch": position[1] if position else None})
        return {"total": len(counts), "shown": shown}

    def _broker(self) -> dict[str, Any]:
        server = self.server
        broker = server.broker
        return {"kind": "memory" if self._memory else "redis",
                "url": _redacted(server.config.broker.url),
                "healthy": bool(broker.healthy), "problem": broker.problem,
                "problems": server.problems(), "stats": broker.stats(),
                "nodes": self.nodes, "nodes_error": self.nodes_error}
