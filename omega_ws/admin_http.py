"""
The admin listener's HTTP connection, with its limits: each request is
judged from its head alone (L{AdminPolicy.screen}: cross-site requests,
the API key, the body's size) before any body is read; request heads and
bodies have deadlines; the number of connections is capped, the one that
waited longest for a head making room.  The resources it serves are in
C{admin.py}; what is refused and why, in C{docs/security.md}.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from .addresses import parse_ip
from .config import AdminConfig, origin_pattern
from .server_api import (
    BAD_REQUEST,
    LIMIT_EXCEEDED,
    METHOD_NOT_FOUND,
    PERMISSION_DENIED,
    UNAUTHORIZED,
)

__all__ = ["FEED_PATH", "HEADERS_ALLOWED", "MAX_BODY", "AdminPolicy", "AdminSite", "Refusal",
           "is_feed", "key_matches", "own_origin"]

_log = Logger()

MAX_BODY = 16 * 1024 * 1024

# After refusing a request, at most this much of its body is read (and
# thrown away) so that a client still sending it reads the answer instead of
# a connection reset; past it, reading stops until the connection closes.
_DRAIN_LIMIT = 1024 * 1024
# ...and the refused connection is closed after at most this many seconds
# (or admin.request_timeout, when shorter).
_LINGER = 2.0
# At most one "refusing connections" warning in this many seconds.
_WARN_EVERY = 60.0

HEADERS_ALLOWED = b"content-type, x-api-key, authorization"
_REASONS = {200: b"OK", 204: b"No Content", 401: b"Unauthorized", 403: b"Forbidden",
            405: b"Method Not Allowed", 413: b"Content Too Large",
            503: b"Service Unavailable"}


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer given from the request head alone, after which the connection closes."""

    status: int
    code: int
    message: str
    # The label of omega_ws_admin_refusals_total.
    reason: str
    allow: bytes | None = None

    def response(self, with_body: bool = True) -> bytes:
        """The whole HTTP/1.1 response (no body for C{HEAD}, but its length)."""
        body = json.dumps({"error": {"code": self.code, "message": self.message}},
                          separators=(",", ":")).encode()
        head = [b"HTTP/1.1 %d %s" % (self.status, _REASONS.get(self.status, b"Error")),
                b"content-type: application/json", b"cache-control: no-store",
                b"content-length: %d" % len(body), b"connection: close"]
        if self.allow is not None:
            head.append(b"allow: " + self.allow)
        return b"\r\n".join(head) + b"\r\n\r\n" + (body if with_body else b"")


_CROSS_SITE = Refusal(403, PERMISSION_DENIED, "permission denied: cross-site request", "origin")
_UNAUTHORIZED = Refusal(401, UNAUTHORIZED, "unauthorized", "unauthorized")
_TOO_LARGE = Refusal(413, BAD_REQUEST, "body too large", "body_too_large")
_NO_BODY_HERE = Refusal(413, BAD_REQUEST, "a request body is only accepted by POST /api/<method>",
                        "body_not_allowed")
_POST_ONLY = Refusal(405, METHOD_NOT_FOUND, "use POST", "body_not_allowed", allow=b"POST")
_BUSY = Refusal(503, LIMIT_EXCEEDED, "too many admin connections", "connections")


def _host_port(netloc: str, scheme: str) -> tuple[str, int] | None:
    """(host, port) of C{host[:port]}, host lower-case, IPv6 without brackets."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    if (not parts.hostname or parts.netloc != netloc or parts.username is not None
            or parts.password is not None):
        return None
    return parts.hostname, port if port is not None else (443 if scheme == "https" else 80)


def own_origin(origin: str, host: bytes | None, local: IAddress) -> bool:
    """
    Whether C{origin} is the admin listener's own: C{http://} and the Host
    the request was made to, where that Host names the address the request
    really arrived on (C{local}, the socket's address, so port 0 and
    C{0.0.0.0} are resolved), or C{localhost} when that address is loopback,
    and its real port.  A page from a name that merely resolves to us
    (DNS rebinding) has an Origin naming that name, and is not our own.
    """
    if host is None or not origin.startswith("http://"):
        return False
    try:
        host_text = host.decode("ascii")
    except UnicodeDecodeError:
        return False
    target = _host_port(host_text, "http")
    if target is None or _host_port(origin[len("http://"):], "http") != target:
        return False
    name, port = target
    local_ip = parse_ip(str(getattr(local, "host", "")))
    if local_ip is None or port != getattr(local, "port", None):
        return False
    if name == "localhost":
        return local_ip.is_loopback
    return parse_ip(name) == local_ip


def _first_segment(target: bytes) -> bytes:
    """The first path segment, as Twisted's resource traversal sees it."""
    path = target.split(b"?", 1)[0]
    return unquote_to_bytes(path[1:].split(b"/", 1)[0])


# The dashboard's live feed (dashboard/feed.py): the key and the origin are
# checked from the head, as for /api/*; the page and its files are open.
FEED_PATH = (b"dashboard", b"events")


def is_feed(target: bytes) -> bool:
    """The request is for the dashboard's feed (or below it), as Twisted traverses."""
    path = target.split(b"?", 1)[0]
    return tuple(unquote_to_bytes(s) for s in path[1:].split(b"/", 2)[:2]) == FEED_PATH


def key_matches(headers: Headers, key: bytes) -> bool:
    given = (headers.getRawHeaders(b"x-api-key") or [b""])[0]
    authorization = (headers.getRawHeaders(b"authorization") or [b""])[0]
    if authorization.lower().startswith(b"apikey "):
        given = authorization[7:]
    return hmac.compare_digest(given, key)


class AdminPolicy:
    """What the admin listener accepts, judged from a request's head."""

    def __init__(self, api_key: str | None, allowed_origins: tuple[str, ...] = (),
                 max_body: int = MAX_BODY) -> None:
        self.api_key = api_key.encode() if api_key else None
        self.max_body = max_body
        self._allowed = origin_pattern(allowed_origins)

    def origin_allowed(self, origin: str) -> bool:
        """C{origin} is in C{admin.allowed_origins} (not: is our own)."""
        return self._allowed is not None and self._allowed.fullmatch(origin) is not None

    def cross_site(self, headers: Headers, local: IAddress) -> bool:
        """
        The request comes from a browser page that may not use the API: an
        C{Origin} that is neither allowed nor our own, or
        C{Sec-Fetch-Site: cross-site / same-site} without an allowed one.
        Server-side clients send neither header.
        """
        origins = headers.getRawHeaders(b"origin") or []
        texts = [value.decode("latin-1") for value in origins]
        if texts and all(self.origin_allowed(text) for text in texts):
            return False
        sites = headers.getRawHeaders(b"sec-fetch-site") or []
        if any(site.strip().lower() in (b"cross-site", b"same-site") for site in sites):
            return True
        hosts = headers.getRawHeaders(b"host") or []
        host = hosts[0] if len(hosts) == 1 else None
        return not all(own_origin(text, host, local) for text in texts)

    def screen(self, method: bytes, target: bytes, headers: Headers, length: int | None,
               local: IAddress) -> Refusal | None:
        """
        Judge a request whose head is complete and whose body is unread.
        C{length} is its C{Content-Length}, 0 without a body, None when
        chunked; C{local} the address it arrived on.  None: go on.
        """
        has_body = length != 0
        api = _first_segment(target) == b"api"
        if not api and not is_feed(target):
            return _NO_BODY_HERE if has_body else None
        if self.cross_site(headers, local):
            return _CROSS_SITE
        if (method != b"OPTIONS" and self.api_key is not None
                and not key_matches(headers, self.api_key)):
            return _UNAUTHORIZED
        if not api:
            return _NO_BODY_HERE if has_body else None
        if has_body and method != b"POST":
            return _POST_ONLY
        if length is not None and length > self.max_body:
            return _TOO_LARGE
        return None


class _AdminRequest(Request):
    """Counts a body as it arrives; one over the cap is refused there."""

    _received = 0

    def handleContentChunk(self, data: bytes) -> None:
        channel = getattr(self, "channel", None)
        if not isinstance(channel, _AdminChannel) or channel.refused:
            return
        self._received += len(data)
        if self._received > channel.site.policy.max_body:
            channel.refuse(_TOO_LARGE)
            return
        super().handleContentChunk(data)


class _AdminChannel(HTTPChannel):
    """
    An HTTP/1.1 connection to the admin listener with the limits of
    L{AdminSite}: a deadline for each request's head and body, and
    refusals answered from the head alone (L{AdminPolicy.screen}).
    """

    site: AdminSite
    refused = False
    _drained = 0
    _timer: IDelayedCall | None = None
    _counted = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self._counted = True
        self.site.opened()
        self.site.waiting[self] = None
        self._arm(self.site.request_timeout, self._expire)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._disarm()
        self.site.waiting.pop(self, None)
        if self._counted:
            self._counted = False
            self.site.closed()
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            self._drain(data)
        else:
            super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if self.refused:
            self._drain(data)
        else:
            super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        self._disarm()
        self.site.waiting.pop(self, None)
        request = self.requests[-1]
        transport: Any = self.transport
        refusal = self.site.policy.screen(self._command, self._path, request.requestHeaders,
                                          self.length, transport.getHost())
        if refusal is not None:
            self.refuse(refusal)
            return
        super().allHeadersReceived()
        if self.length != 0 and not self.refused:
            self._arm(self.site.request_timeout, self._expire)

    def allContentReceived(self) -> None:
        if self.refused:
            return
        self._disarm()
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        # Armed before Twisted parses any pipelined request, which re-arms it.
        if self.persistent:
            self.site.waiting[self] = None
            self._arm(self.site.request_timeout, self._expire)
        else:
            # Connection: close; bound the time its last response may take to go.
            self._arm(self.site.request_timeout, self._abort)
        super().requestDone(request)

    def _respondToBadRequestAndDisconnect(self) -> None:
        if not self.refused:
            super()._respondToBadRequestAndDisconnect()

    def refuse(self, refusal: Refusal) -> None:
        """
        Answer C{refusal} now and close: half-close at once, so the client
        sees the end of the answer, read and drop what it still sends (up to
        C{_DRAIN_LIMIT}), then close when it does, or abort after C{_LINGER}.
        """
        if self.refused:
            return
        self.refused = True
        self.persistent = False
        # Twisted's lineReceived goes on to dispatch a body-less request when
        # the length is 0; anything else sends the rest to rawDataReceived.
        self.length = None
        self.site.count(refusal.reason)
        _log.debug("admin listener refused a request: {status} {message}",
                   status=refusal.status, message=refusal.message)
        transport: Any = self.transport
        transport.write(refusal.response(getattr(self, "_command", b"") != b"HEAD"))
        if ITCPTransport.providedBy(transport):
            transport.loseWriteConnection()
        else:
            transport.loseConnection()
        self._arm(min(self.site.request_timeout, _LINGER), self._abort)

    def _drain(self, data: bytes) -> None:
        self._drained += len(data)
        if self._drained > _DRAIN_LIMIT:
            self._networkProducer.pauseProducing()

    def _expire(self) -> None:
        """The head or body did not arrive in time."""
        self._timer = None
        self.site.count("timeout")
        _log.debug("admin listener closed a connection that sent no whole request in time")
        self.loseConnection()
        self._arm(self.site.request_timeout, self._abort)

    def _abort(self) -> None:
        self._timer = None
        transport: Any = self.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", None)
            (abort or transport.loseConnection)()

    def _arm(self, delay: float, action: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.callLater(delay, action)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class _Busy(Protocol):
    """Past C{admin.max_connections}: answer 503 and close, reading nothing."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(_BUSY.response())
        self.transport.loseConnection()


class AdminSite(Site):
    """A Site with the admin listener's limits (module docstring)."""

    # Plain HTTP/1.1 only: not Twisted's wrapper that can switch to HTTP/2.
    protocol = _AdminChannel  # type: ignore[assignment]

    def __init__(self, root: Resource, config: AdminConfig, policy: AdminPolicy,
                 clock: IReactorTime, count: Callable[[str], None]) -> None:
        # Twisted's own idle timeout is a backstop only: the request deadlines
        # of _AdminChannel are stricter, and are not reset by a trickle of bytes.
        super().__init__(root, timeout=2 * config.request_timeout, reactor=clock,
                         parsePOSTFormSubmission=False)
        self.requestFactory = _AdminRequest
        self.displayTracebacks = False
        self.noisy = False
        self.policy = policy
        self.request_timeout = config.request_timeout
        self.max_connections = config.max_connections
        self.open_connections = 0
        self.count = count
        self._clock = clock
        self._warned_at: float | None = None
        # Connections still waiting for a request head, oldest first.
        self.waiting: dict[_AdminChannel, None] = {}

    def buildProtocol(self, addr: IAddress | None) -> Any:
        if self.open_connections >= self.max_connections and self.waiting:
            # Full: the connection that has waited longest for a request head
            # makes room, so that slow clients cannot keep /health from answering.
            oldest = next(iter(self.waiting))
            del self.waiting[oldest]
            self.count("evicted")
            oldest._abort()
        elif self.open_connections >= self.max_connections:
            self.count(_BUSY.reason)
            now = self._clock.seconds()
            if self._warned_at is None or now - self._warned_at >= _WARN_EVERY:
                self._warned_at = now
                _log.warn("admin listener has {limit} connections open (admin.max_connections);"
                          " refusing new ones", limit=self.max_connections)
            return _Busy()
        return super().buildProtocol(addr)

    def opened(self) -> None:
        self.open_connections += 1

    def closed(self) -> None:
        self.open_connections -= 1
