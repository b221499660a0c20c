"""
The server API methods, in the shape of Centrifugo's HTTP API so that the
C{cent} client works unchanged.  Each method takes the request body (a
dict) and returns the C{result} body, or a Deferred of it; it raises
L{ApiError} for a method-level error.  C{admin.py} serves them over HTTP.
"""

from __future__ import annotations

import fnmatch
import json
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, fail

from ._version import __version__
from .config import valid_channel
from .history import Publication, StreamPosition

if TYPE_CHECKING:
    from .service import OmegaService

__all__ = ["ApiError", "api_methods"]

# Centrifugo's error codes.
INTERNAL, UNAUTHORIZED, UNKNOWN_CHANNEL, METHOD_NOT_FOUND, BAD_REQUEST = 100, 101, 102, 104, 107
UNRECOVERABLE_POSITION = 112
FORCE_NO_RECONNECT = 3503


class ApiError(Exception):
    """
    An error answer.  C{http_status} 400 for a malformed request (as
    Centrifugo); 200 with the error in the body for a method-level error,
    which is how C{cent} expects them.
    """

    def __init__(self, code: int, message: str, http_status: int = 200) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message


ApiMethod = Callable[[dict[str, Any]], "Deferred[dict[str, Any]] | dict[str, Any]"]


def _field(body: dict[str, Any], name: str, kind: type, required: bool = True) -> Any:
    if name not in body or body[name] is None:
        if required:
            raise ApiError(BAD_REQUEST, f"bad request: {name} required", 400)
        return None
    value = body[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(BAD_REQUEST, f"bad request: {name} must be a {kind.__name__}", 400)
    return value


def _channel(body: dict[str, Any]) -> str:
    channel: str = _field(body, "channel", str)
    if not valid_channel(channel):
        raise ApiError(UNKNOWN_CHANNEL, f"unknown channel: invalid name {channel!r}")
    return channel


def _publication(publication: Publication) -> dict[str, Any]:
    return {"data": json.loads(publication.data), "offset": publication.offset}


def api_methods(service: OmegaService) -> dict[str, ApiMethod]:
    """The methods, bound to one server."""
    hub = service.hub
    registry = service.registry

    def publish(body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        channel = _channel(body)
        if "data" not in body:
            raise ApiError(BAD_REQUEST, "bad request: data required", 400)
        return service.publish(channel, body["data"]).addCallback(
            lambda p: {"offset": p.offset, "epoch": p.epoch})

    def broadcast(body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        channels = _field(body, "channels", list)
        if not all(isinstance(c, str) for c in channels):
            raise ApiError(BAD_REQUEST, "bad request: channels must be strings", 400)
        if "data" not in body:
            raise ApiError(BAD_REQUEST, "bad request: data required", 400)
        calls = []
        for channel in channels:
            if valid_channel(channel):
                calls.append(service.publish(channel, body["data"]))
            else:
                calls.append(fail(ApiError(UNKNOWN_CHANNEL,
                                           f"unknown channel: invalid name {channel!r}")))

        def responses(results: list[tuple[bool, Any]]) -> dict[str, Any]:
            out = []
            for ok, value in results:
                if ok:
                    out.append({"result": {"offset": value.offset, "epoch": value.epoch}})
                else:
                    error = value.value
                    code = error.code if isinstance(error, ApiError) else INTERNAL
                    out.append({"error": {"code": code, "message": str(error)}})
            return {"responses": out}

        return DeferredList(calls, consumeErrors=True).addCallback(responses)

    def history(body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        channel = _channel(body)
        limit = _field(body, "limit", int, required=False)
        since_body = _field(body, "since", dict, required=False)
        since = None
        if since_body is not None:
            offset = since_body.get("offset", 0)
            epoch = since_body.get("epoch", "")
            if (not isinstance(offset, int) or isinstance(offset, bool) or offset < 0
                    or not isinstance(epoch, str)):
                raise ApiError(BAD_REQUEST, "bad request: since must be {offset, epoch}", 400)
            since = StreamPosition(epoch, offset)
        reverse = bool(body.get("reverse"))
        # As Centrifugo: no limit or 0 gives the position only; -1 everything kept.
        wanted = 0 if not limit else (None if limit < 0 else limit)
        def answer(result: tuple[list[Publication], StreamPosition]) -> dict[str, Any]:
            publications, top = result
            if since is not None and since.epoch and since.epoch != top.epoch:
                raise ApiError(UNRECOVERABLE_POSITION, "unrecoverable position")
            return {"publications": [_publication(p) for p in publications],
                    "epoch": top.epoch, "offset": top.offset}

        return hub.broker.history(channel, since, wanted, reverse).addCallback(answer)

    def presence(body: dict[str, Any]) -> dict[str, Any]:
        channel = _channel(body)
        return {"presence": {m.client_id: {"client": m.client_id, "user": m.user}
                             for m in hub.members(channel)}}

    def presence_stats(body: dict[str, Any]) -> dict[str, Any]:
        members = hub.members(_channel(body))
        return {"num_clients": len(members), "num_users": len({m.user for m in members})}

    def channels(body: dict[str, Any]) -> dict[str, Any]:
        pattern = _field(body, "pattern", str, required=False) or "*"
        return {"channels": {name: {"num_clients": len(hub.members(name))}
                             for name in hub.channels() if fnmatch.fnmatchcase(name, pattern)}}

    def disconnect(body: dict[str, Any]) -> dict[str, Any]:
        user = _field(body, "user", str)
        client = _field(body, "client", str, required=False)
        spec = _field(body, "disconnect", dict, required=False) or {}
        code = spec.get("code", FORCE_NO_RECONNECT)
        reason = spec.get("reason", "force disconnect")
        if not isinstance(code, int) or not 3000 <= code <= 4999 or not isinstance(reason, str):
            raise ApiError(BAD_REQUEST, "bad request: disconnect code must be 3000-4999", 400)
        for connection in registry:
            info = connection.info
            if info.user == user and (client is None or info.client_id == client):
                connection.close_with(code, reason)
        return {}

    def info(body: dict[str, Any]) -> dict[str, Any]:
        connections = list(registry)
        return {"nodes": [{
            "uid": service.node_id,
            "name": "omega-ws",
            "version": __version__,
            "num_clients": len(connections),
            "num_users": len({c.info.user for c in connections}),
            "num_subs": sum(len(c.info.channels) for c in connections),
            "num_channels": len(hub.channels()),
            "uptime": int(service.reactor.seconds() - service.started_at),
        }]}

    return {"publish": publish, "broadcast": broadcast, "history": history,
            "presence": presence, "presence_stats": presence_stats, "channels": channels,
            "disconnect": disconnect, "info": info}


def new_node_id() -> str:
    return str(uuid.uuid4())
