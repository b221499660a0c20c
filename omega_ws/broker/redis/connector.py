"""
Keeping one connection to one Redis up: connect (through Sentinel when
the address names one), authenticate, select the database, hand the
connection over ready, and when it is lost or stops answering, fail what
waits at once and reconnect with backoff.

Nothing waits for Redis: a command while the connection is down fails at
once with L{BrokerUnavailable}, and a command unanswered after
C{reply_timeout} (Redis paused, a wedged network) drops the connection,
failing everything behind it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import ssl
from twisted.internet.defer import Deferred, fail, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..interface import BrokerUnavailable
from .layout import RedisAddress
from .resp import Arg, RedisError, RedisProtocol, protocol_factory
from .sentinel import master_of

__all__ = ["Connector"]

_log = Logger()

MAX_BACKOFF = 5.0


class Connector:
    """
    One connection to C{address}, kept up.  C{on_ready} runs on each new
    connection before it counts as up (load scripts, subscribe); a
    Deferred it returns is waited for.
    """

    def __init__(self, reactor: Any, address: RedisAddress, role: str,
                 on_ready: Callable[[RedisProtocol], Any],
                 reply_timeout: float = 2.0, connect_timeout: float = 2.0,
                 watch_sentinels: bool = False) -> None:
        self.reactor = reactor
        self.address = address
        self.role = role
        self._on_ready = on_ready
        self.reply_timeout = reply_timeout
        self.connect_timeout = connect_timeout
        self.protocol: RedisProtocol | None = None  # the connection, once ready
        self.problem = "not connected yet"
        self.on_lost: Callable[[], None] = lambda: None
        self._attempts = 0
        self._running = False
        self._pending: IDelayedCall | None = None
        self._connecting: RedisProtocol | None = None
        self._watchdog = LoopingCall(self._check_replies)
        self._watchdog.clock = reactor
        # Through Sentinel: the master connected to, checked every second.
        self._master: tuple[str, int] | None = None
        self._asking = False
        self._sentinel_watch = LoopingCall(self._watch_sentinels)
        self._sentinel_watch.clock = reactor
        self.watch_sentinels = watch_sentinels and bool(address.sentinel)

    @property
    def up(self) -> bool:
        return self.protocol is not None

    @property
    def connecting(self) -> RedisProtocol | None:
        """The connection being set up (C{on_ready} running), if any."""
        return self._connecting

    def start(self) -> None:
        self._running = True
        self._watchdog.start(min(0.5, self.reply_timeout / 4), now=False)
        if self.watch_sentinels:
            self._sentinel_watch.start(1.0, now=False)
        self._connect()

    def stop(self) -> Deferred[None]:
        self._running = False
        for timer in (self._watchdog, self._sentinel_watch):
            if timer.running:
                timer.stop()
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        protocol = self.protocol or self._connecting
        if protocol is None or protocol.closed:
            return Deferred.fromCoroutine(_done())
        lost = protocol.lost_deferred
        protocol.transport.loseConnection()  # type: ignore[union-attr]
        return lost

    def execute(self, *args: Arg) -> Deferred[Any]:
        protocol = self.protocol
        if protocol is None:
            return fail(BrokerUnavailable(f"Redis {self.address} is unavailable: {self.problem}"))
        return protocol.execute(*args).addErrback(self._demoted)

    def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Deferred[Any]]:
        protocol = self.protocol
        if protocol is None:
            error = BrokerUnavailable(f"Redis {self.address} is unavailable: {self.problem}")
            return [fail(error) for _ in commands]
        return [d.addErrback(self._demoted) for d in protocol.pipeline(commands)]

    def _demoted(self, failure: Failure) -> Failure:
        """A write refused by a replica: the master moved (a failover); find it again."""
        message = str(failure.value)
        # Redis 6.2 wraps it when a script wrote: "... -READONLY You can't write ...".
        if failure.check(RedisError) and (message.startswith("READONLY")
                                          or "-READONLY " in message):
            self.drop("the server became a replica")
        return failure

    def drop(self, why: str) -> None:
        """Close the connection (it will be made again): C{why} says what was wrong."""
        protocol = self.protocol or self._connecting
        if protocol is not None and not protocol.closed:
            self.problem = why
            protocol.transport.abortConnection()  # type: ignore[union-attr]

    # -- connecting ----------------------------------------------------------------

    def _connect(self) -> None:
        self._pending = None
        if self._running:
            self._attempt().addErrback(self._failed)

    @inlineCallbacks
    def _attempt(self) -> Any:
        host, port = yield self._resolve()
        self._master = (host, port)
        endpoint = self._endpoint(host, port)
        protocol = yield endpoint.connect(protocol_factory(self.reactor))
        self._connecting = protocol
        protocol.lost_deferred.addCallback(self._lost, protocol)
        address = self.address
        if address.password is not None:
            auth = ([address.username] if address.username else []) + [address.password]
            yield protocol.execute("AUTH", *auth)
        if address.db:
            yield protocol.execute("SELECT", address.db)
        if address.sentinel:
            role = yield protocol.execute("ROLE")
            if role[0] != b"master":
                raise BrokerUnavailable(f"{host}:{port} is a {role[0].decode()}, not the master")
        yield maybeDeferred(self._on_ready, protocol)
        if protocol.closed:
            raise BrokerUnavailable("the connection was lost while it was set up")
        if not self._running:
            return
        self._connecting = None
        self.protocol = protocol
        if self._attempts:
            _log.info("Redis {address} ({role}) is back", address=str(address), role=self.role)
        self._attempts = 0
        self.problem = ""

    def _endpoint(self, host: str, port: int) -> IStreamClientEndpoint:
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self.reactor, host, port, timeout=self.connect_timeout)
        if self.address.tls:
            options = ssl.optionsForClientTLS(host)
            endpoint = wrapClientTLS(options, endpoint)
        return endpoint

    def _resolve(self) -> Deferred[tuple[str, int]]:
        """Where the server is: the address, or the master its Sentinels name."""
        address = self.address
        if not address.sentinel:
            return succeed((address.host, address.port))
        return master_of(self.reactor, address, self.connect_timeout)

    def _watch_sentinels(self) -> None:
        """A failover moved the master: leave the old one now, not when it is demoted."""
        if self.protocol is None or self._master is None or self._asking:
            return
        self._asking = True

        def named(master: tuple[str, int]) -> None:
            if master != self._master:
                self.drop(f"the Sentinels name another master, {master[0]}:{master[1]}")

        d = master_of(self.reactor, self.address, self.reply_timeout)
        d.addCallbacks(named, lambda _: None).addBoth(self._asked)

    def _asked(self, _: object) -> None:
        self._asking = False

    def _failed(self, failure: Failure) -> None:
        protocol, self._connecting = self._connecting, None
        if protocol is not None and not protocol.closed:
            protocol.transport.abortConnection()  # type: ignore[union-attr]
        self.problem = _describe(failure)
        self._retry()

    def _lost(self, _: None, protocol: RedisProtocol) -> None:
        if self.protocol is protocol:
            self.protocol = None
            if self.problem == "":
                self.problem = "the connection was lost"
            _log.warn("Redis {address} ({role}): {problem}; reconnecting",
                      address=str(self.address), role=self.role, problem=self.problem)
            self.on_lost()
            self._retry()

    def _retry(self) -> None:
        if not self._running or self._pending is not None:
            return
        self._attempts += 1
        delay = min(MAX_BACKOFF, 0.05 * 2 ** min(self._attempts, 10))
        self._pending = self.reactor.callLater(delay * random.uniform(0.75, 1.25),
                                               self._connect)

    def _check_replies(self) -> None:
        protocol = self.protocol or self._connecting
        if protocol is None or not protocol.sent_at:
            return
        if self.reactor.seconds() - protocol.sent_at[0] > self.reply_timeout:
            self.drop(f"no reply within {self.reply_timeout:g} s")


async def _done() -> None:
    return None


def _describe(failure: Failure) -> str:
    error = failure.value
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:200]
