"""
One Redis shard as a node sees it: a command connection (scripts,
reads, PUBLISH) and a subscriber connection holding one pub/sub
subscription per channel that has local subscribers here, plus the
node's own channel.  After a reconnect it subscribes everything again;
an end-to-end probe (a PUBLISH to the node's own channel every second,
which must come back through pub/sub) tells a wedged subscription from a
quiet one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed

from ..interface import BrokerUnavailable
from . import scripts
from .connector import Connector
from .layout import RedisAddress
from .resp import RedisProtocol

__all__ = ["Shard"]

# Channels per SUBSCRIBE command when (re)subscribing everything.
SUBSCRIBE_BATCH = 512
# How long a join waits for its channel's subscription (across a reconnect).
SUBSCRIBE_WAIT = 5.0

MessageHandler = Callable[["Shard", bytes, bytes], None]


class Shard:
    """One shard's two connections and what is subscribed on it."""

    def __init__(self, reactor: Any, index: int, address: RedisAddress, own_channels: list[bytes],
                 on_message: MessageHandler, on_resubscribed: Callable[[Shard], None],
                 reply_timeout: float = 2.0, probe_timeout: float = 3.0) -> None:
        self.reactor = reactor
        self.index = index
        self.address = address
        self.run_id = ""
        # The command connection follows a failover at once; the subscriber
        # one is dropped by the probe if it stayed on the old master.
        self.commands = Connector(reactor, address, "commands", self._commands_ready,
                                  reply_timeout, watch_sentinels=True)
        self.subscriber = Connector(reactor, address, "pub/sub", self._subscriber_ready,
                                    reply_timeout)
        self.subscriber.on_lost = self._subscriber_lost
        self._own = own_channels  # the node's own channel (and the control channel)
        self._on_message = on_message
        self._on_resubscribed = on_resubscribed
        self.probe_timeout = probe_timeout
        self.wanted: set[bytes] = set()  # pub/sub names with local subscribers
        self._unconfirmed: dict[bytes, int] = {}  # SUBSCRIBEs sent, not yet confirmed
        self._confirmed: set[bytes] = set()
        self._waiters: dict[bytes, list[Deferred[None]]] = {}
        self._subscriber_connections = 0
        self._after_pong: deque[Callable[[], None]] = deque()
        # Set after a reconnect until the streams were compared (see broker).
        self.comparison_owed = False
        # A probe went missing: unhealthy until one comes back.
        self._probe_failed = False
        # When the oldest probe not yet back through pub/sub was sent.
        self._probe_sent_at: float | None = None

    def start(self) -> None:
        self.commands.start()
        self.subscriber.start()

    def stop(self) -> Deferred[Any]:
        return DeferredList([self.commands.stop(), self.subscriber.stop()])

    @property
    def problem(self) -> str:
        """Why this shard cannot carry publications now; empty when it can."""
        for connector in (self.commands, self.subscriber):
            if not connector.up:
                return f"Redis {self.address} ({connector.role}): {connector.problem}"
        if self._probe_failed:
            return f"Redis {self.address} (pub/sub): no probe came back yet"
        return ""

    # -- the command connection ------------------------------------------------------

    def _commands_ready(self, protocol: RedisProtocol) -> Deferred[Any]:
        loads = protocol.pipeline([("SCRIPT", "LOAD", s.text) for s in scripts.ALL])
        return DeferredList(loads, fireOnOneErrback=True, consumeErrors=True).addCallback(
            lambda _: self._read_run_id(protocol))

    def _read_run_id(self, protocol: RedisProtocol) -> Deferred[Any]:
        """
        The Redis process's run id: every meta records the one that wrote
        it, and a stream written by an earlier process (which may have had
        writes this one lost) gets a new epoch at its next publication.
        """
        def keep(info: bytes) -> None:
            for line in info.splitlines():
                if line.startswith(b"run_id:"):
                    self.run_id = line[7:].strip().decode()

        return protocol.execute("INFO", "server").addCallback(keep).addCallback(
            lambda _: self.reactor.callLater(0, self._commands_up))

    def _commands_up(self) -> None:
        if self.comparison_owed:  # pub/sub came back first: compare now
            self._on_resubscribed(self)

    # -- the subscriber connection -----------------------------------------------------

    def _subscriber_ready(self, protocol: RedisProtocol) -> None:
        protocol.enter_pubsub(self)
        names = list(self._own) + sorted(self.wanted)
        self._unconfirmed = {}
        for start in range(0, len(names), SUBSCRIBE_BATCH):
            batch = names[start:start + SUBSCRIBE_BATCH]
            for name in batch:
                self._unconfirmed[name] = self._unconfirmed.get(name, 0) + 1
            protocol.send("SUBSCRIBE", *batch)
        self._subscriber_connections += 1
        self._probe_sent_at = None
        if self._subscriber_connections > 1:
            # What was published while pub/sub was away is found by comparing
            # the streams with what arrived: owed until that comparison ran.
            self.comparison_owed = True
            self.after_messages(lambda: self._on_resubscribed(self))

    def after_messages(self, action: Callable[[], None]) -> bool:
        """
        Run C{action} once everything pub/sub sent so far has arrived (a
        PING answered on the subscriber connection: Redis answers in order).
        False if there is no subscriber connection to ask.
        """
        protocol = self.subscriber.protocol or self.subscriber.connecting
        if protocol is None:
            return False
        self._after_pong.append(action)
        protocol.send("PING")
        return True

    def _subscriber_lost(self) -> None:
        self._confirmed.clear()
        self._unconfirmed.clear()
        self._after_pong.clear()

    def subscribe(self, name: bytes) -> None:
        self.wanted.add(name)
        protocol = self.subscriber.protocol
        if protocol is not None:
            self._unconfirmed[name] = self._unconfirmed.get(name, 0) + 1
            protocol.send("SUBSCRIBE", name)

    def unsubscribe(self, name: bytes) -> None:
        self.wanted.discard(name)
        self._confirmed.discard(name)
        for d in self._waiters.pop(name, []):
            d.callback(None)
        protocol = self.subscriber.protocol
        if protocol is not None:
            protocol.send("UNSUBSCRIBE", name)

    def confirmed(self, name: bytes) -> bool:
        """Is C{name} subscribed on the current connection (not just on its way out)?"""
        return name in self._confirmed

    def subscribed(self, name: bytes) -> Deferred[None]:
        """
        Fires once Redis confirmed the subscription to C{name}: at once, or
        when the subscriber connection is back (a resubscribe confirms it);
        fails with L{BrokerUnavailable} after C{SUBSCRIBE_WAIT} seconds.
        """
        if name in self._confirmed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.setdefault(name, []).append(d)
        self.reactor.callLater(SUBSCRIBE_WAIT, self._waited_too_long, name, d)
        return d

    def _waited_too_long(self, name: bytes, d: Deferred[None]) -> None:
        waiting = self._waiters.get(name, [])
        if d in waiting:
            waiting.remove(d)
            if not waiting:
                del self._waiters[name]
            d.errback(BrokerUnavailable(self.problem or f"Redis {self.address}: no "
                                        f"subscription within {SUBSCRIBE_WAIT:g} s"))

    # PubSubListener

    def message(self, channel: bytes, data: bytes) -> None:
        if data == b"probe" and channel == self._own[0]:
            self._probe_sent_at = None
            self._probe_failed = False
            return
        self._on_message(self, channel, data)

    def subscribed_to(self, name: bytes) -> None:
        left = self._unconfirmed.get(name, 0) - 1
        if left > 0:
            self._unconfirmed[name] = left
            return
        self._unconfirmed.pop(name, None)
        if name in self.wanted or name in self._own:
            self._confirmed.add(name)
            for d in self._waiters.pop(name, []):
                d.callback(None)

    def pong(self) -> None:
        if self._after_pong:
            self._after_pong.popleft()()

    # -- the probe ---------------------------------------------------------------------

    def probe(self) -> None:
        """Publish a probe; drop the subscriber connection if the last ones never came."""
        if self.subscriber.protocol is None or self.commands.protocol is None:
            self._probe_sent_at = None  # a probe can only be missed while both are up
            return
        now = self.reactor.seconds()
        if self._probe_sent_at is None:
            self._probe_sent_at = now
        elif now - self._probe_sent_at > self.probe_timeout:
            # Unhealthy until a probe comes back, on the next connection.
            self._probe_failed = True
            self.subscriber.drop(f"pub/sub delivered no probe within {self.probe_timeout:g} s")
            return
        self.commands.execute("PUBLISH", self._own[0], b"probe").addErrback(lambda _: None)
