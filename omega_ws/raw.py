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

from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .auth import ANONYMOUS, Identity, InvalidToken
from .broker.history import Publication, StreamPosition
from .broker.sessions import Session, admit
from .config import valid_channel
from .hub import BrokerUnavailable, Joined
from .jsonutil import parse_json_object
from .limits import PublishLimit
from .registry import ClientInfo, ConnectionState
from .wire import CloseReason, Link, Prepared, WireContext

__all__ = ["RawWire"]

_log = Logger()

UNSUPPORTED_DATA, INVALID_PAYLOAD, POLICY_VIOLATION = 1003, 1007, 1008
TRY_AGAIN_LATER = 1013  # the broker could not take a publication
REPLAY_RETRY = 1.0  # seconds between tries of a replay while the broker is away
# How the raw wire ends a connection, for each reason: how, code, text.
CLOSES: dict[CloseReason, tuple[str, int, str]] = {
    CloseReason.INACTIVE: ("close", 1000, "Inactive client"),
    CloseReason.REPLACED: ("close", 4000, "replaced"),
    CloseReason.EXPIRED: ("close", 4001, "token expired"),
    CloseReason.SHUTDOWN: ("close", 1001, "going away"),
    CloseReason.SLOW: ("fail", 4008, "slow consumer"),
    # It does not answer: a close frame would wait for nothing.
    CloseReason.UNRESPONSIVE: ("abort", 1006, ""),
}
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


def _frame(publication: Publication) -> Prepared:
    """The raw wire format: the JSON text as it was published, framed once."""
    return Prepared(publication.data)


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

    __slots__ = ("context", "link", "channel", "client_id", "identity", "session",
                 "position", "_bucket", "_marks")

    def __init__(self, context: WireContext, link: Link) -> None:
        self.context = context
        self.link = link
        self.channel = ""
        self.client_id = ""
        self.identity: Identity = ANONYMOUS
        self.session: Session | None = None  # only with an explicit client_id
        # The last publication the client is known to have received (what a
        # session resumes from); without a session, the last one written.
        # (A Publication once one was written: no new object per delivery.)
        self.position: StreamPosition | Publication | None = None
        self._bucket: PublishLimit | None = None
        # With a session, the writes since the position: (bytes sent once the
        # write was done, epoch, offset of its last publication).
        self._marks: deque[tuple[int, str, int]] | None = None

    @property
    def info(self) -> ClientInfo:
        return self.link.info

    # -- handshake ----------------------------------------------------------

    def on_connect(self, request: ConnectionRequest) -> Deferred[None] | None:
        path = request.path
        channel = self.context.config.channels.default if path == "/" else path[1:]
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
        return self.context.hub.session(client_id).addCallback(self._admit)

    def _authenticate(self, request: ConnectionRequest) -> Identity:
        tokens = self.context.tokens
        token = request_token(request)
        if token is None:
            if tokens.anonymous_allowed:
                return ANONYMOUS
            raise ConnectionDeny(401, "Token Required")
        try:
            identity = tokens.verify(token, self.context.clock.seconds())
        except InvalidToken as e:
            _log.info("raw handshake from {peer}: invalid token ({error})",
                      peer=request.peer, error=str(e))
            raise ConnectionDeny(401, "Invalid Token") from None
        if not identity.allows(self.channel):
            raise ConnectionDeny(403, "Channel Not Allowed")
        return identity

    def _admit(self, session: Session | None) -> Deferred[None]:
        context = self.context
        user = self.identity.user
        live = context.registry.get(self.client_id)
        if (session is not None and session.user != user) or (
                live is not None and live.info.user != user):
            # Another user's client_id: neither its session nor its connection
            # may be taken over.
            raise ConnectionDeny(409, "client_id Belongs To Another User")
        reconnect = context.config.reconnect
        if session is None:
            session = Session(self.client_id, user=user)
        else:
            now = context.clock.seconds()
            already_blocked = now < session.blocked_until
            # Replacing a live connection counts like reconnecting.
            admission = admit(session, now, reconnect.delay, reconnect.max_attempts,
                              replacing=live is not None)
            if not admission.allowed:
                self._keep(session)
                if not already_blocked:  # this reconnect tripped the threshold
                    _log.warn("client {client_id} ERROR: reconnecting too often, refused for "
                              "{retry_after} s", client_id=self.client_id,
                              retry_after=admission.retry_after)
                    context.metrics.transitions.labels(ConnectionState.ERROR.value).inc()
                raise self.link.refuse_reconnects(admission.retry_after)
        self.session = session
        # Held while live too: a replacement finds it, and its threshold state.
        return context.hub.keep_session(session, reconnect.session_ttl)

    def _keep(self, session: Session) -> None:
        """Store C{session}; if the broker cannot, the client resumes from less."""
        self.context.hub.keep_session(
            session, self.context.config.reconnect.session_ttl).addErrback(
            lambda failure: _log.warn("session {client_id} not stored: {error}",
                                      client_id=session.client_id,
                                      error=failure.getErrorMessage()))

    # -- open ---------------------------------------------------------------

    def on_open(self) -> None:
        context = self.context
        link = self.link
        info = link.info = ClientInfo(self.client_id, str(link.peer), "raw",
                                      context.clock.seconds())
        info.user = self.identity.user
        info.expires_at = self.identity.expires_at
        info.channels.add(self.channel)
        self._bucket = context.publish_limit(link, self.identity.user)
        session = self.session
        if session is None:
            self._register()
            context.hub.subscribe(self.channel, self)
            return
        # A live connection of this session, still closing, say: the new one
        # takes over from what the old one is known to have delivered.
        replacing = context.registry.get(self.client_id) is not None
        # A session still marked live with no connection here: its node died
        # (a shared broker), and what that node last recorded is resumed.
        resuming = session.disconnected_at is not None or (
            not replacing and bool(session.positions))
        info.message_count = session.message_count
        info.error_count = session.error_count
        info.reconnect_count = session.reconnect_count + (1 if resuming else 0)
        resume_from = session.positions.get(self.channel)
        self.position = resume_from
        session.disconnected_at = None  # live again
        session.refresh = self._refresh
        # Stored again as live: a shared store records it while it lasts.
        self._keep(session)
        if resuming:
            info.state = ConnectionState.RECONNECTING
        self._register()
        since = resume_from if resuming or replacing else None
        context.hub.join(self.channel, self, since, best_effort=True).addCallbacks(
            self._joined, self._join_failed)

    def _register(self) -> None:
        replaced = self.context.registry.add(self.link)
        if replaced is not None:
            replaced.close_replaced()

    def _joined(self, joined: Joined) -> None:
        """Where the client starts, or what it missed: sent before anything live."""
        if self.position is None:
            self.position = joined.position
            self._record()
            if self.session is not None:
                self._keep(self.session)  # where a resume starts, at once
        elif not joined.recovered:
            # History no longer covers the gap: send what it has, and say so.
            self.context.metrics.recovery_gaps.labels("raw").inc()
            _log.warn("client {client_id} resumed on {channel} with a gap: history no longer "
                      "covers {position}; replayed the {count} publications it still has",
                      client_id=self.client_id, channel=self.channel,
                      position=self.position, count=joined.missed)
        for publication in joined.publications:
            self.deliver(publication)
        if self.info.state is ConnectionState.RECONNECTING:
            self.context.registry.transition(self.link, ConnectionState.CONNECTED,
                                             f"resumed, {joined.missed} replayed")

    def _join_failed(self, failure: Failure) -> None:
        context = self.context
        if failure.check(BrokerUnavailable) and self.position is not None:
            # The broker is away: nothing live meanwhile (it would move the
            # position past what was missed); the replay is tried again.
            _log.warn("replay for {client_id} on {channel} waits for the broker: {error}",
                      client_id=self.client_id, channel=self.channel,
                      error=failure.getErrorMessage())
            context.clock.callLater(REPLAY_RETRY, self._replay_again)
            return
        if failure.check(BrokerUnavailable):  # nothing to replay: live once it is back
            _log.warn("{client_id} on {channel}: {error}", client_id=self.client_id,
                      channel=self.channel, error=failure.getErrorMessage())
        else:
            _log.failure("replay for {client_id} failed", failure, client_id=self.client_id)
            context.metrics.recovery_gaps.labels("raw").inc()
        context.hub.subscribe(self.channel, self)  # live from now on, at least
        if self.info.state is ConnectionState.RECONNECTING:
            self.context.registry.transition(self.link, ConnectionState.CONNECTED,
                                             "resumed, 0 replayed")

    # -- frames ---------------------------------------------------------------

    def on_message(self, payload: bytes, is_binary: bool) -> None:
        context = self.context
        link = self.link
        context.metrics.messages_received.labels("raw").inc()
        if not context.config.channels.allow_client_publish:
            link.reject(POLICY_VIOLATION, "Publishing is not allowed", "publish_denied")
        elif self._bucket is not None and not self._bucket.take(context.clock.seconds()):
            context.metrics.rate_limited.labels("publish").inc()
            link.reject(POLICY_VIOLATION, "Publish rate exceeded", "rate_limited")
        elif is_binary and not _is_utf8(payload):
            link.reject(INVALID_PAYLOAD, "Invalid UTF-8", "invalid_utf8")
        elif parse_json_object(payload) is None:
            link.reject(UNSUPPORTED_DATA, "Invalid message format", "invalid_format")
        else:
            context.metrics.messages_published.labels("raw").inc()
            context.hub.publish(self.channel, payload).addErrback(self._publish_failed)

    def _publish_failed(self, failure: Failure) -> None:
        self.info.error_count += 1
        if failure.check(BrokerUnavailable):
            # Not taken: say so, rather than drop it in silence (1013: try again later).
            _log.warn("publish from {client_id} on {channel} refused: {error}",
                      client_id=self.client_id, channel=self.channel, error=str(failure.value))
            self.link.close(TRY_AGAIN_LATER, "Broker unavailable")
            return
        _log.failure("publish from {client_id} on {channel} failed", failure,
                     client_id=self.client_id, channel=self.channel)

    def deliver(self, publication: Publication) -> None:
        # The hub gives each publication once, in order, past the joint.
        prepared = publication.encoded("raw", _frame)
        self.link.send_prepared(prepared, publication)  # type: ignore[arg-type]

    def written(self, publication: Publication) -> None:
        if self.session is None:
            self.position = publication  # epoch and offset; no object per write
            return
        marks = self._marks
        if marks is None:
            marks = self._marks = deque()
        marks.append((self.link.bytes_sent, publication.epoch, publication.offset))
        if len(marks) % _MARKS_CHECK == 0:
            self._settle(self.link.unacked_bytes())

    def _settle(self, unacked: int | None) -> None:
        """Move the position past the writes the client's TCP acknowledged."""
        self._settle_to(None if unacked is None else self.link.bytes_sent - unacked)

    def _settle_to(self, received: int | None) -> None:
        """Move the position past the writes that end within C{received} bytes."""
        marks = self._marks
        if not marks:
            return
        if received is not None:
            settled = None
            while marks and marks[0][0] <= received:
                settled = marks.popleft()
            if settled is not None:
                self.position = StreamPosition(settled[1], settled[2])
                self._record()
        while len(marks) > _MARKS_MAX:
            marks.popleft()

    def _replay_again(self) -> None:
        if self.context.registry.get(self.client_id) is self.link:  # still open
            self.resync()

    def _refresh(self) -> None:
        """Before the session is recorded: the position the client's TCP acknowledged."""
        if self._marks:
            self._settle(self.link.unacked_bytes())

    def resync(self) -> None:
        """
        The broker lost part of the live stream: rejoin from the last
        publication written (it is on its way), and get what followed it
        from history.
        """
        marks = self._marks
        position = self.position
        if marks:
            since: StreamPosition | None = StreamPosition(marks[-1][1], marks[-1][2])
        else:
            since = None if position is None else StreamPosition(position.epoch,
                                                                  position.offset)
        self.context.hub.join(self.channel, self, since, best_effort=True).addCallbacks(
            self._joined, self._join_failed)

    def _record(self) -> None:
        """
        The session follows the position as it settles, so that a connection
        replacing this one (before this one's close is done) starts from it.
        """
        if self.session is not None and self.position is not None:
            self.session.positions[self.channel] = StreamPosition(self.position.epoch,
                                                                  self.position.offset)

    # -- the connection's duties ---------------------------------------------------

    def on_pong(self, payload: bytes) -> None:
        self.info.ping_sent_at = None

    def send_heartbeat(self) -> None:
        self.link.send_ping()
        if self._marks:
            self._settle(self.link.unacked_bytes())

    def close(self, reason: CloseReason) -> None:
        how, code, text = CLOSES[reason]
        if how == "close":
            self.link.close(code, text)
        elif how == "fail":
            self.link.fail(code, text)
        else:
            self.link.abort()

    def close_with(self, code: int, reason: str) -> None:
        self.link.close(code, reason)

    def on_close(self, was_clean: bool, close_code: int) -> None:
        context = self.context
        context.hub.unsubscribe(self.channel, self)
        session = self.session
        if session is None or context.registry.get(self.client_id) not in (None, self.link):
            return  # no session, or a newer connection owns it now
        info = self.info
        session.message_count = info.message_count
        session.error_count = info.error_count
        session.reconnect_count = info.reconnect_count
        session.disconnected_at = context.clock.seconds()
        session.refresh = None
        # Whatever the close was, the position is what the client is known to
        # have received (received_at_close is None when the peer vanished and
        # the kernel could not be asked: then only what was settled before).
        self._settle_to(self.link.received_at_close)
        self._record()
        self._keep(session)
