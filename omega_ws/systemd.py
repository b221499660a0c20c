"""
systemd's notification protocol (C{Type=notify}), without a dependency: one
datagram to the socket named by C{NOTIFY_SOCKET}, when it is set.

What omega-ws sends (see docs/systemd.md):

  - C{READY=1} once every listener is bound, C{STOPPING=1} when the
    graceful shutdown starts (L{omega_ws.service.OmegaService});
  - C{STATUS=} one line of connection counts after each monitor sweep
    (L{status_line}, sent by L{omega_ws.timers.MonitorService});
  - C{WATCHDOG=1} every C{WATCHDOG_USEC / 2} from a LoopingCall on the
    reactor, when systemd set C{WATCHDOG_USEC} for this process
    (L{omega_ws.timers.WatchdogService}): a reactor that no longer turns
    stops pinging;
  - C{EXTEND_TIMEOUT_USEC=} while the shutdown drain waits for clients
    (L{extend_timeout_while}).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["extend_timeout_while", "executable_memory_allowed", "notify",
           "notifying", "status_line", "watchdog_interval"]

_log = Logger()
_T = TypeVar("_T")

# Seconds asked for on top of what a wait is expected to last (the steps
# of the shutdown after the drain: admin listener, broker).
EXTEND_MARGIN = 5.0
# Seconds between two EXTEND_TIMEOUT_USEC= while a wait lasts.
EXTEND_EVERY = 1.0
# Transports in the order STATUS= names them (then any other, by name).
_TRANSPORTS = ("raw", "centrifuge")


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """
    Send C{state} (e.g. C{"READY=1"}) to systemd.  Returns whether a
    message was sent; never raises, since a missing systemd is normal.
    It never blocks either (this runs on the reactor): when the receiver's
    queue is full the message is dropped, with a warning.
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.send(state.encode(), socket.MSG_DONTWAIT)
    except OSError as e:
        _log.warn("cannot notify systemd ({state}): {error}", state=state, error=e)
        return False
    return True


def notifying(environ: Mapping[str, str] | None = None) -> bool:
    """Whether there is a systemd to notify (C{NOTIFY_SOCKET} is set)."""
    return bool((os.environ if environ is None else environ).get("NOTIFY_SOCKET"))


# -- STATUS= ---------------------------------------------------------------------------


def status_line(counts: Mapping[tuple[str, str], int], channels: int,
                broker_healthy: bool = True, broker_problem: str = "") -> str:
    """
    The one line C{systemctl status} shows, e.g. C{"connections: 12 (raw
    10, centrifuge 2); channels: 5; broker ok"}.

    @param counts: live connections by (transport, state), as
        L{omega_ws.registry.Registry.counts} gives them; states other than
        CONNECTED (a raw client resuming) are added, e.g. C{"; 1 reconnecting"}.
    @param channels: channels with a local subscriber.
    @param broker_healthy: whether the broker takes publications; when not,
        C{broker_problem} says why (C{"broker unreachable: ..."}).
    """
    by_transport: dict[str, int] = dict.fromkeys(_TRANSPORTS, 0)
    by_state: dict[str, int] = {}
    for (transport, state), count in counts.items():
        by_transport[transport] = by_transport.get(transport, 0) + count
        if state != "CONNECTED":
            by_state[state.lower()] = by_state.get(state.lower(), 0) + count
    order = [*_TRANSPORTS, *sorted(set(by_transport) - set(_TRANSPORTS))]
    detail = ", ".join(f"{name} {by_transport[name]}" for name in order)
    detail += "".join(f"; {count} {state}" for state, count in sorted(by_state.items()))
    if broker_healthy:
        broker = "broker ok"
    else:
        broker = f"broker unreachable: {broker_problem}" if broker_problem else (
            "broker unreachable")
    total = sum(by_transport.values())
    line = f"connections: {total} ({detail}); channels: {channels}; {broker}"
    # One line: systemd would read what follows a newline as another assignment.
    return " ".join(line.splitlines())


# -- WATCHDOG=1 ------------------------------------------------------------------------


def watchdog_interval(environ: Mapping[str, str] | None = None,
                      pid: int | None = None) -> float | None:
    """
    Seconds between two C{WATCHDOG=1}: half of C{WATCHDOG_USEC}, as
    sd_watchdog_enabled(3) advises, when systemd set it for this process
    (C{WATCHDOG_PID} unset or C{pid}, our own by default); None when there
    is no watchdog to feed (or its variables do not parse: a warning).
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "").strip()
    if not usec:
        return None
    owner = env.get("WATCHDOG_PID", "").strip()
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None  # meant for another process (we were started by one)
    try:
        value = int(usec)
    except ValueError:
        value = 0
    if value <= 0:
        _log.warn("ignoring WATCHDOG_USEC={usec!r}: not a positive number", usec=usec)
        return None
    return value / 2_000_000


# -- EXTEND_TIMEOUT_USEC= --------------------------------------------------------------


def extend_timeout_while(waiting: Deferred[_T], clock: IReactorTime, expected: float,
                         margin: float = EXTEND_MARGIN, every: float = EXTEND_EVERY,
                         environ: Mapping[str, str] | None = None) -> Deferred[_T]:
    """
    While C{waiting} is pending (a wait bounded by C{expected} seconds, such
    as the shutdown drain), ask systemd for the time it needs: at once
    C{EXTEND_TIMEOUT_USEC} for C{expected + margin} seconds, then every
    C{every} seconds for what is left of C{expected}, plus C{margin}.
    The extensions end when C{waiting} fires, and in any case C{expected +
    margin} seconds after the start, so that a wait that hangs still meets
    a deadline.  Nothing is sent when C{waiting} has already fired or there
    is no systemd.  Returns C{waiting}, result untouched.

    systemd only acts on an extension past the unit's own C{TimeoutStopSec}
    (or start/runtime timeout): a drain shorter than that costs nothing.
    """
    if waiting.called or not notifying(environ):
        return waiting
    start = clock.seconds()

    def extend() -> None:
        elapsed = clock.seconds() - start
        if elapsed >= expected + margin:
            loop.stop()
            return
        left = max(expected - elapsed, 0.0) + margin
        notify(f"EXTEND_TIMEOUT_USEC={round(left * 1_000_000)}", environ)

    def done(result: _T) -> _T:
        if loop.running:
            loop.stop()
        return result

    loop = LoopingCall(extend)
    loop.clock = clock
    loop.start(every, now=True)
    return waiting.addBoth(done)


# -- MemoryDenyWriteExecute= -----------------------------------------------------------


def executable_memory_allowed() -> bool:
    """
    Whether this process may map writable and executable memory, which
    cffi's callbacks need, and so pyOpenSSL for every TLS connection.
    systemd's C{MemoryDenyWriteExecute=yes} (or SELinux's deny_execmem)
    forbids it; then wss:// cannot work.
    """
    try:
        import cffi
    except ImportError:  # no cffi: nothing here needs it
        return True
    try:
        cffi.FFI().callback("int(int)", lambda n: n)
    except MemoryError:
        return False
    return True
