"""
Wiring: one L{OmegaService} per server, built from a validated L{Config}.

It holds the broker, the hub, the client registry (in the WebSocket
factory), the listeners, the heartbeat and monitor sweeps and the admin
listener.  L{makeService} gives it to a Twisted application;
L{start_server} / L{stop_server} run one from a script or a test.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any, cast

from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer, endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import systemd
from .admin import make_admin_site
from .api import api_methods
from .auth import TokenVerifier
from .broker import Publication, make_broker
from .config import Config, load_config
from .dashboard import Dashboard
from .factory import OmegaServerFactory
from .hub import Hub
from .metrics import Metrics
from .registry import Registry
from .safety import EchoFactory
from .server_api import ApiError, ServerApi, new_node_id
from .timers import HeartbeatService, MonitorService, WatchdogService
from .wire import RpcHandler

__all__ = ["OmegaService", "Server", "StartupError", "makeService", "start_server", "stop_server"]

_log = Logger()

# How long shutdown waits for clients to answer the close before dropping them.
SHUTDOWN_GRACE = 3.0
# How long it then waits for admin requests under way before stopping the broker.
ADMIN_GRACE = 1.0


class StartupError(Exception):
    """The server could not start; the message is one line saying why."""


def _quote(value: str | int) -> str:
    return endpoints.quoteStringArgument(str(value))


def listener_descriptions(config: Config) -> list[tuple[str, str, str]]:
    """(configuration key, URL scheme, endpoint string) for every WebSocket listener."""
    s = config.server
    host = _quote(s.host)
    listeners = [("server.port", "ws", f"tcp:{s.port}:interface={host}:backlog={s.backlog}")]
    if s.cert is not None and s.key is not None:
        listeners.append(("server.tls_port", "wss", (
            f"ssl:{s.tls_port}:interface={host}:backlog={s.backlog}"
            f":privateKey={_quote(s.key)}:certKey={_quote(s.cert)}")))
    listeners.extend(("server.listen", "ws", description) for description in s.listen)
    return listeners


def admin_description(config: Config, reactor: Any) -> str:
    """
    The admin listener's endpoint string: an inherited socket named C{admin}
    (socket activation, C{python -m omega_ws.handoff}) when there is one, so
    that a restart hands it over too; else admin.host and admin.port.
    """
    try:
        inherited = endpoints.serverFromString(reactor, "systemd:domain=INET:name=admin")
    except (KeyError, ValueError):  # no socket of that name
        return f"tcp:{config.admin.port}:interface={_quote(config.admin.host)}"
    try:
        with socket.socket(fileno=os.dup(getattr(inherited, "fileno", -1))) as sock:
            domain = socket.AddressFamily(sock.family).name.removeprefix("AF_")
    except (OSError, TypeError, ValueError):
        domain = "INET"  # not a socket: adopting it says so
    return f"systemd:domain={domain}:name=admin"


class ListenerService(Service):
    """
    Listens on one endpoint string.  Like C{strports.service}, a bind
    error raises from C{startService}, so start-up fails; unlike it, the
    bound port is kept, for the real address (port 0) and for health.
    """

    def __init__(self, reactor: Any, key: str, scheme: str, description: str,
                 factory: IProtocolFactory) -> None:
        self.reactor = reactor
        self.key = key
        self.scheme = scheme
        self.description = description
        self.factory = factory
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        endpoint = endpoints.serverFromString(self.reactor, self.description)
        outcome: list[Any] = []
        endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome or isinstance(outcome[0], Failure):
            reason = outcome[0].getErrorMessage() if outcome else "did not listen at once"
            raise StartupError(f"{self.key}: cannot listen on {self.description}: {reason}")
        super().startService()
        self.port = cast(IListeningPort, outcome[0])
        _log.info("omega-ws listening on {url}", url=self.url)

    @property
    def url(self) -> str:
        if self.port is None:
            return f"{self.scheme}:// (not listening)"
        address: Any = self.port.getHost()
        host = getattr(address, "host", None)
        if host is None:
            return f"{self.scheme}+unix://{getattr(address, 'name', address)}"
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{address.port}"

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return cast(Deferred[None], defer.maybeDeferred(port.stopListening))
        return None


class OmegaService(MultiService):
    """The whole server; start it, stop it, ask it for its addresses."""

    def __init__(self, config: Config, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        clock = cast(IReactorTime, reactor)
        node_id = new_node_id()
        self.broker = make_broker(config, clock, node_id)
        self.tokens = TokenVerifier(config.auth)
        self.metrics = Metrics(lambda: self.registry.counts(), lambda: self.broker.healthy,
                               lambda: self.broker.stats())
        self.registry = Registry(on_transition=self.metrics.on_transition)
        self.hub = Hub(self.broker, on_dispatch=self._count_delivery)
        self.started_at = 0.0
        # Fires once every listener is bound (see startService), or fails
        # with StartupError.
        self.ready: Deferred[None] = defer.succeed(None)
        self.api = ServerApi(self.hub, self.registry, config, self.metrics, clock,
                             lambda: self.started_at, node_id)
        self.factory = OmegaServerFactory(config, self.hub, self.metrics, self.registry, clock,
                                          self.tokens, self.api)
        self.listeners = [ListenerService(reactor, key, scheme, description, self.factory)
                          for key, scheme, description in listener_descriptions(config)]
        if config.server.testee_port is not None:
            self.listeners.append(ListenerService(
                reactor, "server.testee_port", "ws",
                f"tcp:{config.server.testee_port}:interface={_quote(config.server.host)}",
                EchoFactory(config)))
        self.admin: ListenerService | None = None
        # The live dashboard's figures and feeds (GET / on the admin listener).
        self.dashboard = Dashboard(self, clock)
        if config.admin.enabled:
            self.dashboard.setServiceParent(self)
            site = make_admin_site(self.problems, self.metrics.render, api_methods(self),
                                   config.admin, clock, self.metrics.registry, self.dashboard)
            self.admin = ListenerService(reactor, "admin.port", "http",
                                         admin_description(config, reactor), site)
        self.heartbeat = HeartbeatService(self.registry, clock, config.heartbeat.ping_interval,
                                          config.heartbeat.ping_timeout)
        self.monitor = MonitorService(self.registry, clock, config.monitor.interval,
                                      config.monitor.idle_timeout, self.metrics.totals,
                                      (self.broker.housekeeping, self._close_expired,
                                       self._prune_buckets),
                                      status=lambda: systemd.status_line(
                                          self.registry.counts(), len(self.hub.channels()),
                                          self.broker.healthy, self.broker.problem))
        for child in (self.heartbeat, self.monitor):
            child.setServiceParent(self)
        # systemd's WatchdogSec=: pings from the reactor, from READY=1 to the drain's end.
        watchdog = systemd.watchdog_interval()
        if watchdog is not None:
            WatchdogService(clock, watchdog).setServiceParent(self)

    def _close_expired(self, now: float) -> None:
        """
        Connections whose token expired are closed: raw ones at once (they
        cannot refresh), Centrifuge ones that did not refresh within
        C{auth.expired_close_delay}.
        """
        grace = self.config.auth.expired_close_delay
        for connection in self.registry:
            info = connection.info
            if info.expires_at is None:
                continue
            delay = grace if info.transport == "centrifuge" else 0.0
            if info.expires_at + delay <= now:
                try:
                    connection.close_expired()
                except Exception:
                    _log.failure("closing expired {client_id} failed", client_id=info.client_id)

    def _prune_buckets(self, now: float) -> None:
        if self.factory.shared_publish_buckets is not None:
            self.factory.shared_publish_buckets.prune(now)

    def _count_delivery(self, publication: Publication, subscribers: int) -> None:
        self.metrics.messages_delivered.inc(subscribers)
        self.metrics.bytes_out.inc(subscribers * len(publication.data))
        self.dashboard.seen(publication)

    # -- lifecycle ------------------------------------------------------------

    def startService(self) -> None:
        """
        Start the broker, listen everywhere, then start the sweeps.
        @raise StartupError: a listener could not bind; nothing is left listening.
        """
        self.started_at = self.reactor.seconds()
        # Warnings first: the "listening" lines are what watchers wait for.
        if not self.config.server.cert:
            _log.warn("wss:// listener is off: no certificate configured (set server.cert "
                      "and server.key, --cert/--key, or SSL_CERT_PATH/SSL_KEY_PATH)")
        if self.config.admin.enabled and not self.config.admin.api_key and not _is_loopback(
                self.config.admin.host):
            _log.warn("admin API on {host!r} is open to the network without admin.api_key",
                      host=self.config.admin.host)
        if self.config.server.cert and not systemd.executable_memory_allowed():
            raise StartupError("server.cert: wss:// cannot work here: pyOpenSSL needs writable "
                               "and executable memory, which this process may not map (systemd's "
                               "MemoryDenyWriteExecute=yes?)")
        _raise_file_limit(self.config)
        # Nothing listens before the broker can take publications.  A broker
        # that answers at once (memory) starts everything now, so that a bind
        # error raises from here; one that must connect first starts the
        # listeners when it has: self.ready says when (or why not).
        starting = self.broker.start()
        if starting.called:
            outcome: list[Any] = []
            starting.addBoth(outcome.append)
            if isinstance(outcome[0], Failure):
                raise StartupError(f"broker.url: cannot start: {outcome[0].getErrorMessage()}")
            self._listen()
            self.ready = defer.succeed(None)
        else:
            self.ready = starting.addCallbacks(lambda _: self._listen(), self._start_failed)

    def _start_failed(self, failure: Failure) -> Failure:
        return Failure(StartupError(f"broker.url: cannot start: {failure.getErrorMessage()}"))

    def _listen(self) -> None:
        """Every listener, then the sweeps; @raise StartupError: a bind failed."""
        started: list[ListenerService] = []
        try:
            for listener in [*self.listeners, *([self.admin] if self.admin else [])]:
                listener.startService()
                started.append(listener)
        except StartupError:
            for listener in started:
                listener.stopService()
            self.broker.stop()
            raise
        super().startService()
        systemd.notify("READY=1")

    def stopService(self) -> Deferred[None]:
        """Stop accepting, close every client with 1001, flush, then stop the rest."""
        systemd.notify("STOPPING=1")
        _log.info("omega-ws shutting down: closing {count} connections",
                  count=len(self.factory.connections))
        # An inherited admin socket (a rolling restart, docs/restarts.md) has
        # another process to answer it: stop taking requests at once too.
        handed_over = [self.admin] if self.admin and self.admin.description.startswith(
            "systemd:") else []
        listening = [listener.stopService() for listener in [*self.listeners, *handed_over]]
        d: Deferred[Any] = defer.gatherResults([r for r in listening if r is not None])
        # Under systemd, EXTEND_TIMEOUT_USEC= for as long as the drain lasts.
        d.addBoth(lambda _: systemd.extend_timeout_while(
            self.factory.close_all(SHUTDOWN_GRACE), self.reactor, SHUTDOWN_GRACE))
        d.addBoth(lambda _: defer.maybeDeferred(super(OmegaService, self).stopService))
        if self.admin is not None:
            admin = self.admin
            d.addBoth(lambda _: admin.stopService())
            d.addBoth(lambda _: _answered(admin, self.reactor, ADMIN_GRACE))
        d.addBoth(lambda _: self.broker.stop())
        d.addBoth(lambda _: _log.info("omega-ws stopped"))
        return d

    # -- what the embedding code and the admin API use --------------------------

    def problems(self) -> list[str]:
        """Why the server is unhealthy; empty when it is healthy."""
        problems = [f"listener {listener.description} is down"
                    for listener in self.listeners if listener.port is None]
        if not self.broker.healthy:
            reason = self.broker.problem
            problems.append(f"broker unreachable: {reason}" if reason else "broker unreachable")
        return problems

    @property
    def node_id(self) -> str:
        return self.api.node_id

    def publish(self, channel: str, data: Any) -> Deferred[Publication]:
        """
        Publish a JSON-serializable C{data} on C{channel}.
        @raise ValueError: C{data} is not JSON (NaN, Infinity, other types), or
            its JSON is longer than C{server.max_message_size}, or C{channel}
            is not a valid channel name.
        """
        # NaN and Infinity are refused: raw clients must get JSON.
        payload = self.api.encode(data)
        try:
            return self.api.publish(channel, payload)
        except ApiError as e:
            raise ValueError(e.message) from None


def _answered(admin: ListenerService, clock: IReactorTime, timeout: float) -> Deferred[None]:
    """
    Fires once the admin listener's connections have ended (the requests
    under way answered: the broker they may need stops next), or after
    C{timeout} (idle keep-alive connections).
    """
    deadline = clock.seconds() + timeout
    done: Deferred[None] = Deferred()

    def check() -> None:
        if getattr(admin.factory, "open_connections", 0) <= 0 or clock.seconds() >= deadline:
            done.callback(None)
        else:
            clock.callLater(0.02, check)

    check()
    return done


def _raise_file_limit(config: Config) -> None:
    """
    Every connection is a file descriptor: the soft limit (often 1,024)
    would refuse clients long before C{server.max_connections}.  Raise it
    as far as the hard limit allows, and say so when that is not enough.
    """
    try:
        import resource
    except ImportError:  # not on this platform
        return
    wanted = config.server.max_connections + config.admin.max_connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < wanted:
        _log.warn("open file limit is {limit}, below server.max_connections ({connections}) "
                  "plus admin and spare descriptors: raise LimitNOFILE / ulimit -n",
                  limit=soft, connections=config.server.max_connections)


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


class Server:
    """A running server, as L{start_server} gives it."""

    def __init__(self, service: OmegaService) -> None:
        self.service = service

    @property
    def config(self) -> Config:
        return self.service.config

    @property
    def urls(self) -> list[str]:
        """Every WebSocket listener's real address, e.g. C{ws://127.0.0.1:40123}."""
        return [listener.url for listener in self.service.listeners]

    def _port(self, listener: ListenerService | None) -> int:
        if listener is None or listener.port is None:
            raise LookupError("that listener is not running")
        address: Any = listener.port.getHost()
        return int(address.port)

    @property
    def port(self) -> int:
        return self._port(self.service.listeners[0])

    @property
    def tls_port(self) -> int:
        tls = [x for x in self.service.listeners if x.scheme == "wss"]
        return self._port(tls[0] if tls else None)

    @property
    def admin_port(self) -> int:
        return self._port(self.service.admin)

    @property
    def registry(self) -> Registry:
        return self.service.registry

    def publish(self, channel: str, data: Any) -> Deferred[Publication]:
        return self.service.publish(channel, data)

    def register_rpc(self, method: str, handler: RpcHandler) -> None:
        """
        Answer the Centrifuge protocol's C{rpc} command for C{method}:
        C{handler(client_info, data)} returns the reply data (any JSON
        value) or a Deferred of it; raising C{ReplyError} sends that error.
        Methods without a handler answer error 108 (not available).
        """
        self.service.factory.rpc_handlers[method] = handler

    def stop(self) -> Deferred[None]:
        """Stop as on SIGTERM: clients get 1001 "going away"; fires when all is closed."""
        if self in _running:
            _running.remove(self)
        if not self.service.running:
            return defer.succeed(None)
        return cast(Deferred[None], defer.maybeDeferred(self.service.stopService))


def makeService(config: Config | Mapping[str, Any] | None = None, reactor: Any = None) -> IService:
    """
    The whole server as one service for a Twisted application.  C{config}
    is a L{Config}, a mapping nested as in the TOML file, or None for
    L{load_config}() (defaults, C{OMEGA_WS_CONFIG}, environment).
    Starting it raises L{StartupError} when a listener cannot bind.
    """
    return OmegaService(_as_config(config), reactor)


def _as_config(config: Config | Mapping[str, Any] | None) -> Config:
    if config is None:
        return load_config()
    if isinstance(config, Config):
        return config
    return Config.from_mapping(config)


_running: list[Server] = []


def start_server(config: Config | Mapping[str, Any] | None = None,
                 reactor: Any = None) -> Deferred[Server]:
    """
    Start a server; fires with its L{Server} once every listener is bound
    (use port 0 and read C{server.port}), or fails with L{StartupError}
    or L{ConfigError}.
    """
    try:
        service = OmegaService(_as_config(config), reactor)
        service.startService()
    except Exception:
        return defer.fail()
    server = Server(service)
    _running.append(server)
    return service.ready.addCallback(lambda _: server)


def stop_server(server: Server | None = None) -> Deferred[None]:
    """Stop C{server}, or the one L{start_server} started last."""
    if server is None:
        if not _running:
            return defer.succeed(None)
        server = _running[-1]
    return server.stop()
