"""Helpers for tests that talk to a real server over loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

import websockets
from twisted.internet.defer import Deferred
from websockets.asyncio.client import ClientConnection

T = TypeVar("T")

TIMEOUT = 5.0


def aio(awaitable: Awaitable[T], timeout: float = TIMEOUT) -> Deferred[T]:
    """An asyncio awaitable as a Deferred, bounded in time (the asyncio reactor runs both)."""
    return Deferred.fromFuture(asyncio.ensure_future(asyncio.wait_for(awaitable, timeout)))


async def connect(url: str, **options: Any) -> ClientConnection:
    options.setdefault("open_timeout", TIMEOUT)
    return await aio(websockets.connect(url, **options))


async def recv(ws: ClientConnection, timeout: float = TIMEOUT) -> str | bytes:
    return await aio(ws.recv(), timeout)


async def send(ws: ClientConnection, message: str | bytes, text: bool | None = None) -> None:
    await aio(ws.send(message, text=text))


async def closed(ws: ClientConnection, timeout: float = TIMEOUT) -> tuple[int | None, str | None]:
    """Wait for the server to close C{ws}; (code, reason) it sent."""
    await aio(ws.wait_closed(), timeout)
    return ws.close_code, ws.close_reason


async def nothing_arrives(ws: ClientConnection, within: float = 0.3) -> bool:
    try:
        await aio(ws.recv(), within)
    except TimeoutError:
        return True
    return False


async def http(method: str, host: str, port: int, path: str, body: bytes = b"",
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A minimal HTTP/1.1 request over a real socket: (status, headers, body)."""

    async def exchange() -> tuple[int, dict[str, str], bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
                 f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        response = await reader.read()
        writer.close()
        head, _, payload = response.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parsed = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            parsed[name.strip().lower()] = value.strip()
        if parsed.get("transfer-encoding") == "chunked":
            payload = _dechunk(payload)
        return int(status_line.split()[1]), parsed, payload

    return await aio(exchange())


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out


async def api(port: int, method: str, body: Any, api_key: str | None = None
              ) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["X-API-Key"] = api_key
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, payload = await http("POST", "127.0.0.1", port, f"/api/{method}", raw, headers)
    return status, json.loads(payload)
