"""
End to end: wss:// with a certificate generated in the test, and the
opening-handshake defences (plain GET, header size, handshake timeout).
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path

import pytest
import pytest_twisted

from .conftest import StartServer
from .support import aio, connect, http, recv, send

ensure_deferred = pytest_twisted.ensureDeferred


def client_context(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    return context


@ensure_deferred
async def test_ws_and_wss_share_channels(serve: StartServer, cert_pair: tuple[Path, Path]) -> None:
    cert, key = cert_pair
    server = await serve(server={"cert": str(cert), "key": str(key)})
    assert server.tls_port != server.port
    secure = await connect(f"wss://localhost:{server.tls_port}/mixed",
                           ssl=client_context(cert))
    plain = await connect(f"ws://127.0.0.1:{server.port}/mixed")
    await send(secure, '{"from": "wss"}')
    assert await recv(plain) == '{"from": "wss"}'
    assert await recv(secure) == '{"from": "wss"}'
    await send(plain, '{"from": "ws"}')
    assert await recv(secure) == '{"from": "ws"}'
    transport = secure.transport
    assert transport.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
    await aio(secure.close())
    await aio(plain.close())


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
@ensure_deferred
async def test_wss_refuses_tls_below_1_2(serve: StartServer, cert_pair: tuple[Path, Path]) -> None:
    cert, key = cert_pair
    server = await serve(server={"cert": str(cert), "key": str(key)})
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(str(cert))
    # Let this client offer TLS 1.1 at all (OpenSSL's default security level forbids it).
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    old.minimum_version = ssl.TLSVersion.TLSv1_1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await connect(f"wss://localhost:{server.tls_port}/old", ssl=old)
    modern = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    modern.load_verify_locations(str(cert))
    modern.maximum_version = ssl.TLSVersion.TLSv1_2
    ws = await connect(f"wss://localhost:{server.tls_port}/old", ssl=modern)
    await aio(ws.close())


@ensure_deferred
async def test_no_tls_listener_without_certificate(serve: StartServer) -> None:
    server = await serve()
    assert [url.split(":")[0] for url in server.urls] == ["ws"]
    with pytest.raises(LookupError):
        server.tls_port  # noqa: B018


@ensure_deferred
async def test_plain_get_gets_426_and_never_redirects(serve: StartServer) -> None:
    server = await serve()
    status, headers, _ = await http("GET", "127.0.0.1", server.port, "/")
    assert status == 426
    status, headers, body = await http(
        "GET", "127.0.0.1", server.port, "/?redirect=https%3A%2F%2Fevil.test%2F")
    assert status == 426
    assert "location" not in headers
    assert b"evil.test" not in body


@ensure_deferred
async def test_oversized_handshake_is_refused(serve: StartServer) -> None:
    server = await serve(server={"max_handshake_size": 2048})
    status, _, _ = await http("GET", "127.0.0.1", server.port, "/big",
                              headers={"X-Padding": "p" * 4000, "Upgrade": "websocket"})
    assert status == 431

    async def endless_header() -> bytes:
        # Never ends its header: must be cut off, not buffered forever.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\n" + b"X-A: " + b"a" * 5000)
        await writer.drain()
        response = await reader.read()
        writer.close()
        return response

    assert (await aio(endless_header())).startswith(b"HTTP/1.1 431")


@ensure_deferred
async def test_handshake_timeout_drops_silent_sockets(serve: StartServer) -> None:
    # Autobahn's timers run on whole seconds: a 2 s timeout fires after 1 to 2 s.
    server = await serve(server={"handshake_timeout": 2})

    async def silent() -> tuple[bool, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await asyncio.sleep(0.5)
        open_at_half_second = not reader.at_eof() and reader._exception is None
        try:
            return open_at_half_second, await reader.read()  # returns at EOF
        except ConnectionResetError:
            return open_at_half_second, b""
        finally:
            writer.close()

    assert await aio(silent(), 4) == (True, b"")


@ensure_deferred
async def test_handshake_refusals_are_counted(serve: StartServer) -> None:
    server = await serve()
    await http("GET", "127.0.0.1", server.port, "/")
    status, _, metrics = await http("GET", "127.0.0.1", server.admin_port, "/metrics")
    assert status == 200
    assert b'omega_ws_handshake_refusals_total{reason="not_websocket"} 1.0' in metrics


@ensure_deferred
async def test_listen_backlog_is_configured(serve: StartServer) -> None:
    server = await serve(server={"backlog": 777})
    # For a listening socket, ss's Send-Q column is the listen queue's size.
    out = subprocess.run(["ss", "-Hltn", f"sport = :{server.port}"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "LISTEN"
    assert out[2] == "777"
