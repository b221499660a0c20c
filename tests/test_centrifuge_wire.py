"""
The Centrifuge wire in memory: C{CentrifugeWire} driven by hand through a
fake L{Link}, with a real hub, memory broker, registry, metrics, token
verifier and server API on a C{task.Clock}; no sockets, no reactor spin.

Every test runs twice: on a broker that delivers publications inline, and
on one that delivers them on a later clock turn (as a broker in another
process does), so that nothing here depends on delivery being inline.
The wire's contract is C{docs/protocol-centrifuge.md}.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from omega_ws._version import __version__
from omega_ws.auth import TokenVerifier
from omega_ws.broker import MemoryBroker
from omega_ws.broker.history import Publication, Recovery, StreamPosition
from omega_ws.centrifuge import CentrifugeWire, ReplyError
from omega_ws.config import Config
from omega_ws.hub import Hub
from omega_ws.limits import PublishLimit, TokenBucket
from omega_ws.metrics import Metrics
from omega_ws.registry import ClientInfo, ConnectionState, Registry
from omega_ws.server_api import ServerApi
from omega_ws.wire import CloseReason, Prepared, WireContext

NOW = 1_700_000_000.0
SECRET = "omega-ws-test-secret-of-at-least-32-bytes"
PEER = "tcp4:127.0.0.1:50000"

Message = dict[str, Any]


# -- the fake link ------------------------------------------------------------


class FakeLink:
    """
    A connection as the wire sees it: records every text message sent and
    how it was closed.  Like a real connection, it sends nothing once
    closed (what the wire still sends then is kept in C{late}).
    """

    def __init__(self) -> None:
        self.info = ClientInfo("", PEER, "centrifuge", NOW)  # the wire makes its own on open
        self.peer: str | None = PEER
        self.wire: CentrifugeWire | None = None
        self.messages: list[bytes] = []
        self.late: list[bytes] = []
        # Every close asked for: ("close" | "fail" | "reject" | "abort", code, reason).
        self.closes: list[tuple[str, int, str]] = []
        self.metric_reason: str | None = None
        self.pings = 0

    # The wire's Link.

    @property
    def peer_host(self) -> str | None:
        return "127.0.0.1"

    @property
    def closed(self) -> tuple[str, int, str] | None:
        """How the connection was closed (the first close), or None while open."""
        return self.closes[0] if self.closes else None

    def send_prepared(self, prepared: Prepared, mark: Any = None) -> None:
        (self.late if self.closes else self.messages).append(prepared.payload)

    def send_text(self, payload: bytes) -> None:
        self.send_prepared(Prepared(payload))

    def send_ping(self) -> None:
        self.pings += 1

    def close(self, code: int, reason: str) -> None:
        self._closed("close", code, reason)

    def fail(self, code: int, reason: str) -> None:
        self._closed("fail", code, reason)

    def reject(self, code: int, reason: str, metric_reason: str) -> None:
        self.metric_reason = metric_reason
        self._closed("reject", code, reason)

    def _closed(self, how: str, code: int, reason: str) -> None:
        self.closes.append((how, code, reason))

    def abort(self) -> None:
        self._closed("abort", 1006, "")

    def refuse_reconnects(self, retry_after: int) -> ConnectionDeny:
        return ConnectionDeny(429, "Too Many Requests")

    @property
    def bytes_sent(self) -> int:
        return sum(len(m) for m in self.messages)

    def unacked_bytes(self) -> int | None:
        return 0

    @property
    def received_at_close(self) -> int | None:
        return 0

    # The registry's Connection: what the protocol does, straight to the wire.

    def _wire(self) -> CentrifugeWire:
        assert self.wire is not None
        return self.wire

    def send_heartbeat(self) -> None:
        self._wire().send_heartbeat()

    def close_inactive(self) -> None:
        self._wire().close(CloseReason.INACTIVE)

    def close_replaced(self) -> None:
        self._wire().close(CloseReason.REPLACED)

    def close_expired(self) -> None:
        self._wire().close(CloseReason.EXPIRED)

    def close_for_shutdown(self) -> None:
        self._wire().close(CloseReason.SHUTDOWN)

    def drop_unresponsive(self) -> None:
        self._wire().close(CloseReason.UNRESPONSIVE)

    def close_with(self, code: int, reason: str) -> None:
        self._wire().close_with(code, reason)


class RawStandIn:
    """A raw-protocol subscriber as the hub sees it: its info, and what it was given."""

    def __init__(self, client_id: str) -> None:
        self.info = ClientInfo(client_id, PEER, "raw", NOW)
        self.got: list[bytes] = []

    def deliver(self, publication: Publication) -> None:
        self.got.append(publication.data)


def parse(message: bytes) -> list[Message]:
    """The JSON objects of one message: one a line, no blank line, no trailing newline."""
    lines = message.split(b"\n")
    assert all(line.strip() for line in lines), message
    return [json.loads(line) for line in lines]


# -- the server and its clients -----------------------------------------------


class HoldingBroker(MemoryBroker):
    """
    A memory broker that answers join reads (C{position}, C{recover}) only
    when the test releases them, as a remote broker answers some time
    later.  C{read_at_release}: the answer is the stream as it is at
    release (else as it was when asked).
    """

    read_at_release = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waiting: list[tuple[Deferred[Any], Callable[[], Deferred[Any]]]] = []

    def _hold(self, read: Callable[[], Deferred[Any]]) -> Deferred[Any]:
        answer: Deferred[Any] = Deferred()
        if not self.read_at_release:
            result = read()
            read = lambda: result  # noqa: E731
        self.waiting.append((answer, read))
        return answer

    def position(self, channel: str) -> Deferred[StreamPosition]:
        return self._hold(lambda: MemoryBroker.position(self, channel))

    def recover(self, channel: str, since: StreamPosition) -> Deferred[Recovery]:
        return self._hold(lambda: MemoryBroker.recover(self, channel, since))

    def release(self, index: int = 0) -> None:
        answer, read = self.waiting.pop(index)
        read().chainDeferred(answer)


class Server:
    """Everything one server's Centrifuge wires share, built as the factory builds it."""

    def __init__(self, deliver_later: bool, hold_joins: bool = False,
                 **sections: dict[str, Any]) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.config = config = Config.from_mapping(sections)
        channels = config.channels
        broker_class = HoldingBroker if hold_joins else MemoryBroker
        self.broker = broker_class(self.clock, channels.history_size, channels.history_ttl,
                                   deliver_later=deliver_later)
        self.broker.start()
        self.deliver_later = deliver_later
        self.metrics = Metrics(lambda: self.registry.counts(), lambda: self.broker.healthy)
        self.registry = Registry(on_transition=self.metrics.on_transition)
        self.hub = Hub(self.broker)
        self.api = ServerApi(self.hub, self.registry, config, self.metrics, self.clock,
                             lambda: NOW)
        self.context = WireContext(self.hub, self.clock, config, TokenVerifier(config.auth),
                                   self.metrics, self.registry, self.publish_limit, self.api)

    def publish_limit(self, link: object, user: str) -> PublishLimit | None:
        """Each connection's own bucket (server.publish_rate), as the factory makes it."""
        server = self.config.server
        if not server.publish_rate:
            return None
        return PublishLimit((TokenBucket(server.publish_rate, server.publish_burst,
                                         self.clock.seconds()),))

    def settle(self) -> None:
        """Let this clock turn's calls run: a deliver-later broker's deliveries."""
        self.clock.advance(0)

    def open(self) -> Client:
        """A connection whose WebSocket handshake is done (no connect yet)."""
        link = FakeLink()
        wire = link.wire = CentrifugeWire(self.context, link)
        wire.on_open()
        return Client(self, wire, link)

    def connect(self, token: str | None = None) -> Client:
        """A connection that sent connect (with C{token}) and got its reply."""
        client = self.open()
        [reply] = client.command({"id": 1, "connect": {"token": token} if token else {}})
        assert reply["id"] == 1 and "client" in reply["connect"], reply
        return client

    def publish(self, channel: str, data: bytes) -> None:
        """Publish as a raw client or the server API does: C{data} kept byte for byte."""
        self.api.publish(channel, data)

    def token(self, sub: str = "alice", ttl: float | None = 3600, **claims: Any) -> str:
        if ttl is not None:
            claims["exp"] = int(self.clock.seconds() + ttl)
        return jwt.encode({"sub": sub, **claims}, SECRET, algorithm="HS256")


class Client:
    """One connection: its wire, its fake link, and what it was sent."""

    def __init__(self, server: Server, wire: CentrifugeWire, link: FakeLink) -> None:
        self.server = server
        self.wire = wire
        self.link = link
        self._read = 0
        self._ids = iter(range(1000, 10**6))

    @property
    def client_id(self) -> str:
        return self.link.info.client_id

    def send(self, *commands: Message | bytes) -> None:
        """One frame holding C{commands} (objects, or lines as they are), one a line."""
        lines = [c if isinstance(c, bytes) else json.dumps(c).encode() for c in commands]
        self.wire.on_message(b"\n".join(lines), False)

    def take(self) -> list[bytes]:
        """The messages sent since the last take, without letting the clock run."""
        messages = self.link.messages[self._read:]
        self._read = len(self.link.messages)
        return messages

    def received(self) -> list[Message]:
        """Everything sent since the last look, once pending deliveries are done."""
        self.server.settle()
        return [m for message in self.take() for m in parse(message)]

    def command(self, *commands: Message | bytes) -> list[Message]:
        """Send one frame; everything that came back, replies and pushes, in order."""
        self.send(*commands)
        return self.received()

    def call(self, method: str, body: Message) -> Message:
        """One command; its reply (the method's body, or {"error": ...}). Pushes must not come."""
        command_id = next(self._ids)
        [reply] = self.command({"id": command_id, method: body})
        assert reply["id"] == command_id, reply
        return {"error": reply["error"]} if "error" in reply else reply[method]

    def subscribe(self, channel: str, **options: Any) -> Message:
        reply = self.call("subscribe", {"channel": channel, **options})
        assert "error" not in reply, reply
        return reply

    def gone(self, code: int = 1000) -> None:
        """The connection ended (its close handshake done, or the TCP connection lost)."""
        self.wire.on_close(True, code)
        self.server.registry.transition(self.link, ConnectionState.DISCONNECTED, "closed")


@pytest.fixture(params=[False, True], ids=["inline", "deliver_later"])
def make(request: pytest.FixtureRequest) -> Callable[..., Server]:
    """C{make(server={...}, ...)}: a server with those config sections."""
    return lambda **sections: Server(request.param, **sections)


@pytest.fixture
def server(make: Callable[..., Server]) -> Server:
    return make()


@pytest.fixture
def secured(make: Callable[..., Server]) -> Server:
    """Tokens signed with SECRET; no anonymous access."""
    return make(auth={"token_secret": SECRET})


def error(code: int, message: str, temporary: bool = False) -> Message:
    body: Message = {"code": code, "message": message}
    if temporary:
        body["temporary"] = True
    return {"error": body}


def pub(channel: str, data: Any, offset: int) -> Message:
    return {"push": {"channel": channel, "pub": {"data": data, "offset": offset}}}


def disconnect(code: int, reason: str) -> Message:
    return {"push": {"disconnect": {"code": code, "reason": reason}}}


# -- connect ------------------------------------------------------------------


def test_anonymous_connect_replies_with_a_new_client_id(server: Server) -> None:
    client = server.open()
    [reply] = client.command({"id": 1, "connect": {"name": "js", "version": "5.8.0"}})
    body = reply["connect"]
    assert reply["id"] == 1
    assert body["client"] == client.client_id and len(body["client"]) == 36
    assert body["ping"] == 20 and body["pong"] is True
    assert "expires" not in body and "ttl" not in body and "subs" not in body
    assert client.link.info.user == "" and client.link.closed is None
    assert server.registry.get(client.client_id) is client.link
    assert server.open().client_id != client.client_id


def test_connect_with_a_token_names_the_user_and_its_expiry(secured: Server) -> None:
    client = secured.open()
    [reply] = client.command({"id": 1, "connect": {"token": secured.token("alice", 90.5)}})
    body = reply["connect"]
    assert (body["expires"], body["ttl"]) == (True, 90)  # rounded down
    assert client.link.info.user == "alice"
    assert client.link.info.expires_at == int(NOW + 90.5)


def test_an_invalid_token_closes_3500_without_a_push(secured: Server) -> None:
    # No disconnect push before a successful connect (docs: close codes).
    bad = jwt.encode({"sub": "alice"}, "another-secret-of-at-least-32-bytes", algorithm="HS256")
    for token in [bad, "not.a.jwt", None]:  # None: no token, and anonymous access is off
        client = secured.open()
        assert client.command({"id": 1, "connect": {"token": token} if token else {}}) == []
        assert client.link.closed == ("reject", 3500, "invalid token")
        assert client.link.metric_reason == "invalid_token"
        assert client.link.late == []


def test_an_expired_token_is_error_109_and_only_connect_may_follow(secured: Server) -> None:
    client = secured.open()
    expired = secured.token("alice", ttl=-1)
    assert client.command({"id": 1, "connect": {"token": expired}}) == [
        {"id": 1, **error(109, "token expired")}]
    assert client.link.closed is None
    [reply] = client.command({"id": 2, "connect": {"token": secured.token("alice")}})
    assert reply["connect"]["client"] == client.client_id

    other = secured.open()
    other.command({"id": 1, "connect": {"token": expired}})
    assert other.command({"id": 2, "subscribe": {"channel": "news"}}) == []
    assert other.link.closed == ("reject", 3501, "bad request")


def test_a_token_not_valid_yet_is_error_109(secured: Server) -> None:
    client = secured.open()
    token = secured.token("alice", nbf=int(NOW + 60))
    assert client.command({"id": 1, "connect": {"token": token}}) == [
        {"id": 1, **error(109, "token expired")}]


def test_a_command_before_connect_closes_3501(server: Server) -> None:
    for command in [{"id": 1, "subscribe": {"channel": "news"}}, {}]:  # {}: a pong
        client = server.open()
        assert client.command(command) == []
        assert client.link.closed == ("reject", 3501, "bad request")
        assert client.link.metric_reason == "bad_request"


def test_a_second_connect_closes_3501_with_the_push(server: Server) -> None:
    client = server.connect()
    assert client.command({"id": 2, "connect": {}}) == [disconnect(3501, "bad request")]
    assert client.link.closed == ("reject", 3501, "bad request")


def test_no_connect_within_the_handshake_timeout_closes_3502(make: Callable[..., Server]
                                                            ) -> None:
    server = make(server={"handshake_timeout": 2})
    silent, connected = server.open(), server.connect()
    server.clock.advance(1.9)
    assert silent.link.closed is None
    server.clock.advance(0.1)
    assert silent.link.closed == ("reject", 3502, "stale")
    assert silent.link.metric_reason == "stale" and silent.link.messages == []
    assert connected.link.closed is None and connected.received() == []


@pytest.mark.parametrize("connect", [b'{"id":1,"connect":{"token":"x.y.z"}}',  # 3500
                                     b'{"id":1,"subscribe":{"channel":"news"}}'])  # 3501
def test_a_connection_closed_before_connect_is_not_closed_again_as_stale(
        make: Callable[..., Server], connect: bytes) -> None:
    # The client has not answered the close frame yet (close_handshake_timeout
    # is 2 s): the connect deadline must not close it a second time, counting
    # it as stale too.
    server = make(server={"handshake_timeout": 5})
    client = server.open()
    server.clock.advance(4)
    client.send(connect)
    [closed] = client.link.closes
    assert closed[1] in (3500, 3501)
    server.clock.advance(1)
    assert client.link.closes == [closed]
    assert client.link.metric_reason != "stale"


def test_a_token_expired_connect_still_needs_a_connect_in_time(make: Callable[..., Server]
                                                               ) -> None:
    server = make(auth={"token_secret": SECRET}, server={"handshake_timeout": 2})
    client = server.open()
    client.command({"id": 1, "connect": {"token": server.token(ttl=-1)}})
    server.clock.advance(2)
    assert client.link.closed == ("reject", 3502, "stale")


def test_the_connect_deadline_is_cancelled_when_the_connection_ends(server: Server) -> None:
    client = server.open()
    client.gone()
    assert server.clock.getDelayedCalls() == []


# -- malformed input ----------------------------------------------------------


@pytest.mark.parametrize("line", [
    b"{not json", b"[1]", b'"connect"', b"1", b"null", b'{"id":1}',
    b'{"id":"2","history":{"channel":"news"}}', b'{"id":-1,"history":{"channel":"news"}}',
    b'{"id":true,"history":{"channel":"news"}}', b'{"id":2.5,"history":{"channel":"news"}}',
    b'{"id":2,"history":[]}', b'{"id":2,"history":{},"presence":{}}', b"\xff\xfe",
    b'{"id":2,"history":{"channel":"news","limit":NaN}}',
], ids=lambda line: line.decode("latin-1"))
def test_a_bad_line_closes_3501_after_the_replies_before_it(server: Server, line: bytes
                                                            ) -> None:
    client = server.connect()
    client.send({"id": 2, "presence_stats": {"channel": "news"}}, line,
                {"id": 3, "presence_stats": {"channel": "news"}})
    assert [parse(m) for m in client.take()] == [
        [{"id": 2, "presence_stats": {"num_clients": 0, "num_users": 0}}],
        [disconnect(3501, "bad request")],
    ]
    assert client.link.closed == ("reject", 3501, "bad request")


def test_a_binary_frame_closes_3501(server: Server) -> None:
    client = server.connect()
    client.wire.on_message(b'{"id":2,"presence":{"channel":"news"}}', True)
    assert client.received() == [disconnect(3501, "bad request")]
    assert client.link.closed == ("reject", 3501, "bad request")


def test_more_than_100_commands_in_a_frame_closes_3501_unanswered(server: Server) -> None:
    client = server.connect()
    hundred = [{"id": i, "presence_stats": {"channel": "news"}} for i in range(2, 102)]
    assert len(client.command(*hundred)) == 100
    assert client.command(*hundred, {"id": 200, "presence_stats": {"channel": "news"}}) == [
        disconnect(3501, "bad request")]
    assert client.link.closed == ("reject", 3501, "bad request")


def test_blank_lines_are_skipped_and_do_not_count(server: Server) -> None:
    client = server.connect()
    frame = b"\n\n" + b"\n  \n".join(
        b'{"id":%d,"presence_stats":{"channel":"news"}}' % i for i in range(2, 102)) + b"\n"
    client.wire.on_message(frame, False)
    assert [r["id"] for r in client.received()] == list(range(2, 102))
    assert client.link.closed is None


def test_unknown_methods_are_104_and_send_has_no_reply(server: Server) -> None:
    client = server.connect()
    assert client.command({"id": 2, "sub_refresh": {}}, {"send": {"data": {"x": 1}}},
                          {"id": 3, "ping": {}}) == [
        {"id": 2, **error(104, "method not found")}, {"id": 3, **error(104, "method not found")}]


def test_a_command_without_id_is_carried_out_without_a_reply(server: Server) -> None:
    client = server.connect()
    assert client.command({"subscribe": {"channel": "news"}}) == []
    assert server.hub.subscriber_count("news") == 1
    assert client.command({"id": 0, "publish": {"channel": "news", "data": 1}}) == [
        pub("news", 1, 1)]


# -- subscribe ----------------------------------------------------------------


def test_subscribe_to_a_channel_never_published_to_is_at_offset_0(server: Server) -> None:
    client = server.connect()
    reply = client.subscribe("news", recoverable=True, flag=1)
    assert reply == {"recoverable": True, "positioned": True, "epoch": reply["epoch"],
                     "offset": 0, "publications": []}
    assert isinstance(reply["epoch"], str) and reply["epoch"]
    assert client.link.info.channels == {"news"}
    # The first publication comes in the epoch the reply announced.
    server.publish("news", b'{"first":true}')
    assert client.received() == [pub("news", {"first": True}, 1)]
    assert client.call("history", {"channel": "news"})["epoch"] == reply["epoch"]


def test_subscribe_gives_the_streams_position_and_only_later_publications(server: Server
                                                                          ) -> None:
    for n in range(3):
        server.publish("news", b'{"n":%d}' % n)
    client = server.connect()  # deliver-later: those three may not be delivered yet
    reply = client.subscribe("news")
    assert (reply["offset"], reply["publications"]) == (3, [])
    assert "recovered" not in reply and "was_recovering" not in reply
    assert client.received() == []  # none of the three arrive after the reply
    server.publish("news", b'{"n":3}')
    assert client.received() == [pub("news", {"n": 3}, 4)]


def test_subscribe_errors(secured: Server) -> None:
    client = secured.connect(secured.token("alice", channels=["news", "sport"]))
    assert client.call("subscribe", {}) == error(107, "bad request")
    assert client.call("subscribe", {"channel": ""}) == error(107, "bad request")
    assert client.call("subscribe", {"channel": 5}) == error(107, "bad request")
    assert client.call("subscribe", {"channel": "bad channel!"}) == error(102, "unknown channel")
    assert client.call("subscribe", {"channel": "weather"}) == error(103, "permission denied")
    client.subscribe("news")
    assert client.call("subscribe", {"channel": "news"}) == error(105, "already subscribed")
    for offset in [-1, "x", True, 1.5, None]:
        assert client.call("subscribe", {"channel": "sport", "recover": True,
                                         "offset": offset}) == error(107, "bad request")
    assert client.link.info.channels == {"news"}
    assert secured.hub.subscriber_count("sport") == 0
    assert client.link.closed is None


def test_the_128_channel_limit_is_106(server: Server) -> None:
    client = server.connect()
    for start in (0, 64):
        replies = client.command(*({"id": 10 + i, "subscribe": {"channel": f"c{i}"}}
                                   for i in range(start, start + 64)))
        assert all("subscribe" in r for r in replies) and len(replies) == 64
    assert client.call("subscribe", {"channel": "c128"}) == error(106, "limit exceeded")
    client.call("unsubscribe", {"channel": "c0"})
    server.clock.advance(1)  # the 128 took the whole burst of server.subscribe_rate
    assert "error" not in client.call("subscribe", {"channel": "c128"})
    assert len(client.link.info.channels) == 128


def test_subscribe_rate_is_111_past_the_burst(make: Callable[..., Server]) -> None:
    server = make(server={"subscribe_rate": 1})
    client = server.connect()
    for start in (0, 64):  # a burst of 128 at once
        client.command(*({"id": 10 + i, "subscribe": {"channel": f"c{i}"}}
                         for i in range(start, start + 64)))
    client.call("unsubscribe", {"channel": "c0"})
    assert client.call("subscribe", {"channel": "c0"}) == error(
        111, "too many requests", temporary=True)
    assert "c0" not in client.link.info.channels and server.hub.subscriber_count("c0") == 0
    server.clock.advance(1)
    assert "error" not in client.call("subscribe", {"channel": "c0"})


# -- recovery -----------------------------------------------------------------


def test_recovery_gives_exactly_what_was_missed_in_the_reply(server: Server) -> None:
    server.publish("news", b'{"n":1}')
    client = server.connect()
    epoch = client.subscribe("news")["epoch"]
    server.publish("news", b'{"n":2}')
    client.gone()
    server.publish("news", b'{ "n" : 3 }')  # as a raw client wrote it
    server.publish("news", b'{"n":\n4}')  # a line feed: whitespace between tokens

    again = server.connect()
    again.send({"id": 2, "subscribe": {"channel": "news", "recover": True, "epoch": epoch,
                                       "offset": "2"}})  # a string, from 64-bit-safe encoders
    [message] = again.take()
    # The data spliced in verbatim, line feeds turned into spaces.
    assert message == (
        b'{"id":2,"subscribe":{"recoverable":true,"positioned":true,"epoch":"' + epoch.encode()
        + b'","offset":2,"was_recovering":true,"recovered":true,"publications":['
        b'{"data":{ "n" : 3 },"offset":3},{"data":{"n": 4},"offset":4}]}}')
    assert again.received() == []  # nothing twice after the reply
    server.publish("news", b'{"n":5}')
    assert again.received() == [pub("news", {"n": 5}, 5)]


def test_recovery_with_nothing_missed_and_with_an_empty_epoch(server: Server) -> None:
    server.publish("news", b"1")
    server.publish("news", b"2")
    client = server.connect()
    reply = client.subscribe("news", recover=True, epoch="", offset=1)  # "": the current one
    assert (reply["recovered"], reply["offset"], reply["publications"]) == (
        True, 1, [{"data": 2, "offset": 2}])
    other = server.connect()
    reply = other.subscribe("news", recover=True, epoch=reply["epoch"], offset=2)
    assert (reply["recovered"], reply["offset"], reply["publications"]) == (True, 2, [])
    assert client.received() == other.received() == []


@pytest.mark.parametrize("case", ["other_epoch", "history_too_short", "offset_ahead",
                                  "too_large_for_one_reply"])
def test_recovered_false_gives_the_current_position(make: Callable[..., Server], case: str
                                                    ) -> None:
    server = make(channels={"history_size": 2}, server={"max_queue_size": 1024})
    for n in range(1, 5):
        server.publish("news", b'{"n":%d}' % n)  # history keeps 3 and 4
    client = server.connect()
    epoch = client.call("history", {"channel": "news"})["epoch"]
    top = 4
    since = {"other_epoch": StreamPosition("00000000", 4),
             "history_too_short": StreamPosition(epoch, 1),
             "offset_ahead": StreamPosition(epoch, 5),
             "too_large_for_one_reply": StreamPosition(epoch, 3)}[case]
    if case == "too_large_for_one_reply":
        server.publish("news", b'"' + b"x" * 1100 + b'"')  # history keeps 4 and 5
        top = 5
        recovery: list[Recovery] = []
        server.broker.recover("news", since).addCallback(recovery.append)
        assert recovery[0].recovered  # history covers it: refused for its size alone
    reply = client.subscribe("news", recover=True, epoch=since.epoch, offset=since.offset)
    assert reply == {"recoverable": True, "positioned": True, "epoch": epoch, "offset": top,
                     "was_recovering": True, "recovered": False, "publications": []}
    assert client.received() == []
    server.publish("news", b'{"n":6}')  # live from the position on
    assert client.received() == [pub("news", {"n": 6}, top + 1)]
    assert server.metrics.recovery_gaps.labels("centrifuge")._value.get() == 1


# -- a join the broker answers later ------------------------------------------


@pytest.fixture(params=[False, True], ids=["read_when_asked", "read_when_answered"])
def holding(make: Callable[..., Server], request: pytest.FixtureRequest) -> Server:
    """A server whose broker answers join reads when released."""
    server = make(hold_joins=True)
    assert isinstance(server.broker, HoldingBroker)
    server.broker.read_at_release = request.param
    return server


def _release(server: Server, index: int = 0) -> None:
    assert isinstance(server.broker, HoldingBroker)
    server.broker.release(index)


@pytest.mark.parametrize("recover", [False, True])
def test_publications_during_a_pending_join_follow_the_reply_once_in_order(
        holding: Server, recover: bool) -> None:
    holding.publish("news", b'{"n":1}')
    holding.settle()
    client = holding.connect()
    options = {"recover": True, "epoch": "", "offset": 0} if recover else {}
    assert client.command({"id": 2, "subscribe": {"channel": "news", **options}}) == []
    for n in (2, 3, 4):
        holding.publish("news", b'{"n":%d}' % n)
    holding.settle()
    assert client.take() == []  # nothing before the reply
    _release(holding)
    messages = [parse(m) for m in client.take()]
    reply = messages[0][0]["subscribe"]
    # The reply and the pushes after it cover offsets 1-4 (or 2-4), each once, in order.
    in_reply = [p["offset"] for p in reply["publications"]]
    pushed = [m["push"]["pub"]["offset"] for message in messages[1:] for m in message]
    assert reply["offset"] + len(in_reply) + len(pushed) == 4, messages
    assert in_reply + pushed == list(range(reply["offset"] + 1, 5))
    if recover:
        assert reply["recovered"] is True and reply["offset"] == 0
    assert client.received() == []
    holding.publish("news", b'{"n":5}')
    assert client.received() == [pub("news", {"n": 5}, 5)]


def test_a_pending_subscribe_is_answered_after_later_replies(holding: Server) -> None:
    client = holding.connect()
    client.send({"id": 2, "subscribe": {"channel": "news"}},
                {"id": 3, "presence_stats": {"channel": "sport"}})
    assert [parse(m) for m in client.take()] == [
        [{"id": 3, "presence_stats": {"num_clients": 0, "num_users": 0}}]]
    _release(holding)
    [[reply]] = [parse(m) for m in client.take()]
    assert reply["id"] == 2 and reply["subscribe"]["offset"] == 0


@pytest.mark.parametrize("abandon", ["unsubscribe", "disconnect"])
def test_a_subscribe_abandoned_while_its_join_is_pending_announces_nothing(
        holding: Server, abandon: str) -> None:
    watcher = holding.connect()
    watcher.send({"id": 2, "subscribe": {"channel": "room", "join_leave": True}})
    _release(holding)
    assert watcher.received()[0]["id"] == 2

    visitor = holding.connect()
    visitor.send({"id": 2, "subscribe": {"channel": "room"}})
    if abandon == "unsubscribe":
        visitor.command({"id": 3, "unsubscribe": {"channel": "room"}})
    else:
        visitor.gone()
    _release(holding)
    assert holding.api.presence_stats("room") == {"num_clients": 1, "num_users": 1}
    # The visitor is not subscribed: a join push now would never be followed by a leave.
    assert watcher.received() == []


def test_no_join_push_before_the_subscribe_reply(holding: Server) -> None:
    # A channel's pushes never arrive before its subscribe reply (docs: pushes).
    early = holding.connect()
    early.send({"id": 2, "subscribe": {"channel": "room", "join_leave": True}})
    late = holding.connect()
    late.send({"id": 2, "subscribe": {"channel": "room"}})
    _release(holding, 1)  # the later join is answered first
    _release(holding)
    got = early.received()
    assert got[0].get("id") == 2, got


# -- unsubscribe --------------------------------------------------------------


def test_unsubscribe_stops_publications_and_always_succeeds(server: Server) -> None:
    client = server.connect()
    client.subscribe("news")
    assert client.call("unsubscribe", {"channel": "news"}) == {}
    assert client.link.info.channels == set() and server.hub.subscriber_count("news") == 0
    server.publish("news", b"1")
    assert client.received() == []
    assert client.call("unsubscribe", {"channel": "never"}) == {}
    assert client.call("unsubscribe", {}) == {}
    assert "error" not in client.call("subscribe", {"channel": "news"})  # again


# -- publish ------------------------------------------------------------------


def test_publish_reaches_every_subscriber_including_the_publisher(server: Server) -> None:
    publisher, reader, elsewhere = server.connect(), server.connect(), server.connect()
    publisher.subscribe("news")
    reader.subscribe("news")
    elsewhere.subscribe("sport")
    got = publisher.command({"id": 5, "publish": {"channel": "news",
                                                  "data": {"headline": "é", "n": [1, 2]}}})
    push = pub("news", {"headline": "é", "n": [1, 2]}, 1)
    if server.deliver_later:
        assert got == [{"id": 5, "publish": {}}, push]
    else:  # as from Centrifugo's in-memory broker: the push first, in the same frame
        assert [parse(m) for m in publisher.link.messages[-1:]] == [
            [push, {"id": 5, "publish": {}}]]
        assert got == [push, {"id": 5, "publish": {}}]
    assert reader.received() == [push]
    assert elsewhere.received() == []
    # Re-serialised compact, non-ASCII kept as UTF-8.
    assert '{"headline":"é","n":[1,2]}'.encode() in reader.link.messages[-1]


def test_a_client_publication_reaches_raw_subscribers_as_compact_json(server: Server) -> None:
    raw = RawStandIn("raw-1")
    server.hub.subscribe("news", raw)
    server.connect().call("publish", {"channel": "news", "data": {"a": 1, "b": None}})
    server.settle()
    assert raw.got == [b'{"a":1,"b":null}']


def test_publish_errors(secured: Server) -> None:
    client = secured.connect(secured.token("alice", channels=["news"]))
    assert client.call("publish", {"channel": "news"}) == error(107, "bad request")
    assert client.call("publish", {"data": 1}) == error(107, "bad request")
    assert client.call("publish", {"channel": "a b", "data": 1}) == error(102, "unknown channel")
    assert client.call("publish", {"channel": "sport", "data": 1}) == error(
        103, "permission denied")
    secured.broker.stop()
    assert client.call("publish", {"channel": "news", "data": 1}) == error(
        100, "broker unavailable", temporary=True)
    assert client.link.closed is None


def test_publish_is_103_when_clients_may_not_publish(make: Callable[..., Server]) -> None:
    server = make(channels={"allow_client_publish": False})
    client = server.connect()
    client.subscribe("news")
    assert client.call("publish", {"channel": "news", "data": 1}) == error(
        103, "permission denied")
    assert client.received() == []


def test_publish_rate_is_111_temporary(make: Callable[..., Server]) -> None:
    server = make(server={"publish_rate": 1, "publish_burst": 2})
    client = server.connect()
    body = {"channel": "news", "data": 1}
    assert client.call("publish", body) == client.call("publish", body) == {}
    assert client.call("publish", body) == error(111, "too many requests", temporary=True)
    assert server.metrics.rate_limited.labels("publish")._value.get() == 1
    server.clock.advance(1)
    assert client.call("publish", body) == {}
    assert server.connect().call("publish", body) == {}  # a bucket per connection


# -- history ------------------------------------------------------------------


@pytest.fixture
def five(server: Server) -> Client:
    """A client, and five publications on "news"."""
    for n in range(1, 6):
        server.publish("news", b'{"n": %d}' % n)
    return server.connect()


def _offsets(reply: Message) -> list[int]:
    return [p["offset"] for p in reply["publications"]]


def test_history_limits(five: Client) -> None:
    top = five.call("history", {"channel": "news"})  # limit absent: the position only
    assert (top["offset"], top["publications"]) == (5, [])
    assert five.call("history", {"channel": "news", "limit": 0}) == top
    assert _offsets(five.call("history", {"channel": "news", "limit": 2})) == [1, 2]
    everything = five.call("history", {"channel": "news", "limit": -1})
    assert _offsets(everything) == [1, 2, 3, 4, 5] and everything["epoch"] == top["epoch"]
    assert everything["publications"][0] == {"data": {"n": 1}, "offset": 1}
    assert _offsets(five.call("history", {"channel": "news", "limit": 1, "reverse": True})) == [5]


def test_history_since(five: Client) -> None:
    epoch = five.call("history", {"channel": "news"})["epoch"]
    since = {"channel": "news", "limit": -1, "since": {"offset": 2, "epoch": epoch}}
    assert _offsets(five.call("history", since)) == [3, 4, 5]
    assert _offsets(five.call("history", {**since, "since": {"offset": "2"}})) == [3, 4, 5]
    assert _offsets(five.call("history", {**since, "reverse": True})) == [1]
    assert _offsets(five.call("history", {**since, "since": {"offset": 4}, "limit": 10,
                                          "reverse": True})) == [3, 2, 1]
    assert _offsets(five.call("history", {**since, "since": {"offset": 5}})) == []


def test_history_errors(make: Callable[..., Server]) -> None:
    server = make(server={"max_queue_size": 1024})
    for _ in range(3):
        server.publish("news", b'"' + b"x" * 400 + b'"')
    client = server.connect()
    call = client.call
    assert call("history", {"channel": "news", "since": {"offset": 1, "epoch": "other"}}
                ) == error(112, "unrecoverable position")
    assert call("history", {"channel": "news", "limit": -1}) == error(106, "limit exceeded")
    assert _offsets(call("history", {"channel": "news", "limit": 2})) == [1, 2]  # ask for fewer
    bad: list[Message] = [{"limit": "1"}, {"limit": True}, {"limit": 1.0},
                          {"since": {"offset": -1}}, {"since": {"offset": 0}, "reverse": True}]
    for body in bad:
        assert call("history", {"channel": "news", **body}) == error(107, "bad request"), body
    assert call("history", {}) == error(107, "bad request")
    assert call("history", {"channel": "a b"}) == error(102, "unknown channel")
    assert client.link.closed is None


def test_history_and_presence_are_103_for_a_channel_the_token_does_not_allow(
        secured: Server) -> None:
    client = secured.connect(secured.token("alice", channels=["news"]))
    for method in ["history", "presence", "presence_stats"]:
        assert client.call(method, {"channel": "sport"}) == error(103, "permission denied")
    assert client.call("history", {"channel": "news"})["offset"] == 0


def test_answers_to_one_frame_over_max_queue_size_close_3008(make: Callable[..., Server]
                                                              ) -> None:
    server = make(server={"max_queue_size": 1024})
    for _ in range(2):
        server.publish("news", b'"' + b"x" * 400 + b'"')
    client = server.connect()
    assert len(client.command({"id": 2, "history": {"channel": "news", "limit": -1}})) == 1
    assert client.command(*({"id": i, "history": {"channel": "news", "limit": -1}}
                            for i in (3, 4))) == [disconnect(3008, "slow")]
    assert client.link.closed == ("reject", 3008, "slow")
    assert client.link.metric_reason == "answers_too_large"


# -- presence -----------------------------------------------------------------


def test_presence_counts_centrifuge_clients_only(secured: Server) -> None:
    secured.hub.subscribe("room", RawStandIn("raw-session-id"))  # resumes a session: secret
    alice1 = secured.connect(secured.token("alice"))
    alice2 = secured.connect(secured.token("alice"))
    bob = secured.connect(secured.token("bob"))
    for client in (alice1, alice2, bob):
        client.subscribe("room")
    asker = secured.connect(secured.token("carol"))  # need not be subscribed
    assert asker.call("presence", {"channel": "room"}) == {"presence": {
        c.client_id: {"client": c.client_id, "user": user}
        for c, user in [(alice1, "alice"), (alice2, "alice"), (bob, "bob")]}}
    assert asker.call("presence_stats", {"channel": "room"}) == {"num_clients": 3,
                                                                 "num_users": 2}
    bob.gone()
    assert asker.call("presence_stats", {"channel": "room"}) == {"num_clients": 2,
                                                                 "num_users": 1}
    assert asker.call("presence", {"channel": "empty"}) == {"presence": {}}
    assert asker.call("presence", {}) == error(107, "bad request")


# -- refresh ------------------------------------------------------------------


def test_refresh_with_a_new_token_extends_the_connection(secured: Server) -> None:
    client = secured.connect(secured.token("alice", ttl=60))
    secured.clock.advance(50)
    assert client.call("refresh", {"token": secured.token("alice", ttl=3600)}) == {
        "client": client.client_id, "version": __version__, "expires": True, "ttl": 3600}
    assert client.link.info.expires_at == int(NOW + 50 + 3600)
    # A token without exp: no expiry any more.
    assert "expires" not in client.call("refresh", {"token": secured.token("alice", ttl=None)})
    assert client.link.info.expires_at is None and client.link.closed is None


def test_refresh_ends_subscriptions_the_new_token_does_not_allow(secured: Server) -> None:
    client = secured.connect(secured.token("alice", channels=["a", "b"]))
    client.subscribe("a")
    client.subscribe("b")
    got = client.command({"id": 5, "refresh": {"token": secured.token("alice",
                                                                       channels=["a"])}})
    assert got[0] == {"push": {"channel": "b", "unsubscribe": {"code": 2000,
                                                               "reason": "permission denied"}}}
    assert got[1]["id"] == 5 and got[1]["refresh"]["client"] == client.client_id
    assert len(got) == 2
    assert client.link.info.channels == {"a"} and secured.hub.subscriber_count("b") == 0
    secured.publish("b", b"1")
    assert client.received() == []
    assert client.call("subscribe", {"channel": "b"}) == error(103, "permission denied")


def test_refresh_for_another_user_closes_3500_with_the_push(secured: Server) -> None:
    client = secured.connect(secured.token("alice"))
    assert client.command({"id": 2, "refresh": {"token": secured.token("mallory")}}) == [
        disconnect(3500, "invalid token")]
    assert client.link.closed == ("reject", 3500, "invalid token")


def test_refresh_with_an_invalid_token_closes_3500_with_the_push(secured: Server) -> None:
    client = secured.connect(secured.token("alice"))
    assert client.command({"id": 2, "refresh": {"token": "a.b.c"}}) == [
        disconnect(3500, "invalid token")]
    assert client.link.closed == ("reject", 3500, "invalid token")


def test_refresh_with_an_expired_token_closes_3005_with_the_push(secured: Server) -> None:
    client = secured.connect(secured.token("alice", ttl=10))
    assert client.command({"id": 2, "refresh": {"token": secured.token("alice", ttl=-1)}}) == [
        disconnect(3005, "connection expired")]
    assert client.link.closed == ("close", 3005, "connection expired")


# -- join and leave -----------------------------------------------------------


def test_join_and_leave_pushes_go_to_subscribers_that_asked(server: Server) -> None:
    def info(client: Client) -> Message:
        return {"info": {"user": "", "client": client.client_id}}

    watcher, quiet = server.connect(), server.connect()
    watcher.subscribe("room", join_leave=True)
    quiet.subscribe("room")
    assert watcher.received() == [{"push": {"channel": "room", "join": info(quiet)}}]
    visitor = server.connect()
    visitor.subscribe("room")
    assert watcher.received() == [{"push": {"channel": "room", "join": info(visitor)}}]
    visitor.call("unsubscribe", {"channel": "room"})
    assert watcher.received() == [{"push": {"channel": "room", "leave": info(visitor)}}]
    visitor.subscribe("room")
    visitor.gone()
    assert watcher.received() == [{"push": {"channel": "room", "join": info(visitor)}},
                                  {"push": {"channel": "room", "leave": info(visitor)}}]
    assert quiet.received() == [] and visitor.link.late == []


def test_no_join_push_about_those_already_there_but_their_leave(server: Server) -> None:
    quiet = server.connect()
    quiet.subscribe("room")
    watcher = server.connect()
    watcher.subscribe("room", join_leave=True)  # no push about those already there
    assert watcher.received() == []
    quiet.gone()
    assert watcher.received() == [{"push": {"channel": "room", "leave": {
        "info": {"user": "", "client": quiet.client_id}}}}]


# -- rpc ----------------------------------------------------------------------


def test_rpc_without_a_handler_is_108(server: Server) -> None:
    client = server.connect()
    assert client.call("rpc", {"method": "nope"}) == error(108, "not available")
    assert client.call("rpc", {}) == error(108, "not available")
    assert client.call("rpc", {"method": 5}) == error(108, "not available")


def test_rpc_handlers(server: Server) -> None:
    later: Deferred[Any] = Deferred()

    def add(info: ClientInfo, data: Any) -> Any:
        if not isinstance(data, dict) or not {"a", "b"} <= data.keys():
            raise ReplyError(400, "a and b required")
        return {"sum": data["a"] + data["b"], "client": info.client_id}

    def broken(info: ClientInfo, data: Any) -> Any:
        raise RuntimeError("a bug")

    server.context.rpc_handlers.update({
        "add": add, "broken": broken, "none": lambda info, data: None,
        "deferred": lambda info, data: succeed([data]), "later": lambda info, data: later})
    client = server.connect()
    assert client.command(
        {"id": 2, "rpc": {"method": "add", "data": {"a": 1, "b": 2}}},
        {"id": 3, "rpc": {"method": "add", "data": {}}},
        {"id": 4, "rpc": {"method": "none"}},
        {"id": 5, "rpc": {"method": "deferred", "data": "x"}},
        {"id": 6, "rpc": {"method": "later"}},
        {"id": 7, "rpc": {"method": "nope"}},
    ) == [{"id": 2, "rpc": {"data": {"sum": 3, "client": client.client_id}}},
          {"id": 3, **error(400, "a and b required")},
          {"id": 4, "rpc": {}},
          {"id": 5, "rpc": {"data": ["x"]}},
          {"id": 7, **error(108, "not available")}]
    later.callback({"late": True})
    assert client.received() == [{"id": 6, "rpc": {"data": {"late": True}}}]
    assert client.command({"id": 8, "rpc": {"method": "broken"}}) == [
        {"id": 8, **error(100, "internal server error")}]
    assert client.link.closed is None


# -- frames -------------------------------------------------------------------


def test_a_frame_is_answered_in_one_message_replies_in_order(server: Server) -> None:
    client = server.open()
    client.send({"id": 1, "connect": {}},
                {"id": 2, "subscribe": {"channel": "news"}},
                {"id": 3, "publish": {"channel": "news", "data": {"x": 1}}},
                {"id": 4, "history": {"channel": "news", "limit": -1}},
                {"id": 5, "presence_stats": {"channel": "news"}})
    [message] = client.take()
    replies = parse(message)
    push = pub("news", {"x": 1}, 1)
    if server.deliver_later:
        assert [r["id"] for r in replies] == [1, 2, 3, 4, 5]
        assert client.received() == [push]  # on the next turn, in a message of its own
    else:
        # The subscribe reply first, then the pub push, then the publish reply.
        assert [r.get("id") for r in replies] == [1, 2, None, 3, 4, 5]
        assert replies[2] == push
    assert replies[-2]["history"]["publications"] == [{"data": {"x": 1}, "offset": 1}]


def test_a_subscribe_reply_comes_before_the_publications_it_lets_through(server: Server
                                                                          ) -> None:
    client = server.connect()
    server.publish("news", b"1")  # deliver-later: on its way during the subscribe
    client.send({"id": 2, "subscribe": {"channel": "news", "recover": True, "offset": 0}},
                {"id": 3, "publish": {"channel": "news", "data": 2}})
    got = client.received()
    assert got[0]["id"] == 2 and got[0]["subscribe"]["publications"] == [
        {"data": 1, "offset": 1}]
    assert got.count(pub("news", 2, 2)) == 1 and {"id": 3, "publish": {}} in got
    assert pub("news", 1, 1) not in got
    assert len(got) == 3


# -- heartbeats ---------------------------------------------------------------


def test_server_pings_only_connected_clients(server: Server) -> None:
    waiting = server.open()
    waiting.link.info.ping_sent_at = NOW  # the heartbeat sweep marks it before sending
    waiting.wire.send_heartbeat()
    assert waiting.link.messages == [] and waiting.link.info.ping_sent_at is None

    client = server.connect()
    client.wire.send_heartbeat()
    assert client.take() == [b"{}"]
    assert client.link.pings == 0  # not a WebSocket ping
    client.link.info.ping_sent_at = NOW
    assert client.command({}) == []  # the pong: no answer
    assert client.link.info.ping_sent_at is None and client.link.closed is None


# -- closes -------------------------------------------------------------------


@pytest.mark.parametrize("reason, how, code, text, push", [
    (CloseReason.SHUTDOWN, "close", 3001, "shutdown", True),
    (CloseReason.EXPIRED, "close", 3005, "connection expired", True),
    (CloseReason.REPLACED, "close", 3011, "replaced", True),
    (CloseReason.INACTIVE, "close", 1000, "Inactive client", False),
    (CloseReason.SLOW, "fail", 3008, "slow", False),
    (CloseReason.UNRESPONSIVE, "fail", 3012, "no pong", False),
], ids=lambda value: value.name if isinstance(value, CloseReason) else None)
def test_close_reasons(server: Server, reason: CloseReason, how: str, code: int, text: str,
                       push: bool) -> None:
    client = server.connect()
    client.wire.close(reason)
    assert client.received() == ([disconnect(code, text)] if push else [])
    assert client.link.closed == (how, code, text)
    # Before connect: never a push.
    waiting = server.open()
    waiting.wire.close(reason)
    assert waiting.link.messages == [] and waiting.link.closed == (how, code, text)


def test_the_server_apis_disconnect_sends_the_push_and_its_code(secured: Server) -> None:
    alice, bob = secured.connect(secured.token("alice")), secured.connect(secured.token("bob"))
    secured.api.disconnect("alice", code=4000, reason="please reconnect")
    assert alice.received() == [disconnect(4000, "please reconnect")]
    assert alice.link.closed == ("close", 4000, "please reconnect")
    assert bob.link.closed is None


def test_a_close_ends_every_subscription(server: Server) -> None:
    client = server.connect()
    for channel in ["a", "b", "c"]:
        client.subscribe(channel)
    client.wire.close(CloseReason.SHUTDOWN)
    client.gone(3001)
    assert server.hub.channels() == {}
    assert len(server.registry) == 0
    server.publish("a", b"1")
    assert client.received() == [disconnect(3001, "shutdown")]
    assert client.link.late == []

