"""
The admin HTTP listener: health, Prometheus metrics and the server API.

  - C{GET /health}: 200 C{{"status": "ok", ...}}, or 503 with the reason
    when the broker is unreachable or a listener is down.
  - C{GET /metrics}: Prometheus text format.
  - C{POST /api/<method>}: a JSON body, the key in C{X-API-Key} when
    C{admin.api_key} is set, in the shape of Centrifugo's server API:
    C{{"result": {...}}} on success, C{{"error": {"code", "message"}}}
    otherwise.  The methods are in C{api.py}.

What the listener refuses, as soon as a request's head is complete and
before any of its body is read (L{AdminPolicy.screen}); each refusal is
answered with C{Connection: close}, the body is drained (up to
C{_DRAIN_LIMIT}, thrown away) for at most C{_LINGER} seconds so that the
client reads the answer rather than a reset, and the connection is closed:

  1. C{/api/*} from a browser page of another origin (403, code 103): an
     C{Origin} that is neither the listener's own nor in
     C{admin.allowed_origins}, or C{Sec-Fetch-Site: cross-site / same-site}
     without an allowed C{Origin}.  Checked before the key.
  2. C{/api/*} without the right key (401, code 101).  C{OPTIONS} (a CORS
     preflight, which never carries the key) is exempt.
  3. A body on anything but C{POST /api/*} (405 on C{/api}, 413 elsewhere),
     a C{Content-Length} over L{MAX_BODY} (413); a chunked body is counted
     as it streams and refused with 413 once past L{MAX_BODY}.

Each connection has C{admin.request_timeout} seconds to send a request's
head, from when it opened or from when the previous response finished,
and as long again for the body; past it, it is closed.  At most
C{admin.max_connections} connections are open at once; past it a new one is
answered 503 and closed at once.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from prometheus_client import CollectorRegistry, Counter
from twisted.internet.defer import Deferred
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
from twisted.web.server import NOT_DONE_YET, Request, Site

from .api import BAD_REQUEST, INTERNAL, METHOD_NOT_FOUND, UNAUTHORIZED, ApiError, ApiMethod
from .broker import BrokerUnavailable
from .config import AdminConfig
from .jsonutil import loads_strict

__all__ = ["MAX_BODY", "AdminPolicy", "Refusal", "make_admin_site", "own_origin"]

_log = Logger()

MAX_BODY = 16 * 1024 * 1024

# Centrifugo's codes for the answers api.py has no constant for.
PERMISSION_DENIED, LIMIT_EXCEEDED = 103, 106

# After refusing a request, at most this much of its body is read (and
# thrown away) so that a client still sending it reads the answer instead of
# a connection reset; past it, reading stops until the connection closes.
_DRAIN_LIMIT = 1024 * 1024
# ...and the refused connection is closed after at most this many seconds
# (or admin.request_timeout, when shorter).
_LINGER = 2.0
# At most one "refusing connections" warning in this many seconds.
_WARN_EVERY = 60.0

_HEADERS_ALLOWED = b"content-type, x-api-key, authorization"
_REASONS = {200: b"OK", 204: b"No Content", 401: b"Unauthorized", 403: b"Forbidden",
            405: b"Method Not Allowed", 413: b"Content Too Large",
            503: b"Service Unavailable"}


def _json(request: Request, status: int, body: object) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, separators=(",", ":")).encode()


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


def _origin_pattern(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile(
        "|".join(re.escape(p).replace(r"\*", ".*") for p in patterns), re.IGNORECASE)


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


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


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
    local_ip = _ip(str(getattr(local, "host", "")))
    if local_ip is None or port != getattr(local, "port", None):
        return False
    if name == "localhost":
        return local_ip.is_loopback
    return _ip(name) == local_ip


def _first_segment(target: bytes) -> bytes:
    """The first path segment, as Twisted's resource traversal sees it."""
    path = target.split(b"?", 1)[0]
    return unquote_to_bytes(path[1:].split(b"/", 1)[0])


def _key_matches(headers: Headers, key: bytes) -> bool:
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
        self._allowed = _origin_pattern(allowed_origins)

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
        if _first_segment(target) != b"api":
            return _NO_BODY_HERE if has_body else None
        if self.cross_site(headers, local):
            return _CROSS_SITE
        if (method != b"OPTIONS" and self.api_key is not None
                and not _key_matches(headers, self.api_key)):
            return _UNAUTHORIZED
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
    L{_AdminSite}: a deadline for each request's head and body, and
    refusals answered from the head alone (L{AdminPolicy.screen}).
    """

    site: _AdminSite
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


class _AdminSite(Site):
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


class _Health(Resource):
    isLeaf = True

    def __init__(self, problems: Callable[[], list[str]]) -> None:
        super().__init__()
        self._problems = problems

    def render_GET(self, request: Request) -> bytes:
        problems = self._problems()
        if problems:
            return _json(request, 503, {"status": "unavailable", "problems": problems})
        return _json(request, 200, {"status": "ok"})


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, render: Callable[[], bytes]) -> None:
        super().__init__()
        self._render = render

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return self._render()


class _Api(Resource):
    """C{POST /api/<method>}; the methods are plain callables taking the body."""

    isLeaf = True

    def __init__(self, methods: dict[str, ApiMethod], policy: AdminPolicy) -> None:
        super().__init__()
        self._methods = methods
        self._policy = policy

    def render(self, request: Request) -> Any:
        # An allowed page of another origin may read the answer; nobody else.
        origin = request.getHeader(b"origin")
        if origin is not None and self._policy.origin_allowed(origin.decode("latin-1")):
            request.setHeader(b"access-control-allow-origin", origin)
            request.setHeader(b"vary", b"origin")
        return super().render(request)

    def render_GET(self, request: Request) -> bytes:
        # Also answers HEAD, which Twisted would otherwise turn into a 500.
        request.setHeader(b"allow", b"POST")
        return _json(request, 405, {"error": {"code": METHOD_NOT_FOUND,
                                              "message": "use POST"}})

    def render_OPTIONS(self, request: Request) -> bytes:
        """
        A CORS preflight.  Only an origin in C{admin.allowed_origins} gets
        here with an C{Origin} (the others were refused with 403), and gets
        exactly what it needs: that origin, POST, the three headers.
        """
        request.setResponseCode(204)
        request.setHeader(b"allow", b"POST, OPTIONS")
        if request.responseHeaders.hasHeader(b"access-control-allow-origin"):
            request.setHeader(b"access-control-allow-methods", b"POST")
            request.setHeader(b"access-control-allow-headers", _HEADERS_ALLOWED)
            request.setHeader(b"access-control-max-age", b"600")
            if request.getHeader(b"access-control-request-private-network") == b"true":
                request.setHeader(b"access-control-allow-private-network", b"true")
        return b""

    def render_POST(self, request: Request) -> bytes | int:
        try:
            method = self._check(request)
            body = self._body(request)
            result = method(body)
        except ValueError as e:  # data that is not JSON (NaN, ...)
            return _json(request, 400, {"error": {"code": BAD_REQUEST,
                                                  "message": f"bad request: {e}"}})
        except ApiError as e:
            return _json(request, e.http_status, {"error": {"code": e.code, "message": e.message}})
        if not isinstance(result, Deferred):
            return _json(request, 200, {"result": result})
        result.addCallbacks(
            lambda value: self._finish(request, 200, {"result": value}),
            lambda failure: self._failed(request, failure),
        )
        return NOT_DONE_YET

    def _check(self, request: Request) -> ApiMethod:
        # The listener checked the key from the head already; this keeps the
        # resource safe wherever else it is mounted.
        if self._policy.api_key is not None and not _key_matches(
                request.requestHeaders, self._policy.api_key):
            raise ApiError(UNAUTHORIZED, "unauthorized", 401)
        name = (request.postpath or [b""])[0].decode("utf-8", "replace")
        if len(request.postpath or []) != 1 or name not in self._methods:
            raise ApiError(METHOD_NOT_FOUND, "method not found", 404)
        return self._methods[name]

    def _body(self, request: Request) -> dict[str, Any]:
        raw = request.content.read(MAX_BODY + 1) if request.content else b""
        if len(raw) > MAX_BODY:
            raise ApiError(BAD_REQUEST, "body too large", 413)
        try:
            body = loads_strict(raw or b"{}")
        except ValueError:
            raise ApiError(BAD_REQUEST, "bad request: body is not JSON", 400) from None
        if not isinstance(body, dict):
            raise ApiError(BAD_REQUEST, "bad request: body is not a JSON object", 400)
        return body

    def _finish(self, request: Request, status: int, body: object) -> None:
        if not request.finished and not request._disconnected:
            request.write(_json(request, status, body))
            request.finish()

    def _failed(self, request: Request, failure: Failure) -> None:
        if failure.check(ApiError):
            e = failure.value
            self._finish(request, e.http_status, {"error": {"code": e.code, "message": e.message}})
        elif failure.check(BrokerUnavailable):
            message = f"broker unavailable: {failure.value}"
            self._finish(request, 503, {"error": {"code": INTERNAL, "message": message}})
        else:
            _log.failure("admin API call failed", failure)
            self._finish(request, 500, {"error": {"code": INTERNAL, "message": "internal error"}})


def make_admin_site(
    problems: Callable[[], list[str]],
    render_metrics: Callable[[], bytes],
    methods: dict[str, ApiMethod],
    config: AdminConfig,
    clock: IReactorTime,
    registry: CollectorRegistry | None = None,
) -> Site:
    """
    The admin listener's site, with the limits of C{config} (module
    docstring).  C{clock} runs the request deadlines; with a C{registry},
    refusals are counted in C{omega_ws_admin_refusals_total{reason}}.
    """
    policy = AdminPolicy(config.api_key, config.allowed_origins)
    root = Resource()
    root.putChild(b"health", _Health(problems))
    root.putChild(b"metrics", _Metrics(render_metrics))
    root.putChild(b"api", _Api(methods, policy))
    count: Callable[[str], None] = lambda reason: None  # noqa: E731
    if registry is not None:
        refusals = Counter("omega_ws_admin_refusals",
                           "Admin listener requests and connections refused, by reason",
                           ["reason"], registry=registry)
        count = lambda reason: refusals.labels(reason).inc()  # noqa: E731
    return _AdminSite(root, config, policy, clock, count)
