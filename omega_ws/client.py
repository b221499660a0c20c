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

C{publish} sends each message as given, byte for byte, once it has checked
that it is a JSON object; with no message it reads one JSON object per line
from stdin (each line sent as it is, without its line ending).

Exit status: 0 when done (C{publish} sent everything), 1 when it gave up in
C{ERROR}, 2 for a usage error or a message that is not a JSON object.
Stopped by SIGINT (Ctrl-C) or SIGTERM, either command closes its connection
(1000) and ends quietly, the way a process killed by that signal ends: the
shell sees 128 + the signal's number (130, 143), C{subprocess} a negative
return code, systemd a clean stop.  A second signal while it closes ends it
at once.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python import usage

from .jsonutil import loads_strict, parse_json_object
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
        self._stopped: list[Deferred[None]] = []  # stop() callers waiting for the close

    def start(self) -> Deferred[RawClient]:
        self._first = Deferred()
        self._connect()
        return self._first

    def publish(self, message: dict[str, Any] | str | bytes) -> None:
        """
        Send one JSON object: a dict as C{json.dumps} text, a C{str} or
        C{bytes} (UTF-8) as given, byte for byte (the server closes the
        connection with 1003 if it is not a JSON object).  Dropped (and
        logged) while disconnected.
        """
        if self._protocol is None:
            _log.warn("not connected: message to {url} dropped", url=self.url)
            return
        if isinstance(message, dict):
            message = json.dumps(message)
        self._protocol.sendMessage(message.encode("utf-8") if isinstance(message, str)
                                   else message)

    def stop(self) -> Deferred[None]:
        """Close for good; fires once the connection is closed (however often called)."""
        self._stopping = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._protocol is None:
            if self.state is not ConnectionState.ERROR:  # a client that gave up stays so
                self._set_state(ConnectionState.DISCONNECTED)
            return defer.succeed(None)
        stopped: Deferred[None] = Deferred()
        self._stopped.append(stopped)
        if len(self._stopped) == 1:
            self._protocol.sendClose(1000)
        return stopped

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
            waiting, self._stopped = self._stopped, []
            for stopped in waiting:
                stopped.callback(None)
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


class _Subscribe(_Common):
    synopsis = "[options] URL"
    longdesc = ("Print every message on the channel at URL on stdout, one per line, and state "
                "changes on stderr ([CONNECTED], [RECONNECTING], ...), until stopped by Ctrl-C "
                "or SIGTERM (or given up in [ERROR], exit status 1).")


class _Publish(_Common):
    synopsis = "[options] URL [MESSAGE ...]"
    longdesc = ("Send each MESSAGE to the channel at URL as given, byte for byte (each must be "
                "a JSON object), or without any, each line of stdin until end of file; then "
                "close.  Exit status 2 if a message is not a JSON object (a bad MESSAGE: "
                "nothing is sent; a bad line: it is skipped).")


class _Options(usage.Options):
    longdesc = ("A raw-protocol client that reconnects with the same client id, so that the "
                "server replays what was published meanwhile.  Options come after the "
                "command, before the URL.  Exit status: 0 done, 1 gave up, 2 usage error or "
                "a message that is not a JSON object; stopped by SIGINT or SIGTERM, it closes "
                "its connection and ends quietly, as killed by that signal (the shell sees "
                "130 or 143).")
    subCommands = [
        ["subscribe", None, _Subscribe, "Print every message on the channel, one per line."],
        ["publish", None, _Publish, "Publish JSON objects (arguments, or lines on stdin)."],
    ]

    def getSynopsis(self) -> str:
        if getattr(self, "subCommand", None) is None:
            return "Usage: python -m omega_ws.client subscribe|publish [options] URL ..."
        return "Usage: python -m omega_ws.client"  # the subcommand adds its own

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("say subscribe or publish")


class _StdinPublisher(LineReceiver):
    """
    Publishes each line of standard input as it is (without its line
    ending); a line that is not a JSON object is skipped, with exit status 2.
    """

    delimiter = b"\n"

    def __init__(self, command: _Command) -> None:
        self.command = command
        self.number = 0

    def lineReceived(self, line: bytes) -> None:
        self.number += 1
        line = line.removesuffix(b"\r")
        if not line.strip():
            return
        if parse_json_object(line) is None:  # skipped: the server would close the connection
            sys.stderr.write(f"omega-ws client: error: line {self.number}: "
                             "not a JSON object\n")
            self.command.status = 2
            return
        self.command.client.publish(line)

    def connectionLost(self, reason: object = None) -> None:
        self.command.client.stop().addBoth(self.command.stop)


def _check_messages(messages: tuple[str, ...]) -> list[bytes]:
    """
    Each message given on the command line, as the bytes it was given as;
    each must be a JSON object (else exit 2, nothing sent).
    """
    checked = []
    for message in messages:
        raw = os.fsencode(message)  # the bytes of the argument, even if not UTF-8
        try:
            if not isinstance(loads_strict(raw.decode("utf-8")), dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            sys.stderr.write(f"omega-ws client: error: {message!r}: {e}\n")
            raise SystemExit(2) from None
        checked.append(raw)
    return checked


class _Command:
    """One run of the command line: the client, and how the process ends."""

    def __init__(self, options: _Options, messages: list[bytes], reactor: Any) -> None:
        common = options.subOptions
        self.reactor = reactor
        self.subscribe = options.subCommand == "subscribe"
        self.messages = messages
        self.status = 0
        self.signal: int | None = None  # the signal that stopped it
        self.stopping = False
        self.client = RawClient(
            common["url"], self.show if self.subscribe else (lambda text: None),
            client_id=common["client-id"], token=common["token"],
            reconnect_delay=common["reconnect-delay"], max_attempts=common["max-attempts"],
            on_state=self.state_changed,
            trust_root=common["cafile"], reactor=reactor)

    def show(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def state_changed(self, state: ConnectionState) -> None:
        sys.stderr.write(f"[{state.value}]\n")
        if state is ConnectionState.ERROR:
            self.status = 1
            self.stop()

    def stop(self, _: object = None) -> None:
        """Stop the reactor, once, whatever asks first (so never ReactorNotRunning)."""
        if not self.stopping:
            self.stopping = True
            self.reactor.stop()

    def signalled(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:  # a second signal, or one while it closes: no more waiting
            self.end(signum)
        self.signal = signum
        self.reactor.callFromThread(self.stop)

    def publish_all(self, _: object) -> None:
        if self.messages:
            for message in self.messages:
                self.client.publish(message)
            self.client.stop().addBoth(self.stop)
            return
        from twisted.internet import stdio

        stdio.StandardIO(_StdinPublisher(self))

    def run(self) -> NoReturn:
        # Twisted's own handlers would stop the reactor but not say which
        # signal it was; an ignored SIGINT (a background job) stays ignored.
        signal.signal(signal.SIGTERM, self.signalled)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, self.signalled)
        started = self.client.start()
        # However it stops: close the connection, rather than watch it reconnect.
        self.reactor.addSystemEventTrigger("before", "shutdown", self.client.stop)
        if not self.subscribe:
            started.addCallback(self.publish_all)
        started.addErrback(lambda failure: None)
        self.reactor.run(installSignalHandlers=False)
        self.end(self.signal)

    def end(self, signum: int | None) -> NoReturn:
        """Exit with the status, or as killed by C{signum} (the shell sees 128 + it)."""
        sys.stdout.flush()
        sys.stderr.flush()
        if signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            raise SystemExit(128 + signum)  # only if the signal did not end it
        raise SystemExit(self.status)


def main(argv: list[str] | None = None) -> None:
    options = _Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
        common = options.subOptions
        common["reconnect-delay"] = float(common["reconnect-delay"])
        common["max-attempts"] = int(common["max-attempts"])
    except (usage.UsageError, ValueError) as e:
        sys.stderr.write(f"omega-ws client: error: {e}\n")
        raise SystemExit(2) from None
    messages = [] if options.subCommand == "subscribe" else _check_messages(common["messages"])
    from twisted.internet import reactor

    _Command(options, messages, reactor).run()


if __name__ == "__main__":
    main()
