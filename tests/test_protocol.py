"""
The raw protocol in memory: OmegaProtocol driven by hand over a
StringTransport, the timers on a task.Clock; no sockets, no reactor spin.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from omega_ws.auth import TokenVerifier
from omega_ws.broker import MemoryBroker
from omega_ws.config import Config
from omega_ws.factory import OmegaServerFactory
from omega_ws.hub import Hub
from omega_ws.metrics import Metrics
from omega_ws.protocol import OmegaProtocol
from omega_ws.registry import ConnectionState, Registry
from omega_ws.timers import HeartbeatService, MonitorService

HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (payloads under 64 KiB)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload))
    else:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, len(payload))
    return header + mask + masked


def server_frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked server frame in C{data}."""
    while data:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if length == 126:
            (length,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif length == 127:
            (length,) = struct.unpack("!Q", data[2:10])
            offset = 10
        yield opcode, data[offset:offset + length]
        data = data[offset + length:]


class MemoryTransport(StringTransport):
    """A StringTransport that, like real transports, tolerates what Autobahn does."""

    aborted = False

    def unregisterProducer(self) -> None:
        self.producer = None

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


class Harness:
    def __init__(self, **sections: dict[str, Any]) -> None:
        self.clock = Clock()
        self.metrics = Metrics(lambda: self.registry.counts(), lambda: True)
        self.registry = Registry(on_transition=self.metrics.on_transition)
        self.broker = MemoryBroker(self.clock)
        self.broker.start()
        self.hub = Hub(self.broker)
        self.config = Config.from_mapping(sections)
        self.factory = OmegaServerFactory(self.config, self.hub, self.metrics, self.registry,
                                          self.clock, TokenVerifier(self.config.auth))

    def open(self, path: str = "/news") -> tuple[OmegaProtocol, MemoryTransport]:
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        transport = MemoryTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        protocol.makeConnection(transport)
        protocol.dataReceived(HANDSHAKE.format(path=path).encode())
        assert transport.value().startswith(b"HTTP/1.1 101"), transport.value()
        transport.clear()
        return protocol, transport

    def flushed(self, transport: MemoryTransport) -> bytes:
        """What the connection wrote, once this reactor turn's output is flushed."""
        self.clock.advance(0)
        return bytes(transport.value())

    @staticmethod
    def lose(protocol: OmegaProtocol) -> None:
        protocol.connectionLost(Failure(ConnectionError("gone")))


@pytest.fixture
def harness() -> Harness:
    return Harness()


def test_message_is_delivered_byte_for_byte_to_the_channel(harness: Harness) -> None:
    sender, sender_out = harness.open("/news")
    reader, reader_out = harness.open("/news")
    _, elsewhere_out = harness.open("/sport")
    sender.dataReceived(client_frame(TEXT, b'{ "a" : 1 }'))
    assert list(server_frames(harness.flushed(sender_out))) == [(TEXT, b'{ "a" : 1 }')]
    assert list(server_frames(harness.flushed(reader_out))) == [(TEXT, b'{ "a" : 1 }')]
    assert harness.flushed(elsewhere_out) == b""
    assert sender.info.message_count == 1 and sender.info.state is ConnectionState.CONNECTED


def test_bad_message_sends_close_frame_and_ends_in_error(harness: Harness) -> None:
    protocol, transport = harness.open()
    protocol.dataReceived(client_frame(TEXT, b"[1]"))
    [(opcode, payload)] = server_frames(harness.flushed(transport))
    assert opcode == CLOSE
    assert struct.unpack("!H", payload[:2])[0] == 1003
    assert payload[2:] == b"Invalid message format"
    assert protocol.info.error_count == 1
    protocol.dataReceived(client_frame(CLOSE, payload[:2]))  # the client answers
    harness.lose(protocol)
    assert protocol.info.state is ConnectionState.ERROR
    assert len(harness.registry) == 0


def test_clean_close_by_the_client_is_disconnected(harness: Harness) -> None:
    protocol, transport = harness.open()
    protocol.dataReceived(client_frame(CLOSE, struct.pack("!H", 1000)))
    assert [op for op, _ in server_frames(harness.flushed(transport))] == [CLOSE]
    harness.lose(protocol)
    assert protocol.info.state is ConnectionState.DISCONNECTED
    assert harness.hub.subscriber_count("news") == 0


def test_heartbeat_pings_and_drops_the_silent(harness: Harness) -> None:
    heartbeat = HeartbeatService(harness.registry, harness.clock, interval=20, timeout=10)
    heartbeat.startService()
    answering, answering_out = harness.open()
    silent, silent_out = harness.open()
    harness.clock.advance(20)
    answering_frames = list(server_frames(harness.flushed(answering_out)))
    assert [op for op, _ in answering_frames] == [PING]
    assert [op for op, _ in server_frames(harness.flushed(silent_out))] == [PING]
    # A pong echoes its ping's payload (RFC 6455 5.5.3).
    answering.dataReceived(client_frame(PONG, answering_frames[0][1]))
    assert answering.info.ping_sent_at is None
    harness.clock.advance(10)
    assert silent_out.aborted and not answering_out.disconnecting
    harness.lose(silent)
    assert silent.info.state is ConnectionState.ERROR
    assert [c.info.client_id for c in harness.registry] == [answering.info.client_id]
    heartbeat.stopService()


def test_only_the_pong_of_our_ping_answers_the_heartbeat(harness: Harness) -> None:
    heartbeat = HeartbeatService(harness.registry, harness.clock, interval=20, timeout=10)
    heartbeat.startService()
    protocol, out = harness.open()
    protocol.dataReceived(client_frame(PONG, b""))  # unsolicited, before any ping
    harness.clock.advance(20)
    [(opcode, ping)] = server_frames(harness.flushed(out))
    assert opcode == PING and len(ping) == 8
    protocol.dataReceived(client_frame(PONG, b"not ours"))
    protocol.dataReceived(client_frame(PONG, b""))
    assert protocol.info.ping_sent_at == 20.0  # still waiting for the real answer
    harness.clock.advance(10)
    assert out.aborted
    heartbeat.stopService()


def test_pongs_owed_to_a_client_that_never_reads_are_bounded(harness: Harness) -> None:
    protocol, out = harness.open()
    assert protocol.outbox is not None
    protocol.outbox.pauseProducing()  # the transport is full: the client reads nothing
    limit = harness.factory.config.server.max_queue_size
    ping = client_frame(PING, b"x" * 125)
    protocol.dataReceived(ping * (limit // 127 + 2))
    assert protocol.outbox.overflowed  # closed as a slow consumer, not buffered on
    assert harness.factory.metrics.slow_consumer_drops._value.get() == 1


def test_monitor_closes_inactive_clients(harness: Harness) -> None:
    monitor = MonitorService(harness.registry, harness.clock, interval=60, idle_timeout=300,
                             counters=harness.metrics.totals)
    monitor.startService()
    idle, idle_out = harness.open()
    harness.clock.advance(200)
    busy, busy_out = harness.open()
    harness.clock.advance(120)  # idle has been silent 300 s by the tick at 300
    busy.dataReceived(client_frame(PING, b"x"))  # any frame counts
    harness.clock.advance(40)
    [(opcode, payload)] = server_frames(harness.flushed(idle_out))
    assert (opcode, payload) == (CLOSE, struct.pack("!H", 1000) + b"Inactive client")
    assert [op for op, _ in server_frames(harness.flushed(busy_out))] == [PONG]
    monitor.stopService()


def test_shutdown_and_replacement_close_codes(harness: Harness) -> None:
    first, first_out = harness.open("/r?client_id=x")
    second, second_out = harness.open("/r?client_id=x")
    [(_, payload)] = server_frames(harness.flushed(first_out))
    assert payload == struct.pack("!H", 4000) + b"replaced"
    harness.factory.close_all(timeout=3)
    [(_, payload)] = server_frames(harness.flushed(second_out))
    assert payload == struct.pack("!H", 1001) + b"going away"


def test_oversized_handshake_gets_431(harness: Harness) -> None:
    protocol = harness.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = MemoryTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nX: " + b"y" * 20000)
    assert transport.value().startswith(b"HTTP/1.1 431")
    assert transport.disconnecting


def test_frames_behind_a_bad_one_are_not_published(harness: Harness) -> None:
    bad, bad_out = harness.open("/p")
    _, reader_out = harness.open("/p")
    bad.dataReceived(client_frame(TEXT, b"oops") + client_frame(TEXT, b'{"late": 1}'))
    assert harness.flushed(reader_out) == b""
    assert [op for op, _ in server_frames(harness.flushed(bad_out))] == [CLOSE]


def test_autobahn_is_left_as_it_was_after_a_connection(harness: Harness) -> None:
    import pprint

    import autobahn.websocket.protocol as autobahn_protocol

    protocol, _ = harness.open()
    # omega-ws skips Autobahn's per-connection option dump for its own calls only.
    assert autobahn_protocol.pformat is pprint.pformat  # type: ignore[attr-defined]
    # ...and its options are class attributes, not copies on each connection.
    assert "maxMessagePayloadSize" not in vars(protocol)
    assert protocol.maxMessagePayloadSize == harness.config.server.max_message_size


def test_a_handshake_imports_nothing(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    # With every file descriptor in use an import fails (EMFILE): the wire
    # modules are imported at start-up, not at the first handshake.
    import builtins

    harness.open("/warm-up")  # whatever Autobahn imports once per process

    real_import = builtins.__import__

    def refuse(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (),
               level: int = 0) -> Any:
        if level or name.startswith("omega_ws"):
            raise ImportError(f"{name} imported during a handshake")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", refuse)
    harness.open("/raw")
    harness.open("/connection/websocket")


def test_after_our_close_a_flood_is_not_parsed(harness: Harness) -> None:
    protocol, transport = harness.open()
    protocol.dataReceived(client_frame(TEXT, b"not json"))
    [(opcode, _)] = server_frames(harness.flushed(transport))
    assert opcode == CLOSE
    parsed: list[int] = []
    protocol.onMessageFrameBegin = lambda length: parsed.append(length)  # type: ignore
    flood = b"".join(client_frame(TEXT, b"x") for _ in range(4000))  # 28 KB of frames
    for start in range(0, len(flood), 4096):
        protocol.dataReceived(flood[start:start + 4096])
    assert transport.producerState == "paused"  # no more reading: the timeout ends it
    assert len(parsed) <= (16384 + 4096) // 7  # the allowance, and the read past it
