"""
End to end: a subscriber that stops reading, among fast ones, over real
sockets.  The fast ones get everything; the slow one is closed once it is
max_queue_size behind, and what the server holds for it stays bounded.
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest_twisted
from websockets.asyncio.client import ClientConnection

from .conftest import StartServer
from .support import aio, connect, http

ensure_deferred = pytest_twisted.ensureDeferred
LIMIT = 64 * 1024
HANDSHAKE = (b"GET /flood?client_id=slow HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             b"Sec-WebSocket-Version: 13\r\n\r\n")


async def open_slow_reader(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Completes the handshake, then never reads again (small receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(HANDSHAKE)
    await reader.readuntil(b"\r\n\r\n")
    return reader, writer


async def drain(ws: ClientConnection, count: int) -> list[int]:
    seen = []
    for _ in range(count):
        message = await ws.recv()
        seen.append(json.loads(message)["seq"])
    return seen


@ensure_deferred
async def test_a_slow_consumer_is_closed_and_costs_the_others_nothing(
    serve: StartServer,
) -> None:
    server = await serve(server={"max_queue_size": LIMIT})
    fast = [await connect(f"ws://127.0.0.1:{server.port}/flood", max_size=None)
            for _ in range(3)]
    _, slow_writer = await aio(open_slow_reader(server.port))
    slow = server.registry.get("slow")
    assert slow is not None
    readers = [asyncio.ensure_future(drain(ws, 600)) for ws in fast]
    padding = "p" * 10_000
    held = []
    for seq in range(600):  # 6 MB: far more than the slow one's buffers can take
        await server.publish("flood", {"seq": seq, "pad": padding})
        if slow.outbox is not None and slow.state == slow.STATE_OPEN:
            transport = slow.transport
            held.append(slow.outbox.size + len(transport.dataBuffer) + transport._tempDataLen)
        if seq % 20 == 19:
            await aio(asyncio.sleep(0.01))  # let the fast ones read
    for reader in readers:
        assert await aio(reader, 10) == list(range(600))  # all of them, in order
    # Closed as a slow consumer: the close frame waits behind what it did not
    # read, and the connection is dropped when the close handshake times out.
    for _ in range(50):
        if server.registry.get("slow") is None:
            break
        await aio(asyncio.sleep(0.1))
    assert server.registry.get("slow") is None
    # What the server held for it never grew past the bound, plus the transport's
    # own buffer and one turn's frames (20 publications here), against 6 MB sent.
    assert max(held) <= LIMIT + 64 * 1024 + 20 * 10_100
    _, _, metrics = await http("GET", "127.0.0.1", server.admin_port, "/metrics")
    assert b"omega_ws_slow_consumer_drops_total 1.0" in metrics
    assert b'omega_ws_state_transitions_total{state="ERROR"} 1.0' in metrics
    slow_writer.close()
    for ws in fast:
        await aio(ws.close())
