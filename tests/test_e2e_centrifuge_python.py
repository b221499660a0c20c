"""
End to end with the real `centrifuge-python` SDK (and a plain `websockets`
client where the wire itself is under test) against a server on 127.0.0.1
port 0, at ws://HOST:PORT/connection/websocket.

The SDK runs on the asyncio loop that the asyncio reactor drives, so every
SDK call is awaited through `aio()`.  Its events are recorded by the handlers
below and waited for, never slept for.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jwt
import pytest
import pytest_twisted
from centrifuge import (
    Client,
    ClientDisconnectedError,
    ClientEventHandler,
    ClientState,
    ConnectedContext,
    ConnectingContext,
    DisconnectedContext,
    ErrorContext,
    JoinContext,
    LeaveContext,
    Publication,
    PublicationContext,
    ReplyError,
    StreamPosition,
    SubscribedContext,
    SubscribingContext,
    Subscription,
    SubscriptionErrorContext,
    SubscriptionEventHandler,
    SubscriptionUnsubscribedError,
    UnsubscribedContext,
)
from twisted.internet.defer import Deferred
from websockets.asyncio.client import ClientConnection

from omega_ws import Server

from .conftest import StartServer
from .support import aio, api, closed, connect, recv, send

ensure_deferred = pytest_twisted.ensureDeferred

WAIT = 10.0  # the bound on every wait for an event
SECRET = "omega-ws-test-secret-of-at-least-32-bytes"
PATH = "/connection/websocket"


# -- recording SDK events ---------------------------------------------------------


class Recorder:
    """Events in the order they came, and a way to wait for one."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()

    def record(self, kind: str, ctx: Any) -> None:
        self.events.append((kind, ctx))
        self._changed.set()

    def of(self, kind: str) -> list[Any]:
        return [ctx for k, ctx in self.events if k == kind]

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]

    async def _until(self, test: Callable[[], Any]) -> Any:
        while True:
            result = test()
            if result:
                return result
            self._changed.clear()
            await self._changed.wait()

    def until(self, test: Callable[[], Any], timeout: float = WAIT) -> Deferred[Any]:
        """Fires with C{test()} once it is true (checked after every event)."""
        return aio(self._until(test), timeout)

    def first(self, kind: str, match: Callable[[Any], bool] | None = None,
              timeout: float = WAIT) -> Deferred[Any]:
        """The first C{kind} event (matching C{match}), once it has come."""

        def found() -> Any:
            for ctx in self.of(kind):
                if match is None or match(ctx):
                    return ctx
            return None

        return self.until(found, timeout)


class ClientEvents(ClientEventHandler):
    def __init__(self) -> None:
        self.log = Recorder()
        # Awaited inside on_connecting: holds the SDK's reconnect back until it returns.
        self.on_connecting_hook: Callable[[ConnectingContext], Awaitable[None]] | None = None

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        self.log.record("connecting", ctx)
        if self.on_connecting_hook is not None:
            await self.on_connecting_hook(ctx)

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.log.record("connected", ctx)

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.log.record("disconnected", ctx)

    async def on_error(self, ctx: ErrorContext) -> None:
        self.log.record("error", ctx)


class SubEvents(SubscriptionEventHandler):
    def __init__(self) -> None:
        self.log = Recorder()

    async def on_subscribing(self, ctx: SubscribingContext) -> None:
        self.log.record("subscribing", ctx)

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.log.record("subscribed", ctx)

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:
        self.log.record("unsubscribed", ctx)

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.log.record("publication", ctx)

    async def on_join(self, ctx: JoinContext) -> None:
        self.log.record("join", ctx)

    async def on_leave(self, ctx: LeaveContext) -> None:
        self.log.record("leave", ctx)

    async def on_error(self, ctx: SubscriptionErrorContext) -> None:
        self.log.record("error", ctx)

    @property
    def pubs(self) -> list[Publication]:
        return [ctx.pub for ctx in self.log.of("publication")]

    def got(self, count: int, timeout: float = WAIT) -> Deferred[Any]:
        """Fires once C{count} publications have come."""
        return self.log.until(lambda: len(self.pubs) >= count, timeout)


MakeClient = Callable[..., tuple[Client, ClientEvents]]


@pytest_twisted.async_yield_fixture
async def sdk(serve: StartServer) -> AsyncIterator[MakeClient]:
    """C{sdk(server, **options)} -> (Client, its events); every client disconnected after."""
    made: list[Client] = []

    def make(server: Server, **options: Any) -> tuple[Client, ClientEvents]:
        events = ClientEvents()
        options.setdefault("proxy", None)
        options.setdefault("min_reconnect_delay", 0.05)
        options.setdefault("max_reconnect_delay", 0.2)
        options.setdefault("timeout", 5.0)
        client = Client(f"ws://127.0.0.1:{server.port}{PATH}", events=events, **options)
        made.append(client)
        return client, events

    yield make
    for client in made:  # before `serve` stops the servers: no reconnect loops
        await aio(client.disconnect())


def subscription(client: Client, channel: str, **options: Any) -> tuple[Subscription, SubEvents]:
    events = SubEvents()
    options.setdefault("min_resubscribe_delay", 0.05)
    options.setdefault("max_resubscribe_delay", 0.2)
    return client.new_subscription(channel, events=events, **options), events


async def subscribed(client: Client, channel: str, **options: Any
                     ) -> tuple[Subscription, SubEvents]:
    sub, events = subscription(client, channel, **options)
    await aio(sub.subscribe())
    await aio(sub.ready(), WAIT)
    return sub, events


async def connected(make: MakeClient, server: Server, **options: Any
                    ) -> tuple[Client, ClientEvents]:
    client, events = make(server, **options)
    await aio(client.connect())
    await aio(client.ready(), WAIT)
    return client, events


async def pause(seconds: float) -> None:
    await aio(asyncio.sleep(seconds), seconds + 1)


def token(sub: str = "alice", **claims: Any) -> str:
    return jwt.encode({"sub": sub, **claims}, SECRET, algorithm="HS256")


# -- the wire, with a plain websockets client --------------------------------------


class Wire:
    """A plain websockets client speaking the JSON protocol by hand."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pending: list[dict[str, Any]] = []
        self.frames: list[str] = []

    @classmethod
    async def open(cls, server: Server) -> Wire:
        # No WebSocket-level keepalive: only the protocol's {} pings are under test.
        return cls(await connect(f"ws://127.0.0.1:{server.port}{PATH}", ping_interval=None))

    async def send(self, *commands: dict[str, Any] | str) -> None:
        """Several commands in one frame, separated by "\\n"."""
        await send(self.ws, "\n".join(c if isinstance(c, str) else json.dumps(c)
                                      for c in commands))

    async def next(self, pings: bool = False, timeout: float = WAIT) -> dict[str, Any]:
        """The next message; server pings ({}) are skipped unless C{pings}."""
        while True:
            while not self.pending:
                frame = await recv(self.ws, timeout)
                assert isinstance(frame, str), "the JSON protocol uses text frames"
                self.frames.append(frame)
                self.pending.extend(json.loads(line) for line in frame.split("\n"))
            message = self.pending.pop(0)
            if message or pings:
                return message

    async def connect(self, **body: Any) -> dict[str, Any]:
        await self.send({"id": 1, "connect": body})
        reply = await self.next()
        assert reply["id"] == 1 and "connect" in reply, reply
        return reply


# -- connect, subscribe, publications -------------------------------------------------


@ensure_deferred
async def test_connects_anonymously(serve: StartServer, sdk: MakeClient) -> None:
    server = await serve()
    client, events = await connected(sdk, server)
    ctx = await events.log.first("connected")
    assert ctx.client and ctx.client == client.client_id
    assert client.state == ClientState.CONNECTED
    [entry] = [c.info for c in server.registry]
    assert (entry.client_id, entry.transport, entry.user) == (client.client_id, "centrifuge", "")
    assert [c.code for c in events.log.of("connecting")] == [0]  # connect() called, once


@ensure_deferred
async def test_server_and_api_publications_reach_the_subscriber_in_order(
    serve: StartServer, sdk: MakeClient
) -> None:
    server = await serve()
    client, _ = await connected(sdk, server)
    _, events = await subscribed(client, "news")
    first = await server.publish("news", {"n": 1, "text": "é"})
    await server.publish("news", {"n": 2})
    status, body = await api(server.admin_port, "publish", {"channel": "news", "data": {"n": 3}})
    assert status == 200 and body["result"]["offset"] == 3
    assert body["result"]["epoch"] == first.epoch
    await events.got(3)
    assert [p.data for p in events.pubs] == [{"n": 1, "text": "é"}, {"n": 2}, {"n": 3}]
    assert [p.offset for p in events.pubs] == [1, 2, 3]


@ensure_deferred
async def test_sdk_publish_reaches_a_raw_client_and_raw_frames_reach_the_sdk(
    serve: StartServer, sdk: MakeClient
) -> None:
    server = await serve()
    raw = await connect(f"ws://127.0.0.1:{server.port}/mixed")
    client, _ = await connected(sdk, server)
    sub, events = await subscribed(client, "mixed")

    await aio(sub.publish({"from": "sdk", "list": [1, 2.5, None, True]}))
    text = await recv(raw)
    assert isinstance(text, str)  # a text frame holding the JSON, nothing around it
    assert json.loads(text) == {"from": "sdk", "list": [1, 2.5, None, True]}
    await events.got(1)  # the publisher, subscribed, gets it too
    assert events.pubs[0].data == {"from": "sdk", "list": [1, 2.5, None, True]}

    await send(raw, '{"from": "raw", "price": 1.5}')
    assert json.loads(await recv(raw)) == {"from": "raw", "price": 1.5}
    await events.got(2)
    assert events.pubs[1].data == {"from": "raw", "price": 1.5}
    assert [p.offset for p in events.pubs] == [1, 2]
    await aio(raw.close())


# -- the wire: batching, ping/pong, bad input -----------------------------------------


@ensure_deferred
async def test_several_commands_in_one_frame_and_ping_pong(serve: StartServer) -> None:
    server = await serve(heartbeat={"ping_interval": 0.2, "ping_timeout": 0.3})
    wire = await Wire.open(server)
    await wire.send({"id": 1, "connect": {"name": "js"}},
                    {"id": 2, "subscribe": {"channel": "batch", "flag": 1}})
    first, second = await wire.next(), await wire.next()
    assert first["id"] == 1 and first["connect"]["client"]
    assert first["connect"]["pong"] is True and first["connect"]["ping"] >= 1
    assert second["id"] == 2 and "subscribe" in second
    assert second["subscribe"].get("publications", []) == []

    await server.publish("batch", {"x": 1})
    push = await wire.next()
    assert push == {"push": {"channel": "batch", "pub": {"data": {"x": 1}, "offset": 1}}}

    # The server pings with {}; a client that answers {} stays, well past ping_timeout.
    deadline = time.monotonic() + 1.0
    pings = 0
    while time.monotonic() < deadline:
        message = await wire.next(pings=True, timeout=2.0)
        assert message == {}, message
        pings += 1
        await wire.send("{}")
    assert pings >= 3
    await server.publish("batch", {"x": 2})
    assert (await wire.next())["push"]["pub"] == {"data": {"x": 2}, "offset": 2}
    await aio(wire.ws.close())


@ensure_deferred
async def test_a_client_that_never_answers_pings_is_closed_with_3012(
    serve: StartServer,
) -> None:
    server = await serve(heartbeat={"ping_interval": 0.2, "ping_timeout": 0.3})
    wire = await Wire.open(server)
    await wire.connect()
    assert await wire.next(pings=True) == {}  # a ping, left unanswered
    assert await closed(wire.ws) == (3012, "no pong")


@pytest.mark.parametrize("frame", [
    "not json",
    '{"id": 1, "connect": {}}\nnot json',
    '{"id": 1, "subscribe": {"channel": "x"}}',  # the first command must be connect
])
@ensure_deferred
async def test_bad_request_closes_with_3501(serve: StartServer, frame: str) -> None:
    server = await serve()
    wire = await Wire.open(server)
    await wire.send(frame)
    assert await closed(wire.ws) == (3501, "bad request")


@ensure_deferred
async def test_server_stop_closes_with_3001_and_the_sdk_reconnects(
    serve: StartServer, sdk: MakeClient
) -> None:
    server = await serve()
    client, events = await connected(sdk, server)
    await server.stop()
    ctx = await events.log.first("connecting", lambda c: c.code != 0)
    assert (ctx.code, ctx.reason) == (3001, "shutdown")
    assert client.state == ClientState.CONNECTING  # trying again, not given up
    assert not events.log.of("disconnected")


# -- history, presence -------------------------------------------------------------------


@ensure_deferred
async def test_history_limit_since_and_reverse(serve: StartServer, sdk: MakeClient) -> None:
    server = await serve()
    for n in range(1, 6):
        publication = await server.publish("hist", {"n": n})
    epoch = publication.epoch
    client, _ = await connected(sdk, server)

    def offsets(result: Any) -> list[int]:
        return [p.offset for p in result.publications]

    everything = await aio(client.history("hist", limit=-1))
    assert [p.data for p in everything.publications] == [{"n": n} for n in range(1, 6)]
    assert offsets(everything) == [1, 2, 3, 4, 5]
    assert (everything.offset, everything.epoch) == (5, epoch)

    position_only = await aio(client.history("hist"))  # limit 0: the position only
    assert (position_only.publications, position_only.offset) == ([], 5)

    assert offsets(await aio(client.history("hist", limit=2))) == [1, 2]
    since = StreamPosition(offset=2, epoch=epoch)
    assert offsets(await aio(client.history("hist", limit=-1, since=since))) == [3, 4, 5]
    assert offsets(await aio(client.history("hist", limit=2, since=since))) == [3, 4]
    assert offsets(await aio(client.history("hist", limit=2, reverse=True))) == [5, 4]

    with pytest.raises(ReplyError) as e:
        await aio(client.history("hist", limit=-1, since=StreamPosition(2, "other-epoch")))
    assert e.value.code == 112


@ensure_deferred
async def test_history_reverse_since_goes_back_from_the_position(
    serve: StartServer, sdk: MakeClient
) -> None:
    # As Centrifugo (memstream Get with since.offset - 1, backwards): what
    # came BEFORE the position, newest first.
    server = await serve()
    for n in range(1, 6):
        publication = await server.publish("back", {"n": n})
    client, _ = await connected(sdk, server)
    since = StreamPosition(offset=4, epoch=publication.epoch)
    result = await aio(client.history("back", limit=-1, since=since, reverse=True))
    assert [p.offset for p in result.publications] == [3, 2, 1]
    result = await aio(client.history("back", limit=2, since=since, reverse=True))
    assert [p.offset for p in result.publications] == [3, 2]


@ensure_deferred
async def test_presence_and_presence_stats(serve: StartServer, sdk: MakeClient) -> None:
    server = await serve()
    one, _ = await connected(sdk, server)
    two, _ = await connected(sdk, server)
    await subscribed(one, "room")
    await subscribed(two, "room")
    raw = await connect(f"ws://127.0.0.1:{server.port}/room")
    presence = await aio(one.presence("room"))
    # The raw client is left out: its client_id is what resumes its session.
    assert set(presence.clients) == {one.client_id, two.client_id}
    info = presence.clients[two.client_id]
    assert (info.client, info.user) == (two.client_id, "")
    stats = await aio(two.presence_stats("room"))
    assert (stats.num_clients, stats.num_users) == (2, 1)
    empty = await aio(one.presence_stats("nobody-here"))
    assert (empty.num_clients, empty.num_users) == (0, 0)
    await aio(raw.close())


@ensure_deferred
async def test_unsubscribe_stops_delivery(serve: StartServer, sdk: MakeClient) -> None:
    server = await serve()
    client, _ = await connected(sdk, server)
    gone, gone_events = await subscribed(client, "gone")
    _, fence = await subscribed(client, "fence")
    await server.publish("gone", {"n": 1})
    await gone_events.got(1)

    await aio(gone.unsubscribe())
    ctx = await gone_events.log.first("unsubscribed")
    assert ctx.code == 0
    # Commands are handled in order: once this answers, the unsubscribe was done.
    stats = await aio(client.presence_stats("gone"))
    assert stats.num_clients == 0
    await server.publish("gone", {"n": 2})
    await server.publish("fence", {"after": True})
    await fence.got(1)  # sent after "gone"'s, on the same connection
    assert [p.data for p in gone_events.pubs] == [{"n": 1}]


@ensure_deferred
async def test_join_and_leave_pushes(serve: StartServer, sdk: MakeClient) -> None:
    server = await serve()
    watcher, _ = await connected(sdk, server)
    _, events = await subscribed(watcher, "lobby", join_leave=True)
    other, _ = await connected(sdk, server)
    other_sub, _ = await subscribed(other, "lobby")

    join = await events.log.first("join", lambda c: c.info.client == other.client_id)
    assert join.info.user == ""
    await aio(other_sub.unsubscribe())
    leave = await events.log.first("leave", lambda c: c.info.client == other.client_id)
    assert leave.info.user == ""

    # A subscriber that did not ask for join/leave gets none.
    quiet_client, _ = await connected(sdk, server)
    _, quiet = await subscribed(quiet_client, "lobby")
    third, _ = await connected(sdk, server)
    await subscribed(third, "lobby")
    await events.log.first("join", lambda c: c.info.client == third.client_id)
    await server.publish("lobby", {"fence": 1})
    await quiet.got(1)
    assert not quiet.log.of("join") and not quiet.log.of("leave")


# -- recovery ------------------------------------------------------------------------------


async def _away_while_publishing(
    server: Server, events: ClientEvents, channel: str, count: int
) -> None:
    """Force a reconnect through the admin API; publish C{count} while the SDK is away."""
    gate = asyncio.Event()
    away = asyncio.Event()

    async def hold(ctx: ConnectingContext) -> None:
        away.set()
        await gate.wait()  # the SDK schedules its reconnect once this returns

    events.on_connecting_hook = hold
    status, body = await api(server.admin_port, "disconnect", {
        "user": "", "disconnect": {"code": 3011, "reason": "force reconnect"}})
    assert (status, body) == (200, {"result": {}})
    await aio(away.wait(), WAIT)
    ctx = events.log.of("connecting")[-1]
    assert (ctx.code, ctx.reason) == (3011, "force reconnect")
    for n in range(count):
        await server.publish(channel, {"missed": n})
    events.on_connecting_hook = None
    gate.set()


@ensure_deferred
async def test_recovery_after_a_forced_reconnect(serve: StartServer, sdk: MakeClient) -> None:
    server = await serve()
    client, client_events = await connected(sdk, server)
    _, events = await subscribed(client, "stream", recoverable=True)
    first = await events.log.first("subscribed")
    assert first.recoverable and not first.was_recovering
    await server.publish("stream", {"before": True})
    await events.got(1)

    await _away_while_publishing(server, client_events, "stream", 5)
    again = await events.log.first("subscribed", lambda c: c.was_recovering)
    assert again.recovered is True
    await server.publish("stream", {"after": True})
    await events.got(7)
    assert [p.offset for p in events.pubs] == [1, 2, 3, 4, 5, 6, 7]
    assert [p.data for p in events.pubs] == (
        [{"before": True}] + [{"missed": n} for n in range(5)] + [{"after": True}])
    assert [k for k in events.log.kinds() if k != "publication"] == [
        "subscribing", "subscribed", "subscribing", "subscribed"]


@ensure_deferred
async def test_recovery_beyond_history_is_not_recovered(
    serve: StartServer, sdk: MakeClient
) -> None:
    server = await serve(channels={"history_size": 2})
    client, client_events = await connected(sdk, server)
    _, events = await subscribed(client, "short", recoverable=True)
    await server.publish("short", {"n": 1})
    await events.got(1)

    await _away_while_publishing(server, client_events, "short", 5)
    again = await events.log.first("subscribed", lambda c: c.was_recovering)
    assert again.recovered is False
    assert again.stream_position is not None and again.stream_position.offset == 6
    await server.publish("short", {"after": True})
    await events.got(2)
    # All or nothing: none of the missed ones, then live ones again.
    assert [p.offset for p in events.pubs] == [1, 7]


# -- tokens ---------------------------------------------------------------------------------


@ensure_deferred
async def test_valid_token_connects_as_its_user(serve: StartServer, sdk: MakeClient) -> None:
    server = await serve(auth={"token_secret": SECRET})
    client, _ = await connected(sdk, server, token=token("alice", exp=int(time.time()) + 3600))
    await subscribed(client, "private")
    presence = await aio(client.presence("private"))
    assert presence.clients[client.client_id].user == "alice"
    assert [c.info.user for c in server.registry] == ["alice"]


@ensure_deferred
async def test_anonymous_or_bad_token_is_closed_with_3500_without_reconnect(
    serve: StartServer, sdk: MakeClient
) -> None:
    server = await serve(auth={"token_secret": SECRET})
    forged = jwt.encode({"sub": "alice"}, "another-secret-of-at-least-32-bytes!!", "HS256")
    for credentials in ({"token": forged}, {}):
        client, events = sdk(server, **credentials)
        await aio(client.connect())
        ctx = await events.log.first("disconnected")
        assert (ctx.code, ctx.reason) == (3500, "invalid token")
        assert client.state == ClientState.DISCONNECTED
        with pytest.raises(ClientDisconnectedError):
            await aio(client.ready())
        await pause(0.3)
        assert [c.code for c in events.log.of("connecting")] == [0]  # no second attempt
        assert not events.log.of("connected")


@ensure_deferred
async def test_expired_token_gets_109_and_the_sdk_reconnects_with_get_token(
    serve: StartServer, sdk: MakeClient
) -> None:
    server = await serve(auth={"token_secret": SECRET})
    calls: list[str] = []

    async def get_token() -> str:
        calls.append("get_token")
        return token("bob", exp=int(time.time()) + 3600)

    client, events = sdk(server, token=token("bob", exp=int(time.time()) - 10),
                         get_token=get_token)
    await aio(client.connect())
    await events.log.first("connected")
    [error] = events.log.of("error")
    assert isinstance(error.error, ReplyError) and error.error.code == 109
    assert calls == ["get_token"]
    assert [c.info.user for c in server.registry] == ["bob"]


@ensure_deferred
async def test_refresh_keeps_the_connection_past_exp(serve: StartServer, sdk: MakeClient) -> None:
    # A short grace past exp (Centrifugo's client_expired_close_delay, 25 s by
    # default): the SDK must refresh at the ttl it was given, before exp.
    server = await serve(auth={"token_secret": SECRET, "expired_close_delay": 0.2},
                         monitor={"interval": 0.1})
    exp = time.time() + 1.5
    refreshes = Recorder()

    async def get_token() -> str:
        refreshes.record("get_token", time.time())
        return token("carol", exp=int(time.time()) + 3600)

    client, events = await connected(sdk, server, token=token("carol", exp=exp),
                                     get_token=get_token)
    await refreshes.first("get_token")  # the SDK's refresh timer fired
    # Past exp and several monitor sweeps later, still the same connection.
    await pause(max(0.0, exp - time.time()) + 0.5)
    assert client.state == ClientState.CONNECTED
    assert [c.code for c in events.log.of("connecting")] == [0], events.log.events
    assert not events.log.of("disconnected")
    assert len(events.log.of("connected")) == 1
    [info] = [c.info for c in server.registry]
    assert info.expires_at is not None and info.expires_at > exp + 3000


@ensure_deferred
async def test_a_token_that_expires_without_refresh_is_closed_with_3005(
    serve: StartServer, sdk: MakeClient
) -> None:
    server = await serve(auth={"token_secret": SECRET, "expired_close_delay": 0.3},
                         monitor={"interval": 0.1})
    client, events = await connected(sdk, server, token=token("dave", exp=time.time() + 1.0))
    ctx = await events.log.first("connecting", lambda c: c.code != 0)
    assert (ctx.code, ctx.reason) == (3005, "connection expired")
    # It comes back with the same, now expired, token: 109, and without
    # get_token the SDK stops as unauthorized.
    gone = await events.log.first("disconnected")
    assert gone.code == 1
    assert any(isinstance(e.error, ReplyError) and e.error.code == 109
               for e in events.log.of("error"))
    assert client.state == ClientState.DISCONNECTED


@ensure_deferred
async def test_channels_claim_limits_subscriptions(serve: StartServer, sdk: MakeClient) -> None:
    server = await serve(auth={"token_secret": SECRET})
    client, _ = await connected(sdk, server, token=token("erin", channels=["allowed"]))
    await subscribed(client, "allowed")
    sub, events = subscription(client, "forbidden")
    await aio(sub.subscribe())
    ctx = await events.log.first("unsubscribed")
    assert ctx.code == 103
    with pytest.raises(SubscriptionUnsubscribedError):
        await aio(sub.ready())
    assert client.state == ClientState.CONNECTED


# -- refused commands -------------------------------------------------------------------------


@ensure_deferred
async def test_client_publish_refused_with_103_when_disabled(
    serve: StartServer, sdk: MakeClient
) -> None:
    server = await serve(channels={"allow_client_publish": False})
    client, _ = await connected(sdk, server)
    _, events = await subscribed(client, "readonly")
    with pytest.raises(ReplyError) as e:
        await aio(client.publish("readonly", {"x": 1}))
    assert e.value.code == 103
    await server.publish("readonly", {"from": "server"})  # the server still may
    await events.got(1)
    assert [p.data for p in events.pubs] == [{"from": "server"}]
    assert client.state == ClientState.CONNECTED


@ensure_deferred
async def test_rpc_without_a_handler_is_108(serve: StartServer, sdk: MakeClient) -> None:
    server = await serve()
    client, _ = await connected(sdk, server)
    with pytest.raises(ReplyError) as e:
        await aio(client.rpc("anything", {"x": 1}))
    assert e.value.code == 108
    assert client.state == ClientState.CONNECTED


@ensure_deferred
async def test_a_raw_frame_with_newlines_reaches_the_sdk_as_data(
    serve: StartServer, sdk: MakeClient
) -> None:
    # Raw subscribers get it byte for byte; in the JSON protocol "\n" separates
    # messages, so the pub push must not carry the raw newlines inside it.
    server = await serve()
    raw = await connect(f"ws://127.0.0.1:{server.port}/pretty")
    client, client_events = await connected(sdk, server)
    _, events = await subscribed(client, "pretty")
    frame = '{\n  "price": 1.5,\n  "tag": "é"\n}\n'
    await send(raw, frame)
    assert await recv(raw) == frame


    async def delivered_or_dropped() -> None:
        while not events.pubs and not client_events.log.of("disconnected"):
            await asyncio.sleep(0.01)

    await aio(delivered_or_dropped(), WAIT)
    assert not client_events.log.of("disconnected"), client_events.log.of("disconnected")
    assert events.pubs[0].data == {"price": 1.5, "tag": "é"}
    assert client.state == ClientState.CONNECTED
    await aio(raw.close())
