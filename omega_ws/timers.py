"""
The two sweeps over the client registry: heartbeat and monitor.

Each is one L{LoopingCall} for all connections, not a timer per
connection, created in C{startService} and stopped in C{stopService}, on
an injectable clock (L{IReactorTime}) so that tests drive them with
L{twisted.internet.task.Clock}.  Every tick catches and logs its own
failures, since one exception would end a LoopingCall for good.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from . import systemd
from .registry import Registry

__all__ = ["HeartbeatService", "MonitorService", "WatchdogService"]

_log = Logger()


def _guarded(action: Callable[[], None], client_id: str) -> None:
    """Run one connection's action; its failure must not cost the others theirs."""
    try:
        action()
    except Exception:
        _log.failure("{action} for {client_id} failed", action=getattr(action, "__name__", action),
                     client_id=client_id)


class _SweepService(Service):
    def __init__(self, clock: IReactorTime, interval: float) -> None:
        self.clock = clock
        self.interval = interval
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._safe_tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _safe_tick(self) -> None:
        try:
            self.tick()
        except Exception:
            _log.failure("{sweep} tick failed", sweep=type(self).__name__)

    def tick(self) -> None:
        raise NotImplementedError


class WatchdogService(_SweepService):
    """
    C{WATCHDOG=1} to systemd every C{interval} seconds from a LoopingCall on
    C{clock} (the reactor), from start to stop.  It pings whatever the
    broker's health: systemd's watchdog says the process is alive (its
    reactor turns); a Redis outage is the broker's to ride out, and a
    restart would only drop every client without bringing Redis back.
    """

    def __init__(self, clock: IReactorTime, interval: float,
                 environ: Mapping[str, str] | None = None) -> None:
        super().__init__(clock, interval)
        self.environ = environ

    def tick(self) -> None:
        systemd.notify("WATCHDOG=1", self.environ)


class HeartbeatService(_SweepService):
    """
    Every C{interval} seconds, send each connection a heartbeat in its wire
    format; C{timeout} seconds after a sweep, drop every connection that
    has not answered a heartbeat sent at or before that sweep.  The check
    is one delayed call per sweep, whatever the number of connections.
    """

    def __init__(
        self, registry: Registry, clock: IReactorTime, interval: float, timeout: float
    ) -> None:
        super().__init__(clock, interval)
        self.registry = registry
        self.timeout = timeout
        self._checks: set[IDelayedCall] = set()

    def tick(self) -> None:
        now = self.clock.seconds()
        for connection in self.registry:
            info = connection.info
            # Only the oldest unanswered heartbeat is timed; a connection
            # that answers any of them is alive.
            if info.ping_sent_at is None:
                info.ping_sent_at = now
            _guarded(connection.send_heartbeat, info.client_id)
        check: IDelayedCall = self.clock.callLater(self.timeout, self._check, now)
        self._checks.add(check)

    def _check(self, sweep_time: float) -> None:
        self._checks = {c for c in self._checks if c.active()}
        for connection in self.registry:
            sent_at = connection.info.ping_sent_at
            if sent_at is not None and sent_at <= sweep_time:
                _guarded(connection.drop_unresponsive, connection.info.client_id)

    def stopService(self) -> None:
        super().stopService()
        for check in self._checks:
            if check.active():
                check.cancel()
        self._checks.clear()


class MonitorService(_SweepService):
    """
    Every C{interval} seconds: close connections that received nothing for
    C{idle_timeout} seconds (1000 "Inactive client"), run the extra
    housekeeping hooks (session expiry, ...), and log a one-line summary;
    under systemd, also send C{STATUS=} with the line C{status} gives.
    """

    def __init__(
        self,
        registry: Registry,
        clock: IReactorTime,
        interval: float,
        idle_timeout: float,
        counters: Callable[[], dict[str, int]],
        housekeeping: tuple[Callable[[float], None], ...] = (),
        status: Callable[[], str] | None = None,
    ) -> None:
        super().__init__(clock, interval)
        self.registry = registry
        self.idle_timeout = idle_timeout
        self._counters = counters
        self._housekeeping = housekeeping
        self._status = status

    def tick(self) -> None:
        now = self.clock.seconds()
        idle = 0
        for connection in self.registry:
            if now - connection.info.last_message >= self.idle_timeout:
                idle += 1
                _guarded(connection.close_inactive, connection.info.client_id)
        for hook in self._housekeeping:
            _guarded(functools.partial(hook, now), "housekeeping")
        states: dict[str, int] = {}
        for (_, state), count in self.registry.counts().items():
            states[state] = states.get(state, 0) + count
        by_state = ", ".join(f"{state} {count}" for state, count in sorted(states.items()))
        _log.info(
            "monitor: {connections} connections ({by_state}); {idle} closed as inactive; "
            "messages in {messages_in}, published {published}, delivered {delivered}",
            connections=len(self.registry),
            by_state=by_state or "none",
            idle=idle,
            **self._counters(),
        )
        _guarded(self.send_status, "systemd")

    def send_status(self) -> None:
        """C{STATUS=} to systemd, when there is one to tell."""
        if self._status is not None and systemd.notifying():
            systemd.notify("STATUS=" + self._status())
