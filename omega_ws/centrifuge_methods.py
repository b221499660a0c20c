"""
The Centrifuge commands that are the server's methods (publish, history,
presence, presence_stats, rpc, send): each checks what is the client's
own business (its token's channels, publishing rights, its rate) and
calls the one L{ServerApi}.  Mixed into L{CentrifugeWire}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred

from .auth import Identity
from .broker.history import Publication, StreamPosition
from .centrifuge_codec import (
    BAD_REQUEST_ERROR,
    NOT_AVAILABLE,
    PERMISSION_DENIED,
    TOO_MANY_REQUESTS,
    Raw,
    ReplyError,
    offset_of,
)
from .jsonutil import compact
from .limits import PublishLimit
from .server_api import Answer, ServerApi
from .wire import Link, WireContext

__all__ = ["ServerMethods"]


class ServerMethods:
    """C{handle_<method>} for the server's methods, on a Centrifuge connection."""

    __slots__ = ()
    context: WireContext
    link: Link
    identity: Identity
    _bucket: PublishLimit | None

    def _channel(self, body: dict[str, Any]) -> str:
        """The command's channel, checked against the client's rights."""
        raise NotImplementedError

    def _api(self) -> ServerApi:
        api = self.context.api
        assert api is not None, "the wire context has no server API"
        return api

    def handle_publish(self, body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        channel = self._channel(body)
        context = self.context
        if not context.config.channels.allow_client_publish:
            raise ReplyError(PERMISSION_DENIED, "permission denied")
        if self._bucket is not None and not self._bucket.take(context.clock.seconds()):
            context.metrics.rate_limited.labels("publish").inc()
            raise ReplyError(TOO_MANY_REQUESTS, "too many requests", temporary=True)
        if "data" not in body:
            raise ReplyError(BAD_REQUEST_ERROR, "bad request")
        try:
            data = compact(body["data"])
        except ValueError:
            raise ReplyError(BAD_REQUEST_ERROR, "bad request") from None
        return self._api().publish(channel, data, "centrifuge").addCallback(lambda _: {})

    def handle_history(self, body: dict[str, Any]) -> Deferred[Any]:
        channel = self._channel(body)
        limit = body.get("limit", 0)
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise ReplyError(BAD_REQUEST_ERROR, "bad request")
        since_body = body.get("since")
        since = None
        if isinstance(since_body, dict):
            since = StreamPosition(str(since_body.get("epoch", "")),
                                   offset_of(since_body.get("offset", 0)))
        reverse = bool(body.get("reverse"))
        if reverse and since is not None and since.offset == 0:
            raise ReplyError(BAD_REQUEST_ERROR, "bad request")
        # As Centrifugo: limit 0 asks for the position only, -1 for everything kept.
        wanted = None if limit < 0 else limit
        max_bytes = self.context.config.server.max_queue_size  # else ask for fewer (106)

        def answer(result: tuple[list[Publication], StreamPosition]) -> Raw:
            publications, top = result
            return Raw({"epoch": top.epoch, "offset": top.offset}, publications)

        return self._api().history(channel, since, wanted, reverse, max_bytes).addCallback(
            answer)

    # Centrifuge clients only: a raw client's client_id is what resumes its
    # session, so other clients must not learn it.

    def handle_presence(self, body: dict[str, Any]) -> Answer:
        return self._api().presence(self._channel(body), "centrifuge")

    def handle_presence_stats(self, body: dict[str, Any]) -> Answer:
        return self._api().presence_stats(self._channel(body), "centrifuge")

    def handle_rpc(self, body: dict[str, Any]) -> Any:
        method = body.get("method", "")
        handler = self.context.rpc_handlers.get(method) if isinstance(method, str) else None
        if handler is None:
            raise ReplyError(NOT_AVAILABLE, "not available")
        return maybeDeferred(handler, self.link.info, body.get("data")).addCallback(
            lambda data: {"data": data} if data is not None else {})

    def handle_send(self, body: dict[str, Any]) -> None:
        return None  # asynchronous messages: nothing handles them here

