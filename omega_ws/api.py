"""
The server API over HTTP, in the shape of Centrifugo's so that the C{cent}
client works unchanged: each method takes the request body (a dict),
checks its fields, calls L{ServerApi} and returns the C{result} body, or a
Deferred of it; it raises L{ApiError} for an error.  C{admin.py} serves
them over HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred

from .broker import Publication, StreamPosition
from .server_api import (
    BAD_REQUEST,
    FORCE_NO_RECONNECT,
    INTERNAL,
    METHOD_NOT_FOUND,
    UNAUTHORIZED,
    UNKNOWN_CHANNEL,
    Answer,
    ApiError,
    checked_channel,
    new_node_id,
)

if TYPE_CHECKING:
    from .server_api import ServerApi

__all__ = ["BAD_REQUEST", "INTERNAL", "METHOD_NOT_FOUND", "UNAUTHORIZED", "UNKNOWN_CHANNEL",
           "ApiError", "ApiMethod", "api_methods", "new_node_id"]

ApiMethod = Callable[[dict[str, Any]], "Deferred[dict[str, Any]] | dict[str, Any]"]


class _HasApi(Protocol):
    api: ServerApi


def _field(body: dict[str, Any], name: str, kind: type, required: bool = True) -> Any:
    if name not in body or body[name] is None:
        if required:
            raise ApiError(BAD_REQUEST, f"bad request: {name} required", 400)
        return None
    value = body[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(BAD_REQUEST, f"bad request: {name} must be a {kind.__name__}", 400)
    return value


def _data(api: ServerApi, body: dict[str, Any]) -> bytes:
    if "data" not in body:
        raise ApiError(BAD_REQUEST, "bad request: data required", 400)
    try:
        return api.encode(body["data"])
    except ValueError as e:
        raise ApiError(BAD_REQUEST, f"bad request: {e}", 400) from None


def _since(body: dict[str, Any]) -> StreamPosition | None:
    since = _field(body, "since", dict, required=False)
    if since is None:
        return None
    offset, epoch = since.get("offset", 0), since.get("epoch", "")
    if (not isinstance(offset, int) or isinstance(offset, bool) or offset < 0
            or not isinstance(epoch, str)):
        raise ApiError(BAD_REQUEST, "bad request: since must be {offset, epoch}", 400)
    return StreamPosition(epoch, offset)


def _position(publication: Publication) -> dict[str, Any]:
    return {"offset": publication.offset, "epoch": publication.epoch}


def api_methods(server: _HasApi) -> dict[str, ApiMethod]:
    """The methods of C{server.api}, taking request bodies."""
    methods = _HttpApi(server.api)
    return {name: getattr(methods, name) for name in METHODS}


METHODS = ("publish", "broadcast", "history", "presence", "presence_stats", "channels",
           "disconnect", "info")


class _HttpApi:
    """Each method checks a request body's fields and calls the server API."""

    def __init__(self, api: ServerApi) -> None:
        self.api = api

    def publish(self, body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        channel = checked_channel(_field(body, "channel", str))
        return self.api.publish(channel, _data(self.api, body)).addCallback(_position)

    def broadcast(self, body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        channels = _field(body, "channels", list)
        if not all(isinstance(c, str) for c in channels):
            raise ApiError(BAD_REQUEST, "bad request: channels must be strings", 400)

        def responses(results: list[Publication | Exception]) -> dict[str, Any]:
            out: list[dict[str, Any]] = []
            for result in results:
                if isinstance(result, Publication):
                    out.append({"result": _position(result)})
                else:
                    code = result.code if isinstance(result, ApiError) else INTERNAL
                    out.append({"error": {"code": code, "message": str(result)}})
            return {"responses": out}

        return self.api.broadcast(channels, _data(self.api, body)).addCallback(responses)

    def history(self, body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        channel = checked_channel(_field(body, "channel", str))
        limit = _field(body, "limit", int, required=False)
        # As Centrifugo: no limit or 0 gives the position only; -1 everything kept.
        wanted = 0 if not limit else (None if limit < 0 else limit)

        def answer(result: tuple[list[Publication], StreamPosition]) -> dict[str, Any]:
            publications, top = result
            return {"publications": [{"data": json.loads(p.data), "offset": p.offset}
                                     for p in publications],
                    "epoch": top.epoch, "offset": top.offset}

        return self.api.history(channel, _since(body), wanted,
                                bool(body.get("reverse"))).addCallback(answer)

    def presence(self, body: dict[str, Any]) -> Answer:
        return self.api.presence(_field(body, "channel", str))

    def presence_stats(self, body: dict[str, Any]) -> Answer:
        return self.api.presence_stats(_field(body, "channel", str))

    def channels(self, body: dict[str, Any]) -> Answer:
        return self.api.channels(_field(body, "pattern", str, required=False) or "*")

    def disconnect(self, body: dict[str, Any]) -> Answer:
        user = _field(body, "user", str)
        client = _field(body, "client", str, required=False)
        spec = _field(body, "disconnect", dict, required=False) or {}
        code = spec.get("code", FORCE_NO_RECONNECT)
        reason = spec.get("reason", "force disconnect")
        if not isinstance(code, int) or isinstance(code, bool) or not isinstance(reason, str):
            raise ApiError(BAD_REQUEST, "bad request: disconnect code must be 3000-4999", 400)
        return self.api.disconnect(user, client, code, reason)

    def info(self, body: dict[str, Any]) -> Answer:
        return self.api.info()
