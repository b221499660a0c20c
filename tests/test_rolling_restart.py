"""
Restarts that drop no one (docs/restarts.md), end to end with real
processes: C{python -m omega_ws.handoff} holds the listening sockets (the
ws:// one and the admin one) and runs C{twistd -n omega-ws} on them through
systemd's LISTEN_FDS protocol.  On SIGHUP it starts a new server and, once
that one says READY=1, sends the old one SIGTERM.  While that happens:

  - a new raw WebSocket connection is opened every 20 ms, handshake and
    all: none may be refused or fail;
  - a publication goes through the admin API every 20 ms;
  - a centrifuge-python client and a raw client with C{?client_id=} are
    subscribed, and reconnect when told to (3001, 1001).

With the Redis broker no client loses a publication (Centrifuge recovers,
the raw session resumes).  With the memory broker the new process starts a
new epoch, and the test states exactly what is lost.  C{--stop-first} (the
order of C{systemctl restart}) leaves a gap with no server at all, and the
connections made in it wait in the accept queue.  Then: a handshake under
way when the old process stops, a new server that fails to start, the
supervisor's command line, its notifications under systemd, the contrib
unit, and why the socket is shared rather than opened twice with
SO_REUSEPORT.

The counts are printed: C{pytest -s tests/test_rolling_restart.py}.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import websockets
from centrifuge import Client

from omega_ws.handoff import make_parser as handoff_parser
from omega_ws.tap import Options

from .nodes import BIN, REPO, Running, clean_env
from .rawsocket import CLOSE, frame
from .redis_server import RedisServer
from .support import aio
from .test_e2e_centrifuge_python import ClientEvents, SubEvents

ensure_deferred = pytest_twisted.ensureDeferred

HANDOFF = [sys.executable, "-m", "omega_ws.handoff"]
SERVER = [str(BIN / "twistd"), "--nodaemon", "--pidfile=", "omega-ws",
          "--listen", "systemd:domain=INET:name=ws", "--host", "127.0.0.1", "--port", "0"]
CHANNEL = "feed"
INTERVAL = 0.02  # between two load connections, and between two publications
WAIT = 20.0


# -- the supervisor, as a user runs it ---------------------------------------------------


class Handoff:
    """C{python -m omega_ws.handoff ... -- twistd ... omega-ws}; its and its servers' output."""

    def __init__(self, cwd: Path, *server_args: str, handoff_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        args = [*HANDOFF, "--socket", "ws=127.0.0.1:0", "--socket", "admin=127.0.0.1:0",
                *handoff_args, "--", *SERVER, *server_args]
        self.run = Running(args, clean_env(**(env or {})), cwd)

    async def line(self, pattern: str, start: int = 0,
                   timeout: float = WAIT) -> tuple[int, re.Match[str]]:
        """The first output line from C{start} on that matches: (its index, the match)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            exited = self.run.proc.poll() is not None
            lines = list(self.run.lines)
            for index in range(start, len(lines)):
                match = regex.search(lines[index])
                if match:
                    return index, match
            if exited or time.monotonic() > deadline:
                raise AssertionError(f"no line {pattern!r}:\n{self.run.output()}")
            await asyncio.sleep(0.01)

    async def ports(self) -> tuple[int, int]:
        """The ws:// and admin ports it holds."""
        _, ws = await self.line(r"socket ws listening on 127\.0\.0\.1:(\d+)")
        _, admin = await self.line(r"socket admin listening on 127\.0\.0\.1:(\d+)")
        return int(ws[1]), int(admin[1])

    def signal(self, signum: int) -> None:
        self.run.proc.send_signal(signum)

    def stop(self) -> int:
        if self.run.proc.poll() is None:
            return self.run.stop()
        return self.run.wait()


@pytest.fixture
def handoffs(tmp_path: Path) -> Any:
    started: list[Handoff] = []

    def start(*server_args: str, handoff_args: tuple[str, ...] = (),
              env: dict[str, str] | None = None) -> Handoff:
        handoff = Handoff(tmp_path, *server_args, handoff_args=handoff_args, env=env)
        started.append(handoff)
        return handoff

    yield start
    for handoff in started:
        try:
            handoff.stop()
        except Exception:
            handoff.run.proc.kill()
            handoff.run.wait()


# -- the load: a new connection every 20 ms ---------------------------------------------


def handshake(port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


@dataclass
class Load:
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(n for outcome, n in self.outcomes.items() if outcome != "ok")


async def connect_once(port: int, load: Load) -> None:
    """One raw WebSocket connection, handshake done, then closed with 1000."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 15)
        try:
            writer.write(handshake(port, "/load"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
            outcome = "ok" if head.startswith(b"HTTP/1.1 101") else head.split(b"\r\n")[0].decode()
            if outcome == "ok":
                writer.write(frame(CLOSE, struct.pack("!H", 1000)))
        finally:
            writer.close()
    except ConnectionRefusedError:
        outcome = "refused"
    except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError):
        outcome = "reset"
    except TimeoutError:
        outcome = "timeout"
    except OSError as e:
        outcome = f"error {e.errno}"
    load.outcomes[outcome] += 1
    load.latencies.append(time.monotonic() - started)


async def keep_connecting(port: int, load: Load, stop: asyncio.Event) -> None:
    attempts: set[asyncio.Task[None]] = set()
    while not stop.is_set():
        attempt = asyncio.ensure_future(connect_once(port, load))
        attempts.add(attempt)
        attempt.add_done_callback(attempts.discard)
        await asyncio.sleep(INTERVAL)
    await asyncio.gather(*attempts)


# -- publications through the admin API, one after the other ----------------------------


async def publish_once(port: int, n: int) -> str:
    body = json.dumps({"channel": CHANNEL, "data": {"n": n}}).encode()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 15)
        writer.write(b"POST /api/publish HTTP/1.1\r\nHost: omega-ws\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        response = await asyncio.wait_for(reader.read(), 15)
        writer.close()
    except (OSError, TimeoutError) as e:
        return type(e).__name__
    status = response.split(b"\r\n", 1)[0].decode("latin-1")
    return "ok" if status.startswith("HTTP/1.1 200") else status or "empty answer"


async def keep_publishing(port: int, results: dict[int, str], stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        results[n] = await publish_once(port, n)
        await asyncio.sleep(INTERVAL)


# -- the subscribers ---------------------------------------------------------------------


@dataclass
class RawLog:
    """What the raw client with ?client_id= saw, connection after connection."""

    received: list[int] = field(default_factory=list)
    # len(received) at each connection: where each connection's frames start.
    starts: list[int] = field(default_factory=list)
    closes: list[int | None] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


async def raw_subscriber(port: int, log: RawLog) -> None:
    """Subscribed until cancelled; reconnects at once with the same client_id."""
    url = f"ws://127.0.0.1:{port}/{CHANNEL}?client_id=raw-restart"
    while True:
        try:
            async with websockets.connect(url, open_timeout=10, proxy=None) as ws:
                log.starts.append(len(log.received))
                try:
                    async for message in ws:
                        log.received.append(json.loads(message)["n"])
                except websockets.ConnectionClosed:
                    pass
                log.closes.append(ws.close_code)
        except (OSError, TimeoutError, websockets.InvalidHandshake) as e:
            log.failures.append(repr(e))
            await asyncio.sleep(0.05)


async def until(test: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := test()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.01)
    return result


async def centrifuge_subscriber(port: int) -> tuple[Client, ClientEvents, SubEvents]:
    client_events, sub_events = ClientEvents(), SubEvents()
    client = Client(f"ws://127.0.0.1:{port}/connection/websocket", events=client_events,
                    proxy=None, min_reconnect_delay=0.05, max_reconnect_delay=0.2, timeout=5.0)
    await client.connect()
    sub = client.new_subscription(CHANNEL, events=sub_events, recoverable=True,
                                  min_resubscribe_delay=0.05, max_resubscribe_delay=0.2)
    await sub.subscribe()
    await until(lambda: sub_events.log.of("subscribed"), "centrifuge subscribed")
    return client, client_events, sub_events


# -- one rolling restart under load --------------------------------------------------------


@dataclass
class Restart:
    """Everything one restart measured."""

    load: Load
    published: dict[int, str]
    raw: RawLog
    client_events: ClientEvents | None = None
    sub_events: SubEvents | None = None
    gap: float = 0.0  # from SIGTERM to the old one until the new one was ready, if after
    took: float = 0.0  # from SIGHUP until the old one exited
    # Publications made before the SIGHUP, and before the old process exited.
    window: tuple[int, int] = (0, 0)

    @property
    def ok(self) -> list[int]:
        return [n for n, outcome in self.published.items() if outcome == "ok"]

    @property
    def centrifuge(self) -> list[int]:
        assert self.sub_events is not None
        return [pub.data["n"] for pub in self.sub_events.pubs]

    def first_after_resubscribe(self) -> int:
        """The first publication Centrifuge delivered after subscribing again."""
        assert self.sub_events is not None
        kinds = self.sub_events.log.kinds()
        again = [i for i, kind in enumerate(kinds) if kind == "subscribed"][1]
        return next(ctx.pub.data["n"] for kind, ctx in self.sub_events.log.events[again:]
                    if kind == "publication")

    def report(self, title: str) -> str:
        lost_c = sorted(set(self.ok) - set(self.centrifuge)) if self.sub_events else []
        lost_raw = sorted(set(self.ok) - set(self.raw.received))
        latencies = sorted(self.load.latencies)
        lines = [
            f"== {title}",
            f"load connections: {len(latencies)}, {dict(self.load.outcomes)}, handshake "
            f"median {1000 * latencies[len(latencies) // 2]:.1f} ms, "
            f"max {1000 * latencies[-1]:.0f} ms",
            f"no process accepting for {1000 * self.gap:.0f} ms; restart took {self.took:.2f} s",
            f"publications: {len(self.published)}, accepted {len(self.ok)}, refused "
            f"{len(self.published) - len(self.ok)} {sorted(set(self.published.values()))}",
        ]
        if self.sub_events is not None:
            lines.append(
                f"raw client_id: received {len(self.raw.received)}, lost {len(lost_raw)} "
                f"{_ranges(lost_raw)}, duplicated "
                f"{len(self.raw.received) - len(set(self.raw.received))}, closes "
                f"{self.raw.closes}")
            again = self.sub_events.log.of("subscribed")[1:]
            lines.append(
                f"centrifuge: received {len(self.centrifuge)}, lost {len(lost_c)} "
                f"{_ranges(lost_c)}, duplicated {len(self.centrifuge) - len(set(self.centrifuge))}"
                f", resubscribed {[(c.was_recovering, c.recovered) for c in again]}")
        text = "\n".join(lines)
        print("\n" + text)
        return text


def _ranges(numbers: list[int]) -> str:
    """[3, 4, 5, 9] as "3-5, 9"."""
    out: list[str] = []
    for n in numbers:
        if out and int(out[-1].rpartition("-")[2]) == n - 1:
            out[-1] = f"{out[-1].partition('-')[0]}-{n}"
        else:
            out.append(str(n))
    return "[" + ", ".join(out) + "]"


async def restart_under_load(handoff: Handoff, subscribers: bool = True) -> Restart:
    """Load and publications for a second, a SIGHUP, a second more; what everyone saw."""
    _, ready = await handoff.line(r"pid (\d+) is ready")
    old = int(ready[1])
    ws_port, admin_port = await handoff.ports()
    result = Restart(Load(), {}, RawLog())
    client = raw_task = None
    if subscribers:
        client, result.client_events, result.sub_events = await centrifuge_subscriber(ws_port)
        raw_task = asyncio.ensure_future(raw_subscriber(ws_port, result.raw))
        await until(lambda: result.raw.starts, "raw client connected")
    stop = asyncio.Event()
    running = [asyncio.ensure_future(keep_connecting(ws_port, result.load, stop)),
               asyncio.ensure_future(keep_publishing(admin_port, result.published, stop))]
    await asyncio.sleep(1.0)
    mark = len(handoff.run.lines)
    hup = time.monotonic()
    before = len(result.published)
    handoff.signal(signal.SIGHUP)
    result.gap, result.took, old_gone = await _watch_restart(handoff, old, mark, hup,
                                                             result.published)
    result.window = (before, old_gone)
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*running)
    if subscribers:
        last = max(result.ok)
        await until(lambda: last in result.raw.received, "raw client got the last publication",
                    5)
        await until(lambda: last in result.centrifuge, "centrifuge got the last publication", 5)
        await asyncio.sleep(0.2)  # anything more (duplicates) comes now
        assert client is not None and raw_task is not None
        raw_task.cancel()
        await client.disconnect()
    return result


async def _watch_restart(handoff: Handoff, old: int, mark: int, hup: float,
                         published: dict[int, str]) -> tuple[float, float, int]:
    """
    From the supervisor's lines: how long no process accepted, how long the
    restart took, and how many publications were made until the old one exited.
    """
    seen: dict[str, tuple[int, float]] = {}
    made: dict[str, int] = {}

    async def note(name: str, pattern: str) -> None:
        index, _ = await handoff.line(pattern, mark)
        seen[name], made[name] = (index, time.monotonic()), len(published)

    await asyncio.gather(note("ready", rf"pid (?!{old}\b)\d+ is ready"),
                         note("stopping", rf"stopping pid {old}\b"),
                         note("exited", rf"pid {old} exited"))
    (ready_line, ready), (stopping_line, stopping) = seen["ready"], seen["stopping"]
    gap = ready - stopping if ready_line > stopping_line else 0.0
    return gap, seen["exited"][1] - hup, made["exited"]


def run(scenario: Awaitable[Restart], timeout: float = 40.0) -> Any:
    return aio(scenario, timeout)


# -- the tests -------------------------------------------------------------------------------


def assert_nobody_refused(result: Restart) -> None:
    assert result.load.outcomes["ok"] > 100, result.load.outcomes
    assert result.load.failed == 0, result.load.outcomes
    assert len(result.ok) == len(result.published), result.published


@ensure_deferred
async def test_rolling_restart_with_redis_loses_nothing(
        handoffs: Any, redis_server: RedisServer) -> None:
    handoff = handoffs("--broker", redis_server.url)
    result = await run(restart_under_load(handoff))
    result.report("rolling restart, Redis broker")
    assert_nobody_refused(result)
    assert result.gap == 0.0
    assert result.sub_events is not None and result.client_events is not None
    # Centrifuge: told to reconnect (3001), recovered every missed publication, once each.
    assert 3001 in [c.code for c in result.client_events.log.of("connecting")]
    first, *again = result.sub_events.log.of("subscribed")
    assert again and all(c.was_recovering and c.recovered for c in again), again
    assert {c.stream_position.epoch for c in [first, *again]} == {
        first.stream_position.epoch}
    start = result.centrifuge[0]
    assert result.centrifuge == [n for n in result.ok if n >= start]
    # Raw: 1001, then the session resumed; everything after its first, in order.
    assert 1001 in result.raw.closes and not result.raw.failures, result.raw
    assert "client raw-restart RECONNECTING -> CONNECTED: resumed" in handoff.run.output()
    start = result.raw.received[0]
    assert set(result.raw.received) >= {n for n in result.ok if n >= start}
    assert list(dict.fromkeys(result.raw.received)) == sorted(set(result.raw.received))


@ensure_deferred
async def test_rolling_restart_with_the_memory_broker(handoffs: Any) -> None:
    """
    Nobody is refused, but the new process knows nothing of the old one's
    streams and sessions: what was published between a client's last
    delivery from the old process and its resubscription to the new one
    is lost for it, and it is told so only over Centrifuge.
    """
    handoff = handoffs()
    result = await run(restart_under_load(handoff))
    result.report("rolling restart, memory broker")
    assert_nobody_refused(result)
    assert result.gap == 0.0
    assert result.sub_events is not None
    first, *again = result.sub_events.log.of("subscribed")
    # A new epoch: Centrifuge says recovered false (the application must resync).
    assert again and all(c.was_recovering and not c.recovered for c in again), again
    assert again[-1].stream_position.epoch != first.stream_position.epoch
    assert 1001 in result.raw.closes and not result.raw.failures, result.raw
    assert "client raw-restart RECONNECTING" not in handoff.run.output()  # a new session
    # Raw: a fresh session, nothing replayed.  Lost: only publications made
    # after the SIGHUP and before the client was back on the new process, or
    # accepted by the old one (its admin listener) once its clients had left.
    after_hup, old_gone = result.window
    raw_back = result.raw.received[result.raw.starts[1]]
    c_back = result.first_after_resubscribe()
    for received, back in ((result.raw.received, raw_back), (result.centrifuge, c_back)):
        assert received == [n for n in result.ok if n in set(received)]  # in order, once
        lost = set(result.ok) - set(received)
        assert all(after_hup < n < max(back, old_gone + 2) for n in lost), (lost, back)


@ensure_deferred
async def test_stop_first_queues_connections_instead_of_refusing(handoffs: Any) -> None:
    """
    C{--stop-first} is C{systemctl restart} on a socket unit: the old
    process exits before the new one starts.  Connections and publications
    made meanwhile wait in the kernel's accept queue of the sockets the
    supervisor still holds; the new process takes them.
    """
    handoff = handoffs(handoff_args=("--stop-first",))
    result = await run(restart_under_load(handoff, subscribers=False))
    result.report("stop, then start (as systemctl restart)")
    assert_nobody_refused(result)
    assert result.gap > 0.2  # there was a time with no process at all
    assert max(result.load.latencies) >= result.gap / 2  # ... and connections waited in it


async def handshake_across_the_stop(handoff: Handoff) -> tuple[bytes, bytes]:
    """
    A connection the old process accepted, whose handshake comes only once
    that process is stopping: (the response's status line, the first frame).
    """
    _, ready = await handoff.line(r"pid (\d+) is ready")
    ws_port, _ = await handoff.ports()
    reader, writer = await asyncio.open_connection("127.0.0.1", ws_port)
    await asyncio.sleep(0.2)  # accepted by the only process there is
    mark = len(handoff.run.lines)
    handoff.signal(signal.SIGHUP)
    await handoff.line(rf"stopping pid {ready[1]}\b", mark)
    await handoff.line(r"omega-ws shutting down", mark)
    writer.write(handshake(ws_port, "/late"))
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        first = await asyncio.wait_for(reader.readexactly(4), 10)
    except (ConnectionResetError, asyncio.IncompleteReadError) as e:
        return repr(e).encode(), b""
    finally:
        writer.close()
    return head.split(b"\r\n")[0], first


@ensure_deferred
async def test_a_handshake_under_way_at_the_stop_completes_then_goes_away(
        handoffs: Any) -> None:
    """
    The old process does not reset a connection it accepted whose handshake
    was still to come when it was told to stop: the handshake completes,
    and the client is closed like every other (1001), to reconnect.
    """
    status, first = await aio(handshake_across_the_stop(handoffs()), WAIT)
    assert status == b"HTTP/1.1 101 Switching Protocols"
    assert first[0] == 0x88 and struct.unpack("!H", first[2:4]) == (1001,)


@ensure_deferred
async def test_a_new_server_that_fails_leaves_the_old_one_serving(
        handoffs: Any, tmp_path: Path) -> None:
    config = tmp_path / "omega-ws.toml"
    config.write_text("[channels]\nhistory_size = 10\n")
    handoff = handoffs("--config", str(config))
    _, ready = await aio(handoff.line(r"pid (\d+) is ready"), WAIT)
    config.write_text("[channels]\nhistory_size = -1\n")  # the upgrade's mistake
    mark = len(handoff.run.lines)
    handoff.signal(signal.SIGHUP)
    await aio(handoff.line(rf"pid {ready[1]} still serves", mark), WAIT)
    config.write_text("[channels]\nhistory_size = 20\n")
    mark = len(handoff.run.lines)
    handoff.signal(signal.SIGHUP)
    await aio(handoff.line(rf"pid {ready[1]} exited", mark), WAIT)
    assert handoff.stop() == 0
    output = handoff.run.output()
    assert "exited unexpectedly" not in output
    for pid in re.findall(r"started pid (\d+)", output):  # every server ended with it
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)


def test_handoff_command_line() -> None:
    def handoff(*args: str) -> tuple[int, str]:
        done = subprocess.run([*HANDOFF, *args], env=clean_env(), capture_output=True,
                              text=True, timeout=20)
        return done.returncode, done.stdout + done.stderr

    code, out = handoff("--help")
    assert code == 0 and "--socket NAME=HOST:PORT" in out and "SIGHUP" in out
    assert handoff("--", "true")[0] == 2  # no --socket
    code, out = handoff("--socket", "ws=9886", "--", "true")
    assert code == 2 and "expected NAME=HOST:PORT" in out
    assert handoff("--socket", "ws=127.0.0.1:0")[0] == 2  # no command
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, out = handoff("--socket", f"ws=127.0.0.1:{port}", "--", "true")
    assert code == 1 and f"cannot listen on 127.0.0.1:{port}" in out
    # A command that exits at once, never ready: the supervisor ends, status 1.
    code, out = handoff("--socket", "ws=127.0.0.1:0", "--", "true")
    assert code == 1 and "exited before it was ready" in out


async def notifications(sock: socket.socket, until_done: Callable[[list[str]], bool],
                        timeout: float = WAIT) -> list[str]:
    """Datagrams on C{sock}, collected until C{until_done(them)}."""
    received: list[str] = []
    deadline = time.monotonic() + timeout
    while not until_done(received):
        try:
            received.append(sock.recv(4096).decode())
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise AssertionError(f"notifications so far: {received}") from None
            await asyncio.sleep(0.02)
    return received


@ensure_deferred
async def test_under_systemd_it_speaks_for_the_current_server(
        handoffs: Any, tmp_path: Path) -> None:
    """
    Type=notify: READY=1 once a server is ready (again after a reload),
    the current server's watchdog pings passed on, STOPPING=1 at the stop.
    """
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    handoff = handoffs(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})

    def count(kind: str) -> Callable[[list[str]], bool]:
        return lambda got: sum(kind in m.split("\n") for m in got) >= 2

    first = await aio(notifications(sock, count("WATCHDOG=1")), WAIT + 1)
    assert first[0].startswith("READY=1\nSTATUS=serving with pid ")
    _, ready = await aio(handoff.line(r"pid (\d+) is ready"), WAIT)
    handoff.signal(signal.SIGHUP)
    again = await aio(notifications(sock, lambda got: any(
        m.startswith("READY=1") for m in got)), WAIT + 1)
    [ready_again] = [m for m in again if m.startswith("READY=1")]
    assert not ready_again.endswith(f"pid {ready[1]}")  # the new server's
    assert handoff.stop() == 0
    rest = []
    with contextlib.suppress(BlockingIOError):
        while True:
            rest.append(sock.recv(4096).decode())
    assert "STOPPING=1" in rest
    sock.close()


def test_the_handoff_unit_runs_what_the_docs_say(tmp_path: Path) -> None:
    unit = REPO / "contrib" / "restart" / "omega-ws-handoff.service"
    text = unit.read_text()
    assert "Type=notify" in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
    [exec_start] = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[1:3] == ["-m", "omega_ws.handoff"]
    args = handoff_parser().parse_args(argv[3:])
    assert [(s.name, s.host, s.port) for s in args.listeners] == [
        ("ws", "0.0.0.0", 9886), ("admin", "127.0.0.1", 9888)]
    command = args.command[1:]
    assert command[1:4] == ["--nodaemon", "--pidfile=", "omega-ws"]
    plugin = command[4:]
    assert plugin[plugin.index("--listen") + 1] == "systemd:domain=INET:name=ws"
    for option in ("--config", "--listen"):  # the file is the unit's; no socket here
        del plugin[plugin.index(option):plugin.index(option) + 2]
    options = Options()
    options.parseOptions(plugin)
    assert (options.config.server.host, options.config.server.port) == ("127.0.0.1", 0)
    if shutil.which("systemd-analyze") is None:
        return
    copy = tmp_path / unit.name
    copy.write_text(text.replace("/opt/omega-ws/bin/", f"{BIN}/"))
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)],
                            capture_output=True, text=True, timeout=60)
    complaints = [line for line in (verify.stdout + verify.stderr).splitlines()
                  if unit.name in line]
    assert verify.returncode == 0 and not complaints, verify.stdout + verify.stderr


# -- why a shared socket and not SO_REUSEPORT --------------------------------------------


def _queued(listener: socket.socket, count: int) -> list[socket.socket]:
    """C{count} connections the kernel completed and queued, none accepted."""
    port = listener.getsockname()[1]
    return [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(count)]


def _reset(client: socket.socket) -> bool:
    """Whether the connection was reset (rather than left open)."""
    client.settimeout(0.5)
    try:
        client.recv(1)
    except ConnectionResetError:
        return True
    except TimeoutError:
        pass
    return False


def test_closing_a_shared_socket_keeps_its_queue_but_so_reuseport_resets_it() -> None:
    """
    A process that stops listening on an inherited (shared) socket closes
    only its descriptor: the queue stays for the others.  With SO_REUSEPORT
    each process has a queue of its own, and closing it resets every
    connection waiting there, the reason omega-ws shares one socket.
    """
    shared = socket.create_server(("127.0.0.1", 0), backlog=64)
    holder = socket.socket(fileno=os.dup(shared.fileno()))  # the supervisor's copy
    clients = _queued(shared, 8)
    shared.close()  # the old server stops listening
    accepted = [holder.accept()[0] for _ in clients]  # the new server takes them all
    for connection, client in zip(accepted, clients, strict=True):
        client.sendall(b"x")
        assert connection.recv(1) == b"x"
        connection.close()
        client.close()
    holder.close()

    def reuseport(port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        return sock

    old = reuseport(0)
    new = reuseport(old.getsockname()[1])
    clients = _queued(old, 16)  # the kernel spreads them over both queues
    old.close()
    reset = [_reset(client) for client in clients]
    print(f"\nSO_REUSEPORT: {sum(reset)} of {len(clients)} queued connections reset "
          "when the old listener closed")
    assert any(reset)  # those that were queued on the old socket
    new.setblocking(False)
    taken = 0
    while True:
        try:
            new.accept()[0].close()
            taken += 1
        except BlockingIOError:
            break
    assert taken == len(clients) - sum(reset)
    for client in clients:
        client.close()
    new.close()
