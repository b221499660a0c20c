"""
The server API on the admin listener, driven by the real `cent` 5.2 client
(http://127.0.0.1:ADMIN_PORT/api/<method>, key in X-API-Key), against a
server on 127.0.0.1 port 0.

`cent.Client` is synchronous (requests): every call runs in a thread, so
that the reactor, which serves it, keeps running.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import jwt
import pytest
import pytest_twisted
import requests
from cent import (
    BroadcastRequest,
    CentApiResponseError,
    CentUnauthorizedError,
    ChannelsRequest,
    Client,
    Disconnect,
    DisconnectRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    StreamPosition,
)
from centrifuge import Client as SdkClient
from centrifuge import ClientState, PublicationContext, SubscriptionEventHandler

from omega_ws import Server

from .conftest import StartServer
from .support import aio, closed, connect, recv, send

ensure_deferred = pytest_twisted.ensureDeferred

T = TypeVar("T")

API_KEY = "test-api-key"
SECRET = "omega-ws-test-secret-of-at-least-32-bytes"
WAIT = 10.0
PATH = "/connection/websocket"


def cent_client(server: Server, api_key: str = API_KEY) -> Client:
    session = requests.Session()
    session.trust_env = False  # loopback, whatever proxy the environment names
    return Client(f"http://127.0.0.1:{server.admin_port}/api", api_key, timeout=WAIT,
                  session=session)


async def call(method: Callable[..., T], *args: Any) -> T:
    """A blocking cent call, in a thread."""
    return await aio(asyncio.to_thread(method, *args), WAIT)


async def centrifuge_ws(server: Server, **connect_body: Any) -> Any:
    """A plain websockets client, connected with the Centrifuge protocol; the connect reply."""
    ws = await connect(f"ws://127.0.0.1:{server.port}{PATH}", ping_interval=None)
    await send(ws, json.dumps({"id": 1, "connect": connect_body}))
    reply = json.loads(await recv(ws))
    assert reply["id"] == 1, reply
    return ws, reply["connect"]


async def subscribe_ws(ws: Any, channel: str, command_id: int) -> None:
    await send(ws, json.dumps({"id": command_id, "subscribe": {"channel": channel}}))
    reply = json.loads(await recv(ws))
    assert reply["id"] == command_id and "subscribe" in reply, reply


class Pubs(SubscriptionEventHandler):
    def __init__(self) -> None:
        self.pubs: list[Any] = []
        self.changed = asyncio.Event()

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.pubs.append(ctx.pub)
        self.changed.set()

    async def _count(self, count: int) -> None:
        while len(self.pubs) < count:
            self.changed.clear()
            await self.changed.wait()

    async def wait(self, count: int) -> None:
        await aio(self._count(count), WAIT)


@pytest_twisted.async_yield_fixture
async def sdk(serve: StartServer) -> AsyncIterator[Callable[[Server], SdkClient]]:
    made: list[SdkClient] = []

    def make(server: Server) -> SdkClient:
        client = SdkClient(f"ws://127.0.0.1:{server.port}{PATH}", proxy=None,
                           min_reconnect_delay=0.05, max_reconnect_delay=0.2)
        made.append(client)
        return client

    yield make
    for client in made:
        await aio(client.disconnect())


@ensure_deferred
async def test_publish_returns_offset_and_epoch_and_reaches_subscribers(
    serve: StartServer, sdk: Callable[[Server], SdkClient]
) -> None:
    server = await serve(admin={"api_key": API_KEY})
    raw = await connect(f"ws://127.0.0.1:{server.port}/news")
    client = sdk(server)
    await aio(client.connect())
    handler = Pubs()
    sub = client.new_subscription("news", events=handler)
    await aio(sub.subscribe())
    await aio(sub.ready(), WAIT)

    api = cent_client(server)
    first = await call(api.publish, PublishRequest(channel="news", data={"n": 1, "t": "é"}))
    second = await call(api.publish, PublishRequest(channel="news", data={"n": 2}))
    assert (first.offset, second.offset) == (1, 2)
    assert first.epoch and first.epoch == second.epoch

    assert json.loads(await recv(raw)) == {"n": 1, "t": "é"}
    assert json.loads(await recv(raw)) == {"n": 2}
    await handler.wait(2)
    assert [(p.offset, p.data) for p in handler.pubs] == [(1, {"n": 1, "t": "é"}),
                                                          (2, {"n": 2})]
    await aio(raw.close())


@ensure_deferred
async def test_broadcast_answers_per_channel_with_an_error_for_a_bad_name(
    serve: StartServer,
) -> None:
    server = await serve(admin={"api_key": API_KEY})
    one = await connect(f"ws://127.0.0.1:{server.port}/one")
    two = await connect(f"ws://127.0.0.1:{server.port}/two")
    await server.publish("two", {"earlier": True})
    assert json.loads(await recv(two)) == {"earlier": True}

    result = await call(cent_client(server).broadcast, BroadcastRequest(
        channels=["one", "two", "bad name"], data={"all": 1}))
    ok_one, ok_two, bad = result.responses
    assert ok_one.error is None and ok_one.result is not None and ok_one.result.offset == 1
    assert ok_two.error is None and ok_two.result is not None and ok_two.result.offset == 2
    assert ok_one.result.epoch and ok_two.result.epoch
    assert bad.result is None and bad.error is not None and bad.error.code == 102
    assert json.loads(await recv(one)) == {"all": 1}
    assert json.loads(await recv(two)) == {"all": 1}
    for ws in (one, two):
        await aio(ws.close())


@ensure_deferred
async def test_history(serve: StartServer) -> None:
    server = await serve(admin={"api_key": API_KEY})
    api = cent_client(server)
    for n in range(1, 4):
        published = await call(api.publish, PublishRequest(channel="log", data={"n": n}))

    everything = await call(api.history, HistoryRequest(channel="log", limit=10))
    assert [(p.offset, p.data) for p in everything.publications] == [
        (1, {"n": 1}), (2, {"n": 2}), (3, {"n": 3})]
    assert (everything.offset, everything.epoch) == (3, published.epoch)

    position = await call(api.history, HistoryRequest(channel="log"))  # no limit: position
    assert (position.publications, position.offset, position.epoch) == ([], 3, published.epoch)

    since = StreamPosition(offset=1, epoch=published.epoch)
    after = await call(api.history, HistoryRequest(channel="log", limit=-1, since=since))
    assert [p.data for p in after.publications] == [{"n": 2}, {"n": 3}]
    latest = await call(api.history, HistoryRequest(channel="log", limit=1, reverse=True))
    assert [p.data for p in latest.publications] == [{"n": 3}]

    nothing = await call(api.history, HistoryRequest(channel="never-used", limit=10))
    assert (nothing.publications, nothing.offset) == ([], 0)


@ensure_deferred
async def test_presence_stats_and_channels_see_raw_and_centrifuge_clients(
    serve: StartServer, sdk: Callable[[Server], SdkClient]
) -> None:
    server = await serve(admin={"api_key": API_KEY})
    raw = await connect(f"ws://127.0.0.1:{server.port}/room")
    other_raw = await connect(f"ws://127.0.0.1:{server.port}/other")
    ws, reply = await centrifuge_ws(server)
    await subscribe_ws(ws, "room", 2)
    client = sdk(server)
    await aio(client.connect())
    sub = client.new_subscription("room")
    await aio(sub.subscribe())
    await aio(sub.ready(), WAIT)

    api = cent_client(server)
    presence = await call(api.presence, PresenceRequest(channel="room"))
    assert len(presence.presence) == 3
    assert {reply["client"], client.client_id} <= set(presence.presence)
    info = presence.presence[client.client_id]
    assert (info.client, info.user) == (client.client_id, "")
    stats = await call(api.presence_stats, PresenceStatsRequest(channel="room"))
    assert (stats.num_clients, stats.num_users) == (3, 1)

    channels = await call(api.channels, ChannelsRequest())
    assert {name: c.num_clients for name, c in channels.channels.items()} == {
        "room": 3, "other": 1}
    only = await call(api.channels, ChannelsRequest(pattern="ro*"))
    assert set(only.channels) == {"room"}

    await aio(sub.unsubscribe())
    await aio(raw.close())
    await aio(ws.close())
    await aio(other_raw.close())
    await aio(client.disconnect())  # does not wait for the server to see it

    async def all_gone() -> None:
        while (await asyncio.to_thread(api.channels, ChannelsRequest())).channels:
            await asyncio.sleep(0.02)

    await aio(all_gone(), WAIT)
    empty = await call(api.presence, PresenceRequest(channel="room"))
    assert empty.presence == {}


@ensure_deferred
async def test_disconnect_by_user_with_the_requested_code(
    serve: StartServer, sdk: Callable[[Server], SdkClient]
) -> None:
    server = await serve(admin={"api_key": API_KEY},
                         auth={"token_secret": SECRET, "allow_anonymous": True})
    alice = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    bob = jwt.encode({"sub": "bob"}, SECRET, algorithm="HS256")
    alice_ws, _ = await centrifuge_ws(server, token=alice)
    alice_raw = await connect(f"ws://127.0.0.1:{server.port}/feed?token={alice}")
    bob_ws, _ = await centrifuge_ws(server, token=bob)
    anonymous = await connect(f"ws://127.0.0.1:{server.port}/feed")

    api = cent_client(server)
    await call(api.disconnect, DisconnectRequest(
        user="alice", disconnect=Disconnect(code=4501, reason="go away")))
    assert await closed(alice_ws) == (4501, "go away")
    assert await closed(alice_raw) == (4501, "go away")

    # The others are still served.  (Centrifuge presence leaves raw clients out:
    # their client_id resumes their session; the server API sees them.)
    await send(bob_ws, json.dumps({"id": 2, "presence_stats": {"channel": "feed"}}))
    assert json.loads(await recv(bob_ws))["presence_stats"] == {"num_clients": 0,
                                                                "num_users": 0}
    stats = await call(api.presence_stats, PresenceStatsRequest(channel="feed"))
    assert (stats.num_clients, stats.num_users) == (1, 1)
    await send(anonymous, '{"still": "here"}')
    assert json.loads(await recv(anonymous)) == {"still": "here"}

    # Without a disconnect object: Centrifugo's default, 3503 "force disconnect".
    await call(api.disconnect, DisconnectRequest(user="bob"))
    assert await closed(bob_ws) == (3503, "force disconnect")

    # The SDK reconnects on a 3000-3499 code.
    client = sdk(server)
    await aio(client.connect())
    await aio(client.ready(), WAIT)
    first_id = client.client_id
    await call(api.disconnect, DisconnectRequest(
        user="", client=first_id, disconnect=Disconnect(code=3011, reason="reconnect")))

    async def back() -> None:
        while client.state != ClientState.CONNECTED or client.client_id == first_id:
            await asyncio.sleep(0.02)

    await aio(back(), WAIT)
    assert anonymous.close_code is None  # only that client, though it is anonymous too
    await aio(anonymous.close())


@ensure_deferred
async def test_info_returns_this_node(serve: StartServer) -> None:
    server = await serve(admin={"api_key": API_KEY})
    raw = await connect(f"ws://127.0.0.1:{server.port}/a")
    ws, _ = await centrifuge_ws(server)
    await subscribe_ws(ws, "b", 2)
    result = await call(cent_client(server).info, InfoRequest())
    [node] = result.nodes
    assert node.uid and node.name
    assert (node.num_clients, node.num_users, node.num_channels, node.num_subs) == (2, 1, 2, 2)
    assert node.uptime >= 0
    await aio(raw.close())
    await aio(ws.close())


@pytest.mark.parametrize("key", ["wrong-key", ""])
@ensure_deferred
async def test_wrong_api_key_is_unauthorized(serve: StartServer, key: str) -> None:
    server = await serve(admin={"api_key": API_KEY})
    with pytest.raises(CentUnauthorizedError):
        await call(cent_client(server, key).publish, PublishRequest(channel="x", data={}))
    with pytest.raises(CentUnauthorizedError):
        await call(cent_client(server, key).info, InfoRequest())


@ensure_deferred
async def test_unknown_channel_name_is_error_102(serve: StartServer) -> None:
    server = await serve(admin={"api_key": API_KEY})
    api = cent_client(server)
    for request in (PublishRequest(channel="no spaces", data={"x": 1}),
                    HistoryRequest(channel="a/b", limit=1),
                    PresenceRequest(channel="x" * 256)):
        with pytest.raises(CentApiResponseError) as e:
            await call(getattr(api, request.api_method), request)
        assert e.value.code == 102


@ensure_deferred
async def test_history_since_another_epoch_is_error_112(serve: StartServer) -> None:
    # As Centrifugo's API (and the client protocol's history here): 112 "unrecoverable position".
    server = await serve(admin={"api_key": API_KEY})
    api = cent_client(server)
    await call(api.publish, PublishRequest(channel="log", data={"n": 1}))
    with pytest.raises(CentApiResponseError) as e:
        await call(api.history, HistoryRequest(
            channel="log", limit=10, since=StreamPosition(offset=0, epoch="not-the-epoch")))
    assert e.value.code == 112


@ensure_deferred
async def test_history_reverse_since_goes_back_from_the_position(serve: StartServer) -> None:
    # As Centrifugo: reverse with since lists what came before since.offset, newest first.
    server = await serve(admin={"api_key": API_KEY})
    api = cent_client(server)
    for n in range(1, 6):
        published = await call(api.publish, PublishRequest(channel="log", data={"n": n}))
    since = StreamPosition(offset=4, epoch=published.epoch)
    result = await call(api.history, HistoryRequest(channel="log", limit=-1, since=since,
                                                    reverse=True))
    assert [p.offset for p in result.publications] == [3, 2, 1]
