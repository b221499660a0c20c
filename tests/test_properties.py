"""
Property-based tests (hypothesis) of four pieces of logic that take any
input a client or an operator can send:

1. the raw protocol's validator (C{jsonutil}): a frame is accepted iff it
   is one strict JSON object, and what is accepted goes out byte for byte;
2. the Centrifuge command decoder (C{centrifuge}), driven in memory
   through a real L{OmegaServerFactory} as in C{test_protocol.py};
3. the configuration loader (C{config}), with strategies derived from the
   section dataclasses so that a new key is covered (or flagged) at once;
4. close reasons (C{closing}): valid UTF-8, at most 123 bytes.

Each test states a contract, not how the code meets it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import struct
import sys
import tempfile
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import jwt
import pytest
from hypothesis import (
    HealthCheck,
    assume,
    currently_in_test_context,
    event,
    example,
    given,
    settings,
)
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from omega_ws.auth import TokenVerifier
from omega_ws.broker import MemoryBroker
from omega_ws.broker.history import Publication
from omega_ws.centrifuge_codec import Raw as _Raw
from omega_ws.centrifuge_codec import ReplyError, encode_reply
from omega_ws.centrifuge_codec import offset_of as _offset
from omega_ws.closing import MAX_REASON_BYTES, close_reason
from omega_ws.config import (
    ENVIRONMENT,
    Config,
    ConfigError,
    _from_text,
    load_config,
)
from omega_ws.factory import OmegaServerFactory
from omega_ws.hub import Hub
from omega_ws.jsonutil import compact, loads_strict, parse_json_object
from omega_ws.metrics import Metrics
from omega_ws.protocol import OmegaProtocol
from omega_ws.registry import Registry

from .test_protocol import server_frames

# No example database: it would be a directory in the checkout.
FAST = settings(max_examples=150, deadline=None, database=None)
SLOW = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# The connected Centrifuge session: the widest input space, worth more examples.
CONNECTED = settings(SLOW, max_examples=200)

# -- strategies shared by several sections ----------------------------------------------

# Strings as JSON can carry them: any code point, lone surrogates included
# (json.loads turns "\\ud800" into one).  st.text() leaves surrogates out.
ANY_CHARACTER = st.characters() | st.characters(categories=["Cs"])
ANY_TEXT = st.lists(ANY_CHARACTER, max_size=20).map("".join)
JSON_SCALARS = (st.none() | st.booleans() | st.integers()
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12,
)
JSON_OBJECTS = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5)


def _dumps(value: Any, style: int) -> str:
    """The same value in one of several valid JSON spellings."""
    if style == 0:
        return json.dumps(value)
    if style == 1:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if style == 2:
        return json.dumps(value, indent=2, ensure_ascii=False)
    return " \t\r\n" + json.dumps(value, indent="\t") + "\n "


STYLES = st.integers(0, 3)


# == 1. the raw validator ==================================================================


@FAST
@given(JSON_OBJECTS, STYLES)
def test_every_json_object_is_accepted_as_it_was_sent(obj: dict[str, Any], style: int) -> None:
    assert parse_json_object(_dumps(obj, style).encode()) == obj


@FAST
@given(st.binary(max_size=64) | st.text(max_size=40).map(str.encode)
       # JSON may spell lone surrogates ("\\ud800"), which UTF-8 cannot hold.
       | st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=3).map(lambda d: json.dumps(d).encode()))
def test_arbitrary_bytes_give_none_or_the_object_they_spell(payload: bytes) -> None:
    result = parse_json_object(payload)
    assert result is None or isinstance(result, dict)
    if result is not None:
        assert result == json.loads(payload)


@FAST
@given(JSON_VALUES.filter(lambda v: not isinstance(v, dict)), STYLES)
def test_json_that_is_not_an_object_is_refused(value: Any, style: int) -> None:
    assert parse_json_object(_dumps(value, style).encode()) is None


def _wrap(value: Any, path: list[str]) -> Any:
    for step in reversed(path):
        value = [value] if step == "list" else {step: value}
    return value


@FAST
@given(JSON_OBJECTS, st.text(max_size=5),
       st.lists(st.sampled_from(["list", "k", ""]), max_size=4),
       st.sampled_from([math.nan, math.inf, -math.inf]))
def test_nan_and_infinity_are_refused_anywhere(
    obj: dict[str, Any], key: str, path: list[str], constant: float
) -> None:
    document = {**obj, key: _wrap(constant, path)}
    text = json.dumps(document)  # allow_nan: spells NaN, Infinity, -Infinity
    assert parse_json_object(text.encode()) is None
    with pytest.raises(ValueError):
        loads_strict(text)
    with pytest.raises(ValueError):
        compact(document)


@FAST
@given(st.integers(0, 100_000), st.sampled_from(["[", '{"a":', '{"":[']))
def test_deep_nesting_is_refused_without_recursion_error(extra: int, opening: str) -> None:
    # Read here: hypothesis raises the limit while a test runs.
    depth = sys.getrecursionlimit() + extra
    closing = "".join({"[": "]", "{": "}"}[c] for c in opening if c in "[{")[::-1]
    text = '{"x":' + opening * depth + "1" + closing * depth + "}"
    assert parse_json_object(text.encode()) is None
    with pytest.raises(ValueError):
        loads_strict(text)


@FAST
@given(st.integers(1, 100))
def test_moderate_nesting_is_accepted(depth: int) -> None:
    text = '{"x":' + "[" * depth + "1" + "]" * depth + "}"
    assert parse_json_object(text.encode()) == json.loads(text)


@FAST
@given(JSON_VALUES)
def test_compact_round_trips_on_one_line(value: Any) -> None:
    encoded = compact(value)
    encoded.decode("utf-8")  # valid UTF-8
    assert json.loads(encoded) == value
    # The Centrifuge wire splits frames on line feeds.
    assert b"\n" not in encoded
    assert len(encoded) <= len(json.dumps(value, ensure_ascii=False).encode())


@FAST
@given(JSON_OBJECTS)
def test_what_compact_writes_the_validator_accepts(obj: dict[str, Any]) -> None:
    assert parse_json_object(compact(obj)) == obj


@FAST
@given(st.recursive(st.none() | ANY_TEXT | st.floats(),
                    lambda c: st.lists(c, max_size=3)
                    | st.dictionaries(ANY_TEXT, c, max_size=3), max_leaves=8))
def test_compact_refuses_only_with_value_error(value: Any) -> None:
    try:
        encoded = compact(value)
    except ValueError:
        return
    encoded.decode("utf-8")


# == 4. close reasons ======================================================================


def _without_surrogates(text: str) -> str:
    return "".join("?" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


LONG_TEXT = st.lists(ANY_CHARACTER, max_size=200).map("".join) | st.text(
    st.sampled_from("aé€😀\ud800"), min_size=100, max_size=200)


@FAST
@given(LONG_TEXT)
def test_close_reason_is_short_valid_utf8(text: str) -> None:
    reason = close_reason(text)
    decoded = reason.decode("utf-8")  # strict
    assert len(reason) <= MAX_REASON_BYTES
    # What is kept is the beginning of the text, lone surrogates shown as "?".
    assert _without_surrogates(text).startswith(decoded)
    whole = _without_surrogates(text).encode("utf-8")
    if len(whole) <= MAX_REASON_BYTES:
        assert reason == whole
    else:  # only a character the cut split is dropped
        assert len(reason) > MAX_REASON_BYTES - 4


@FAST
@given(st.text(max_size=200))
def test_close_reason_is_a_prefix_of_the_utf8(text: str) -> None:
    encoded = text.encode("utf-8")
    reason = close_reason(text)
    assert encoded.startswith(reason)
    if len(encoded) <= MAX_REASON_BYTES:
        assert reason == encoded


# == 2. the Centrifuge decoder, pure parts =================================================


@FAST
@given(st.integers(min_value=0) | st.integers(min_value=0).map(str))
def test_offset_accepts_non_negative_integers_and_their_strings(value: int | str) -> None:
    assert _offset(value) == int(value)


@FAST
@given(st.integers(max_value=-1) | st.integers(max_value=-1).map(str)
       | st.text().filter(lambda s: not re.fullmatch(r"\s*[+-]?[\d_]+\s*", s))
       | st.none() | st.lists(st.integers()) | st.dictionaries(st.text(), st.integers())
       | st.sampled_from([math.nan, math.inf, -math.inf]))
def test_offset_refuses_everything_else(value: Any) -> None:
    with pytest.raises(ReplyError) as caught:
        _offset(value)
    assert caught.value.code == 107  # bad request


@FAST
@given(st.booleans() | st.floats(-1e15, 1e15).filter(lambda f: not f.is_integer()))
def test_offset_refuses_booleans_and_fractions(value: Any) -> None:
    # JSON true or 2.5 is not an offset (Centrifugo's uint64 refuses both);
    # turning them into 1 or 2 would recover from a position the client never had.
    with pytest.raises(ReplyError):
        _offset(value)


PUBLICATION_DATA = st.tuples(JSON_VALUES, STYLES).map(lambda v: _dumps(*v).strip().encode())


@FAST
@given(st.integers(1, 2**53), st.sampled_from(["subscribe", "history"]),
       st.dictionaries(st.sampled_from(["epoch", "offset", "recovered", "was_recovering"]),
                       JSON_SCALARS, max_size=4),
       st.lists(st.tuples(PUBLICATION_DATA, st.integers(1, 2**63)), max_size=4))
def test_encode_reply_splices_publications_into_valid_json(
    command_id: int, method: str, body: dict[str, Any], items: list[tuple[bytes, int]]
) -> None:
    publications = [Publication("news", offset, "e", data) for data, offset in items]
    encoded = encode_reply(command_id, method, _Raw(body, publications))
    assert b"\n" not in encoded  # one line of a Centrifuge frame
    reply = json.loads(encoded)
    assert reply["id"] == command_id and set(reply) == {"id", method}
    assert reply[method] == {**body, "publications": [
        {"data": json.loads(data), "offset": offset} for data, offset in items]}


@FAST
@given(st.integers(1, 2**53), st.text(min_size=1, max_size=10).filter(lambda m: m != "id"),
       st.none() | JSON_OBJECTS)
def test_encode_reply_of_a_plain_body(command_id: int, method: str,
                                      body: dict[str, Any] | None) -> None:
    assert json.loads(encode_reply(command_id, method, body)) == {
        "id": command_id, method: body if body is not None else {}}


# == 2. the Centrifuge decoder on a connection, and the raw wire ===========================

HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)
TEXT, BINARY, CLOSE = 0x1, 0x2, 0x8
SECRET = "omega-ws-test-secret-of-at-least-32-bytes"


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (mask 0: the payload goes as it is)."""
    if len(payload) < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload))
    elif len(payload) < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, len(payload))
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, len(payload))
    return header + b"\0\0\0\0" + payload


class MemoryTransport(StringTransport):
    def unregisterProducer(self) -> None:
        self.producer = None

    def abortConnection(self) -> None:
        self.loseConnection()


class Server:
    """A real factory, hub and memory broker on a task.Clock; no sockets."""

    def __init__(self, **sections: dict[str, Any]) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.metrics = Metrics(lambda: self.registry.counts(), lambda: True)
        self.registry = Registry(on_transition=self.metrics.on_transition)
        broker = MemoryBroker(self.clock)
        broker.start()
        config = Config.from_mapping(sections)
        self.factory = OmegaServerFactory(config, Hub(broker), self.metrics, self.registry,
                                          self.clock, TokenVerifier(config.auth))

    def open(self, path: str) -> Connection:
        address = IPv4Address("TCP", "127.0.0.1", 50000)
        protocol = cast(OmegaProtocol, self.factory.buildProtocol(address))
        transport = MemoryTransport(peerAddress=address)
        protocol.makeConnection(transport)
        protocol.dataReceived(HANDSHAKE.format(path=path).encode())
        assert transport.value().startswith(b"HTTP/1.1 101"), transport.value()
        transport.clear()
        return Connection(self, protocol, transport)


class Connection:
    def __init__(self, server: Server, protocol: OmegaProtocol,
                 transport: MemoryTransport) -> None:
        self.server = server
        self.protocol = protocol
        self.transport = transport
        self.close_code: int | None = None

    def send(self, payload: bytes, opcode: int = TEXT) -> list[bytes]:
        """Send one frame; the text messages it brought back (a close is recorded)."""
        assert self.close_code is None
        self.protocol.dataReceived(client_frame(opcode, payload))
        return self.received()

    def received(self) -> list[bytes]:
        self.server.clock.advance(0)  # the outbox flushes once per reactor turn
        data = bytes(self.transport.value())
        self.transport.clear()
        messages = []
        for frame_opcode, frame in server_frames(data):
            assert self.close_code is None, "a frame after the close frame"
            if frame_opcode == CLOSE:
                (self.close_code,) = struct.unpack("!H", frame[:2])
                frame[2:].decode("utf-8")
            else:
                assert frame_opcode == TEXT
                messages.append(frame)
        # Nothing closes the connection without saying why.
        assert self.close_code is not None or not self.transport.disconnecting
        return messages


# -- raw wire: accepted iff one JSON object, published byte for byte --------------------------


def _refuse(constant: str) -> Any:
    raise ValueError(constant)


def _strict_json_object(text: str) -> bool:
    """The oracle: the standard library's parser, without NaN and Infinity."""
    try:
        return isinstance(json.loads(text, parse_constant=_refuse), dict)
    except (ValueError, RecursionError):
        return False


RAW_FRAMES = (
    st.tuples(JSON_OBJECTS, STYLES).map(lambda v: _dumps(*v).encode())
    | st.tuples(JSON_VALUES, STYLES).map(lambda v: _dumps(*v).encode())
    | st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=2).map(lambda d: json.dumps(d).encode())
    | st.text(max_size=30).map(str.encode)
    | st.binary(max_size=30)
)


@SLOW
@given(st.lists(RAW_FRAMES, min_size=1, max_size=4))
def test_raw_wire_publishes_objects_verbatim_and_closes_1003_otherwise(
    frames: list[bytes],
) -> None:
    server = Server()
    sender, reader = server.open("/news"), server.open("/news")
    for payload in frames:
        echoed = sender.send(payload)
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            assert sender.close_code == 1007 and echoed == []
            break
        if _strict_json_object(text):
            # Delivered to every subscriber, the sender included, as it came.
            assert echoed == [payload] and sender.close_code is None
            assert reader.received() == [payload]
        else:
            assert echoed == [] and sender.close_code == 1003, text
            assert reader.received() == []
            break


# -- Centrifuge wire ----------------------------------------------------------------------

GOOD_CHANNELS = st.sampled_from(["news", "chat:1", "a.b@c-d_e"])
CHANNELS = GOOD_CHANNELS | st.sampled_from(["", "bad channel", "x" * 256, "/news", "caf\u00e9"])
USER_TOKEN = jwt.encode({"sub": "u"}, SECRET)
TOKENS = (st.sampled_from([
    USER_TOKEN,
    jwt.encode({"sub": "u", "exp": 10**9, "channels": ["news"]}, SECRET),
    jwt.encode({"sub": "v"}, SECRET),
    jwt.encode({"sub": "u", "exp": 10}, SECRET),  # expired: the clock is at 1000
    jwt.encode({"sub": "u"}, "another-secret-of-at-least-32-bytes!!"),
    jwt.encode({"sub": 5}, SECRET),
    "a.b.c", "",
]) | ANY_TEXT | JSON_SCALARS)
OFFSETS = st.integers(-3, 10) | st.integers(-3, 10).map(str) | JSON_SCALARS
DATA = JSON_VALUES | st.sampled_from([{"k": "\ud800"}, "\udfff", [1e308, -0.0], "a\nb"])


def fields(well_formed: bool) -> dict[str, st.SearchStrategy[Any]]:
    """What a command body may hold; well-formed ones are mostly of the right type."""
    anything = JSON_SCALARS if not well_formed else st.nothing()
    offsets = OFFSETS if not well_formed else st.integers(0, 6) | OFFSETS
    return {
        "channel": GOOD_CHANNELS | CHANNELS | JSON_SCALARS if not well_formed else (
            GOOD_CHANNELS | GOOD_CHANNELS | CHANNELS),
        "token": TOKENS,
        "data": DATA,
        "recover": st.booleans() | anything,
        "epoch": st.text(max_size=4) | anything,
        "offset": offsets,
        "limit": st.integers(-2, 5) | anything,
        "since": st.fixed_dictionaries({}, optional={"epoch": st.text(max_size=4)
                                                     | JSON_SCALARS, "offset": offsets})
        | anything,
        "reverse": st.booleans() | anything,
        "join_leave": st.booleans(),
        "method": st.text(max_size=5) | JSON_SCALARS,
    }


KNOWN_METHODS = ["connect", "subscribe", "unsubscribe", "publish", "history", "presence",
                 "presence_stats", "refresh", "rpc", "send"]
# Connected clients mostly use the channel commands.
COMMON_METHODS = ["subscribe"] * 4 + ["publish"] * 4 + ["history"] * 3 + [
    "presence", "presence_stats", "unsubscribe", "rpc", "send", "refresh", "connect", "bogus"]
IDS = st.integers(0, 4) | st.integers(-2, 2**64) | JSON_SCALARS


@st.composite
def commands(draw: st.DrawFn, well_formed: bool) -> dict[str, Any]:
    """A command object; well-formed ones have a valid id and one method with a body."""
    if well_formed:
        method = draw(st.sampled_from(COMMON_METHODS))
    else:
        method = draw(st.sampled_from(KNOWN_METHODS) | st.text(max_size=10))
    command: dict[str, Any] = {}
    if well_formed or draw(st.booleans()):
        command["id"] = draw(st.integers(0, 4) if well_formed else IDS)
    optional = fields(well_formed)
    required = {}
    if well_formed:  # what the method needs, most of the time
        needs = {"publish": ["channel", "data"], "refresh": ["token"]}.get(method, ["channel"])
        required = {name: optional.pop(name) for name in needs if draw(st.integers(0, 5))}
    body: st.SearchStrategy[Any] = st.fixed_dictionaries(required, optional=optional)
    if not well_formed:
        body = body | st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3) | JSON_VALUES
    command[method] = draw(body)
    if not well_formed and draw(st.integers(0, 5)) == 0:
        command.update(draw(st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=2)))
    return command


def lines(well_formed: bool) -> st.SearchStrategy[str]:
    command = commands(well_formed).map(json.dumps)
    if well_formed:
        return command | st.just("{}")
    return (command | st.just("{}") | JSON_VALUES.map(json.dumps)
            | st.text(max_size=12) | st.sampled_from(["NaN", '{"id":1,"x":{}', "[" * 2000]))


def frames(well_formed: bool) -> st.SearchStrategy[tuple[int, bytes]]:
    text = st.lists(lines(well_formed), min_size=1, max_size=4).map(
        lambda ls: (TEXT, "\n".join(ls).encode()))
    if well_formed:
        return text
    return text | st.tuples(st.sampled_from([TEXT, BINARY]), st.binary(max_size=40))


def _note(text: str) -> None:
    """A hypothesis event (see --hypothesis-show-statistics), outside tests too."""
    if currently_in_test_context():
        event(text)


class CentrifugeClient:
    """
    A client that checks every message the server sends against the
    commands sent so far: replies are JSON objects, one per command with
    an id, never "internal error"; the connection closes with a
    Centrifugo disconnect code.
    """

    def __init__(self, server: Server) -> None:
        self.connection = server.open("/connection/websocket")
        self.pending: dict[int, list[str]] = {}  # methods of commands awaiting a reply, by id
        self.published: dict[str, list[Any]] = {}
        self.subscribed: set[str] = set()
        self.disconnect_push: int | None = None
        self.invalid_utf8 = False

    @property
    def open(self) -> bool:
        return self.connection.close_code is None

    def send(self, opcode: int, payload: bytes) -> None:
        for line in payload.split(b"\n"):
            try:
                command = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if not isinstance(command, dict):
                continue
            methods = [key for key in command if key != "id"]
            if len(methods) != 1:
                continue
            (method,) = methods
            command_id = command.get("id")
            if type(command_id) is int and command_id > 0:
                self.pending.setdefault(command_id, []).append(method)
            body = command[method]
            if method == "publish" and isinstance(body, dict):
                self.published.setdefault(str(body.get("channel")), []).append(
                    body.get("data"))
            if method == "subscribe" and isinstance(body, dict):
                self.subscribed.add(str(body.get("channel")))
        if opcode == TEXT:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                self.invalid_utf8 = True
        for message in self.connection.send(payload, opcode):
            self.check(message)
        if not self.open:
            self.check_close()

    def check(self, message: bytes) -> None:
        for line in message.split(b"\n"):
            reply = json.loads(line)  # every line is JSON...
            assert isinstance(reply, dict), line  # ...and an object
            assert self.disconnect_push is None, "a message after the disconnect push"
            if "id" in reply:
                (method,) = set(reply) - {"id"}
                _note(f"reply {method}")
                waiting = self.pending.get(reply["id"], [])
                assert waiting, f"reply {line!r} to no command"
                if method == "error":
                    error = reply["error"]
                    _note(f"error {error['code']}")
                    assert isinstance(error["code"], int) and isinstance(error["message"], str)
                    assert error["code"] != 100, f"internal error for {line!r}"
                    waiting.pop(0)  # ids are unique but in the arbitrary-frames test
                else:
                    assert method in waiting, f"reply {line!r} to no {method} command"
                    waiting.remove(method)
            else:
                assert set(reply) == {"push"}, line
                push = reply["push"]
                _note(f"push {sorted(push)}")
                if "disconnect" in push:
                    self.disconnect_push = push["disconnect"]["code"]
                elif "pub" in push:
                    assert push["channel"] in self.subscribed
                    assert push["pub"]["data"] in self.published.get(push["channel"], []), line

    def check_close(self) -> None:
        code = self.connection.close_code
        assert code is not None
        _note(f"close {code}")
        if self.invalid_utf8 and code == 1007:
            return  # Autobahn's own check, before the wire sees the frame
        # Disconnect codes the SDKs understand; never 1011 (a server bug).
        assert 3000 <= code < 4000, code
        assert self.disconnect_push in (None, code)

    def finish(self) -> None:
        if self.open:
            # Every command with an id got exactly one reply.
            assert not any(self.pending.values()), self.pending


def _unique_ids(sent: list[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    """The frames with each command's id (if it has one) made unique, as SDKs do."""
    ids = iter(range(2, 10**6))
    for opcode, payload in sent:
        commands = [json.loads(line) for line in payload.split(b"\n")]
        for command in commands:
            if command.get("id"):
                command["id"] = next(ids)
        yield opcode, "\n".join(json.dumps(c) for c in commands).encode()


WITH_KEY = {"auth": {"token_secret": SECRET}}
WITH_KEY_OR_ANONYMOUS = {"auth": {"token_secret": SECRET, "allow_anonymous": True}}
SERVERS = st.sampled_from([{}, WITH_KEY_OR_ANONYMOUS, WITH_KEY])
CONNECT = b'{"id":1,"connect":{}}'


@SLOW
@given(SERVERS, st.booleans(), st.lists(frames(well_formed=False), min_size=1, max_size=4))
# Edge classes pinned, since a random run may miss them: a token JSON can
# spell but UTF-8 cannot hold (a lone surrogate).
@example(WITH_KEY, False, [(TEXT, b'{"id": 1, "connect": {"token": "\\ud800"}}')])
def test_centrifuge_survives_arbitrary_frames(
    sections: dict[str, Any], connect_first: bool, sent: list[tuple[int, bytes]]
) -> None:
    client = CentrifugeClient(Server(**sections))
    if connect_first and sent[0][0] == TEXT:  # in the same frame as what follows
        sent = [(TEXT, CONNECT + b"\n" + sent[0][1]), *sent[1:]]
    for opcode, payload in sent:
        client.send(opcode, payload)
        if not client.open:
            break
    client.finish()


@CONNECTED
@given(st.sampled_from([({}, {}), (WITH_KEY_OR_ANONYMOUS, {}),
                        (WITH_KEY_OR_ANONYMOUS, {"token": USER_TOKEN}),
                        (WITH_KEY, {"token": USER_TOKEN})]),
       st.lists(GOOD_CHANNELS, unique=True),
       st.lists(frames(well_formed=True), min_size=1, max_size=5))
@example((WITH_KEY_OR_ANONYMOUS, {}), [],
         [(TEXT, b'{"id": 2, "refresh": {"token": "a\\udfff"}}')])
def test_centrifuge_after_connect_answers_every_command(
    server_and_connect: tuple[dict[str, Any], dict[str, Any]],
    subscribed: list[str],
    sent: list[tuple[int, bytes]],
) -> None:
    sections, connect = server_and_connect
    client = CentrifugeClient(Server(**sections))
    client.send(TEXT, json.dumps({"id": 1, "connect": connect}).encode())
    assert client.open
    # Subscribed first, so that publications come back as pushes to check.
    for channel in subscribed:
        client.send(TEXT, json.dumps({"subscribe": {"channel": channel}}).encode())
    for opcode, payload in _unique_ids(sent):
        client.send(opcode, payload)
        if not client.open:
            break
    client.finish()


def test_centrifuge_publish_at_any_nesting_depth_never_fails_internally() -> None:
    """
    Data nested as deep as the parser allows must not fail later, when the
    command handler encodes it again (deterministic: the boundary depends
    on the stack depth, so every depth near it is tried).
    """
    server = Server()
    client = CentrifugeClient(server)
    client.send(TEXT, CONNECT)
    outcomes = set()
    for depth in range(sys.getrecursionlimit() - 200, sys.getrecursionlimit() + 5):
        if not client.open:
            client = CentrifugeClient(server)
            client.send(TEXT, CONNECT)
        data = "[" * depth + "]" * depth
        client.send(TEXT, ('{"id":2,"publish":{"channel":"news","data":' + data + "}}").encode())
        client.finish()
        outcomes.add(client.open)
    assert outcomes == {True, False}  # the depths tried straddle the parser's limit


# == 3. configuration ======================================================================

SECTION_CLASSES: dict[str, type] = {
    name: cls for name, cls in typing.get_type_hints(Config).items()
}
SCHEMA: dict[str, Any] = {
    f"{section}.{f.name}": typing.get_type_hints(cls)[f.name]
    for section, cls in SECTION_CLASSES.items()
    for f in dataclasses.fields(cls)
}
DEFAULT = Config()


def _default(key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(DEFAULT, section), name)


def _base(hint: Any) -> tuple[Any, bool]:
    """(type, optional) of a field: C{int | None} -> (int, True)."""
    args = typing.get_args(hint)
    if type(None) in args and typing.get_origin(hint) is not tuple:
        (base,) = [a for a in args if a is not type(None)]
        return base, True
    return hint, False


# The documented ranges (SPEC section 2 and config.py): (minimum, maximum,
# minimum excluded).  Every int and float key must be listed here: see
# test_every_numeric_key_has_a_documented_range.
PORT = (0, 65535, False)
RANGES: dict[str, tuple[float, float | None, bool]] = {
    "server.port": PORT, "server.tls_port": PORT, "server.testee_port": PORT,
    "admin.port": PORT,
    "server.max_message_size": (1, None, False),
    "server.max_connections": (1, None, False),
    "server.backlog": (1, None, False),
    "server.handshake_timeout": (1, None, False),
    "server.max_handshake_size": (1024, None, False),
    "server.max_connections_per_ip": (0, None, False),
    "server.ipv6_prefix": (1, 128, False),
    "server.max_queue_size": (1024, None, False),
    "server.max_message_fragments": (1, None, False),
    "server.publish_rate": (0, None, False),
    "server.publish_burst": (1, None, False),
    "server.address_publish_rate": (0, None, False),
    "server.subscribe_rate": (0, None, False),
    "server.compression_window_bits": (9, 15, False),
    "heartbeat.ping_interval": (0, None, True),
    "heartbeat.ping_timeout": (0, None, True),
    "monitor.interval": (0, None, True),
    "monitor.idle_timeout": (0, None, True),
    "reconnect.max_attempts": (0, None, False),
    "reconnect.delay": (0, None, False),
    "reconnect.session_ttl": (0, None, False),
    "reconnect.max_sessions": (1, None, False),
    "channels.history_size": (0, None, False),
    "channels.history_ttl": (0, None, False),
    "channels.history_max_bytes": (0, None, False),
    "channels.history_total_bytes": (0, None, False),
    "channels.max_streams": (1, None, False),
    "auth.expired_close_delay": (0, None, False),
    "admin.max_connections": (1, None, False),
    "admin.request_timeout": (0, None, True),
}
# Keys whose valid strings are narrower than "any string" (or that name files).
PATH_KEYS = {"server.cert", "server.key", "auth.token_public_key"}
CHANNEL_NAMES = st.from_regex(r"[A-Za-z0-9_.:@-]{1,20}", fullmatch=True)
ENDPOINTS = st.sampled_from(["tcp:0", "tcp:8080:interface=127.0.0.1", "tcp6:0",
                             "unix:/tmp/omega-ws.sock"])
NONEMPTY = st.text(min_size=1, max_size=12)
# Paths that name no PEM file: missing, a directory, another user's home, a NUL.
PATHS = NONEMPTY | st.sampled_from(["/", ".", "~no-such-user/cert.pem", "cert\0.pem"])
VALID_STRINGS: dict[str, st.SearchStrategy[Any]] = {
    "server.host": NONEMPTY,
    "admin.host": NONEMPTY,
    "server.listen": st.lists(ENDPOINTS, max_size=3),
    "server.allowed_origins": st.lists(st.text(max_size=12), min_size=1, max_size=3),
    "channels.default": CHANNEL_NAMES,
    "auth.token_secret": st.none() | NONEMPTY,
    "broker.url": st.just("memory://") | st.text(max_size=8).map("memory://".__add__),
    "log.format": st.sampled_from(["text", "json"]),
    "log.level": st.sampled_from(["debug", "info", "warn", "error", "critical"]),
}
INVALID_STRINGS: dict[str, st.SearchStrategy[Any]] = {
    "server.host": st.just(""),
    "admin.host": st.just(""),
    "server.listen": st.lists(st.sampled_from(["nope", "tcp:notaport", "tcp:",
                                               "ssl:0:privateKey=/no/such/key.pem"])
                              | st.text(max_size=12).filter(lambda s: ":" not in s),
                              min_size=1, max_size=2),
    "server.allowed_origins": st.just([]),
    "channels.default": st.text(max_size=300).filter(
        lambda s: re.fullmatch(r"[A-Za-z0-9_.:@-]{1,255}", s) is None),
    "auth.token_secret": st.just(""),
    "broker.url": st.text(max_size=12).filter(lambda s: s.partition("://")[0] != "memory"),
    "log.format": st.text(max_size=6).filter(lambda s: s not in ("text", "json")),
    "log.level": st.text(max_size=8).filter(
        lambda s: s not in ("debug", "info", "warn", "error", "critical")),
    "server.cert": PATHS,
    "server.key": PATHS,
    "auth.token_public_key": PATHS,
}


def _numbers(base: type, low: float | None, high: float | None,
             low_open: bool = False) -> st.SearchStrategy[Any]:
    """ints (and floats, for float keys) within [low, high]; None = unbounded."""
    int_low = None if low is None else math.floor(low) + 1 if low_open else math.ceil(low)
    # Below 2**62: hypothesis's unbounded integers reach past float's range now
    # and then, which is another test's business (see test_numbers_of_any_size).
    int_high = 2**62 if high is None else math.floor(high)
    ints = st.integers(-(2**62) if int_low is None else int_low, int_high)
    if base is int:
        return ints
    floats = st.floats(low, high, allow_nan=False, allow_infinity=False,
                       exclude_min=low_open)
    return floats | ints


def valid_values(key: str) -> st.SearchStrategy[Any]:
    """Values a key accepts, from its type and its documented range."""
    base, optional = _base(SCHEMA[key])
    if base is bool:
        strategy: st.SearchStrategy[Any] = st.booleans()
    elif base in (int, float):
        if key in RANGES:
            low, high, low_open = RANGES[key]
            strategy = _numbers(base, low, high, low_open)
        else:
            strategy = st.just(_default(key))
    elif key in PATH_KEYS:
        strategy = st.none()  # a path must name a readable PEM file
    elif key in VALID_STRINGS:
        strategy = VALID_STRINGS[key]
    elif typing.get_origin(base) is tuple:
        strategy = st.lists(st.text(max_size=10), max_size=3)
    else:
        strategy = st.text(max_size=12)
    return st.none() | strategy if optional else strategy


def wrong_types(key: str) -> st.SearchStrategy[Any]:
    """Values of another type than the key's (derived from the type alone)."""
    base, optional = _base(SCHEMA[key])
    others: list[st.SearchStrategy[Any]] = [st.dictionaries(st.text(max_size=3), st.integers(),
                                                            max_size=2)]
    if not optional:
        others.append(st.none())
    if base is not bool:
        others.append(st.booleans())
    if base not in (int, float):
        others.append(st.integers() | st.floats())
    if base is int:
        others.append(st.floats())
    if base is float:
        others.append(st.sampled_from([math.nan, math.inf, -math.inf]))
    if base is not str:
        others.append(st.text(max_size=5))
    if typing.get_origin(base) is tuple:
        others.append(st.lists(st.integers() | st.none(), min_size=1, max_size=2))
    else:
        others.append(st.lists(st.text(max_size=3), max_size=2))
    return st.one_of(others)


def out_of_range(key: str) -> st.SearchStrategy[Any] | None:
    base, _ = _base(SCHEMA[key])
    if key in RANGES:
        low, high, low_open = RANGES[key]
        below = (_numbers(base, None, low) if low_open
                 else _numbers(base, None, low - 1 if base is int else low).filter(
                     lambda v: v < low))
        return below | _numbers(base, high + 1, None) if high is not None else below
    return INVALID_STRINGS.get(key)


KEYS = sorted(SCHEMA)


def valid_mappings() -> st.SearchStrategy[dict[str, Any]]:
    """Some keys, each with a valid value."""
    return st.lists(st.sampled_from(KEYS), unique=True, max_size=12).flatmap(
        lambda keys: st.fixed_dictionaries({k: valid_values(k) for k in keys}))


def _nested(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        section, name = key.split(".")
        nested.setdefault(section, {})[name] = value
    return nested


def _value_of(config: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def _same(key: str, expected: Any, actual: Any) -> bool:
    """Equal as the key's values: lists become tuples, ints floats (1 is not True)."""
    if isinstance(expected, list):
        expected = tuple(expected)
    if _base(SCHEMA[key])[0] is float and expected is not None:
        if type(actual) is not float:
            return False
        try:
            expected = float(expected)
        except OverflowError:  # no float is that number
            return False
    return expected == actual and (type(expected) is bool) == (type(actual) is bool)


def test_every_numeric_key_has_a_documented_range() -> None:
    """A new int or float key needs its range in RANGES to be tested for real."""
    numeric = {key for key, hint in SCHEMA.items() if _base(hint)[0] in (int, float)}
    assert numeric - set(RANGES) == set()
    assert set(RANGES) - set(SCHEMA) == set()


@FAST
@given(valid_mappings())
def test_valid_values_round_trip(flat: dict[str, Any]) -> None:
    config = Config.from_mapping(_nested(flat))
    for key, value in flat.items():
        assert _same(key, value, _value_of(config, key)), key
    for key in set(SCHEMA) - set(flat):
        assert _value_of(config, key) == _default(key)
    # And back: the config, as a mapping, builds the same config.
    everything = {key: _value_of(config, key) for key in SCHEMA}
    assert Config.from_mapping(_nested(everything)) == config


def _assert_config_error(error: BaseException, keys: set[str]) -> None:
    """One line, starting with the key (any of C{keys}); a key that cannot be
    printed as it is (a line feed in a quoted TOML key) may be spelled escaped."""
    message = str(error)
    assert type(error) is ConfigError, repr(error)
    assert "\n" not in message and "\r" not in message, message
    if all(key.isprintable() for key in keys):
        assert any(message.startswith(f"{key}:") for key in keys), (message, keys)


def _partners(key: str) -> set[str]:
    # A certificate without its key (or the reverse) is reported on the missing one.
    pair = {"server.cert", "server.key"}
    return pair if key in pair else {key}


@st.composite
def one_invalid_value(draw: st.DrawFn) -> tuple[str, Any]:
    key = draw(st.sampled_from(KEYS))
    strategies = [wrong_types(key)]
    beyond = out_of_range(key)
    if beyond is not None:
        strategies.append(beyond)
    return key, draw(st.one_of(strategies))


@FAST
@given(valid_mappings(), one_invalid_value())
@example({"server.key": "key.pem"}, ("server.cert", "~no-such-user/cert.pem"))
@example({}, ("auth.token_public_key", "key\0.pem"))
def test_an_invalid_value_is_one_config_error_line_naming_its_key(
    flat: dict[str, Any], invalid: tuple[str, Any]
) -> None:
    key, value = invalid
    flat = {**flat, key: value}
    with tempfile.TemporaryDirectory() as base:
        try:
            Config.from_mapping(_nested(flat), base_dir=Path(base))
        except Exception as e:
            _assert_config_error(e, _partners(key))
        else:
            pytest.fail(f"{key} = {value!r} was accepted")


@FAST
@given(st.sampled_from(sorted(SECTION_CLASSES)) | st.text(max_size=8),
       st.text(min_size=1, max_size=8), st.integers() | st.text(max_size=3))
@example("server", "po\nrt", 1)  # a quoted TOML key may hold a line feed
def test_an_unknown_key_is_one_config_error_line_naming_it(
    section: str, name: str, value: Any
) -> None:
    key = f"{section}.{name}"
    assume(key not in SCHEMA)
    try:
        Config.from_mapping({section: {name: value}})
    except Exception as e:
        _assert_config_error(e, {key, section})
    else:
        pytest.fail(f"{key} was accepted")
    with pytest.raises(ConfigError) as caught:
        load_config(environ={}, overrides={key: value})
    _assert_config_error(caught.value, {key, section})


NUMERIC_KEYS = [k for k in KEYS if _base(SCHEMA[k])[0] in (int, float)]
# Numbers of any size: tomllib (like Python callers) hands over unbounded ints.
ANY_NUMBER = (st.integers() | st.integers(2**63, 10**400) | st.integers(-(10**400), -(2**63))
              | st.floats())


@FAST
@given(st.sampled_from(NUMERIC_KEYS), ANY_NUMBER)
@example("heartbeat.ping_interval", 10**400)
def test_numbers_of_any_size_are_taken_or_refused_with_config_error(
    key: str, number: int | float
) -> None:
    try:
        config = Config.from_mapping(_nested({key: number}))
    except Exception as e:
        _assert_config_error(e, {key})
    else:
        assert _same(key, number, _value_of(config, key))


TYPED_KEYS = [k for k in KEYS if _base(SCHEMA[k])[0] in (int, float, bool)]


@FAST
@given(st.sampled_from(TYPED_KEYS), st.text(max_size=12) | st.sampled_from(
    ["1e400", "nan", "-inf", "0x10", "1_000", " 7 ", "9" * 5000, "TRUE", "off", "2.5"]))
def test_environment_strings_parse_or_raise_config_error(key: str, text: str) -> None:
    base, _ = _base(SCHEMA[key])
    try:
        value = _from_text(key, text, "TEST_VARIABLE")
    except Exception as e:
        _assert_config_error(e, {key})
        assert "TEST_VARIABLE" in str(e)
    else:
        assert type(value) is base
        if base is float:
            assert math.isfinite(value)


@FAST
@given(st.sampled_from(TYPED_KEYS).flatmap(lambda k: st.tuples(st.just(k), valid_values(k))))
def test_environment_spelling_of_a_valid_value_parses_to_it(item: tuple[str, Any]) -> None:
    key, value = item
    assume(value is not None)
    base, _ = _base(SCHEMA[key])
    text = (("true" if value else "false") if isinstance(value, bool)
            else repr(value) if isinstance(value, float) else str(value))
    assert _from_text(key, text, "TEST_VARIABLE") == (float(value) if base is float else value)


def _toml_string(text: str) -> str:
    out = []
    for c in text:
        if c in '"\\' or not (0x20 <= ord(c) < 0x7F):
            out.append(f"\\U{ord(c):08X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def _toml(flat: Mapping[str, Any]) -> str:
    lines = []
    for section, values in _nested(flat).items():
        lines.append(f"[{section}]")
        lines.extend(f"{name} = {_toml_value(v)}" for name, v in values.items() if v is not None)
    return "\n".join(lines) + "\n"


def _environment_text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "off"
    return repr(value) if isinstance(value, float) else str(value)


# Keys settable from the environment with values a file can hold too
# (paths name files, which these tests do not make).
LAYERED = sorted(key for key in ENVIRONMENT.values() if key not in PATH_KEYS)


def _present(key: str) -> st.SearchStrategy[Any]:
    """A valid value that every layer can spell (not None, not empty)."""
    return valid_values(key).filter(lambda v: v is not None and v != "" and (
        not isinstance(v, str) or "\0" not in v))


@st.composite
def layered(draw: st.DrawFn) -> tuple[str, list[Any]]:
    key = draw(st.sampled_from(LAYERED))
    return key, [draw(st.none() | _present(key)) for _ in range(3)]


@FAST
@given(st.lists(layered(), max_size=4, unique_by=lambda item: item[0]),
       valid_mappings())
def test_later_layers_win(items: list[tuple[str, list[Any]]], more: dict[str, Any]) -> None:
    toml: dict[str, Any] = {k: v for k, v in more.items() if k not in ENVIRONMENT.values()}
    environ: dict[str, str] = {}
    overrides: dict[str, Any] = {}
    variables = {key: variable for variable, key in ENVIRONMENT.items()}
    for key, (in_file, in_env, on_line) in items:
        if in_file is not None:
            toml[key] = in_file
        if in_env is not None:
            environ[variables[key]] = _environment_text(in_env)
        if on_line is not None:
            overrides[key] = on_line
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory, "omega-ws.toml")
        path.write_text(_toml(toml), encoding="utf-8")
        config = load_config(path, environ, overrides)
        # The file alone is the file's values; OMEGA_WS_CONFIG names it as well.
        from_file = load_config(None, {"OMEGA_WS_CONFIG": os.fspath(path)})
    for key, (in_file, in_env, on_line) in items:
        expected = next((v for v in (on_line, in_env, in_file) if v is not None),
                        _default(key))
        assert _same(key, expected, _value_of(config, key)), (key, expected)
    for key, value in toml.items():
        assert _same(key, value, _value_of(from_file, key)) or value is None, key
