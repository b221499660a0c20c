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
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from ._version import __version__
from .broker import Member, Publication, StreamPosition
from .config import Config, valid_channel
from .hub import Hub
from .jsonutil import compact
from .metrics import Metrics
from .registry import Registry

__all__ = ["ApiError", "ServerApi", "new_node_id"]

# Centrifugo's error codes.
INTERNAL, UNAUTHORIZED, UNKNOWN_CHANNEL, PERMISSION_DENIED, METHOD_NOT_FOUND = (
    100, 101, 102, 103, 104)
LIMIT_EXCEEDED, BAD_REQUEST, UNRECOVERABLE_POSITION = 106, 107, 112
FORCE_NO_RECONNECT = 3503

T = TypeVar("T")
Answer = dict[str, Any] | Deferred[dict[str, Any]]


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


def settled(d: Deferred[T]) -> T | Deferred[T]:
    """
    C{d}'s result if it has one already (the memory broker answers at
    once: so do the methods, for embedding code), else C{d} (a failure
    too: it is answered where Deferreds are).
    """
    results: list[Any] = []

    def keep(result: Any) -> Any:
        results.append(result)
        return result

    d.addBoth(keep)
    if not results:
        return d
    if isinstance(results[0], Failure):
        return d  # the caller's errback answers it (503, error 100, ...)
    return cast(T, results[0])


def presence_of(members: list[Member]) -> dict[str, dict[str, str]]:
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
        # channels, info and disconnect are surveys: every node sharing
        # the broker answers for itself.
        hub.answer_surveys(self._answer)

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

    def members(self, channel: str, transport: str | None = None) -> Deferred[list[Member]]:
        """Who is subscribed to C{channel} on any node (only C{transport}'s, if given)."""
        return self.hub.presence(checked_channel(channel)).addCallback(
            lambda members: [m for m in members if transport is None or m.transport == transport])

    # The methods below answer at once when the broker did (memory), else
    # with a Deferred.

    def presence(self, channel: str, transport: str | None = None) -> Answer:
        return settled(self.members(channel, transport).addCallback(
            lambda members: {"presence": presence_of(members)}))

    def presence_stats(self, channel: str, transport: str | None = None) -> Answer:
        return settled(self.members(channel, transport).addCallback(
            lambda members: {"num_clients": len(members),
                             "num_users": len({m.user for m in members})}))

    def channels(self, pattern: str = "*") -> Answer:
        def merged(answers: list[Any]) -> dict[str, Any]:
            counts: dict[str, int] = {}
            for answer in answers:
                for name, count in (answer if isinstance(answer, dict) else {}).items():
                    counts[name] = counts.get(name, 0) + int(count)
            return {"channels": {name: {"num_clients": n} for name, n in counts.items()}}

        return settled(self.hub.survey("channels", {"pattern": pattern}).addCallback(merged))

    def disconnect(self, user: str, client: str | None = None,
                   code: int = FORCE_NO_RECONNECT, reason: str = "force disconnect") -> Answer:
        """Close the user's connections (only C{client}, if given) with C{code}, everywhere."""
        if not 3000 <= code <= 4999:
            raise ApiError(BAD_REQUEST, "bad request: disconnect code must be 3000-4999", 400)
        return settled(self.hub.survey("disconnect", {"user": user, "client": client,
                                                      "code": code, "reason": reason}).addCallback(
            lambda _: {}))

    def info(self) -> Answer:
        return settled(self.hub.survey("info", {}).addCallback(
            lambda answers: {"nodes": [a for a in answers if isinstance(a, dict) and a]}))

    def _answer(self, kind: str, request: dict[str, Any]) -> Any:
        """This node's answer to a survey."""
        if kind == "channels":
            pattern = str(request.get("pattern") or "*")
            hub = self.hub
            return {name: len(hub.members(name)) for name in hub.channels()
                    if fnmatch.fnmatchcase(name, pattern)}
        if kind == "disconnect":
            self._disconnect_here(str(request.get("user")), request.get("client"),
                                  int(request.get("code") or FORCE_NO_RECONNECT),
                                  str(request.get("reason") or "force disconnect"))
            return {}
        if kind == "info":
            return self._node_info()
        return None

    def _disconnect_here(self, user: str, client: Any, code: int, reason: str) -> None:
        for connection in list(self.registry):
            info = connection.info
            if info.user == user and (client is None or info.client_id == client):
                connection.close_with(code, reason)

    def _node_info(self) -> dict[str, Any]:
        connections = list(self.registry)
        return {
            "uid": self.node_id,
            "name": "omega-ws",
            "version": __version__,
            "num_clients": len(connections),
            "num_users": len({c.info.user for c in connections}),
            "num_subs": sum(len(c.info.channels) for c in connections),
            "num_channels": len(self.hub.channels()),
            "uptime": int(self.clock.seconds() - self._started_at()),
        }
