"""
Shared fixtures.  Network tests listen on 127.0.0.1, port 0, only; the
asyncio reactor (pytest --reactor=asyncio) runs the server and the
`websockets` clients in one event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from omega_ws import Server, start_server
from omega_ws.config import Config
from omega_ws.devcert import make_self_signed

LOOPBACK = {"server": {"host": "127.0.0.1", "port": 0, "tls_port": 0}, "admin": {"port": 0}}


def loopback_config(**sections: dict[str, Any]) -> Config:
    """Every listener on 127.0.0.1 port 0, with C{sections} on top."""
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in LOOPBACK.items()}
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return Config.from_mapping(merged)


@pytest.fixture
def free_config() -> Config:
    return loopback_config()


StartServer = Callable[..., Awaitable[Server]]


@pytest_twisted.async_yield_fixture
async def serve() -> AsyncIterator[StartServer]:
    """C{await serve(server={...}, ...)} starts a server, stopped after the test."""
    started: list[Server] = []

    async def start(**sections: dict[str, Any]) -> Server:
        server = await start_server(loopback_config(**sections))
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
def cert_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate and its key, made for this test (never committed)."""
    cert_pem, key_pem = make_self_signed()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    return cert, key
