"""
The factory that builds L{OmegaProtocol}s: it owns the client registry and
the L{WireContext} every connection's wire shares, chooses the wire for a
request path, and closes everything at shutdown.  One factory serves
every WebSocket listener (ws, wss, extra endpoints).
"""

from __future__ import annotations

import types
from typing import cast

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IProtocolNegotiationFactory, IReactorTime
from zope.interface import implementer

from . import _compat
from .addresses import address_key
from .auth import TokenVerifier
from .centrifuge import CENTRIFUGE_PATH, CentrifugeWire
from .config import Config, origin_pattern
from .hub import Hub
from .limits import PublishLimit, SharedBuckets, TokenBucket
from .metrics import Metrics
from .outbox import FlushScheduler
from .protocol import OmegaProtocol
from .raw import RawWire
from .registry import Registry
from .safety import Http11OverAlpn, apply_limits
from .server_api import ServerApi
from .wire import Link, RpcHandler, Wire, WireContext

__all__ = ["OmegaServerFactory"]

# At shutdown, how often to look for handshakes that have completed since.
_HANDSHAKE_POLL = 0.05


@implementer(IProtocolNegotiationFactory)
class OmegaServerFactory(Http11OverAlpn, WebSocketServerFactory):
    """
    Builds L{OmegaProtocol}s; keeps the client L{Registry} and the
    L{WireContext}; is the protocols' L{protocol.Server}.
    """

    protocol = OmegaProtocol

    def __init__(
        self, config: Config, hub: Hub, metrics: Metrics, registry: Registry,
        clock: IReactorTime, tokens: TokenVerifier, api: ServerApi | None = None,
    ) -> None:
        super().__init__(server="omega-ws")
        self.config = config
        self.metrics = metrics
        self.registry = registry
        self.clock = clock
        if api is None:
            api = ServerApi(hub, registry, config, metrics, clock, clock.seconds)
        self.context = WireContext(hub, clock, config, tokens, metrics, registry,
                                   self.publish_limit, api)
        # Every connection with a transport, handshake done or not.
        self.connections: set[OmegaProtocol] = set()
        self.flusher = FlushScheduler(clock)
        self.per_ip: dict[str, int] = {}
        self.shared_publish_buckets = _shared_publish_buckets(config)
        self._origins = origin_pattern(config.server.allowed_origins)
        self._drained: Deferred[None] | None = None
        self.noisy = False
        apply_limits(self, config)
        # Autobahn copies every option from the factory onto each connection
        # unless its class has it already: as class attributes of a subclass
        # made for this factory, they cost nothing per connection.
        options = {name: getattr(self, name) for name in _compat.config_attrs()}
        # Functions (the compression hook) must not turn into methods there.
        options = {name: staticmethod(value) if isinstance(value, types.FunctionType) else value
                   for name, value in options.items()}
        self.protocol = cast(type[OmegaProtocol],
                             type("OmegaProtocol", (OmegaProtocol,), options))

    @property
    def hub(self) -> Hub:
        return self.context.hub

    @property
    def rpc_handlers(self) -> dict[str, RpcHandler]:
        """Python handlers for the Centrifuge protocol's rpc command, by method."""
        return self.context.rpc_handlers

    def make_wire(self, protocol: OmegaProtocol, path: str) -> Wire:
        """The wire format for a request path."""
        if path == CENTRIFUGE_PATH:
            return CentrifugeWire(self.context, protocol)
        return RawWire(self.context, protocol)

    def publish_limit(self, link: Link, user: str) -> PublishLimit | None:
        """
        What a new connection's publications draw from: its own bucket
        (C{server.publish_rate}) and the ones its address and its token user
        share with their other connections (C{server.address_publish_rate}).
        """
        server = self.config.server
        now = self.clock.seconds()
        buckets = []
        if server.publish_rate:
            buckets.append(TokenBucket(server.publish_rate, server.publish_burst, now))
        shared = self.shared_publish_buckets
        if shared is not None:
            host = link.peer_host
            if host is not None:
                buckets.append(shared.get(address_key(host, server.ipv6_prefix), now))
            if user:
                buckets.append(shared.get("user:" + user, now))
        return PublishLimit(tuple(buckets)) if buckets else None

    def origin_allowed(self, origin: str) -> bool:
        return self._origins is not None and self._origins.fullmatch(origin) is not None

    def connection_gone(self, protocol: OmegaProtocol) -> None:
        self.connections.discard(protocol)
        if not self.connections and self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def close_all(self, timeout: float) -> Deferred[None]:
        """
        Close every connection for shutdown (1001 "going away"); fires when
        all are gone, aborting those still open after C{timeout} seconds.
        """
        if not self.connections:
            return succeed(None)
        drained = self._drained = Deferred()
        calls: list[IDelayedCall] = []
        closed: set[OmegaProtocol] = set()

        def close_opened() -> None:
            # A handshake under way is left to finish, then closed like the
            # rest: its client is told to reconnect instead of being reset.
            waiting = False
            for protocol in self.connections - closed:
                if protocol.state == protocol.STATE_CONNECTING:
                    waiting = True
                else:
                    closed.add(protocol)
                    protocol.close_for_shutdown()
            if waiting:
                calls.append(self.clock.callLater(_HANDSHAKE_POLL, close_opened))

        def abort_stragglers() -> None:
            for protocol in tuple(self.connections):
                protocol.abort()

        close_opened()
        calls.append(self.clock.callLater(timeout, abort_stragglers))

        def done(result: None) -> None:
            for call in calls:
                if call.active():
                    call.cancel()

        drained.addCallback(done)
        return drained


def _shared_publish_buckets(config: Config) -> SharedBuckets | None:
    server = config.server
    rate = server.address_publish_rate
    if rate is None:  # derived: ten connections' worth
        rate = 10 * server.publish_rate
    return SharedBuckets(rate, 10 * server.publish_burst) if rate else None
