"""
Shared fixtures.  Network tests listen on 127.0.0.1, port 0, only; the
asyncio reactor (pytest --reactor=asyncio) runs the server and the
`websockets` clients in one event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from omega_ws import Server, start_server
from omega_ws.config import Config
from omega_ws.devcert import make_self_signed

from .nodes import Node
from .redis_server import RedisServer

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


# -- real Redis servers and real omega-ws processes (tests/redis_server.py, tests/nodes.py)

MakeRedis = Callable[..., RedisServer]


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[MakeRedis]:
    """
    C{make(*redis_args, binary=None, start=True)}: a RedisServer (started
    unless C{start=False}, e.g. to hand out its URL first) in a folder under
    tmp_path; all stopped after the test.
    """
    made: list[RedisServer] = []

    def make(*redis_args: str, binary: str | None = None, start: bool = True) -> RedisServer:
        server = RedisServer(binary, directory=tmp_path / f"redis-{len(made)}",
                             args=redis_args)
        made.append(server)
        return server.start() if start else server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def redis_server(redis_factory: MakeRedis) -> RedisServer:
    """A started RedisServer (the default binary), stopped after the test."""
    return redis_factory()


StartNode = Callable[..., Node]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[StartNode]:
    """
    C{start_node(*omega_ws_args, env=None)}: a running C{twistd -n omega-ws}
    node (see tests/nodes.py), e.g. C{start_node("--broker", redis.url)};
    all stopped after the test (SIGTERM, then SIGKILL).
    """
    started: list[Node] = []

    def start_node(*extra_args: str, env: Mapping[str, str] | None = None,
                   wait: bool = True) -> Node:
        node = Node(*extra_args, env=env, cwd=tmp_path / f"node-{len(started)}", wait=wait)
        started.append(node)
        return node

    yield start_node
    for node in started:
        node.close()
