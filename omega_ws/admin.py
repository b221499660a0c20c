"""
The admin HTTP listener: health, Prometheus metrics and the server API.

  - C{GET /health}: 200 C{{"status": "ok", ...}}, or 503 with the reason
    when the broker is unreachable or a listener is down.
  - C{GET /metrics}: Prometheus text format.
  - C{POST /api/<method>}: a JSON body, the key in C{X-API-Key} when
    C{admin.api_key} is set, in the shape of Centrifugo's server API:
    C{{"result": {...}}} on success, C{{"error": {"code", "message"}}}
    otherwise.  The methods are in C{api.py}.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from .api import BAD_REQUEST, INTERNAL, METHOD_NOT_FOUND, UNAUTHORIZED, ApiError, ApiMethod
from .broker import BrokerUnavailable
from .jsonutil import loads_strict

__all__ = ["make_admin_site"]

_log = Logger()

MAX_BODY = 16 * 1024 * 1024


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

    def render_GET(self, request: Request) -> bytes:
        # Also answers HEAD, which Twisted would otherwise turn into a 500.
        request.setHeader(b"allow", b"POST")
        return _json(request, 405, {"error": {"code": METHOD_NOT_FOUND,
                                              "message": "use POST"}})

    def __init__(self, methods: dict[str, ApiMethod], api_key: str | None) -> None:
        super().__init__()
        self._methods = methods
        self._api_key = api_key.encode() if api_key else None

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
        if self._api_key is not None:
            given = request.getHeader(b"x-api-key") or b""
            authorization = request.getHeader(b"authorization") or b""
            if authorization.lower().startswith(b"apikey "):
                given = authorization[7:]
            if not hmac.compare_digest(given, self._api_key):
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
    api_key: str | None,
) -> Site:
    root = Resource()
    root.putChild(b"health", _Health(problems))
    root.putChild(b"metrics", _Metrics(render_metrics))
    root.putChild(b"api", _Api(methods, api_key))
    site = Site(root)
    site.displayTracebacks = False
    site.noisy = False
    return site
