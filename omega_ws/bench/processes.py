"""
Starting and measuring the processes a benchmark runs: servers, the Node
load generator, their CPU time and memory, and stopping them all.
Shared by C{python -m omega_ws.bench} and its Redis mode.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVERS = ("omega-ws", "websockets", "autobahn")


def fail(message: str) -> None:
    sys.stderr.write(f"omega-ws bench: error: {message}\n")
    raise SystemExit(1)


def loadgen_dir() -> Path:
    """Where the load generator is (plain Node.js, no packages)."""
    if shutil.which("node") is None:
        fail("Node.js is needed for the load generator")
    return HERE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def die_with_parent() -> None:
    """
    In a child, before it runs its program: SIGKILL when the bench dies,
    even SIGKILLed, so that no server outlives it (Linux; else nothing).
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop(process: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGTERM and wait; SIGKILL after C{timeout}, or at once if interrupted meanwhile."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if process.poll() is None:  # too slow, or a second Ctrl-C while waiting
                process.kill()
                process.wait()


@contextmanager
def server(kind: str, workdir: Path, broker: str | None = None, name: str | None = None
           ) -> Iterator[tuple[int, int]]:
    """
    Start a server; yields (pid, port); always stops it.  omega-ws only:
    C{broker} is its C{broker.url} (default memory://), C{name} names its
    files (several nodes in one folder).
    """
    name = name or kind
    port = free_port()
    if kind == "omega-ws":
        config = workdir / f"{name}.toml"
        config.write_text(
            f"[server]\nhost = '127.0.0.1'\nport = {port}\nmax_connections = 20000\n"
            "backlog = 4096\n[admin]\nenabled = false\n[log]\nlevel = 'warn'\n"
            + (f"[broker]\nurl = '{broker}'\n" if broker else ""))
        command = [sys.executable, "-m", "omega_ws", "--config", str(config)]
    else:
        command = [sys.executable, "-m", "omega_ws.bench.peers", kind, str(port)]
    # Its output goes to a file: a pipe nobody reads would stall it once full.
    log = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                output = (workdir / f"{name}.log").read_text(errors="replace")[-500:]
                fail(f"{name} did not start: {output}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    fail(f"{name} did not listen within 20 s")
                time.sleep(0.1)
        yield process.pid, port
    finally:
        stop(process)
        log.close()


def loadgen(directory: Path, *args: object, on_event: Any = None,
            timeout: float = 240) -> dict[str, Any]:
    """Run the generator; call C{on_event} for each line; return its result line."""
    command = ["node", str(directory / "loadgen.js"), *map(str, args)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               preexec_fn=die_with_parent)
    assert process.stdout is not None and process.stdin is not None
    result: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        for line in process.stdout:
            event = json.loads(line)
            if event["event"] == "error":
                fail(f"load generator: {event['error']}")
            if on_event is not None and on_event(event, process):
                process.stdin.close()
            if event["event"] == "result":
                result = event
            if time.monotonic() > deadline:
                fail("load generator time limit")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    return result
