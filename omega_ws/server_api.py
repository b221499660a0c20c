"""
The server's methods, implemented once: publish, broadcast, history,
presence, presence_stats, channels, disconnect and info, with one
validation of channels and data and Centrifugo's error codes.  The admin
HTTP API (C{api.py}) and the Centrifuge wire both call L{ServerApi}; each
adds only what is its own (request bodies, a client's permissions).
"""

from __future__ import annotations

import fnmatch
import uuid
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.interfaces import IReactorTime

from ._version import __version__
from .broker import Publication, StreamPosition
from .config import Config, valid_channel
from .hub import Hub
from .jsonutil import compact
from .metrics import Metrics
from .registry import ClientInfo, Registry

__all__ = ["ApiError", "ServerApi", "new_node_id"]

# Centrifugo's error codes.
INTERNAL, UNAUTHORIZED, UNKNOWN_CHANNEL, PERMISSION_DENIED, METHOD_NOT_FOUND = (
    100, 101, 102, 103, 104)
LIMIT_EXCEEDED, BAD_REQUEST, UNRECOVERABLE_POSITION = 106, 107, 112
FORCE_NO_RECONNECT = 3503


class ApiError(Exception):
    """
    An error answer with a Centrifugo code.  C{http_status} 400 for a
    malformed request (as Centrifugo); 200 with the error in the body for
    a method-level error, which is how C{cent} expects them.
    """

    def __init__(self, code: int, message: str, http_status: int = 200) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message


def new_node_id() -> str:
    return str(uuid.uuid4())


def checked_channel(channel: Any) -> str:
    """C{channel} if it is a valid channel name; L{ApiError} 107 or 102 otherwise."""
    if not isinstance(channel, str) or not channel:
        raise ApiError(BAD_REQUEST, "bad request: channel required", 400)
    if not valid_channel(channel):
        raise ApiError(UNKNOWN_CHANNEL, f"unknown channel: invalid name {channel!r}")
    return channel


def presence_of(members: list[ClientInfo]) -> dict[str, dict[str, str]]:
    return {m.client_id: {"client": m.client_id, "user": m.user} for m in members}


class ServerApi:
    """The server's methods, bound to one server's hub and registry."""

    def __init__(self, hub: Hub, registry: Registry, config: Config, metrics: Metrics,
                 clock: IReactorTime, started_at: Callable[[], float],
                 node_id: str | None = None) -> None:
        self.hub = hub
        self.registry = registry
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.node_id = node_id or new_node_id()
        self._started_at = started_at

    def encode(self, data: Any) -> bytes:
        """
        C{data}'s compact JSON text, as raw clients will get it.
        @raise ValueError: not JSON (NaN, Infinity, other types), or longer
            than C{server.max_message_size} (no client would take it).
        """
        try:
            payload = compact(data)
        except TypeError as e:
            raise ValueError(f"data is not JSON-serializable: {e}") from None
        limit = self.config.server.max_message_size
        if len(payload) > limit:
            raise ValueError(f"data is {len(payload)} bytes, over server.max_message_size "
                             f"({limit})")
        return payload

    def publish(self, channel: str, payload: bytes, source: str = "api"
                ) -> Deferred[Publication]:
        """Publish JSON text; C{source} labels the metric.  Fails with BrokerUnavailable."""
        checked_channel(channel)
        self.metrics.messages_published.labels(source).inc()
        return self.hub.publish(channel, payload)

    def broadcast(self, channels: list[str], payload: bytes
                  ) -> Deferred[list[Publication | Exception]]:
        """Publish on each channel; one result per channel, a publication or the error."""
        calls: list[Deferred[Publication]] = []
        for channel in channels:
            try:
                calls.append(self.publish(channel, payload))
            except ApiError as e:
                calls.append(fail(e))

        def results(outcomes: list[tuple[bool, Any]]) -> list[Publication | Exception]:
            return [value if ok else value.value for ok, value in outcomes]

        return DeferredList(calls, consumeErrors=True).addCallback(results)

    def history(self, channel: str, since: StreamPosition | None, limit: int | None,
                reverse: bool, max_bytes: int | None = None
                ) -> Deferred[tuple[list[Publication], StreamPosition]]:
        """
        Kept publications and the current position.  L{ApiError} 112 when
        C{since} is on another epoch, 106 when the publications add up to
        more than C{max_bytes}.
        """
        checked_channel(channel)

        def checked(result: tuple[list[Publication], StreamPosition]
                    ) -> tuple[list[Publication], StreamPosition]:
            publications, top = result
            if since is not None and since.epoch and since.epoch != top.epoch:
                raise ApiError(UNRECOVERABLE_POSITION, "unrecoverable position")
            if max_bytes is not None and sum(len(p.data) for p in publications) > max_bytes:
                raise ApiError(LIMIT_EXCEEDED, "limit exceeded")  # ask for fewer
            return result

        return self.hub.history(channel, since, limit, reverse).addCallback(checked)

    def members(self, channel: str, transport: str | None = None) -> list[ClientInfo]:
        """Who is subscribed to C{channel} (only C{transport}'s clients, if given)."""
        members = self.hub.members(checked_channel(channel))
        return [m for m in members if transport is None or m.transport == transport]

    def presence(self, channel: str, transport: str | None = None) -> dict[str, Any]:
        return {"presence": presence_of(self.members(channel, transport))}

    def presence_stats(self, channel: str, transport: str | None = None) -> dict[str, Any]:
        members = self.members(channel, transport)
        return {"num_clients": len(members), "num_users": len({m.user for m in members})}

    def channels(self, pattern: str = "*") -> dict[str, Any]:
        hub = self.hub
        return {"channels": {name: {"num_clients": len(hub.members(name))}
                             for name in hub.channels() if fnmatch.fnmatchcase(name, pattern)}}

    def disconnect(self, user: str, client: str | None = None,
                   code: int = FORCE_NO_RECONNECT, reason: str = "force disconnect") -> None:
        """Close the user's connections (only C{client}, if given) with C{code}."""
        if not 3000 <= code <= 4999:
            raise ApiError(BAD_REQUEST, "bad request: disconnect code must be 3000-4999", 400)
        for connection in list(self.registry):
            info = connection.info
            if info.user == user and (client is None or info.client_id == client):
                connection.close_with(code, reason)

    def info(self) -> dict[str, Any]:
        connections = list(self.registry)
        return {"nodes": [{
            "uid": self.node_id,
            "name": "omega-ws",
            "version": __version__,
            "num_clients": len(connections),
            "num_users": len({c.info.user for c in connections}),
            "num_subs": sum(len(c.info.channels) for c in connections),
            "num_channels": len(self.hub.channels()),
            "uptime": int(self.clock.seconds() - self._started_at()),
        }]}
