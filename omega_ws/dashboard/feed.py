"""
The dashboard on the admin listener (L{mount}):

  - C{GET /}: the page, C{index.html}; its script and style sheet are
    C{GET /dashboard/app.js} and C{/dashboard/style.css}.  Plain files
    shipped in this package: nothing comes from another address, and a
    strict Content-Security-Policy says so to the browser.
  - C{GET /dashboard/events}: the live feed, Server-Sent Events
    (C{text/event-stream}): C{retry: 2000}, then at once and every
    L{INTERVAL} seconds an C{event: snapshot} whose C{data:} is one line of
    JSON (the first one with the whole time chart, C{"history"}), and a
    C{: keep-alive} comment every so often.  With C{admin.api_key} set it
    takes the key as C{/api/*} does (C{X-API-Key}, or C{Authorization:
    apikey <key>}); the page sends it from C{fetch()}, which can send
    headers where C{EventSource} cannot.  The listener refuses a request
    without it from its head (401), and a page of another origin (403).

A feed holds one of the C{admin.max_connections} connections for as long
as it is open, so at most L{feed_limit} feeds are open at once; past it,
503.  The request deadlines of C{admin_http.py} end with the request head
and Twisted suspends its idle timeout while a response is under way, so
nothing times an open feed out.  A client that stops reading is not
written to (its connection pushes back), and is dropped after
L{STALLED} seconds of that.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from typing import Any

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from ..admin_http import AdminPolicy, key_matches
from ..config import AdminConfig
from ..server_api import LIMIT_EXCEEDED, METHOD_NOT_FOUND, UNAUTHORIZED
from .state import Dashboard

__all__ = ["FEEDS_MAX", "STALLED", "feed_limit", "mount"]

_log = Logger()

FEEDS_MAX = 16  # feeds open at once, at most (and at most half of admin.max_connections)
STALLED = 30.0  # seconds a feed's client may not read before it is dropped
RETRY = b"retry: 2000\n\n"  # how long a browser's EventSource waits to reconnect, in ms

# The page may run its own script and style sheet and talk to this listener only.
_CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_KEY_MARK = b"{{key}}"


def feed_limit(config: AdminConfig) -> int:
    """How many feeds may be open at once: leave room for /health, /metrics, /api."""
    return max(1, min(FEEDS_MAX, config.max_connections // 2))


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


def _error(request: Request, status: int, code: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class _File(Resource):
    """One of the page's files, with headers that keep it to itself."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self._body = body
        self._type = content_type

    def render_GET(self, request: Request) -> bytes:
        if request.postpath not in ([], [b""]):
            return _error(request, 404, METHOD_NOT_FOUND, "not found")
        request.setHeader(b"content-type", self._type)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", _CSP)
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"referrer-policy", b"no-referrer")
        return self._body


@implementer(IPushProducer)
class Feed:
    """One open event stream; the connection pauses it when its client does not read."""

    def __init__(self, dashboard: Dashboard, request: Request, clock: IReactorTime) -> None:
        self.dashboard = dashboard
        self.request = request
        self.clock = clock
        self.closed = False
        self._paused_at: float | None = None
        self._behind = False  # missed snapshots while paused: the next one has the history
        self._opened = time.monotonic()
        self._started = clock.seconds()
        self.peer = str(getattr(request.getClientAddress(), "host", "?"))

    def start(self) -> None:
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")  # a proxy must not buffer it
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(self._gone)
        self.dashboard.feeds.add(self)
        _log.info("dashboard feed opened by {peer} ({feeds} open)", peer=self.peer,
                  feeds=len(self.dashboard.feeds))
        request.write(RETRY)
        self._send_full()

    def _send_full(self) -> None:
        dashboard = self.dashboard
        self._write(b"event: snapshot\ndata: "
                    + dashboard.encode(dashboard.snapshot(with_history=True)) + b"\n\n")

    def event(self, name: bytes, data: bytes) -> None:
        if self._stalled() or self.clock.seconds() - self._started < 0.5:
            return  # (a tick right after the opening snapshot: nothing new yet)
        if self._behind:
            self._behind = False
            self._send_full()
        else:
            self._write(b"event: " + name + b"\ndata: " + data + b"\n\n")

    def comment(self, text: bytes) -> None:
        if not self._stalled():
            self._write(b": " + text + b"\n\n")

    def _stalled(self) -> bool:
        """Paused: write nothing; paused too long: drop the connection."""
        if self.closed or self._paused_at is None:
            return self.closed
        self._behind = True
        if self.clock.seconds() - self._paused_at > STALLED:
            _log.info("dashboard feed of {peer} dropped: it read nothing for {seconds} s",
                      peer=self.peer, seconds=STALLED)
            transport: Any = getattr(self.request.channel, "transport", None)
            if transport is not None:
                getattr(transport, "abortConnection", transport.loseConnection)()
        return True

    def _write(self, data: bytes) -> None:
        if not self.closed and not self.request._disconnected:
            self.request.write(data)

    def close(self) -> None:
        """End the stream (the server is stopping)."""
        if self.closed:
            return
        self.closed = True
        self.dashboard.feeds.discard(self)
        request = self.request
        if not request._disconnected and not request.finished:
            request.unregisterProducer()
            request.finish()
            request.loseConnection()

    def _gone(self, _: object) -> None:
        self.dashboard.feeds.discard(self)
        if not self.closed:
            self.closed = True
            _log.info("dashboard feed of {peer} closed after {seconds:.0f} s", peer=self.peer,
                      seconds=time.monotonic() - self._opened)

    # -- IPushProducer: the connection's back-pressure ----------------------------------

    def pauseProducing(self) -> None:
        if self._paused_at is None:
            self._paused_at = self.clock.seconds()

    def resumeProducing(self) -> None:
        self._paused_at = None

    def stopProducing(self) -> None:
        self._gone(None)


class _Events(Resource):
    """C{GET /dashboard/events}: a L{Feed}, for those with the key, up to the limit."""

    isLeaf = True

    def __init__(self, dashboard: Dashboard, policy: AdminPolicy, limit: int,
                 clock: IReactorTime) -> None:
        super().__init__()
        self._dashboard = dashboard
        self._policy = policy
        self._limit = limit
        self._clock = clock

    def _refusal(self, request: Request) -> bytes | None:
        if request.postpath not in ([], [b""]):
            return _error(request, 404, METHOD_NOT_FOUND, "not found")
        # The listener checked the key from the head already; this keeps the
        # resource safe wherever else it is mounted.
        key = self._policy.api_key
        if key is not None and not key_matches(request.requestHeaders, key):
            return _error(request, 401, UNAUTHORIZED, "unauthorized")
        if len(self._dashboard.feeds) >= self._limit:
            request.setHeader(b"retry-after", b"5")
            return _error(request, 503, LIMIT_EXCEEDED,
                          f"too many dashboard feeds open (at most {self._limit})")
        return None

    def render_GET(self, request: Request) -> bytes | int:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        Feed(self._dashboard, request, self._clock).start()
        return NOT_DONE_YET

    def render_HEAD(self, request: Request) -> bytes:
        refusal = self._refusal(request)
        if refusal is None:
            request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
            request.setHeader(b"cache-control", b"no-store")
            return b""
        return refusal


class _Files(Resource):
    """C{/dashboard/}: its children, and a plain 404 for anything else."""

    def getChild(self, path: bytes, request: Request) -> IResource:  # noqa: N802
        return notFound()


def mount(root: Resource, dashboard: Dashboard, policy: AdminPolicy, config: AdminConfig,
          clock: IReactorTime) -> None:
    """Put the page at C{/} and its files and feed under C{/dashboard/} of C{root}."""
    key = b"required" if policy.api_key is not None else b"none"
    page = _asset("index.html").replace(_KEY_MARK, key)
    root.putChild(b"", _File(page, b"text/html; charset=utf-8"))
    files = _Files()
    files.putChild(b"app.js", _File(_asset("app.js"), b"text/javascript; charset=utf-8"))
    files.putChild(b"style.css", _File(_asset("style.css"), b"text/css; charset=utf-8"))
    files.putChild(b"events", _Events(dashboard, policy, feed_limit(config), clock))
    root.putChild(b"dashboard", files)

