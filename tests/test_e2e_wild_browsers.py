"""
End to end, as browsers and hostile clients meet the WebSocket port:
ALPN on wss://, Origin: null, clean closing handshakes after bad input,
close reasons that fit a control frame, and the control frames and
fragments a client may send.  Real sockets on 127.0.0.1 only.
"""

from __future__ import annotations

import ssl
import struct
from pathlib import Path

import pytest
import pytest_twisted
from websockets.exceptions import InvalidStatus

from .conftest import StartServer
from .rawsocket import CLOSE, CONTINUATION, PING, PONG, TEXT, RawSocket
from .support import aio, api, closed, connect, recv, send

ensure_deferred = pytest_twisted.ensureDeferred


def alpn_context(cert: Path, protocols: list[str]) -> ssl.SSLContext:
    """A client context that offers ALPN, as every browser, curl and Node do."""
    context = ssl.create_default_context(cafile=str(cert))
    context.set_alpn_protocols(protocols)
    return context


# -- 1. ALPN --------------------------------------------------------------------------


@ensure_deferred
async def test_wss_serves_clients_that_offer_alpn(serve: StartServer,
                                                  cert_pair: tuple[Path, Path]) -> None:
    cert, key = cert_pair
    server = await serve(server={"cert": str(cert), "key": str(key)})
    for offered in (["h2", "http/1.1"], ["http/1.1"]):
        ws = await connect(f"wss://localhost:{server.tls_port}/alpn",
                           ssl=alpn_context(cert, offered))
        assert ws.transport.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        await server.publish("alpn", {"n": 1})
        assert await recv(ws) == '{"n":1}'
        await aio(ws.close())


@ensure_deferred
async def test_extra_tls_listeners_serve_alpn_too(serve: StartServer,
                                                  cert_pair: tuple[Path, Path]) -> None:
    cert, key = cert_pair
    listen = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    server = await serve(server={"listen": [listen]})
    port = server.service.listeners[-1].port.getHost().port  # type: ignore[union-attr]
    ws = await connect(f"wss://localhost:{port}/x", ssl=alpn_context(cert, ["http/1.1"]))
    await aio(ws.close())


# -- 2. Origin: null ---------------------------------------------------------------------


@ensure_deferred
async def test_null_origin_is_decided_by_the_allow_list(serve: StartServer) -> None:
    server = await serve()
    ws = await connect(f"ws://127.0.0.1:{server.port}/n", origin="null")
    await aio(ws.close())
    strict = await serve(server={"allowed_origins": ["https://example.com"]})
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"ws://127.0.0.1:{strict.port}/n", origin="null")
    assert refused.value.response.status_code == 403
    listed = await serve(server={"allowed_origins": ["null"]})
    ws = await connect(f"ws://127.0.0.1:{listed.port}/n", origin="null")
    await aio(ws.close())


# -- 3. Closing handshakes after bad input -------------------------------------------------


async def _close_after(port: int, payload: bytes, opcode: int = TEXT) -> tuple[int, str, str]:
    """Send a bad frame, answer the server's close late: (code, reason, how TCP ended)."""
    client = await RawSocket.open(port, "/bad")
    client.send(opcode, payload)
    code, reason = await client.until_close()
    await aio(_pause(0.2))  # a browser answers after its event loop turn
    client.send(CLOSE, struct.pack("!H", code))
    await client.drain()
    ending = await client.end_of_stream()
    client.close()
    return code, reason, ending


async def _pause(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


@ensure_deferred
async def test_bad_input_gets_a_full_closing_handshake_and_a_fin(serve: StartServer) -> None:
    server = await serve()
    assert await _close_after(server.port, b"not json") == (
        1003, "Invalid message format", "fin")
    assert (await _close_after(server.port, b"\xff\xfe", opcode=TEXT))[::2] == (1007, "fin")
    no_publish = await serve(channels={"allow_client_publish": False})
    assert (await _close_after(no_publish.port, b"{}"))[::2] == (1008, "fin")


@ensure_deferred
async def test_the_close_waits_for_the_client_only_so_long(serve: StartServer) -> None:
    server = await serve()
    client = await RawSocket.open(server.port, "/bad")
    client.send(TEXT, b"[]")
    assert (await client.until_close())[0] == 1003
    # No answer: the server ends it after the close-handshake timeout.
    assert await client.end_of_stream(timeout=5.0) in ("fin", "reset")
    client.close()


# -- 12. Close reasons fit a control frame ---------------------------------------------------


@ensure_deferred
async def test_a_long_disconnect_reason_is_cut_on_a_character_boundary(
        serve: StartServer) -> None:
    server = await serve()
    ws = await connect(f"ws://127.0.0.1:{server.port}/long?client_id=victim")
    reason = "é" * 200
    status, body = await api(server.admin_port, "disconnect",
                             {"user": "", "client": "victim", "disconnect": {"code": 4100,
                                                                 "reason": reason}})
    assert status == 200, body
    code, got = await closed(ws)
    assert code == 4100
    assert got is not None and reason.startswith(got) and len(got.encode()) <= 123
    assert len(got) == 61  # 122 bytes: the 62nd "é" would not fit


# -- 8. Control frames ---------------------------------------------------------------------


@ensure_deferred
async def test_pings_are_answered_with_their_payload(serve: StartServer) -> None:
    server = await serve()
    client = await RawSocket.open(server.port, "/p")
    client.send(PING, b"hello")
    assert await client.receive() == (PONG, b"hello")
    client.close()


# -- 9. Fragments --------------------------------------------------------------------------


@ensure_deferred
async def test_a_message_in_too_many_fragments_is_refused(serve: StartServer) -> None:
    server = await serve(server={"max_message_fragments": 16})
    reader = await connect(f"ws://127.0.0.1:{server.port}/frag")
    ok = await RawSocket.open(server.port, "/frag")
    ok.send(TEXT, b'{"a":', fin=False)
    for _ in range(14):
        ok.send(CONTINUATION, b" ", fin=False)
    ok.send(CONTINUATION, b"1}")  # 16 fragments: allowed
    assert await recv(reader) == '{"a":' + " " * 14 + "1}"
    bad = await RawSocket.open(server.port, "/frag")
    bad.send(TEXT, b'{"a":', fin=False)
    for _ in range(100):
        bad.send(CONTINUATION, b" ", fin=False)
    code, reason = await bad.until_close()
    assert (code, reason) == (1009, "Too many fragments")
    ok.send(TEXT, b'{"still": "fine"}')
    assert await recv(reader) == '{"still": "fine"}'
    for client in (ok, bad):
        client.close()
    await send(reader, "{}")
    await aio(reader.close())
