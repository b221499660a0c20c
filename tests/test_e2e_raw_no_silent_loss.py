"""
End to end: a raw session dropped by the server (slow consumer, no pong)
resumes from what it can be known to have received, never from what was
only handed to the transport.  The client really stalls: a small receive
buffer, nothing read, while publications flow; then it reads what its
kernel holds, reconnects with its client_id and must see every sequence
number, duplicates allowed, gaps not.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import pytest
import pytest_twisted

from .conftest import StartServer
from .rawsocket import CLOSE, RawSocket
from .support import aio

ensure_deferred = pytest_twisted.ensureDeferred


def _stalled_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    return sock


async def _open_stalled(port: int, path: str) -> RawSocket:
    sock = _stalled_socket()
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    # A small reader limit: asyncio stops reading its socket, as a stalled app would.
    return await RawSocket._open(port, path, None, "127.0.0.1", sock=sock, limit=1024)


def _seqs_of(frames: list[tuple[int, bytes]]) -> list[int]:
    return [json.loads(payload)["seq"] for opcode, payload in frames if opcode == 1]


async def _read_all(client: RawSocket, timeout: float) -> tuple[list[tuple[int, bytes]], str]:
    """Every frame until the stream ends (or goes quiet): (frames, how it ended)."""
    frames: list[tuple[int, bytes]] = []
    try:
        while True:
            opcode, payload = await client._receive(timeout)
            frames.append((opcode, payload))
            if opcode == CLOSE:
                return frames, f"close:{struct.unpack('!H', payload[:2])[0]}"
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return frames, "eof"
    except TimeoutError:
        return frames, "quiet"


async def _publish(server: object, channel: str, first: int, count: int,
                   pause_every: int = 200) -> None:
    filler = "x" * 1000
    for seq in range(first, first + count):
        await server.publish(channel, {"seq": seq, "pad": filler})  # type: ignore[attr-defined]
        if seq % pause_every == 0:
            await asyncio.sleep(0.01)  # let the reactor write


@pytest.mark.parametrize("drop", ["slow_consumer", "no_pong", "replaced_while_closing"])
@ensure_deferred
async def test_a_dropped_raw_session_resumes_without_a_gap(serve: StartServer,
                                                           drop: str) -> None:
    if drop in ("slow_consumer", "replaced_while_closing"):
        settings = {"server": {"max_queue_size": 64 * 1024},
                    "heartbeat": {"ping_interval": 60}}
        total = 8000  # more than the kernel's send buffer can hide
    else:
        settings = {"heartbeat": {"ping_interval": 1, "ping_timeout": 1}}
        total = 1500
    server = await serve(channels={"history_size": 10000}, **settings)
    path = "/feed?client_id=stalls"
    stalled = await aio(_open_stalled(server.port, path))

    async def scenario() -> tuple[list[int], list[int], str]:
        await _publish(server, "feed", 1, total)
        if drop == "replaced_while_closing":
            # The client gives up on this connection and comes back while the
            # server still waits for the close it sent: a replacement.
            before, ended = await _read_all(stalled, timeout=0.5)
            assert server.service.factory.connections  # type: ignore[attr-defined]
        else:
            # Still stalled while the server gives up on it: past the 2 s close
            # handshake (slow consumer), or a sweep, its timeout and the drop.
            await asyncio.sleep(3.0 if drop == "slow_consumer" else 2.5)
            # The server let go of it (its descriptor too) while it still stalls.
            gone = not server.service.factory.connections  # type: ignore[attr-defined]
            assert gone, "the dropped connection is still held"
            # The client wakes up and reads what its kernel kept for it.
            before, ended = await _read_all(stalled, timeout=3.0)
            stalled.close()
            await asyncio.sleep(0.2)
        resumed = await RawSocket._open(server.port, path, None, "127.0.0.1")
        after, _ = await _read_all(resumed, timeout=1.0)
        resumed.close()
        stalled.close()
        return _seqs_of(before), _seqs_of(after), ended

    before, after, ended = await aio(scenario(), 30.0)
    seen = set(before) | set(after)
    missing = sorted(set(range(1, total + 1)) - seen)
    assert not missing, f"{len(missing)} lost, first {missing[:5]} ({ended}; "\
        f"{len(before)} before, after from {after[:1]})"
    assert before == sorted(before) and after == sorted(after)
    if drop == "slow_consumer":
        assert ended in ("close:4008", "eof"), ended  # the close frame may be dropped too
        assert len(before) < total  # it really was dropped before the end
    # What was unacknowledged at the drop is sent again: duplicates, the
    # price of never skipping (the client's kernel may well have had it).
    duplicates = len(before) + len(after) - len(seen)
    print(f"{drop}: {len(before)} before the drop ({ended}), {len(after)} on resume, "
          f"{duplicates} duplicates")
