"""
omega-ws as real processes (C{twistd -n omega-ws}, C{python -m omega_ws}),
as users and the multi-node tests run it: a clean environment, 127.0.0.1,
port 0, and the real ports read from its "omega-ws listening on" lines.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import children

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
TWISTD = [str(BIN / "twistd"), "-n", "omega-ws"]
PYTHON_M = [sys.executable, "-m", "omega_ws"]
LOOPBACK_ARGS = ["--host", "127.0.0.1", "--port", "0", "--admin-port", "0"]
URL_RE = re.compile(r"omega-ws listening on ((?:ws|wss|http)://[0-9.]+:\d+)")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


def clean_env(**extra: str) -> dict[str, str]:
    """
    This environment without the variables omega-ws reads (so the developer's
    own settings do not leak into a test), with the checkout on PYTHONPATH.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WEBSOCKET_", "SSL_", "OMEGA_WS_", "NOTIFY_SOCKET"))}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


class Running:
    """A server process whose stdout is read in the background."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, **popen: Any) -> None:
        self.proc = children.popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, **popen)
        self.lines: list[str] = []
        self._urls: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            url = self._listening_url(line)
            if url is not None:
                self._urls.append(url)
                if url.startswith("http://"):
                    self._ready.set()
        self._ready.set()

    @staticmethod
    def _listening_url(line: str) -> str | None:
        if line.startswith("{"):  # --log-format json
            event = json.loads(line)
            if event.get("log_format") == "omega-ws listening on {url}":
                return str(event["url"])
            return None
        match = URL_RE.search(line)
        return match.group(1) if match else None

    def urls(self, timeout: float = START_TIMEOUT) -> list[str]:
        """
        Every listener's URL, once the admin one (the last to listen) is
        up; it must be enabled.
        """
        assert self._ready.wait(timeout), "server did not start:\n" + self.output()
        assert self._urls, "server did not start:\n" + self.output()
        return self._urls

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        return self.wait()

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Its exit code, once it exited and all its output is read."""
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def output(self) -> str:
        return "".join(self.lines)


class Node:
    """
    One C{twistd -n omega-ws} on 127.0.0.1, in folder C{cwd} (a temporary
    one by default), started and waited for (bounded) on construction.

    With a broker that must connect first (C{--broker redis://...}) it
    listens only once connected; C{wait=False} returns at once, and
    L{wait_listening} waits later.

    @param extra_args: more omega-ws options, e.g. C{"--broker", url}.
    @param env: variables on top of L{clean_env}.
    """

    def __init__(self, *extra_args: str, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, wait: bool = True,
                 timeout: float = START_TIMEOUT) -> None:
        if cwd is None:
            self._tempdir: tempfile.TemporaryDirectory[str] | None = (
                tempfile.TemporaryDirectory(prefix="omega-ws-node-"))
            cwd = Path(self._tempdir.name)
        else:
            self._tempdir = None
            cwd.mkdir(parents=True, exist_ok=True)
        self.cwd = cwd
        self.args = [*TWISTD, *LOOPBACK_ARGS, *extra_args]
        self.process = Running(self.args, clean_env(**dict(env or {})), cwd)
        if wait:
            try:
                self.wait_listening(timeout)
            except BaseException:
                self.kill()
                raise

    def wait_listening(self, timeout: float = START_TIMEOUT) -> Node:
        """Wait until every listener is up. @raise AssertionError: it did not, or exited."""
        urls = self.process.urls(timeout)
        assert any(u.startswith("ws://") for u in urls) and any(
            u.startswith("http://") for u in urls), "server did not start:\n" + self.output()
        return self

    # -- where -------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        """C{ws://127.0.0.1:PORT} of server.port (the first ws:// listener)."""
        return next(u for u in self.process.urls() if u.startswith("ws://"))

    @property
    def admin_url(self) -> str:
        """C{http://127.0.0.1:PORT} of the admin API."""
        return next(u for u in self.process.urls() if u.startswith("http://"))

    @property
    def ws_port(self) -> int:
        return int(self.ws_url.rsplit(":", 1)[1])

    @property
    def admin_port(self) -> int:
        return int(self.admin_url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    @property
    def alive(self) -> bool:
        return self.process.proc.poll() is None

    # -- output ------------------------------------------------------------------

    def output(self) -> str:
        return self.process.output()

    def wait_for(self, pattern: str, timeout: float = 10.0) -> str:
        """
        The first output line matching regular expression C{pattern},
        waiting for it up to C{timeout}.
        @raise AssertionError: none came (or the process exited first).
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            exited = not self.alive
            for line in list(self.process.lines):
                if regex.search(line):
                    return line
            if exited or time.monotonic() > deadline:
                state = "exited" if exited else f"no such line in {timeout} s"
                raise AssertionError(f"{pattern!r}: {state}:\n{self.output()}")
            time.sleep(0.02)

    # -- stopping ----------------------------------------------------------------

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """
        Send C{signum} and wait for the exit; its code (twistd ends by the
        SIGTERM itself after a clean stop: C{-15} or 0).
        @raise AssertionError: it did not exit in time (it is then killed).
        """
        if not self.alive:
            return self.kill()
        try:
            return self.process.stop(signum)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"node did not stop on signal {signum}:\n"
                                 + self.output()) from None

    def kill(self) -> int:
        """SIGKILL, as in a crash (no close frames, no broker goodbye). The exit code."""
        if self.alive:
            self.process.proc.kill()
        return self.process.wait()

    def close(self) -> None:
        """What the fixture does after the test: a clean stop, else a kill."""
        if self.alive:
            try:
                self.stop()
            except AssertionError:
                pass

    def __repr__(self) -> str:
        return f"<Node pid {self.pid} {'alive' if self.alive else 'exited'}>"
