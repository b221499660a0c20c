"""
The raw wire protocol (the seed's protocol): one channel per connection,
one JSON object per message, delivered byte for byte.  Reference and a
worked session: C{docs/protocol-raw.md}.

  - Path C{/<channel>} (C{/} is C{channels.default}); HTTP 404 otherwise.
  - C{?client_id=X}: a server-side session.  When the connection ends the
    session is held C{reconnect.session_ttl} seconds with the last offset
    delivered; reconnecting with the same id goes C{RECONNECTING} ->
    C{CONNECTED}, counters carry over, and what was published meanwhile is
    replayed verbatim and in order before live traffic.  Reconnecting more
    than C{reconnect.max_attempts} times in a row, each within
    C{reconnect.delay} seconds, is refused with HTTP 429 and C{Retry-After}.
    A second live connection with the same id replaces the first (4000).
  - C{?token=} or C{Authorization: Bearer}: a JWT (C{auth.py}); missing or
    invalid when required, HTTP 401; its C{channels} claim not allowing the
    channel, HTTP 403; expiry closes the connection with 4001.
  - Bad input: 1003 "Invalid message format", 1007 invalid UTF-8, 1009 too
    large, 1008 when publishing is off or over the rate limit.
"""

from __future__ import annotations

import re
import uuid
from collections import deque
from typing import TYPE_CHECKING, cast

from autobahn.websocket.protocol import PreparedMessage
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .auth import ANONYMOUS, Identity, InvalidToken
from .config import valid_channel
from .history import Publication, Recovery, StreamPosition
from .jsonutil import parse_json_object
from .limits import PublishLimit
from .registry import ClientInfo, ConnectionState
from .sessions import Session, admit

if TYPE_CHECKING:
    from .protocol import OmegaProtocol

__all__ = ["RawWire"]

_log = Logger()

NORMAL, GOING_AWAY, UNSUPPORTED_DATA, INVALID_PAYLOAD, POLICY_VIOLATION = (
    1000, 1001, 1003, 1007, 1008)
REPLACED, TOKEN_EXPIRED, SLOW_CONSUMER = 4000, 4001, 4008
_CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,128}\Z")
# A session's writes not yet known to have reached its client: checked with
# the kernel every this many writes (and at each heartbeat), kept to at most
# the second number (past it the oldest are forgotten: the session may then
# resume from further back, with duplicates, never further on).
_MARKS_CHECK, _MARKS_MAX = 32, 1024


def _is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def request_token(request: ConnectionRequest) -> str | None:
    """C{?token=}, else C{Authorization: Bearer <token>}, else None."""
    token = request.params.get("token", [None])[0]
    if token:
        return str(token)
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class RawWire:
    """The raw protocol on one connection; subscribes itself to the hub."""

    __slots__ = ("protocol", "omega", "channel", "client_id", "identity", "session",
                 "position", "_queued", "_replaying", "_bucket", "_marks")

    def __init__(self, protocol: OmegaProtocol) -> None:
        self.protocol = protocol
        self.omega = protocol.omega
        self.channel = ""
        self.client_id = ""
        self.identity: Identity = ANONYMOUS
        self.session: Session | None = None  # only with an explicit client_id
        # The last publication the client is known to have received (what a
        # session resumes from), and the last one queued for it (what is
        # skipped as a duplicate).  Without a session: the last one written.
        self.position: StreamPosition | Publication | None = None
        # (a Publication once one was queued: no new object per delivery)
        self._queued: StreamPosition | Publication | None = None
        self._replaying: list[Publication] | None = None  # live ones held back meanwhile
        self._bucket: PublishLimit | None = None
        # With a session, the writes since the position: (bytes sent once the
        # write was done, epoch, offset of its last publication).
        self._marks: deque[tuple[int, str, int]] | None = None

    @property
    def info(self) -> ClientInfo:
        return self.protocol.info

    # -- handshake ----------------------------------------------------------

    def on_connect(self, request: ConnectionRequest) -> Deferred[None] | None:
        omega = self.omega
        path = request.path
        channel = omega.config.channels.default if path == "/" else path[1:]
        if not valid_channel(channel):
            raise ConnectionDeny(404, "Not Found")
        self.channel = channel
        self.identity = self._authenticate(request)
        client_id = request.params.get("client_id", [None])[0]
        if client_id is None:
            self.client_id = uuid.uuid4().hex
            return None
        if not _CLIENT_ID_RE.match(client_id):
            raise ConnectionDeny(400, "Invalid client_id")
        self.client_id = client_id
        return omega.hub.broker.sessions.get(client_id).addCallback(self._admit)

    def _authenticate(self, request: ConnectionRequest) -> Identity:
        tokens = self.omega.tokens
        token = request_token(request)
        if token is None:
            if tokens.anonymous_allowed:
                return ANONYMOUS
            raise ConnectionDeny(401, "Token Required")
        try:
            identity = tokens.verify(token, self.omega.clock.seconds())
        except InvalidToken as e:
            _log.info("raw handshake from {peer}: invalid token ({error})",
                      peer=request.peer, error=str(e))
            raise ConnectionDeny(401, "Invalid Token") from None
        if not identity.allows(self.channel):
            raise ConnectionDeny(403, "Channel Not Allowed")
        return identity

    def _admit(self, session: Session | None) -> Deferred[None] | None:
        omega = self.omega
        user = self.identity.user
        live = omega.registry.get(self.client_id)
        if (session is not None and session.user != user) or (
                live is not None and live.info.user != user):
            # Another user's client_id: neither its session nor its connection
            # may be taken over.
            raise ConnectionDeny(409, "client_id Belongs To Another User")
        if session is None and live is not None:
            # Not held yet (still live): the live connection's own session,
            # so that replacing it counts towards the reconnect threshold.
            session = getattr(getattr(live, "wire", None), "session", None)
        if session is None:
            self.session = Session(self.client_id, user=user)
            return None
        reconnect = omega.config.reconnect
        now = omega.clock.seconds()
        already_blocked = now < session.blocked_until
        admission = admit(session, now, reconnect.delay, reconnect.max_attempts,
                          replacing=live is not None)
        stored = omega.hub.broker.sessions.put(session, reconnect.session_ttl)
        if not admission.allowed:
            if not already_blocked:  # this reconnect tripped the threshold
                _log.warn("client {client_id} ERROR: reconnecting too often, refused for "
                          "{retry_after} s", client_id=self.client_id,
                          retry_after=admission.retry_after)
                omega.metrics.transitions.labels(ConnectionState.ERROR.value).inc()
            raise self.protocol.refuse_reconnects(admission.retry_after)
        self.session = session
        return stored

    # -- open ---------------------------------------------------------------

    def on_open(self) -> None:
        omega = self.omega
        protocol = self.protocol
        now = omega.clock.seconds()
        info = protocol.info = ClientInfo(self.client_id, str(protocol.peer), "raw", now)
        info.user = self.identity.user
        info.expires_at = self.identity.expires_at
        info.channels.add(self.channel)
        self._bucket = omega.publish_limit(protocol, self.identity.user)
        session = self.session
        resuming = session is not None and session.disconnected_at is not None
        resume_from = None
        if session is not None:
            info.message_count = session.message_count
            info.error_count = session.error_count
            info.reconnect_count = session.reconnect_count + (1 if resuming else 0)
            resume_from = session.positions.get(self.channel)
            self.position = self._queued = resume_from
            session.disconnected_at = None  # live again
        if resuming:
            info.state = ConnectionState.RECONNECTING
        replaced = omega.registry.add(protocol)
        if replaced is not None:
            replaced.close_replaced()
        omega.hub.subscribe(self.channel, self)
        if resuming and resume_from is not None:
            self._replaying = []
            omega.hub.broker.recover(self.channel, resume_from).addCallback(
                self._replay).addErrback(self._replay_failed)
        else:
            if resuming:
                omega.registry.transition(protocol, ConnectionState.CONNECTED, "resumed")
            if session is not None:
                # Where this client starts: what is published after it can be replayed.
                omega.hub.broker.position(self.channel).addCallback(self._start_at)

    def _start_at(self, position: StreamPosition) -> None:
        if self.position is None:
            self.position = self._queued = position

    def _replay(self, recovery: Recovery) -> Deferred[None] | None:
        if recovery.recovered:
            self._finish_replay(recovery.publications, gap=False)
            return None
        # History no longer covers the gap: send what it has, and say so in logs and metrics.
        assert self.position is not None
        since = StreamPosition(self.position.epoch, self.position.offset)
        if since.epoch != recovery.position.epoch:
            since = StreamPosition(recovery.position.epoch, 0)
        return self.omega.hub.broker.history(self.channel, since, None, False).addCallback(
            lambda result: self._finish_replay(result[0], gap=True))

    def _replay_failed(self, failure: Failure) -> None:
        _log.failure("replay for {client_id} failed", failure, client_id=self.client_id)
        self._finish_replay([], gap=True)

    def _finish_replay(self, missed: list[Publication], gap: bool) -> None:
        omega = self.omega
        if gap:
            omega.metrics.recovery_gaps.labels("raw").inc()
            _log.warn("client {client_id} resumed on {channel} with a gap: history no longer "
                      "covers {position}; replayed the {count} publications it still has",
                      client_id=self.client_id, channel=self.channel,
                      position=self.position, count=len(missed))
        held, self._replaying = self._replaying or [], None
        for publication in [*missed, *held]:
            self.deliver(publication)
        if self.protocol.info.state is ConnectionState.RECONNECTING:
            omega.registry.transition(self.protocol, ConnectionState.CONNECTED,
                                      f"resumed, {len(missed)} replayed")

    # -- frames ---------------------------------------------------------------

    def on_message(self, payload: bytes, is_binary: bool) -> None:
        omega = self.omega
        protocol = self.protocol
        omega.metrics.messages_received.labels("raw").inc()
        if not omega.config.channels.allow_client_publish:
            protocol.reject(POLICY_VIOLATION, "Publishing is not allowed", "publish_denied")
        elif self._bucket is not None and not self._bucket.take(omega.clock.seconds()):
            omega.metrics.rate_limited.labels("publish").inc()
            protocol.reject(POLICY_VIOLATION, "Publish rate exceeded", "rate_limited")
        elif is_binary and not _is_utf8(payload):
            protocol.reject(INVALID_PAYLOAD, "Invalid UTF-8", "invalid_utf8")
        elif parse_json_object(payload) is None:
            protocol.reject(UNSUPPORTED_DATA, "Invalid message format", "invalid_format")
        else:
            omega.metrics.messages_published.labels("raw").inc()
            omega.hub.publish(self.channel, payload).addErrback(self._publish_failed)

    def _publish_failed(self, failure: Failure) -> None:
        self.protocol.info.error_count += 1
        _log.failure("publish from {client_id} on {channel} failed", failure,
                     client_id=self.client_id, channel=self.channel)

    def deliver(self, publication: Publication) -> None:
        if self._replaying is not None:
            self._replaying.append(publication)
            return
        queued = self._queued
        if (queued is not None and publication.offset <= queued.offset
                and publication.epoch == queued.epoch):
            return  # already delivered: the joint between history and live stream
        prepared = publication.encoded("raw", self.omega.prepare_raw)
        self.protocol.send_prepared(cast(PreparedMessage, prepared), publication)
        self._queued = publication

    def written(self, publication: Publication) -> None:
        if self.session is None:
            self.position = publication  # epoch and offset; no object per write
            return
        outbox = self.protocol.outbox
        if outbox is None:
            return
        marks = self._marks
        if marks is None:
            marks = self._marks = deque()
        marks.append((outbox.sent, publication.epoch, publication.offset))
        if len(marks) % _MARKS_CHECK == 0:
            self._settle(self.protocol.unacked_bytes())

    def _settle(self, unacked: int | None) -> None:
        """Move the position past the writes the client's TCP acknowledged."""
        marks = self._marks
        outbox = self.protocol.outbox
        if not marks or outbox is None:
            return
        if unacked is not None:
            received = outbox.sent - unacked
            while marks and marks[0][0] <= received:
                _, epoch, offset = marks.popleft()
                self.position = StreamPosition(epoch, offset)
        while len(marks) > _MARKS_MAX:
            marks.popleft()

    def close_slow(self) -> None:
        self.protocol.fail_with(SLOW_CONSUMER, "slow consumer")

    def drop_unresponsive(self) -> None:
        self.protocol.abort()  # it does not answer: a close frame would wait for nothing

    def on_pong(self, payload: bytes) -> None:
        self.protocol.info.ping_sent_at = None

    def send_heartbeat(self) -> None:
        self.protocol.send_ping()
        if self._marks:
            self._settle(self.protocol.unacked_bytes())

    def close_inactive(self) -> None:
        self.protocol.close(NORMAL, "Inactive client")

    def close_replaced(self) -> None:
        self.protocol.close(REPLACED, "replaced")

    def close_expired(self) -> None:
        self.protocol.close(TOKEN_EXPIRED, "token expired")

    def close_for_shutdown(self) -> None:
        self.protocol.close(GOING_AWAY, "going away")

    def close_with(self, code: int, reason: str) -> None:
        self.protocol.close(code, reason)

    def on_close(self, was_clean: bool, close_code: int) -> None:
        omega = self.omega
        omega.hub.unsubscribe(self.channel, self)
        session = self.session
        if session is None or omega.registry.get(self.client_id) not in (None, self.protocol):
            return  # no session, or a newer connection owns it now
        info = self.protocol.info
        session.message_count = info.message_count
        session.error_count = info.error_count
        session.reconnect_count = info.reconnect_count
        session.disconnected_at = omega.clock.seconds()
        # Whatever the close was, the position is what the client is known to
        # have received (unacked_at_close is None when the peer vanished and
        # the kernel could not be asked: then only what was settled before).
        self._settle(self.protocol.unacked_at_close)
        if self.position is not None:
            session.positions[self.channel] = StreamPosition(self.position.epoch,
                                                             self.position.offset)
        omega.hub.broker.sessions.put(session, omega.config.reconnect.session_ttl)
