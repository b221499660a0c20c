"""
systemd's notifications (READY=1, STATUS=, WATCHDOG=1, EXTEND_TIMEOUT_USEC=,
STOPPING=1) to a real Unix datagram socket, without systemd: timing with
twisted's Clock in-process, then real C{twistd -n omega-ws} processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from websockets.sync.client import connect

from omega_ws.devcert import write_pair
from omega_ws.systemd import (
    extend_timeout_while,
    notify,
    status_line,
    watchdog_interval,
)
from omega_ws.timers import WatchdogService

from .nodes import LOOPBACK_ARGS, TWISTD, Node, Running, clean_env


def test_notify_sends_the_state_as_one_datagram(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify"))
        assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert listener.recv(64) == b"READY=1"


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"omega-ws-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        assert notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert listener.recv(64) == b"STOPPING=1"


def test_without_systemd_nothing_is_sent() -> None:
    assert notify("READY=1", {}) is False


def test_an_unreachable_socket_is_a_warning_not_an_error(tmp_path: Path) -> None:
    with capturedLogs() as events:
        assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "absent")}) is False
    assert [e["log_level"].name for e in events] == ["warn"]


# -- helpers ---------------------------------------------------------------------------


class NotifySocket:
    """
    What systemd holds: a bound C{AF_UNIX} datagram socket (abstract, so no
    path length limit), read by a thread as systemd reads it, each message
    kept with the time it arrived.
    """

    _count = 0

    def __init__(self) -> None:
        NotifySocket._count += 1
        self.address = f"@omega-ws-test-{os.getpid()}-{NotifySocket._count}-{time.time_ns()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.received.append((time.monotonic(), data.decode()))

    def messages(self, prefix: str = "") -> list[str]:
        return [m for _, m in list(self.received) if m.startswith(prefix)]

    def timed(self, prefix: str) -> list[float]:
        return [t for t, m in list(self.received) if m.startswith(prefix)]

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 10.0,
                 what: str = "message") -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages():
                if predicate(message):
                    return message
            time.sleep(0.02)
        raise AssertionError(f"no {what} in {timeout} s; got {self.messages()}")

    def wait_count(self, prefix: str, count: int, timeout: float = 10.0) -> None:
        """Wait until C{count} messages starting with C{prefix} have come."""
        self.wait_for(lambda _: len(self.messages(prefix)) >= count, timeout,
                      f"{count} messages {prefix}...")

    def close(self) -> None:
        self._stop.set()
        self._reader.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    listener = NotifySocket()
    yield listener
    listener.close()


def _received(sock: socket.socket) -> list[str]:
    """Every datagram waiting on C{sock}, without blocking."""
    out = []
    while True:
        try:
            out.append(sock.recv(4096, socket.MSG_DONTWAIT).decode())
        except BlockingIOError:
            return out


@pytest.fixture
def bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A notify socket read by the test itself, named by NOTIFY_SOCKET."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        yield listener


# -- notify never blocks the reactor -----------------------------------------------------


def test_a_receiver_that_does_not_read_costs_messages_not_the_reactor(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify")}
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(env["NOTIFY_SOCKET"])
        started = time.monotonic()
        with capturedLogs() as events:
            sent = 0
            while notify("WATCHDOG=1", env):
                sent += 1
                assert sent < 100_000, "the receiver's queue never filled"
        assert time.monotonic() - started < 5
        assert sent > 0 and len(_received(listener)) == sent
    assert [e["log_level"].name for e in events] == ["warn"]


# -- STATUS= ---------------------------------------------------------------------------


def test_status_line_counts_connections_by_transport_and_names_the_broker() -> None:
    assert status_line({}, 0) == (
        "connections: 0 (raw 0, centrifuge 0); channels: 0; broker ok")
    counts = {("raw", "CONNECTED"): 9, ("raw", "RECONNECTING"): 1,
              ("centrifuge", "CONNECTED"): 2}
    assert status_line(counts, 5) == (
        "connections: 12 (raw 10, centrifuge 2; 1 reconnecting); channels: 5; broker ok")
    assert status_line({("centrifuge", "CONNECTED"): 1}, 1, False, "connection refused") == (
        "connections: 1 (raw 0, centrifuge 1); channels: 1; "
        "broker unreachable: connection refused")
    assert status_line({}, 0, False).endswith("; broker unreachable")
    # A problem's text cannot smuggle another assignment in.
    assert status_line({}, 0, False, "refused\nMAINPID=1").endswith(
        "; broker unreachable: refused MAINPID=1")


def test_the_monitor_sends_status_at_each_sweep(bound: socket.socket) -> None:
    from omega_ws.registry import Registry
    from omega_ws.timers import MonitorService

    from .test_timers import FakeConnection

    clock, registry = Clock(), Registry()
    lines = iter(["first", "second"])
    monitor = MonitorService(registry, clock, 10, 300, dict, status=lambda: next(lines))
    FakeConnection("a", registry, clock)
    monitor.startService()
    clock.advance(9.9)
    assert _received(bound) == []
    clock.advance(0.1)
    assert _received(bound) == ["STATUS=first"]
    clock.advance(10)
    assert _received(bound) == ["STATUS=second"]
    # A failing status is logged; the sweep goes on.
    with capturedLogs() as events:
        clock.advance(10)
    assert _received(bound) == []
    assert [e["log_level"].name for e in events if "log_failure" in e] == ["critical"]
    monitor.stopService()
    assert clock.getDelayedCalls() == []


def test_without_systemd_the_monitor_does_not_even_build_the_status(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from omega_ws.registry import Registry
    from omega_ws.timers import MonitorService

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    clock, built = Clock(), []

    def status() -> str:
        built.append(clock.seconds())
        return "built"

    monitor = MonitorService(Registry(), clock, 10, 300, dict, status=status)
    monitor.startService()
    clock.advance(30)
    assert built == []
    monitor.stopService()


# -- WATCHDOG=1 ------------------------------------------------------------------------


@pytest.mark.parametrize(("environ", "interval"), [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "4242"}, 0.5),  # ours (pid=4242 below)
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "4243"}, None),  # another process's
    ({"WATCHDOG_USEC": ""}, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec_when_it_is_ours(
        environ: dict[str, str], interval: float | None) -> None:
    assert watchdog_interval(environ, pid=4242) == interval


def test_the_watchdog_pid_defaults_to_our_own() -> None:
    usec = {"WATCHDOG_USEC": "2000000"}
    assert watchdog_interval({**usec, "WATCHDOG_PID": str(os.getpid())}) == 1.0
    assert watchdog_interval({**usec, "WATCHDOG_PID": str(os.getpid() + 1)}) is None


@pytest.mark.parametrize("usec", ["0", "-5", "soon"])
def test_a_watchdog_usec_that_does_not_parse_is_a_warning(usec: str) -> None:
    with capturedLogs() as events:
        assert watchdog_interval({"WATCHDOG_USEC": usec}) is None
    assert [e["log_level"].name for e in events] == ["warn"]


def test_the_watchdog_pings_every_interval_from_start_to_stop(bound: socket.socket) -> None:
    clock = Clock()
    watchdog = WatchdogService(clock, 15.0)
    watchdog.startService()
    assert _received(bound) == []  # READY=1 comes first; systemd watches from then
    clock.advance(14.9)
    assert _received(bound) == []
    clock.advance(0.1)
    assert _received(bound) == ["WATCHDOG=1"]
    clock.pump([15] * 3)
    assert _received(bound) == ["WATCHDOG=1"] * 3
    watchdog.stopService()
    assert clock.getDelayedCalls() == []
    clock.advance(60)
    assert _received(bound) == []


# -- EXTEND_TIMEOUT_USEC= ----------------------------------------------------------------


def test_extensions_while_the_drain_lasts(bound: socket.socket) -> None:
    clock, drained = Clock(), Deferred[str]()
    assert extend_timeout_while(drained, clock, 3.0) is drained
    assert _received(bound) == ["EXTEND_TIMEOUT_USEC=8000000"]  # 3 s + 5 s margin, at once
    clock.advance(1)
    assert _received(bound) == ["EXTEND_TIMEOUT_USEC=7000000"]  # what is left, plus margin
    clock.advance(1)
    assert _received(bound) == ["EXTEND_TIMEOUT_USEC=6000000"]
    clock.advance(0.5)
    drained.callback("result")
    assert clock.getDelayedCalls() == []
    assert _received(bound) == []
    assert drained.result == "result"


def test_extensions_end_even_when_the_drain_does_not(bound: socket.socket) -> None:
    clock, never = Clock(), Deferred[None]()
    extend_timeout_while(never, clock, 2.0, margin=3.0)
    clock.pump([1] * 10)
    values = [int(m.removeprefix("EXTEND_TIMEOUT_USEC=")) for m in _received(bound)]
    # t=0..4: 5, 4, 3 (2 s over), then the margin alone; none past t=5.
    assert values == [5_000_000, 4_000_000, 3_000_000, 3_000_000, 3_000_000]
    assert clock.getDelayedCalls() == []


def test_nothing_to_extend_when_the_drain_is_over_or_no_systemd(
        bound: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    done = succeed(None)
    assert extend_timeout_while(done, clock, 3.0) is done
    monkeypatch.delenv("NOTIFY_SOCKET")
    pending = Deferred[None]()
    extend_timeout_while(pending, clock, 3.0)
    assert clock.getDelayedCalls() == []
    assert _received(bound) == []


# -- a real twistd -n omega-ws -----------------------------------------------------------


def _sweeping_config(tmp_path: Path, interval: float = 0.5) -> Path:
    """A configuration whose monitor sweeps (and so sends STATUS=) every C{interval} s."""
    path = tmp_path / "omega-ws.toml"
    path.write_text(f"[monitor]\ninterval = {interval}\n")
    return path


def _silent_client(ws_url: str, path: str) -> socket.socket:
    """A WebSocket client that opens and then never answers: the drain must wait for it."""
    host, port = ws_url.removeprefix("ws://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        assert chunk, answer
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


def _usec(message: str) -> int:
    return int(message.removeprefix("EXTEND_TIMEOUT_USEC="))


def test_twistd_under_systemd_ready_status_watchdog_then_extend_and_stopping(
        tmp_path: Path, notify_socket: NotifySocket) -> None:
    """
    As systemd runs the unit (WATCHDOG_USEC=1 s, WATCHDOG_PID the pid it
    started): READY=1 first; STATUS= with the counts at each sweep;
    WATCHDOG=1 every 0.5 s; on SIGTERM, STOPPING=1 then EXTEND_TIMEOUT_USEC=
    while a client that never answers holds the drain.
    """
    env = clean_env(NOTIFY_SOCKET=notify_socket.address, WATCHDOG_USEC="1000000")
    # WATCHDOG_PID as systemd sets it: the pid of the process it started,
    # which exec keeps.
    args = ["sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"', "sh",
            *TWISTD, *LOOPBACK_ARGS, "--config", str(_sweeping_config(tmp_path))]
    server = Running(args, env, tmp_path)
    silent = None
    try:
        ws_url = server.urls()[0]
        notify_socket.wait_for(lambda m: m == "READY=1", what="READY=1")
        assert notify_socket.messages()[0] == "READY=1"
        with connect(ws_url + "/alerts", open_timeout=5), \
                connect(ws_url + "/connection/websocket", open_timeout=5) as centrifuge:
            centrifuge.send(json.dumps({"id": 1, "connect": {}}))
            assert "connect" in json.loads(centrifuge.recv(5))
            notify_socket.wait_for(
                lambda m: m == ("STATUS=connections: 2 (raw 1, centrifuge 1); channels: 1; "
                                "broker ok"), what="STATUS= with both clients")
            notify_socket.wait_count("WATCHDOG=1", 4)
            silent = _silent_client(ws_url, "/alerts")
            notify_socket.wait_for(lambda m: m.startswith("STATUS=connections: 3 (raw 2,"),
                                   what="STATUS= with the silent client")
            code = server.stop()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.wait()
        if silent is not None:
            silent.close()
    assert code in (0, -signal.SIGTERM), server.output()
    assert "Traceback" not in server.output()

    [ready_at] = notify_socket.timed("READY=1")
    [stopping_at] = notify_socket.timed("STOPPING=1")
    pings = [t for t in notify_socket.timed("WATCHDOG=1") if t < stopping_at]
    gaps = sorted(b - a for a, b in zip(pings, pings[1:], strict=False))
    assert 0.3 < pings[0] - ready_at < 2.0, pings[0] - ready_at  # half of WATCHDOG_USEC
    assert 0.4 < gaps[len(gaps) // 2] < 0.75, gaps

    messages = notify_socket.messages()
    after = messages[messages.index("STOPPING=1") + 1:]
    extensions = [_usec(m) for m in after if m.startswith("EXTEND_TIMEOUT_USEC=")]
    assert len(extensions) >= 2, messages  # repeated while the silent client holds the drain
    assert 7_000_000 < extensions[0] <= 8_000_000  # the 3 s grace plus a 5 s margin
    assert extensions == sorted(extensions, reverse=True) and len(set(extensions)) == len(
        extensions)
    assert all(not m.startswith("EXTEND") for m in messages[:messages.index("STOPPING=1")])


def test_a_watchdog_meant_for_another_process_is_left_alone(
        tmp_path: Path, notify_socket: NotifySocket) -> None:
    node = Node("--config", str(_sweeping_config(tmp_path, 0.3)),
                env={"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "200000",
                     "WATCHDOG_PID": str(os.getpid())})  # this test's pid, not the server's
    try:
        notify_socket.wait_for(lambda m: m == "READY=1", what="READY=1")
        for _ in range(3):  # 0.9 s: nine pings' worth, had it been ours
            notify_socket.wait_count("STATUS=", len(notify_socket.messages("STATUS=")) + 1)
        assert notify_socket.messages("WATCHDOG") == []
    finally:
        node.close()
    assert notify_socket.messages()[-1] == "STOPPING=1"  # no client: no drain to extend


# -- MemoryDenyWriteExecute=yes ----------------------------------------------------------

PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def _deny_write_execute() -> None:
    """
    In the child before it execs: the kernel's own form of systemd's
    MemoryDenyWriteExecute=yes (prctl PR_SET_MDWE, Linux 6.3+), which
    execve keeps.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


@pytest.fixture(scope="module")
def write_execute_denied() -> None:
    try:
        subprocess.run(["true"], preexec_fn=_deny_write_execute, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"this kernel cannot deny write+execute memory to a process: {e}")


def test_plain_ws_serves_without_writable_executable_memory(
        tmp_path: Path, notify_socket: NotifySocket, write_execute_denied: None) -> None:
    env = clean_env(NOTIFY_SOCKET=notify_socket.address)
    server = Running([*TWISTD, *LOOPBACK_ARGS], env, tmp_path, preexec_fn=_deny_write_execute)
    try:
        ws_url = server.urls()[0]
        notify_socket.wait_for(lambda m: m == "READY=1", what="READY=1")
        with connect(ws_url + "/room", open_timeout=5) as a, \
                connect(ws_url + "/room", open_timeout=5) as b, \
                connect(ws_url + "/connection/websocket", open_timeout=5) as centrifuge:
            centrifuge.send(json.dumps({"id": 1, "connect": {}}))
            assert "connect" in json.loads(centrifuge.recv(5))
            time.sleep(0.2)
            a.send('{"n": 1}')
            assert b.recv(5) == '{"n": 1}'
            code = server.stop()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.wait()
    assert code in (0, -signal.SIGTERM), server.output()
    assert "Traceback" not in server.output() and "MemoryError" not in server.output()


def test_wss_refuses_to_start_without_writable_executable_memory(
        tmp_path: Path, write_execute_denied: None) -> None:
    """
    pyOpenSSL's callbacks need W+X memory: one clear line at start rather
    than a failed handshake for every wss:// client.
    """
    cert, key = write_pair(tmp_path / "certs")
    args = [*TWISTD, *LOOPBACK_ARGS, "--tls-port", "0", "--cert", str(cert), "--key", str(key)]
    server = Running(args, clean_env(), tmp_path, preexec_fn=_deny_write_execute)
    try:
        code = server.wait()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.wait()
    assert code == 1, server.output()
    assert "omega-ws: error: server.cert: wss:// cannot work here" in server.output()
    assert "listening on" not in server.output()
