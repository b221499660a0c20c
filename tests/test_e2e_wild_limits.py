"""
End to end, one anonymous client against every bound: limits it could walk
around by reconnecting, by another address or by replacing itself; streams
made by reads; pongs owed to a client that never reads; raw sessions and
history that could grow without end.  Real sockets on loopback only.
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
import pytest_twisted
from websockets.exceptions import InvalidStatus

from .conftest import StartServer
from .rawsocket import PING, RawSocket
from .support import aio, connect, recv, send

ensure_deferred = pytest_twisted.ensureDeferred


def metric(server: object, name: str) -> float:
    """A sample's value from the server's /metrics text (0 when absent)."""
    text = server.service.metrics.render().decode()  # type: ignore[attr-defined]
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- 11. Limits that could be walked around -----------------------------------------


@ensure_deferred
async def test_reconnecting_does_not_refill_the_publish_rate(serve: StartServer) -> None:
    server = await serve(server={"publish_rate": 10, "publish_burst": 5})

    async def loops() -> int:
        accepted = 0
        for _ in range(20):  # 20 reconnect-and-burst loops from one address
            client = await RawSocket._open(server.port, "/rate", None, "127.0.0.1")
            for i in range(10):
                client.send(1, json.dumps({"i": i}).encode())
            await client.writer.drain()
            await asyncio.sleep(0.02)
            client.close()
        return accepted

    started = asyncio.get_running_loop().time()
    await aio(loops(), 20.0)
    elapsed = asyncio.get_running_loop().time() - started
    await asyncio_sleep(0.2)
    published = metric(server, "omega_ws_messages_published_total")
    # The address's bucket: 10 x the per-connection figures (burst 50, 100/s).
    assert published <= 50 + 100 * (elapsed + 0.5), (published, elapsed)
    assert published < 20 * 5  # what 20 fresh per-connection buckets would have let in
    assert metric(server, "omega_ws_rate_limited_total") > 0


async def asyncio_sleep(seconds: float) -> None:
    await aio(asyncio.sleep(seconds))


@ensure_deferred
async def test_replacing_a_live_client_id_counts_towards_429(serve: StartServer) -> None:
    server = await serve(reconnect={"max_attempts": 3, "delay": 5})
    url = f"ws://127.0.0.1:{server.port}/r?client_id=again"
    opened = [await connect(url)]
    for _ in range(3):
        opened.append(await connect(url))  # each replaces the one before
    with pytest.raises(InvalidStatus) as refused:
        await connect(url)
    assert refused.value.response.status_code == 429
    for ws in opened:
        await aio(ws.close())


async def _open_from(source: str, port: int) -> RawSocket:
    return await RawSocket._open(port, "/ip", None, "127.0.0.1", local_addr=(source, 0))


@ensure_deferred
async def test_every_loopback_address_is_one_address(serve: StartServer) -> None:
    server = await serve(server={"max_connections_per_ip": 2})
    first = await aio(_open_from("127.0.0.1", server.port))
    second = await aio(_open_from("127.0.0.2", server.port))
    with pytest.raises(ConnectionError, match="503"):
        await aio(_open_from("127.0.0.3", server.port))
    first.close()
    second.close()


@ensure_deferred
async def test_raw_sessions_are_capped_and_counted(serve: StartServer) -> None:
    server = await serve(reconnect={"max_sessions": 5})
    for i in range(12):
        ws = await connect(f"ws://127.0.0.1:{server.port}/s?client_id=c{i}")
        await aio(ws.close())
    await asyncio_sleep(0.2)
    assert metric(server, "omega_ws_sessions") == 5
    assert metric(server, "omega_ws_sessions_evicted_total") == 7
    # The newest are held: the last one resumes, the first is a new session.
    assert server.service.broker.stats()["sessions"] == 5


# -- 7. Streams made by reads ---------------------------------------------------------


@ensure_deferred
async def test_subscribing_to_fresh_names_makes_no_stream_and_is_rate_limited(
        serve: StartServer) -> None:
    server = await serve(server={"subscribe_rate": 5})
    ws = await connect(f"ws://127.0.0.1:{server.port}/connection/websocket")
    await send(ws, json.dumps({"id": 1, "connect": {}}))
    await recv(ws)
    errors = 0
    for n in range(2, 2 + 2 * 160, 2):  # 160 fresh names, one after the other
        channel = f"fresh{n}"
        await send(ws, json.dumps({"id": n, "subscribe": {"channel": channel}})
                   + "\n" + json.dumps({"id": n + 1, "unsubscribe": {"channel": channel}}))
        reply = [json.loads(line) for line in (await recv(ws)).split("\n")]  # type: ignore[union-attr]
        if "error" in reply[0]:
            assert reply[0]["error"] == {"code": 111, "message": "too many requests",
                                         "temporary": True}
            errors += 1
        else:
            assert reply[0]["subscribe"]["offset"] == 0
    assert 10 <= errors <= 160 - 128  # a burst of 128, then 5/s
    assert metric(server, "omega_ws_streams") == 0
    await server.publish("fresh2", {"now": "a stream"})
    assert metric(server, "omega_ws_streams") == 1
    await aio(ws.close())


# -- 8. Pongs owed to a client that never reads ------------------------------------------


@ensure_deferred
async def test_a_ping_flood_from_a_client_that_never_reads_is_a_slow_consumer(
        serve: StartServer) -> None:
    server = await serve(server={"max_queue_size": 64 * 1024})
    bystander = await connect(f"ws://127.0.0.1:{server.port}/flood")

    async def flood() -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        client = await RawSocket._open(server.port, "/flood", None, "127.0.0.1", sock=sock,
                                       limit=1024)
        ping = b"p" * 125
        try:
            for _ in range(1000):  # at most 1000 x 100 pings: 13 MB of pongs owed
                for _ in range(100):
                    client.send(PING, ping)
                await asyncio.wait_for(client.writer.drain(), 2.0)
                if metric(server, "omega_ws_slow_consumer_drops_total"):
                    return "dropped"
        except (ConnectionError, TimeoutError):
            return "dropped" if metric(server, "omega_ws_slow_consumer_drops_total") else "?"
        finally:
            client.close()
        return "still open"

    assert await aio(flood(), 30.0) == "dropped"
    await server.publish("flood", {"others": "unaffected"})
    assert await recv(bystander) == '{"others":"unaffected"}'
    await aio(bystander.close())


# -- 13. Compression without context takeover ---------------------------------------------


@ensure_deferred
async def test_compression_is_negotiated_without_context_takeover(serve: StartServer) -> None:
    server = await serve(server={"compression": True})
    ws = await connect(f"ws://127.0.0.1:{server.port}/z", compression="deflate")
    extensions = ws.response.headers["Sec-WebSocket-Extensions"]
    # (Autobahn compresses without context takeover without saying so.)
    assert "client_no_context_takeover" in extensions
    await send(ws, json.dumps({"z": "z" * 1000}))
    assert json.loads(await recv(ws)) == {"z": "z" * 1000}  # type: ignore[arg-type]
    [protocol] = [c for c in server.service.factory.connections]
    deflate = protocol._perMessageCompress
    assert deflate._compressor is None and deflate._decompressor is None
    await aio(ws.close())
