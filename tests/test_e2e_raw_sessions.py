"""
End to end: raw-client sessions (resume with replay), the reconnect
threshold (HTTP 429), tokens on the raw protocol, and the reconnecting
Python client, over real sockets with the `websockets` client.
"""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest
import pytest_twisted
from websockets.exceptions import InvalidStatus

from omega_ws import ConnectionState
from omega_ws.client import RawClient

from .conftest import StartServer
from .support import aio, closed, connect, http, nothing_arrives, recv

ensure_deferred = pytest_twisted.ensureDeferred
SECRET = "omega-ws-test-secret-of-at-least-32-bytes"


def token(sub: str = "alice", **claims: object) -> str:
    return jwt.encode({"sub": sub, **claims}, SECRET, algorithm="HS256")


async def sleep(seconds: float) -> None:
    await aio(asyncio.sleep(seconds))


async def metric(server: object, name: str) -> str:
    _, _, text = await http("GET", "127.0.0.1", server.admin_port, "/metrics")  # type: ignore[attr-defined]
    return next((line for line in text.decode().splitlines() if line.startswith(name)), "")


@ensure_deferred
async def test_resume_replays_what_was_missed_verbatim_then_live(serve: StartServer) -> None:
    server = await serve()
    url = f"ws://127.0.0.1:{server.port}/news?client_id=bot-1"
    ws = await connect(url)
    await server.publish("news", {"n": 1})
    assert await recv(ws) == '{"n":1}'
    await aio(ws.send('{ "from" : "bot" }'))
    assert await recv(ws) == '{ "from" : "bot" }'
    await aio(ws.close())
    await sleep(0.05)
    for n in (2, 3):
        await server.publish("news", {"n": n})
    ws = await connect(url)
    assert [await recv(ws), await recv(ws)] == ['{"n":2}', '{"n":3}']
    await server.publish("news", {"n": 4})
    assert await recv(ws) == '{"n":4}'
    assert await nothing_arrives(ws)
    info = server.registry.get("bot-1").info  # type: ignore[union-attr]
    assert info.state is ConnectionState.CONNECTED
    assert (info.reconnect_count, info.message_count) == (1, 1)
    assert 'state="RECONNECTING"} 1.0' in await metric(
        server, 'omega_ws_state_transitions_total{state="RECONNECTING"}')
    await aio(ws.close())


@ensure_deferred
async def test_without_client_id_nothing_is_replayed(serve: StartServer) -> None:
    server = await serve()
    url = f"ws://127.0.0.1:{server.port}/news"
    ws = await connect(url)
    await aio(ws.close())
    await server.publish("news", {"n": 1})
    ws = await connect(url)
    assert await nothing_arrives(ws)
    await aio(ws.close())


@ensure_deferred
async def test_resume_beyond_history_sends_what_history_has(serve: StartServer) -> None:
    server = await serve(channels={"history_size": 2})
    url = f"ws://127.0.0.1:{server.port}/feed?client_id=slowpoke"
    ws = await connect(url)
    await aio(ws.close())
    await sleep(0.05)
    for n in range(1, 6):
        await server.publish("feed", {"n": n})
    ws = await connect(url)
    assert [await recv(ws), await recv(ws)] == ['{"n":4}', '{"n":5}']
    assert await nothing_arrives(ws)
    assert (await metric(server, 'omega_ws_recovery_gaps_total{transport="raw"}')).endswith(" 1.0")
    await aio(ws.close())


@ensure_deferred
async def test_session_expires_after_session_ttl(serve: StartServer) -> None:
    server = await serve(reconnect={"session_ttl": 0.2}, monitor={"interval": 0.1})
    url = f"ws://127.0.0.1:{server.port}/news?client_id=gone"
    ws = await connect(url)
    await aio(ws.close())
    await sleep(0.4)
    await server.publish("news", {"n": 1})
    ws = await connect(url)
    assert await nothing_arrives(ws)
    assert server.registry.get("gone").info.reconnect_count == 0  # type: ignore[union-attr]
    await aio(ws.close())


@ensure_deferred
async def test_reconnecting_too_often_is_refused_with_429_until_the_delay(
    serve: StartServer,
) -> None:
    server = await serve(reconnect={"max_attempts": 2, "delay": 1})
    url = f"ws://127.0.0.1:{server.port}/r?client_id=flappy"
    for _ in range(3):  # the first connection, then two quick reconnects: allowed
        ws = await connect(url)
        await aio(ws.close())
    for _ in range(2):  # the third in a row, and any during the delay
        with pytest.raises(InvalidStatus) as refused:
            await connect(url)
        assert refused.value.response.status_code == 429
        assert refused.value.response.headers["Retry-After"] == "1"
    assert 'state="ERROR"} 1.0' in await metric(
        server, 'omega_ws_state_transitions_total{state="ERROR"}')
    await sleep(1.1)
    ws = await connect(url)
    await aio(ws.close())


@ensure_deferred
async def test_raw_tokens(serve: StartServer) -> None:
    server = await serve(auth={"token_secret": SECRET})
    base = f"ws://127.0.0.1:{server.port}"
    for url, headers in [(f"{base}/a", None), (f"{base}/a?token=garbage", None),
                         (f"{base}/a?token={token(exp=int(time.time()) - 5)}", None),
                         (f"{base}/a", {"Authorization": "Bearer nope"})]:
        with pytest.raises(InvalidStatus) as refused:
            await connect(url, additional_headers=headers)
        assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"{base}/b?token={token(channels=['a'])}")
    assert refused.value.response.status_code == 403
    ws = await connect(f"{base}/a?token={token(channels=['a'])}")
    bearer = await connect(f"{base}/a", additional_headers={
        "Authorization": f"Bearer {token('bob')}"})
    await aio(ws.send('{"x": 1}'))
    assert await recv(bearer) == '{"x": 1}'
    users = sorted(c.info.user for c in server.registry)
    assert users == ["alice", "bob"]
    await aio(ws.close())
    await aio(bearer.close())


@ensure_deferred
async def test_raw_connection_closed_when_its_token_expires(serve: StartServer) -> None:
    server = await serve(auth={"token_secret": SECRET}, monitor={"interval": 0.1})
    ws = await connect(f"ws://127.0.0.1:{server.port}/a?token={token(exp=time.time() + 0.5)}")
    assert await closed(ws, 3) == (4001, "token expired")


@ensure_deferred
async def test_a_client_id_is_never_taken_over_by_another_user(serve: StartServer) -> None:
    server = await serve(auth={"token_secret": SECRET})
    base = f"ws://127.0.0.1:{server.port}/news?client_id=shared"
    ws = await connect(f"{base}&token={token('alice')}")
    await aio(ws.close())
    await sleep(0.05)
    await server.publish("news", {"secret": "for alice"})
    with pytest.raises(InvalidStatus) as refused:  # held session of another user
        await connect(f"{base}&token={token('mallory')}")
    assert refused.value.response.status_code == 409
    alice = await connect(f"{base}&token={token('alice')}")
    assert await recv(alice) == '{"secret":"for alice"}'  # still hers
    with pytest.raises(InvalidStatus) as refused:  # live connection of another user
        await connect(f"{base}&token={token('mallory')}")
    assert refused.value.response.status_code == 409
    assert server.registry.get("shared").info.user == "alice"  # type: ignore[union-attr]
    assert await nothing_arrives(alice)  # not replaced: no 4000 close, nothing else
    await aio(alice.close())


@ensure_deferred
async def test_python_client_reconnects_and_gets_what_it_missed(serve: StartServer) -> None:
    server = await serve()
    received: list[str] = []
    states: list[ConnectionState] = []
    client = RawClient(f"ws://127.0.0.1:{server.port}/ticks", received.append,
                       client_id="py-1", reconnect_delay=0.2, on_state=states.append)
    await client.start()
    await server.publish("ticks", {"n": 1})
    server.registry.get("py-1").close_with(4002, "kicked")  # type: ignore[union-attr]
    await sleep(0.1)
    await server.publish("ticks", {"n": 2})
    await sleep(0.4)
    await server.publish("ticks", {"n": 3})
    await sleep(0.1)
    assert received == ['{"n":1}', '{"n":2}', '{"n":3}']
    assert states == [ConnectionState.CONNECTED, ConnectionState.RECONNECTING,
                      ConnectionState.CONNECTED]
    client.publish({"from": "py"})
    await sleep(0.1)
    assert received[-1] == '{"from": "py"}'
    await client.stop()
    assert client.state is ConnectionState.DISCONNECTED


@ensure_deferred
async def test_python_client_gives_up_into_error(serve: StartServer) -> None:
    server = await serve()
    port = server.port
    states: list[ConnectionState] = []
    client = RawClient(f"ws://127.0.0.1:{port}/x", lambda text: None, reconnect_delay=0.05,
                       max_attempts=2, on_state=states.append)
    await client.start()
    await server.stop()
    for _ in range(40):
        await sleep(0.1)
        if states[-1] is ConnectionState.ERROR:
            break
    assert states[-1] is ConnectionState.ERROR
    assert states.count(ConnectionState.RECONNECTING) >= 1
