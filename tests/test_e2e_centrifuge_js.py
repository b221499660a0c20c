"""
End to end with the real npm C{centrifuge} SDK (5.8.0, in Node, through
C{tests/js/driver.js}) against a real server on 127.0.0.1: the SDK must
work unchanged (SPEC.md §5, §6, §8).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt
import pytest
import pytest_twisted

from .conftest import StartServer
from .jsdriver import DriverFailure, JsDriver, JsDrivers, js_drivers, node_available
from .support import aio, api, connect, recv, send

__all__ = ["js_drivers"]  # the fixture "js", imported to be found

ensure_deferred = pytest_twisted.ensureDeferred



def test_node_and_the_sdk_are_installed() -> None:
    # Not a skip: without them this file would prove nothing (tests/run.sh installs them).
    assert node_available() is None, node_available()

SECRET = "omega-ws end-to-end tests, HS256 secret"


def url_of(port: int) -> str:
    return f"ws://127.0.0.1:{port}/connection/websocket"


def token(sub: str, lifetime: float = 3600, secret: str = SECRET) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + lifetime)}, secret, algorithm="HS256")


async def connected(js: JsDrivers, port: int, **options: Any) -> JsDriver:
    driver = await js.start(url_of(port), **options)
    await driver.send("connect")
    await driver.expect("connected")
    return driver


async def subscribed(driver: JsDriver, channel: str, **options: Any) -> dict[str, Any]:
    await driver.send("subscribe", channel=channel, **options)
    return await driver.expect("subscribed", channel=channel)


async def publications(driver: JsDriver, channel: str, count: int) -> list[dict[str, Any]]:
    return [await driver.expect("publication", channel=channel) for _ in range(count)]


def no_driver_errors(*drivers: JsDriver) -> None:
    for driver in drivers:
        assert driver.errors() == [], driver.errors()


# -- (a) publish paths --------------------------------------------------------------


@ensure_deferred
async def test_publications_from_api_in_process_sdk_and_raw_clients(
    serve: StartServer, js: JsDrivers
) -> None:
    server = await serve()
    driver = await connected(js, server.port)
    event = driver.seen("connected")[0]
    assert isinstance(event["client"], str) and event["client"]
    sub = await subscribed(driver, "news")
    assert sub["recoverable"] is True and sub["wasRecovering"] is False
    epoch = sub["streamPosition"]["epoch"]
    assert sub["streamPosition"] == {"offset": 0, "epoch": epoch}

    # The admin HTTP API (Centrifugo's server API shape).
    status, body = await api(server.admin_port, "publish",
                             {"channel": "news", "data": {"via": "api", "n": 1}})
    assert status == 200 and body == {"result": {"offset": 1, "epoch": epoch}}
    pub = await driver.expect("publication", channel="news")
    assert (pub["data"], pub["offset"]) == ({"via": "api", "n": 1}, 1)

    # In-process code.
    publication = await server.publish("news", {"via": "python", "é": [1, 2]})
    assert publication.offset == 2
    pub = await driver.expect("publication", channel="news")
    assert (pub["data"], pub["offset"]) == ({"via": "python", "é": [1, 2]}, 2)

    # SDK publish reaches a raw client as the JSON text, and the SDK itself.
    raw = await connect(f"ws://127.0.0.1:{server.port}/news")
    assert await driver.call("publish", channel="news", data={"via": "js", "t": "é"}) == {}
    assert json.loads(await recv(raw)) == {"via": "js", "t": "é"}
    pub = await driver.expect("publication", channel="news")
    assert (pub["data"], pub["offset"]) == ({"via": "js", "t": "é"}, 3)

    # A raw client's frame reaches the SDK subscriber as publication data.
    await send(raw, '{ "via" : "raw",  "x": 1.5 }')
    assert await recv(raw) == '{ "via" : "raw",  "x": 1.5 }'  # byte for byte, to raw
    pub = await driver.expect("publication", channel="news")
    assert (pub["data"], pub["offset"]) == ({"via": "raw", "x": 1.5}, 4)

    # Nothing twice, nothing on other channels.
    assert await driver.absent("publication", within=0.3)
    assert [p["offset"] for p in driver.seen("publication")] == [1, 2, 3, 4]
    await aio(raw.close())
    no_driver_errors(driver)


@ensure_deferred
async def test_raw_frame_with_newlines_reaches_the_sdk(serve: StartServer, js: JsDrivers) -> None:
    """
    JSON allows line breaks between tokens; the Centrifuge wire separates
    messages with "\n", so a raw publication's data must not break a frame
    apart (SPEC §4: raw frames reach Centrifuge subscribers as pub.data).
    """
    server = await serve()
    driver = await connected(js, server.port)
    await subscribed(driver, "lines")
    raw = await connect(f"ws://127.0.0.1:{server.port}/lines")
    frame = '{\n  "via": "raw",\r\n  "text": "a\\nb"\n}\n'
    await send(raw, frame)
    assert await recv(raw) == frame  # raw subscribers: byte for byte
    pub = await driver.expect("publication", channel="lines", timeout=2)
    assert (pub["data"], pub["offset"]) == ({"via": "raw", "text": "a\nb"}, 1)
    assert [e["code"] for e in driver.seen("connecting")] == [0]  # never dropped
    await aio(raw.close())
    # Recovery replays it from history: the reply frame must survive it too.
    await driver.send("disconnect")
    await driver.expect("disconnected")
    await server.publish("lines", {"n": 2})
    await driver.send("connect")
    again = await driver.expect("subscribed", channel="lines")
    assert again["recovered"] is True
    pub = await driver.expect("publication", channel="lines")
    assert (pub["data"], pub["offset"]) == ({"n": 2}, 2)
    history = await driver.call("history", channel="lines", limit=10)
    assert [p["offset"] for p in history["publications"]] == [1, 2]
    no_driver_errors(driver)


@ensure_deferred
async def test_unsubscribe_stops_delivery(serve: StartServer, js: JsDrivers) -> None:
    server = await serve()
    driver = await connected(js, server.port)
    await subscribed(driver, "u")
    await server.publish("u", {"n": 1})
    await driver.expect("publication", channel="u")
    await driver.send("unsubscribe", channel="u")
    event = await driver.expect("unsubscribed", channel="u")
    assert event["code"] == 0  # unsubscribe called
    # The unsubscribe reply came back: nothing more for that channel.
    assert await driver.call("presence_stats", channel="u") == {"numClients": 0, "numUsers": 0}
    await server.publish("u", {"n": 2})
    assert await driver.absent("publication", within=0.3)
    no_driver_errors(driver)


# -- (b) history, presence -----------------------------------------------------------------


@ensure_deferred
async def test_history_from_the_sdk(serve: StartServer, js: JsDrivers) -> None:
    server = await serve()
    for n in range(1, 4):
        await server.publish("h", {"n": n})
    driver = await connected(js, server.port)

    history = await driver.call("history", channel="h", limit=10)
    epoch = history["epoch"]
    assert isinstance(epoch, str) and epoch
    assert history["offset"] == 3
    assert [(p["data"], p["offset"]) for p in history["publications"]] == [
        ({"n": 1}, 1), ({"n": 2}, 2), ({"n": 3}, 3)]

    # Without a limit (none sent): the position only, as Centrifugo.
    history = await driver.call("history", channel="h")
    assert (history["publications"], history["offset"], history["epoch"]) == ([], 3, epoch)

    # Since a position: only what came after it.
    history = await driver.call("history", channel="h", limit=-1,
                                since={"offset": 1, "epoch": epoch})
    assert [p["offset"] for p in history["publications"]] == [2, 3]

    # A position from another epoch is unrecoverable (112).
    with pytest.raises(DriverFailure) as e:
        await driver.call("history", channel="h", limit=10, since={"offset": 1, "epoch": "other"})
    assert e.value.code == 112

    # A channel nobody published on.
    history = await driver.call("history", channel="empty", limit=10)
    assert (history["publications"], history["offset"]) == ([], 0)
    no_driver_errors(driver)


@ensure_deferred
async def test_presence_and_presence_stats_from_the_sdk(
    serve: StartServer, js: JsDrivers
) -> None:
    server = await serve(auth={"token_secret": SECRET})
    alice = await connected(js, server.port, token=token("alice"))
    bob = await connected(js, server.port, token=token("bob"))
    alice_client = alice.seen("connected")[0]["client"]
    bob_client = bob.seen("connected")[0]["client"]
    await subscribed(alice, "room")

    presence = await alice.call("presence", channel="room")
    assert presence == {"clients": {alice_client: {"client": alice_client, "user": "alice"}}}
    assert await alice.call("presence_stats", channel="room") == {"numClients": 1, "numUsers": 1}

    await subscribed(bob, "room")
    presence = await bob.call("presence", channel="room")
    assert set(presence["clients"]) == {alice_client, bob_client}
    assert presence["clients"][bob_client]["user"] == "bob"
    assert await bob.call("presence_stats", channel="room") == {"numClients": 2, "numUsers": 2}
    # The admin API agrees.
    status, body = await api(server.admin_port, "presence_stats", {"channel": "room"})
    assert (status, body) == (200, {"result": {"num_clients": 2, "num_users": 2}})
    no_driver_errors(alice, bob)


@ensure_deferred
async def test_join_and_leave_when_asked_for(serve: StartServer, js: JsDrivers) -> None:
    server = await serve(auth={"token_secret": SECRET})
    alice = await connected(js, server.port, token=token("alice"))
    bob = await connected(js, server.port, token=token("bob"))
    await subscribed(alice, "lobby", joinLeave=True)
    await subscribed(bob, "lobby")
    join = await alice.expect("join", channel="lobby")
    assert join["info"]["user"] == "bob"
    await bob.send("unsubscribe", channel="lobby")
    leave = await alice.expect("leave", channel="lobby")
    assert leave["info"]["user"] == "bob"
    no_driver_errors(alice, bob)


# -- (c), (d) recovery -------------------------------------------------------------------


@ensure_deferred
async def test_recovery_after_disconnect_and_connect(serve: StartServer, js: JsDrivers) -> None:
    server = await serve()
    driver = await connected(js, server.port)
    first = await subscribed(driver, "feed")
    epoch = first["streamPosition"]["epoch"]
    for n in (1, 2):
        await server.publish("feed", {"n": n})
    assert [p["data"]["n"] for p in await publications(driver, "feed", 2)] == [1, 2]

    await driver.send("disconnect")
    await driver.expect("disconnected", code=0)
    for n in range(3, 8):  # missed while away
        await server.publish("feed", {"n": n})

    await driver.send("connect")
    await driver.expect("connected")
    again = await driver.expect("subscribed", channel="feed")
    assert again["wasRecovering"] is True
    assert again["recovered"] is True
    assert again["hasRecoveredPublications"] is True
    assert again["streamPosition"]["epoch"] == epoch
    missed = await publications(driver, "feed", 5)
    assert [(p["data"]["n"], p["offset"]) for p in missed] == [(n, n) for n in range(3, 8)]

    await server.publish("feed", {"n": 8})  # live again
    live = await driver.expect("publication", channel="feed")
    assert (live["data"], live["offset"]) == ({"n": 8}, 8)
    assert await driver.absent("publication", within=0.3)
    assert [p["offset"] for p in driver.seen("publication")] == list(range(1, 9))
    no_driver_errors(driver)


@ensure_deferred
async def test_recovery_after_server_side_disconnect_with_reconnect_code(
    serve: StartServer, js: JsDrivers
) -> None:
    server = await serve(auth={"token_secret": SECRET})
    driver = await connected(js, server.port, token=token("carol"))
    await subscribed(driver, "feed")
    await server.publish("feed", {"n": 1})
    await driver.expect("publication", channel="feed")

    status, body = await api(server.admin_port, "disconnect", {
        "user": "carol", "disconnect": {"code": 3011, "reason": "force reconnect"}})
    assert (status, body) == (200, {"result": {}})
    # Published at once: missed while the SDK is away, or live if it is already back.
    for n in range(2, 6):
        await server.publish("feed", {"n": n})
    connecting = await driver.expect("connecting", code=3011)
    assert connecting["reason"] == "force reconnect"
    again = await driver.expect("subscribed", channel="feed")
    assert (again["wasRecovering"], again["recovered"]) == (True, True)
    await publications(driver, "feed", 4)
    assert await driver.absent("publication", within=0.3)
    delivered = driver.seen("publication")
    assert [(p["data"]["n"], p["offset"]) for p in delivered] == [(n, n) for n in range(1, 6)]
    no_driver_errors(driver)


@ensure_deferred
async def test_recovery_beyond_history_is_not_recovered(
    serve: StartServer, js: JsDrivers
) -> None:
    server = await serve(channels={"history_size": 2})
    driver = await connected(js, server.port)
    first = await subscribed(driver, "small")
    epoch = first["streamPosition"]["epoch"]
    await server.publish("small", {"n": 1})
    await driver.expect("publication", channel="small")

    await driver.send("disconnect")
    await driver.expect("disconnected")
    for n in range(2, 7):  # 5 missed, only 2 kept
        await server.publish("small", {"n": n})
    await driver.send("connect")
    again = await driver.expect("subscribed", channel="small")
    assert again["wasRecovering"] is True
    assert again["recovered"] is False
    assert again["hasRecoveredPublications"] is False
    # The current position, so the application knows where to resync from.
    assert again["streamPosition"] == {"offset": 6, "epoch": epoch}
    # All or nothing: none of the missed publications comes.
    assert await driver.absent("publication", within=0.3)

    await server.publish("small", {"n": 7})
    live = await driver.expect("publication", channel="small")
    assert (live["data"], live["offset"]) == ({"n": 7}, 7)
    no_driver_errors(driver)


@ensure_deferred
async def test_no_loss_no_duplicates_while_publishing_through_a_reconnect(
    serve: StartServer, js: JsDrivers
) -> None:
    server = await serve()
    driver = await connected(js, server.port)
    await subscribed(driver, "busy")
    published = 0

    async def publish(count: int, pause: float) -> None:
        nonlocal published
        for _ in range(count):
            published += 1
            await server.publish("busy", {"n": published})
            await aio(asyncio.sleep(pause))

    await publish(5, 0.002)
    await driver.send("disconnect")
    await publish(5, 0.002)
    await driver.send("connect")
    await publish(40, 0.002)  # while the SDK reconnects and resubscribes
    delivered = await publications(driver, "busy", published)
    assert [p["offset"] for p in delivered] == list(range(1, published + 1))
    assert [p["data"]["n"] for p in delivered] == list(range(1, published + 1))
    assert await driver.absent("publication", within=0.3)
    (again,) = [e for e in driver.seen("subscribed") if e["wasRecovering"]]
    assert again["recovered"] is True
    no_driver_errors(driver)


# -- (e) tokens ---------------------------------------------------------------------


@ensure_deferred
async def test_valid_token_connects(serve: StartServer, js: JsDrivers) -> None:
    server = await serve(auth={"token_secret": SECRET})
    driver = await connected(js, server.port, token=token("alice"))
    await subscribed(driver, "t")
    (connection,) = list(server.registry)
    assert connection.info.user == "alice"
    no_driver_errors(driver)


@ensure_deferred
async def test_anonymous_refused_when_tokens_are_required(
    serve: StartServer, js: JsDrivers
) -> None:
    server = await serve(auth={"token_secret": SECRET})
    driver = await js.start(url_of(server.port))
    await driver.send("connect")
    event = await driver.expect("disconnected")
    assert (event["code"], event["reason"]) == (3500, "invalid token")
    assert await driver.absent("connecting", within=1.0)
    no_driver_errors(driver)


@ensure_deferred
async def test_bad_token_is_disconnected_with_3500_and_not_retried(
    serve: StartServer, js: JsDrivers
) -> None:
    server = await serve(auth={"token_secret": SECRET})
    forged = token("mallory", secret="not the server secret, though just as long")
    driver = await js.start(url_of(server.port), token=forged)
    await driver.send("connect")
    event = await driver.expect("disconnected")
    assert (event["code"], event["reason"]) == (3500, "invalid token")
    assert driver.seen("connected") == []
    # Terminal: no reconnect attempt.
    assert await driver.absent("connecting", within=1.5)
    assert await driver.call("state") == "disconnected"
    no_driver_errors(driver)


@ensure_deferred
async def test_expired_token_gets_109_then_get_token_connects(
    serve: StartServer, js: JsDrivers
) -> None:
    server = await serve(auth={"token_secret": SECRET})
    driver = await js.start(url_of(server.port), token=token("alice", lifetime=-60),
                            getToken=True, nextToken=token("alice"))
    await driver.send("connect")
    error = await driver.expect("error", source="client")
    assert (error["type"], error["code"], error["message"]) == ("connect", 109, "token expired")
    await driver.expect("get_token")
    await driver.expect("connected")
    assert driver.seen("disconnected") == []
    await subscribed(driver, "after-refresh")
    no_driver_errors(driver)


@ensure_deferred
async def test_expiring_token_is_refreshed_and_the_connection_stays(
    serve: StartServer, js: JsDrivers
) -> None:
    # The monitor closes expired connections (3005) at once here: the SDK
    # must be told a ttl that has it refresh before the token expires.
    server = await serve(auth={"token_secret": SECRET},
                         monitor={"interval": 0.1, "idle_timeout": 60})
    driver = await js.start(url_of(server.port), token=token("alice", lifetime=2),
                            getToken=True, nextToken=token("alice"))
    await driver.send("connect")
    await driver.expect("connected")
    await subscribed(driver, "long")
    await driver.expect("get_token", timeout=4)
    assert await driver.absent("connecting", within=1.0)
    assert driver.seen("disconnected") == [] and driver.seen("error") == [], driver.log()
    await server.publish("long", {"still": "here"})
    pub = await driver.expect("publication", channel="long")
    assert pub["data"] == {"still": "here"}
    (connection,) = list(server.registry)
    assert connection.info.expires_at is not None and connection.info.expires_at > time.time() + 60
    no_driver_errors(driver)


@ensure_deferred
async def test_expired_token_without_get_token_gives_up(
    serve: StartServer, js: JsDrivers
) -> None:
    server = await serve(auth={"token_secret": SECRET})
    driver = await js.start(url_of(server.port), token=token("alice", lifetime=-60))
    await driver.send("connect")
    error = await driver.expect("error", source="client", type="connect")
    assert error["code"] == 109
    event = await driver.expect("disconnected")
    assert (event["code"], event["reason"]) == (1, "unauthorized")
    no_driver_errors(driver)


# -- (f) rpc ------------------------------------------------------------------------


@ensure_deferred
async def test_rpc_without_a_handler_is_108(serve: StartServer, js: JsDrivers) -> None:
    server = await serve()
    driver = await connected(js, server.port)
    with pytest.raises(DriverFailure) as e:
        await driver.call("rpc", method="anything", data={"x": 1})
    assert (e.value.code, e.value.message) == (108, "not available")
    # The connection is still fine.
    assert await driver.call("publish", channel="after-rpc", data={}) == {}
    assert driver.seen("disconnected") == []
    assert [e["code"] for e in driver.seen("connecting")] == [0]  # only "connect called"
    no_driver_errors(driver)


# -- (g) shutdown -------------------------------------------------------------------


@ensure_deferred
async def test_server_stop_makes_the_sdk_reconnect_with_3001(
    serve: StartServer, js: JsDrivers
) -> None:
    server = await serve()
    driver = await connected(js, server.port)
    await subscribed(driver, "bye")
    started = time.monotonic()
    await server.stop()
    assert time.monotonic() - started < 2.0  # the SDK answered the close at once
    event = await driver.expect("connecting", code=3001)
    assert event["reason"] == "shutdown"
    # Transport closed: the subscription waits to resubscribe.
    await driver.expect("subscribing", channel="bye", code=1)
    assert driver.seen("disconnected") == []
    no_driver_errors(driver)
