"""
The Centrifugo client protocol, JSON flavour, at C{/connection/websocket},
so that the stock SDKs (npm C{centrifuge} 5.x, C{centrifuge-python}) work
unchanged.  Reference and a worked session: C{docs/protocol-centrifuge.md}.

Frames carry one or more JSON objects separated by C{\\n}.  A command is
C{{"id": N, "<method>": {...}}}; its reply is C{{"id": N, "<method>":
{...}}} or C{{"id": N, "error": {"code", "message", "temporary"}}}.  The
server pings with C{{}} every C{heartbeat.ping_interval} seconds and the
client answers C{{}} within C{heartbeat.ping_timeout} (else close 3012).
Pushes are C{{"push": {"channel": ..., "pub"|"join"|"leave"|"unsubscribe":
{...}}}}.  The first command must be C{connect}.  Each method is handled by
C{handle_<method>}, which returns the reply body, a Deferred of it, or None
for no reply.
"""

from __future__ import annotations

import math
import uuid
from typing import Any, cast

from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._version import __version__
from .auth import ANONYMOUS, Identity, InvalidToken, TokenExpired
from .broker.history import Publication, StreamPosition
from .centrifuge_codec import (
    ALREADY_SUBSCRIBED,
    BAD_REQUEST,
    BAD_REQUEST_ERROR,
    CLOSES,
    EXPIRED,
    INTERNAL,
    INVALID_TOKEN,
    LIMIT_EXCEEDED,
    METHOD_NOT_FOUND,
    PERMISSION_DENIED,
    PING,
    SLOW,
    STALE,
    TOKEN_EXPIRED,
    TOO_MANY_REQUESTS,
    UNSUBSCRIBE_SERVER,
    Disconnect,
    Raw,
    ReplyError,
    encode_reply,
    offset_of,
    prepare_push,
    push_bytes,
    size_of,
)
from .centrifuge_methods import ServerMethods
from .centrifuge_subscriptions import ChannelSubscriber, Subscription
from .hub import BrokerUnavailable, Joined
from .jsonutil import compact, loads_strict
from .limits import PublishLimit, TokenBucket
from .registry import ClientInfo
from .server_api import ApiError, checked_channel
from .wire import CloseReason, Link, Prepared, WireContext

__all__ = ["CENTRIFUGE_PATH", "CentrifugeWire", "ReplyError"]

_log = Logger()

CENTRIFUGE_PATH = "/connection/websocket"
JSON_SUBPROTOCOL = "centrifuge-json"

# Channels one connection may subscribe to at once (Centrifugo's default too).
MAX_CHANNELS = 128
# Commands in one frame; the replies to a frame go out as one message.
MAX_COMMANDS_PER_FRAME = 100


class CentrifugeWire(ServerMethods):
    """The Centrifuge protocol on one connection: several channels, recovery, tokens."""

    __slots__ = ("context", "link", "identity", "connected", "subscriptions", "_bucket",
                 "_subscribe_bucket", "_batch", "_batch_size", "_closing", "_connect_deadline")

    def __init__(self, context: WireContext, link: Link) -> None:
        self.context = context
        self.link = link
        self.identity: Identity = ANONYMOUS
        self.connected = False
        self.subscriptions: dict[str, ChannelSubscriber] = {}
        self._bucket: PublishLimit | None = None
        # Subscribes per second: fresh channel names are not free to try.
        self._subscribe_bucket: TokenBucket | None = None
        # While a frame is being handled, everything to send waits here, in
        # order, and goes out as one frame: a reply always precedes the
        # pushes that follow from it.
        self._batch: list[bytes] | None = None
        self._batch_size = 0
        # A disconnect decided while handling a frame, done once its replies are out.
        self._closing: tuple[int, str] | None = None
        self._connect_deadline: IDelayedCall | None = None

    # -- lifecycle ------------------------------------------------------------

    def on_connect(self, request: ConnectionRequest) -> str | None:
        # The token comes with the connect command.  JSON only: select the
        # JSON subprotocol if asked for, since a client fails a handshake
        # that does not echo the subprotocol it asked for.
        return JSON_SUBPROTOCOL if JSON_SUBPROTOCOL in request.protocols else None

    def on_open(self) -> None:
        context = self.context
        now = context.clock.seconds()
        self.link.info = ClientInfo(str(uuid.uuid4()), str(self.link.peer),
                                        "centrifuge", now)
        server = context.config.server
        if server.subscribe_rate:
            self._subscribe_bucket = TokenBucket(server.subscribe_rate, MAX_CHANNELS, now)
        context.registry.add(self.link)
        # A client must say connect soon: it gets no pings before, so the idle
        # monitor alone would let it sit for idle_timeout.
        self._connect_deadline = context.clock.callLater(
            server.handshake_timeout, self._not_connected)

    def _not_connected(self) -> None:
        self._connect_deadline = None
        if not self.connected:
            self.link.reject(STALE, "stale", "stale")

    def _cancel_deadline(self) -> None:
        if self._connect_deadline is not None and self._connect_deadline.active():
            self._connect_deadline.cancel()
        self._connect_deadline = None

    def on_close(self, was_clean: bool, close_code: int) -> None:
        self._cancel_deadline()
        for subscriber in list(self.subscriptions.values()):
            self._leave(subscriber)
        self.subscriptions.clear()

    # -- frames ---------------------------------------------------------------

    def on_message(self, payload: bytes, is_binary: bool) -> None:
        self.context.metrics.messages_received.labels("centrifuge").inc()
        if is_binary:
            self._disconnect(BAD_REQUEST, "bad request")
            return
        self._batch = []
        self._batch_size = 0
        try:
            self._handle_frame(payload)
        finally:
            batch, self._batch = self._batch, None
            self._write(batch)
        if self._closing is not None:
            closing, self._closing = self._closing, None
            self._disconnect(*closing)

    def _handle_frame(self, payload: bytes) -> None:
        lines = [line for line in payload.split(b"\n") if line.strip()]
        if len(lines) > MAX_COMMANDS_PER_FRAME:
            self._closing = (BAD_REQUEST, "bad request")
            return
        for line in lines:
            if self._closing is not None:
                return
            try:
                command = loads_strict(line)
            except ValueError:
                command = None
            if not isinstance(command, dict):
                self._closing = (BAD_REQUEST, "bad request")
                return
            if not command:  # {}: the pong (before connect, there was no ping)
                if not self.connected:
                    self._closing = (BAD_REQUEST, "bad request")
                    return
                self.link.info.ping_sent_at = None
                continue
            try:
                reply = self._dispatch(command)
            except Disconnect as e:
                self._closing = (e.code, e.reason)
                return
            if isinstance(reply, Deferred):
                reply.addCallback(self._send_reply)
            elif reply is not None:
                self._batched(reply)

    def _batched(self, message: bytes) -> None:
        """
        Add to the frame being answered.  A frame whose answer would pass
        C{server.max_queue_size} (many history commands, say) ends the
        connection as slow rather than grow the server without bound.
        """
        assert self._batch is not None
        self._batch_size += len(message)
        if self._batch_size > self.context.config.server.max_queue_size:
            self._batch.clear()
            self._closing = (SLOW, "slow")
        elif self._closing is None:
            self._batch.append(message)

    def _dispatch(self, command: dict[str, Any]) -> bytes | Deferred[bytes | None] | None:
        command_id = command.get("id", 0)
        if not isinstance(command_id, int) or isinstance(command_id, bool) or command_id < 0:
            raise Disconnect(BAD_REQUEST, "bad request")
        methods = [key for key in command if key != "id"]
        if len(methods) != 1 or not isinstance(command[methods[0]], dict):
            raise Disconnect(BAD_REQUEST, "bad request")
        method = methods[0]
        if not self.connected and method != "connect":
            raise Disconnect(BAD_REQUEST, "bad request")
        handler = getattr(self, f"handle_{method}", None)
        if handler is None:
            error = ReplyError(METHOD_NOT_FOUND, "method not found")
            return self._reply(command_id, method, error)
        try:
            result = handler(command[method])
        except ReplyError as e:
            return self._reply(command_id, method, e)
        if isinstance(result, Deferred):
            return result.addCallbacks(
                lambda body: self._reply(command_id, method, body),
                lambda failure: self._reply_failure(command_id, method, failure))
        return self._reply(command_id, method, result)

    def _reply(self, command_id: int, method: str,
               body: dict[str, Any] | ReplyError | None) -> bytes | None:
        if not command_id:
            return None  # no id, no reply (e.g. send)
        if isinstance(body, ReplyError):
            return compact({"id": command_id, "error": body.as_dict()})
        return encode_reply(command_id, method, body)

    def _reply_failure(self, command_id: int, method: str, failure: Failure) -> bytes | None:
        if failure.check(Disconnect):
            error = cast(Disconnect, failure.value)
            self._disconnect(error.code, error.reason)
            return None
        if failure.check(ReplyError):
            return self._reply(command_id, method, cast(ReplyError, failure.value))
        if failure.check(ApiError):
            refused = cast(ApiError, failure.value)
            return self._reply(command_id, method, ReplyError(refused.code, refused.message))
        if failure.check(BrokerUnavailable):
            return self._reply(command_id, method,
                               ReplyError(INTERNAL, "broker unavailable", temporary=True))
        _log.failure("{method} from {client_id} failed", failure, method=method,
                     client_id=self.link.info.client_id)
        return self._reply(command_id, method, ReplyError(INTERNAL, "internal server error"))

    def _send_reply(self, reply: bytes | None) -> None:
        if reply:
            self._send([reply])
        # Publications held back during a subscribe go out after its reply.
        for subscriber in list(self.subscriptions.values()):
            subscription = subscriber.subscription
            if subscription.ready and subscription.pending is not None:
                held, subscription.pending = subscription.pending, None
                for publication in held:
                    self.deliver(subscription, publication)

    def _send(self, messages: list[bytes]) -> None:
        """Send now, or after the frame being handled: never ahead of earlier replies."""
        if self._batch is not None:
            for message in messages:
                self._batched(message)
        else:
            self._write(messages)

    def _write(self, messages: list[bytes]) -> None:
        if messages:
            self.link.send_text(b"\n".join(messages))

    def _disconnect(self, code: int, reason: str) -> None:
        self._cancel_deadline()  # closing already: not again as stale
        if code in (BAD_REQUEST, INVALID_TOKEN, SLOW):
            # The client's fault (a bad command, a bad token, a frame asking for
            # more than max_queue_size of answers): counted, and ends in ERROR.
            self._push_disconnect(code, reason)
            metric = "answers_too_large" if code == SLOW else reason.replace(" ", "_")
            self.link.reject(code, reason, metric)
        else:
            self.close_with(code, reason)

    def _push_disconnect(self, code: int, reason: str) -> None:
        """The disconnect push, then the close frame with the same code (SDKs take either)."""
        if self.connected:
            self._send([compact({"push": {"disconnect": {"code": code, "reason": reason}}})])

    def close_with(self, code: int, reason: str) -> None:
        self._push_disconnect(code, reason)
        self.link.close(code, reason)

    # -- connect, refresh ---------------------------------------------------------

    def _verify(self, token: Any) -> Identity:
        context = self.context
        if not token:
            if context.tokens.anonymous_allowed:
                return ANONYMOUS
            raise Disconnect(INVALID_TOKEN, "invalid token")
        if not isinstance(token, str):
            raise Disconnect(BAD_REQUEST, "bad request")
        try:
            return context.tokens.verify(token, context.clock.seconds())
        except TokenExpired:
            if self.connected:  # refresh: as Centrifugo, the SDK reconnects and gets a new one
                raise Disconnect(EXPIRED, "connection expired") from None
            raise ReplyError(TOKEN_EXPIRED, "token expired") from None
        except InvalidToken as e:
            _log.info("centrifuge client {client_id}: invalid token ({error})",
                      client_id=self.link.info.client_id, error=str(e))
            raise Disconnect(INVALID_TOKEN, "invalid token") from None

    def _expiry(self, identity: Identity) -> dict[str, Any]:
        if identity.expires_at is None:
            return {}
        # Rounded down, as Centrifugo does: the SDK refreshes at ttl, before exp.
        ttl = max(1, math.floor(identity.expires_at - self.context.clock.seconds()))
        return {"expires": True, "ttl": ttl}

    def handle_connect(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.connected:
            raise Disconnect(BAD_REQUEST, "bad request")
        identity = self._verify(body.get("token"))
        self.identity = identity
        info = self.link.info
        info.user = identity.user
        info.expires_at = identity.expires_at
        self.connected = True
        self._bucket = self.context.publish_limit(self.link, identity.user)
        self._cancel_deadline()
        return {"client": info.client_id, "version": __version__,
                "ping": max(1, round(self.context.config.heartbeat.ping_interval)),
                "pong": True, **self._expiry(identity)}

    def handle_refresh(self, body: dict[str, Any]) -> dict[str, Any]:
        identity = self._verify(body.get("token"))
        if identity.user != self.identity.user:
            raise Disconnect(INVALID_TOKEN, "invalid token")
        self.identity = identity
        info = self.link.info
        info.expires_at = identity.expires_at
        for channel in [c for c in self.subscriptions if not identity.allows(c)]:
            self._server_unsubscribe(channel, UNSUBSCRIBE_SERVER, "permission denied")
        return {"client": info.client_id, "version": __version__, **self._expiry(identity)}

    # -- subscriptions ----------------------------------------------------------------

    def _channel(self, body: dict[str, Any]) -> str:
        try:
            channel = checked_channel(body.get("channel"))
        except ApiError as e:
            raise ReplyError(e.code, "bad request" if e.code == BAD_REQUEST_ERROR
                             else "unknown channel") from None
        if not self.identity.allows(channel):
            raise ReplyError(PERMISSION_DENIED, "permission denied")
        return channel

    def handle_subscribe(self, body: dict[str, Any]) -> Deferred[Raw]:
        channel = self._channel(body)
        if channel in self.subscriptions:
            raise ReplyError(ALREADY_SUBSCRIBED, "already subscribed")
        if len(self.subscriptions) >= MAX_CHANNELS:
            raise ReplyError(LIMIT_EXCEEDED, "limit exceeded")
        bucket = self._subscribe_bucket
        if bucket is not None and not bucket.take(self.context.clock.seconds()):
            self.context.metrics.rate_limited.labels("subscribe").inc()
            raise ReplyError(TOO_MANY_REQUESTS, "too many requests", temporary=True)
        # Everything that can be refused is checked before anything is registered.
        since = None
        if body.get("recover"):
            since = StreamPosition(str(body.get("epoch", "")), offset_of(body.get("offset", 0)))
        subscription = Subscription(channel, bool(body.get("join_leave")))
        subscriber = ChannelSubscriber(self, subscription)
        self.subscriptions[channel] = subscriber
        self.link.info.channels.add(channel)

        def failed(failure: Failure) -> Failure:
            self._forget(channel)
            return failure

        # The hub holds live publications meanwhile and hands them over after the missed ones.
        return self.context.hub.join(channel, subscriber, since).addCallbacks(
            self._subscribed, failed, callbackArgs=(subscriber, since))

    def _subscribed(self, joined: Joined, subscriber: ChannelSubscriber,
                    since: StreamPosition | None) -> Raw:
        position = joined.position
        reply: dict[str, Any] = {"recoverable": True, "positioned": True,
                                 "epoch": position.epoch, "offset": position.offset}
        in_reply: list[Publication] = []
        after_reply = joined.publications
        if since is not None:
            recovered = joined.recovered and (size_of(joined.publications)
                                              <= self.context.config.server.max_queue_size)
            reply["was_recovering"] = True
            reply["recovered"] = recovered
            if recovered:
                # As Centrifugo: the position the client sent; it advances
                # through the publications that come with the reply.
                reply["offset"] = since.offset
                in_reply, after_reply = joined.publications, []
            else:
                # Too much to send in one reply, or history did not cover it:
                # the client resyncs, and gets what is live from the position on.
                self.context.metrics.recovery_gaps.labels("centrifuge").inc()
                after_reply = joined.publications[joined.missed:]
        subscription = subscriber.subscription
        subscription.pending = list(after_reply)  # sent once the reply is out
        if self.subscriptions.get(subscription.channel) is not subscriber:
            return Raw(reply, in_reply)  # unsubscribed, or gone, while the broker answered
        subscription.ready = True
        self._announce(subscriber, "join")
        # The publications keep their bytes: spliced into the reply as JSON text.
        return Raw(reply, in_reply)

    def deliver(self, subscription: Subscription, publication: Publication) -> None:
        # The hub gives each publication once, in order, past the joint.
        if subscription.pending is not None:
            subscription.pending.append(publication)
            return
        if self._batch is not None:
            self._batched(push_bytes(publication))
            return
        prepared = publication.encoded("centrifuge", prepare_push)
        self.link.send_prepared(cast(Prepared, prepared))

    def written(self, mark: object) -> None:
        return None  # the SDKs keep their own stream positions

    def handle_unsubscribe(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = body.get("channel")
        if isinstance(channel, str) and channel in self.subscriptions:
            self._forget(channel)
        return {}

    def _forget(self, channel: str) -> None:
        subscriber = self.subscriptions.pop(channel, None)
        self.link.info.channels.discard(channel)
        if subscriber is not None:
            self._leave(subscriber)

    def _leave(self, subscriber: ChannelSubscriber) -> None:
        self.context.hub.unsubscribe(subscriber.subscription.channel, subscriber)
        if subscriber.subscription.ready:  # its join was announced
            self._announce(subscriber, "leave")

    def _server_unsubscribe(self, channel: str, code: int, reason: str) -> None:
        self._forget(channel)
        self._send([compact({"push": {"channel": channel,
                                       "unsubscribe": {"code": code, "reason": reason}}})])

    def _client_info(self) -> dict[str, Any]:
        info = self.link.info
        return {"user": info.user, "client": info.client_id}

    def _announce(self, subscriber: ChannelSubscriber, kind: str) -> None:
        """join/leave pushes to the channel's subscribers that asked for them."""
        channel = subscriber.subscription.channel
        info = self._client_info()
        self.context.hub.announce(channel, kind, compact(info))  # to the other nodes
        push = compact({"push": {"channel": channel, kind: {"info": info}}})
        for other in self.context.hub.subscribers(channel):
            # Only to those whose own subscribe reply is out: no push before it.
            if (isinstance(other, ChannelSubscriber) and other is not subscriber
                    and other.subscription.join_leave and other.subscription.ready):
                other.wire._send([push])

    # -- other commands ---------------------------------------------------------

    # -- the connection's duties -------------------------------------------------

    def on_pong(self, payload: bytes) -> None:
        return None  # Centrifuge clients answer with {} frames, not WebSocket pongs

    def send_heartbeat(self) -> None:
        if self.connected:
            self.link.send_prepared(PING)
        else:
            self.link.info.ping_sent_at = None  # not connected yet: nothing to answer

    def close(self, reason: CloseReason) -> None:
        how, code, text, push = CLOSES[reason]
        if push:
            self._push_disconnect(code, text)
        if how == "close":
            self.link.close(code, text)
        else:
            self.link.fail(code, text)
