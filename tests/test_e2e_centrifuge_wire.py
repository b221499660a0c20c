"""
The Centrifuge wire seen by a plain `websockets` client: the disconnect
push before server-initiated closes, refresh with an expired token, idle
close.  (The SDKs' view is in test_e2e_centrifuge_{js,python}.py.)
"""

from __future__ import annotations

import json
import time

import jwt
import pytest_twisted

from .conftest import StartServer
from .support import aio, closed, connect, recv, send

ensure_deferred = pytest_twisted.ensureDeferred
SECRET = "omega-ws-test-secret-of-at-least-32-bytes"


async def connected(port: int, token: str | None = None) -> object:
    ws = await connect(f"ws://127.0.0.1:{port}/connection/websocket")
    await send(ws, json.dumps({"id": 1, "connect": {"token": token} if token else {}}))
    reply = json.loads(await recv(ws))
    assert reply["id"] == 1 and "client" in reply["connect"]
    return ws


@ensure_deferred
async def test_shutdown_sends_the_disconnect_push_then_closes_3001(serve: StartServer) -> None:
    server = await serve()
    ws = await connected(server.port)
    await server.stop()
    push = json.loads(await recv(ws))  # type: ignore[arg-type]
    assert push == {"push": {"disconnect": {"code": 3001, "reason": "shutdown"}}}
    assert await closed(ws) == (3001, "shutdown")  # type: ignore[arg-type]


@ensure_deferred
async def test_refresh_with_an_expired_token_closes_3005(serve: StartServer) -> None:
    server = await serve(auth={"token_secret": SECRET})
    now = time.time()
    ws = await connected(server.port, jwt.encode({"sub": "u", "exp": now + 60}, SECRET))
    expired = jwt.encode({"sub": "u", "exp": now - 1}, SECRET)
    await send(ws, json.dumps({"id": 2, "refresh": {"token": expired}}))  # type: ignore[arg-type]
    push = json.loads(await recv(ws))  # type: ignore[arg-type]
    assert push["push"]["disconnect"]["code"] == 3005
    assert await closed(ws) == (3005, "connection expired")  # type: ignore[arg-type]


@ensure_deferred
async def test_an_idle_centrifuge_client_is_closed_like_a_raw_one(serve: StartServer) -> None:
    server = await serve(monitor={"interval": 0.1, "idle_timeout": 0.3})
    ws = await connect(f"ws://127.0.0.1:{server.port}/connection/websocket", ping_interval=None)
    assert await closed(ws, 3) == (1000, "Inactive client")
    await aio(ws.wait_closed())
