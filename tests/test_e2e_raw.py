"""
End to end over real sockets: the raw protocol with the `websockets` client
against a server started with start_server() on 127.0.0.1 port 0.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import pytest_twisted
from websockets.exceptions import InvalidStatus

from omega_ws import ConnectionState

from .conftest import StartServer
from .support import aio, closed, connect, nothing_arrives, recv, send

ensure_deferred = pytest_twisted.ensureDeferred


@ensure_deferred
async def test_broadcast_byte_for_byte_to_channel_including_sender(serve: StartServer) -> None:
    server = await serve()
    url = f"ws://127.0.0.1:{server.port}"
    a, b = await connect(f"{url}/news"), await connect(f"{url}/news")
    other = await connect(f"{url}/sport")
    message = '{ "price" :  1.5,\n "tag": "é" }'  # odd spacing and non-ASCII survive as is
    await send(a, message)
    assert await recv(a) == message
    assert await recv(b) == message
    assert await nothing_arrives(other)
    for ws in (a, b, other):
        await aio(ws.close())


@ensure_deferred
async def test_root_path_is_the_default_channel(serve: StartServer) -> None:
    server = await serve(channels={"default": "alerts"})
    ws = await connect(f"ws://127.0.0.1:{server.port}/")
    publication = await server.publish("alerts", {"level": 3})
    assert (publication.channel, publication.offset) == ("alerts", 1)
    assert await recv(ws) == '{"level":3}'
    await aio(ws.close())


@ensure_deferred
async def test_binary_frame_with_utf8_json_is_delivered_as_text(serve: StartServer) -> None:
    server = await serve()
    ws = await connect(f"ws://127.0.0.1:{server.port}/bin")
    await send(ws, '{"x":"ü"}'.encode())
    assert await recv(ws) == '{"x":"ü"}'
    await aio(ws.close())


@pytest.mark.parametrize(
    ("frame", "text", "code", "reason"),
    [
        ("not json", None, 1003, "Invalid message format"),
        ("[1, 2]", None, 1003, "Invalid message format"),
        ('"a string"', None, 1003, "Invalid message format"),
        ('{"a": NaN}', None, 1003, "Invalid message format"),
        (b"\xff\xfe{}", None, 1007, None),  # binary, not UTF-8
        (b'{"a": "\xc3"}', True, 1007, None),  # text frame, not UTF-8
        ("{" + '"k": "' + "x" * 2000 + '"}', None, 1009, None),
    ],
)
@ensure_deferred
async def test_bad_input_closes_only_that_connection(
    serve: StartServer, frame: str | bytes, text: bool | None, code: int, reason: str | None
) -> None:
    server = await serve(server={"max_message_size": 1024})
    url = f"ws://127.0.0.1:{server.port}/room"
    bad, good = await connect(url), await connect(url, max_size=None)
    await send(bad, frame, text=text)
    got_code, got_reason = await closed(bad)
    assert got_code == code
    if reason is not None:
        assert got_reason == reason
    # Nothing was published, the other client is still served.
    assert await nothing_arrives(good)
    await send(good, '{"still": "here"}')
    assert await recv(good) == '{"still": "here"}'
    await aio(good.close())


@ensure_deferred
async def test_client_publish_refused_when_disabled(serve: StartServer) -> None:
    server = await serve(channels={"allow_client_publish": False})
    ws = await connect(f"ws://127.0.0.1:{server.port}/feed")
    await send(ws, '{"a": 1}')
    assert await closed(ws) == (1008, "Publishing is not allowed")


@ensure_deferred
async def test_publish_rate_limit(serve: StartServer) -> None:
    server = await serve(server={"publish_rate": 1, "publish_burst": 2})
    ws = await connect(f"ws://127.0.0.1:{server.port}/fast")
    for _ in range(3):
        await send(ws, "{}")
    assert await recv(ws) == "{}"
    assert await recv(ws) == "{}"
    assert await closed(ws) == (1008, "Publish rate exceeded")


@pytest.mark.parametrize("path", ["/a/b", "/bad%20name", "/" + "x" * 256, "/sp ace"])
@ensure_deferred
async def test_invalid_channel_path_is_404(serve: StartServer, path: str) -> None:
    server = await serve()
    with pytest.raises(InvalidStatus) as e:
        await connect(f"ws://127.0.0.1:{server.port}{path.replace(' ', '%20')}")
    assert e.value.response.status_code == 404


@ensure_deferred
async def test_origin_allow_list(serve: StartServer) -> None:
    server = await serve(server={"allowed_origins": ["https://*.example.com"]})
    url = f"ws://127.0.0.1:{server.port}/o"
    with pytest.raises(InvalidStatus) as e:
        await connect(url, origin="https://evil.test")
    assert e.value.response.status_code == 403
    ws = await connect(url, origin="https://app.example.com")
    await aio(ws.close())
    ws = await connect(url)  # no Origin header: not a browser, allowed
    await aio(ws.close())


@ensure_deferred
async def test_max_connections_and_per_ip_limits(serve: StartServer) -> None:
    server = await serve(server={"max_connections": 2})
    url = f"ws://127.0.0.1:{server.port}/c"
    first, second = await connect(url), await connect(url)
    with pytest.raises(InvalidStatus) as e:
        await connect(url)
    assert e.value.response.status_code == 503
    await aio(first.close())
    await aio(second.close())

    limited = await serve(server={"max_connections_per_ip": 1})
    url = f"ws://127.0.0.1:{limited.port}/c"
    only = await connect(url)
    with pytest.raises(InvalidStatus) as e:
        await connect(url)
    assert e.value.response.status_code == 503
    await aio(only.close())
    await asyncio_sleep(0.1)
    again = await connect(url)  # the slot is free once the first one left
    await aio(again.close())


async def asyncio_sleep(seconds: float) -> None:
    await aio(asyncio.sleep(seconds))


@ensure_deferred
async def test_heartbeat_keeps_answering_clients_and_drops_silent_ones(
    serve: StartServer,
) -> None:
    server = await serve(heartbeat={"ping_interval": 0.1, "ping_timeout": 0.2})
    alive = await connect(f"ws://127.0.0.1:{server.port}/hb", ping_interval=None)
    # A client that completes the handshake and then never reads or answers.
    reader, writer = await aio(asyncio.open_connection("127.0.0.1", server.port))
    writer.write(
        b"GET /hb HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await aio(reader.readuntil(b"\r\n\r\n"))
    assert head.startswith(b"HTTP/1.1 101")
    assert len(server.registry) == 2
    await asyncio_sleep(0.8)
    # Dropped (aborted: a reset, or EOF after whatever pings were sent first).
    with contextlib.suppress(ConnectionResetError):
        await aio(reader.read(), 2)
        assert reader.at_eof()
    assert [c.info.state for c in server.registry] == [ConnectionState.CONNECTED]
    await send(alive, "{}")
    assert await recv(alive) == "{}"
    writer.close()
    await aio(alive.close())


@ensure_deferred
async def test_idle_clients_are_closed_by_the_monitor(serve: StartServer) -> None:
    server = await serve(monitor={"interval": 0.1, "idle_timeout": 0.3})
    ws = await connect(f"ws://127.0.0.1:{server.port}/idle", ping_interval=None)
    assert await closed(ws) == (1000, "Inactive client")


@ensure_deferred
async def test_same_client_id_replaces_the_first_connection(serve: StartServer) -> None:
    server = await serve()
    url = f"ws://127.0.0.1:{server.port}/r?client_id=bot-1"
    first = await connect(url)
    second = await connect(url)
    assert await closed(first) == (4000, "replaced")
    assert server.registry.get("bot-1") is not None
    await send(second, "{}")
    assert await recv(second) == "{}"
    await aio(second.close())


@ensure_deferred
async def test_stop_server_sends_going_away(serve: StartServer) -> None:
    server = await serve()
    url = f"ws://127.0.0.1:{server.port}/s"
    clients = [await connect(url) for _ in range(3)]
    await server.stop()
    for ws in clients:
        assert await closed(ws) == (1001, "going away")
    with pytest.raises(OSError):
        await connect(url)


@ensure_deferred
async def test_compression_negotiated_only_when_configured(serve: StartServer) -> None:
    plain = await serve()
    ws = await connect(f"ws://127.0.0.1:{plain.port}/z")
    assert ws.response is not None
    assert "Sec-WebSocket-Extensions" not in ws.response.headers
    await aio(ws.close())

    compressed = await serve(server={"compression": True, "max_message_size": 4096})
    ws = await connect(f"ws://127.0.0.1:{compressed.port}/z", compression="deflate")
    assert ws.response is not None
    assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
    await send(ws, '{"a": 1}')
    assert await recv(ws) == '{"a": 1}'
    # Highly compressible, small on the wire, too large once inflated.
    await send(ws, '{"k": "' + "a" * 100_000 + '"}')
    assert (await closed(ws))[0] == 1009


@ensure_deferred
async def test_extra_listeners_from_endpoint_strings(serve: StartServer) -> None:
    server = await serve(server={"listen": ["tcp:0:interface=127.0.0.1"]})
    main_url, extra_url = server.urls
    assert main_url != extra_url and extra_url.startswith("ws://127.0.0.1:")
    a, b = await connect(f"{main_url}/x"), await connect(f"{extra_url}/x")
    await send(b, '{"via": "extra"}')
    assert await recv(a) == '{"via": "extra"}'
    await aio(a.close())
    await aio(b.close())


@ensure_deferred
async def test_compression_offer_with_a_small_server_window(serve: StartServer) -> None:
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    server = await serve(server={"compression": True, "compression_window_bits": 11})
    offer = ClientPerMessageDeflateFactory(server_max_window_bits=10, client_max_window_bits=True)
    ws = await connect(f"ws://127.0.0.1:{server.port}/z", compression=None, extensions=[offer])
    assert ws.response is not None
    extensions = ws.response.headers["Sec-WebSocket-Extensions"]
    assert "server_max_window_bits=10" in extensions
    assert "client_max_window_bits=11" in extensions
    await send(ws, '{"small": "window"}')
    assert await recv(ws) == '{"small": "window"}'
    await aio(ws.close())
