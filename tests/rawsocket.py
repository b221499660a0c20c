"""
A WebSocket client on a bare asyncio socket, for tests that must do what
libraries will not: answer late, fragment, flood control frames, stall.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from typing import Any

from twisted.internet.defer import Deferred

from .support import TIMEOUT, aio

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    return header + mask + masked


class RawSocket:
    """
    One connection: C{await RawSocket.open(port, path)}, then frames by hand.
    The awaitable methods give Deferreds (the tests are Twisted coroutines).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    def open(cls, port: int, path: str = "/", headers: dict[str, str] | None = None,
             host: str = "127.0.0.1", **options: Any) -> Deferred[RawSocket]:
        return aio(cls._open(port, path, headers, host, **options), 2 * TIMEOUT)

    @classmethod
    async def _open(cls, port: int, path: str, headers: dict[str, str] | None,
                    host: str, **options: Any) -> RawSocket:
        if "sock" in options:  # already connected, e.g. with socket options set
            opening = asyncio.open_connection(**options)
        else:
            opening = asyncio.open_connection(host, port, **options)
        reader, writer = await asyncio.wait_for(opening, TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        if not head.startswith(b"HTTP/1.1 101"):
            writer.close()
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
        return cls(reader, writer)

    def send(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.writer.write(frame(opcode, payload, fin))

    def drain(self) -> Deferred[None]:
        return aio(self.writer.drain())

    def receive(self, timeout: float = TIMEOUT) -> Deferred[tuple[int, bytes]]:
        """The next server frame: (opcode, payload)."""
        return aio(self._receive(), timeout + 1)

    async def _receive(self, timeout: float = TIMEOUT) -> tuple[int, bytes]:

        async def read() -> tuple[int, bytes]:
            first, second = await self.reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return first & 0x0F, await self.reader.readexactly(length)

        return await asyncio.wait_for(read(), timeout)

    def until_close(self, timeout: float = TIMEOUT) -> Deferred[tuple[int, str]]:
        """Skip frames up to the server's close frame: (code, reason)."""
        return aio(self._until_close(timeout), timeout + 1)

    async def _until_close(self, timeout: float) -> tuple[int, str]:
        while True:
            opcode, payload = await self._receive(timeout)
            if opcode == CLOSE:
                (code,) = struct.unpack("!H", payload[:2])
                return code, payload[2:].decode()

    def end_of_stream(self, timeout: float = TIMEOUT) -> Deferred[str]:
        """How TCP ended after the close: "fin", "reset", or "data" if more came."""
        return aio(self._end_of_stream(timeout), timeout + 1)

    async def _end_of_stream(self, timeout: float) -> str:
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except ConnectionResetError:
            return "reset"
        return "fin" if data == b"" else "data"

    def close(self) -> None:
        self.writer.close()
