"""
The admin HTTP listener: health, Prometheus metrics and the server API.

  - C{GET /health}: 200 C{{"status": "ok", ...}}, or 503 with the reason
    when the broker is unreachable or a listener is down.
  - C{GET /metrics}: Prometheus text format.
  - C{POST /api/<method>}: a JSON body, the key in C{X-API-Key} when
    C{admin.api_key} is set, in the shape of Centrifugo's server API:
    C{{"result": {...}}} on success, C{{"error": {"code", "message"}}}
    otherwise.  The methods are in C{api.py}.
  - C{GET /}: the live dashboard, and its feed C{GET /dashboard/events}
    (Server-Sent Events; the key and the origin as for C{/api/*}): in
    C{dashboard/}, C{docs/dashboard.md}.

What the listener refuses, as soon as a request's head is complete and
before any of its body is read (L{AdminPolicy.screen}); each refusal is
answered with C{Connection: close}, the body is drained (up to
C{_DRAIN_LIMIT}, thrown away) for at most C{_LINGER} seconds so that the
client reads the answer rather than a reset, and the connection is closed:

  1. C{/api/*} (and the dashboard's feed) from a browser page of another
     origin (403, code 103): an
     C{Origin} that is neither the listener's own nor in
     C{admin.allowed_origins}, or C{Sec-Fetch-Site: cross-site / same-site}
     without an allowed C{Origin}.  Checked before the key.
  2. C{/api/*} and the dashboard's feed without the right key (401, code
     101).  C{OPTIONS} (a CORS preflight, which never carries the key) is
     exempt.
  3. A body on anything but C{POST /api/*} (405 on C{/api}, 413 elsewhere),
     a C{Content-Length} over L{MAX_BODY} (413); a chunked body is counted
     as it streams and refused with 413 once past L{MAX_BODY}.

Each connection has C{admin.request_timeout} seconds to send a request's
head, from when it opened or from when the previous response finished,
and as long again for the body; past it, it is closed.  At most
C{admin.max_connections} connections are open at once: the one that waited
longest for a request head makes room for a new one, else the new one is
answered 503 and closed at once.  The connection that does all this is in
C{admin_http.py}.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from .admin_http import (
    HEADERS_ALLOWED,
    MAX_BODY,
    AdminPolicy,
    AdminSite,
    Refusal,
    key_matches,
    own_origin,
)
from .api import BAD_REQUEST, INTERNAL, METHOD_NOT_FOUND, UNAUTHORIZED, ApiError, ApiMethod
from .broker import BrokerUnavailable
from .config import AdminConfig
from .dashboard import Dashboard, mount
from .jsonutil import loads_strict

__all__ = ["MAX_BODY", "AdminPolicy", "Refusal", "make_admin_site", "own_origin"]

_log = Logger()


def _json(request: Request, status: int, body: object) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, separators=(",", ":")).encode()


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
            request.setHeader(b"access-control-allow-headers", HEADERS_ALLOWED)
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
        if self._policy.api_key is not None and not key_matches(
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
    dashboard: Dashboard | None = None,
) -> Site:
    """
    The admin listener's site, with the limits of C{config} (module
    docstring).  C{clock} runs the request deadlines; with a C{registry},
    refusals are counted in C{omega_ws_admin_refusals_total{reason}}; with
    a C{dashboard}, it is served at C{/}.
    """
    policy = AdminPolicy(config.api_key, config.allowed_origins)
    root = Resource()
    root.putChild(b"health", _Health(problems))
    root.putChild(b"metrics", _Metrics(render_metrics))
    root.putChild(b"api", _Api(methods, policy))
    if dashboard is not None:
        mount(root, dashboard, policy, config, clock)
    count: Callable[[str], None] = lambda reason: None  # noqa: E731
    if registry is not None:
        refusals = Counter("omega_ws_admin_refusals",
                           "Admin listener requests and connections refused, by reason",
                           ["reason"], registry=registry)
        count = lambda reason: refusals.labels(reason).inc()  # noqa: E731
    return AdminSite(root, config, policy, clock, count)
