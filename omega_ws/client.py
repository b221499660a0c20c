"""
A small reconnecting client for the raw protocol, on Twisted.

It names itself with a C{client_id} (generated once if not given) so that,
when the connection drops, it reconnects after C{reconnect_delay} seconds
with the same id and the server replays what was published meanwhile.
After C{max_attempts} reconnects in a row that fail (0: never give up) it
stops in C{ERROR}.

Command line, to watch or feed a channel from a terminal::

    python -m omega_ws.client subscribe ws://localhost:9886/news
    python -m omega_ws.client publish ws://localhost:9886/news '{"headline": "hi"}'

C{publish} with no message reads one JSON object per line from stdin.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python import usage

from .jsonutil import parse_json_object
from .registry import ConnectionState

__all__ = ["RawClient"]

_log = Logger()


class _ClientProtocol(WebSocketClientProtocol):
    client: RawClient

    def onOpen(self) -> None:
        self.client._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.client._received(payload.decode("utf-8", "replace"))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.client._closed(self, code, reason)


class RawClient:
    """
    Keeps one raw-protocol connection to C{url} up.  C{on_message} gets the
    text of every message; C{on_state} every state change.  C{start()} fires
    once the first connection is open (or fails if it never opens).
    """

    def __init__(
        self,
        url: str,
        on_message: Callable[[str], None],
        client_id: str | None = None,
        token: str | None = None,
        reconnect_delay: float = 5.0,
        max_attempts: int = 3,
        on_state: Callable[[ConnectionState], None] | None = None,
        trust_root: str | None = None,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.reactor = reactor
        self.client_id = client_id or uuid.uuid4().hex
        self.url = _with_query(url, client_id=self.client_id, token=token)
        self.on_message = on_message
        self.on_state = on_state
        self.reconnect_delay = reconnect_delay
        self.max_attempts = max_attempts
        self.trust_root = trust_root
        self.state = ConnectionState.DISCONNECTED
        self.failures = 0  # reconnects in a row that did not open
        self._protocol: _ClientProtocol | None = None
        self._stopping = False
        self._retry: IDelayedCall | None = None
        self._first: Deferred[RawClient] | None = None
        self._stopped: Deferred[None] | None = None

    def start(self) -> Deferred[RawClient]:
        self._first = Deferred()
        self._connect()
        return self._first

    def publish(self, message: dict[str, Any]) -> None:
        """Send one JSON object; dropped (and logged) while disconnected."""
        if self._protocol is None:
            _log.warn("not connected: message to {url} dropped", url=self.url)
            return
        self._protocol.sendMessage(json.dumps(message).encode("utf-8"))

    def stop(self) -> Deferred[None]:
        """Close for good; fires once the connection is closed."""
        self._stopping = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._protocol is None:
            if self.state is not ConnectionState.ERROR:  # a client that gave up stays so
                self._set_state(ConnectionState.DISCONNECTED)
            return defer.succeed(None)
        self._stopped = Deferred()
        self._protocol.sendClose(1000)
        return self._stopped

    def _connect(self) -> None:
        factory = WebSocketClientFactory(self.url)
        factory.noisy = False
        # A protocol class per client, so that every connection reports to it.
        factory.protocol = cast(
            type[_ClientProtocol], type("Protocol", (_ClientProtocol,), {"client": self}))
        endpoint: Any = HostnameEndpoint(self.reactor, factory.host, factory.port, timeout=10)
        if factory.isSecure:
            trust = None
            if self.trust_root is not None:
                with open(self.trust_root, "rb") as stream:
                    trust = ssl.Certificate.loadPEM(stream.read())
            endpoint = wrapClientTLS(ssl.optionsForClientTLS(factory.host, trustRoot=trust),
                                     endpoint)
        endpoint.connect(factory).addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        _log.info("connecting to {url} failed: {error}", url=self.url,
                  error=failure.getErrorMessage())
        self._lost()

    def _opened(self, protocol: _ClientProtocol) -> None:
        self._protocol = protocol
        self.failures = 0
        self._set_state(ConnectionState.CONNECTED)
        if self._first is not None:
            first, self._first = self._first, None
            first.callback(self)

    def _received(self, text: str) -> None:
        try:
            self.on_message(text)
        except Exception:
            _log.failure("on_message failed")

    def _closed(self, protocol: _ClientProtocol, code: int | None, reason: str | None) -> None:
        opened = self._protocol is protocol
        self._protocol = None
        if self._stopping:
            self._set_state(ConnectionState.DISCONNECTED)
            if self._stopped is not None:
                self._stopped.callback(None)
            return
        if opened:
            _log.info("connection to {url} closed ({code} {reason}); reconnecting",
                      url=self.url, code=code, reason=reason)
        self._lost(counts=not opened)

    def _lost(self, counts: bool = True) -> None:
        if self._stopping:
            return
        if counts:
            self.failures += 1
        if self.max_attempts and self.failures >= self.max_attempts:
            self._set_state(ConnectionState.ERROR)
            if self._first is not None:
                first, self._first = self._first, None
                first.errback(ConnectionError(f"cannot connect to {self.url}"))
            return
        self._set_state(ConnectionState.RECONNECTING)
        self._retry = self.reactor.callLater(self.reconnect_delay, self._connect)

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self.state:
            self.state = state
            if self.on_state is not None:
                self.on_state(state)


def _with_query(url: str, **extra: str | None) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update({k: v for k, v in extra.items() if v is not None})
    return urlunsplit(parts._replace(query=urlencode(query)))


class _Common(usage.Options):
    optParameters = [
        ["client-id", None, None, "Client id (default: a new one)."],
        ["token", None, None, "JWT for the server's auth."],
        ["reconnect-delay", None, "5", "Seconds between reconnects."],
        ["max-attempts", None, "3", "Failed reconnects before giving up (0: never)."],
        ["cafile", None, None, "PEM certificate to trust for wss://."],
    ]

    def parseArgs(self, url: str, *messages: str) -> None:  # type: ignore[override]
        self["url"] = url
        self["messages"] = messages


class _Options(usage.Options):
    subCommands = [
        ["subscribe", None, _Common, "Print every message on the channel, one per line."],
        ["publish", None, _Common, "Publish JSON objects (arguments, or lines on stdin)."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("say subscribe or publish")


class _StdinPublisher(LineReceiver):
    """Publishes each line of standard input; a line that is not a JSON object is skipped."""

    delimiter = b"\n"

    def __init__(self, client: RawClient, status: list[int], done: Callable[[], None]) -> None:
        self.client = client
        self.status = status
        self.done = done
        self.number = 0

    def lineReceived(self, line: bytes) -> None:
        self.number += 1
        if not line.strip():
            return
        message = parse_json_object(line)
        if message is None:  # skipped: the server would close the connection
            sys.stderr.write(f"omega-ws client: error: line {self.number}: "
                             "not a JSON object\n")
            self.status[0] = 2
            return
        self.client.publish(message)

    def connectionLost(self, reason: object = None) -> None:
        self.client.stop().addBoth(lambda _: self.done())


def _check_messages(messages: list[str]) -> None:
    """Each message given on the command line must be a JSON object (exit 2)."""
    for message in messages:
        try:
            if not isinstance(json.loads(message), dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            sys.stderr.write(f"omega-ws client: error: {message!r}: {e}\n")
            raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    options = _Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
        common = options.subOptions
        delay, attempts = float(common["reconnect-delay"]), int(common["max-attempts"])
    except (usage.UsageError, ValueError) as e:
        sys.stderr.write(f"omega-ws client: error: {e}\n")
        raise SystemExit(2) from None
    from twisted.internet import reactor, stdio

    status = [0]

    def show(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def state_changed(state: ConnectionState) -> None:
        sys.stderr.write(f"[{state.value}]\n")
        if state is ConnectionState.ERROR:
            status[0] = 1
            reactor.stop()

    client = RawClient(common["url"], show if options.subCommand == "subscribe" else
                       (lambda text: None), client_id=common["client-id"],
                       token=common["token"], reconnect_delay=delay, max_attempts=attempts,
                       on_state=state_changed, trust_root=common["cafile"])

    def publish_all(_: object) -> None:
        if common["messages"]:
            for message in common["messages"]:
                client.publish(json.loads(message))
            client.stop().addBoth(lambda _: reactor.stop())
            return
        stdio.StandardIO(_StdinPublisher(client, status, reactor.stop))

    if options.subCommand == "publish":
        _check_messages(common["messages"])
    started = client.start()
    # SIGTERM, SIGINT: close the connection, rather than watch it reconnect.
    reactor.addSystemEventTrigger("before", "shutdown", client.stop)
    if options.subCommand == "publish":
        started.addCallback(publish_all)
    started.addErrback(lambda failure: None)
    reactor.run()
    raise SystemExit(status[0])


if __name__ == "__main__":
    main()
