"""
The npm C{centrifuge} SDK under test, run by C{tests/js/driver.js} in Node.

A L{JsDriver} spawns C{node tests/js/driver.js URL OPTIONS}, writes JSON
commands to its stdin and reads one JSON event a line from its stdout.
Every public method returns a Deferred (the asyncio work is wrapped with
L{support.aio}), so the pytest-twisted tests just C{await} them, and every
wait is bounded.

    driver = await js.start(url, token=...)
    await driver.send("connect")
    await driver.expect("connected")
    value = await driver.call("history", channel="news", limit=10)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred

from .support import aio

__all__ = ["DriverFailure", "JsDriver", "JsDrivers", "js_drivers", "node_available"]

JS_DIR = Path(__file__).parent / "js"
DRIVER = JS_DIR / "driver.js"
WAIT = 5.0  # default bound of one wait
MAX_WAIT = 10.0


def node_available() -> str | None:
    """Why the Node SDK cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (JS_DIR / "node_modules" / "centrifuge").is_dir():
        return "tests/js/node_modules is missing (npm ci in tests/js)"
    return None


class DriverFailure(Exception):
    """A command the SDK rejected: C{{code, message}} as the SDK reports it."""

    def __init__(self, op: str, code: Any, message: str) -> None:
        super().__init__(f"{op} failed: {code} {message}")
        self.op = op
        self.code = code
        self.message = message


Match = Callable[[dict[str, Any]], bool]


class JsDriver:
    """One Node process with one C{Centrifuge} client in it."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self.url = url
        self.options = options
        self.events: list[dict[str, Any]] = []
        self.stderr = b""
        self._consumed: set[int] = set()
        self._changed = asyncio.Condition()
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._refs = itertools.count(1)

    # -- process ------------------------------------------------------------------

    async def _start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            "node", str(DRIVER), self.url, json.dumps(self.options),
            cwd=str(JS_DIR), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.ensure_future(self._read())
        await self._expect(self._matcher("ready", {}), MAX_WAIT)

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        stdout = self._process.stdout
        while True:
            line = await stdout.readline()
            if not line:
                break
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "driver_error", "message": f"not JSON: {line!r}"}
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        async with self._changed:
            self.events.append({"event": "exited", "source": "driver"})
            self._changed.notify_all()

    def kill(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    async def _stop(self) -> None:
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(process.wait(), 5)
        if process.stderr is not None:
            with contextlib.suppress(Exception):
                self.stderr = await asyncio.wait_for(process.stderr.read(), 1)
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 1)

    # -- commands -----------------------------------------------------------------

    async def _send(self, op: str, fields: dict[str, Any]) -> int:
        assert self._process is not None and self._process.stdin is not None
        ref = next(self._refs)
        line = json.dumps({"op": op, "ref": ref, **fields}) + "\n"
        self._process.stdin.write(line.encode())
        await self._process.stdin.drain()
        return ref

    def send(self, op: str, **fields: Any) -> Deferred[int]:
        """Send one command; fires with its C{ref} (results come as events)."""
        return aio(self._send(op, fields))

    async def _call(self, op: str, fields: dict[str, Any], timeout: float) -> Any:
        ref = await self._send(op, fields)
        event = await self._expect(
            lambda e: e.get("event") in ("result", "fail") and e.get("ref") == ref, timeout)
        if event["event"] == "fail":
            raise DriverFailure(op, event.get("code"), event.get("message", ""))
        return event.get("value")

    def call(self, op: str, timeout: float = WAIT, **fields: Any) -> Deferred[Any]:
        """Send a command and wait for its result; L{DriverFailure} when the SDK rejects it."""
        return aio(self._call(op, fields, timeout), timeout + 1)

    # -- events -------------------------------------------------------------------

    @staticmethod
    def _matcher(event: str, fields: dict[str, Any]) -> Match:
        def match(candidate: dict[str, Any]) -> bool:
            return candidate.get("event") == event and all(
                candidate.get(k) == v for k, v in fields.items())
        return match

    def _find(self, match: Match, start: int = 0) -> dict[str, Any] | None:
        for index in range(start, len(self.events)):
            event = self.events[index]
            if index not in self._consumed and match(event):
                self._consumed.add(index)
                return event
        return None

    async def _expect(self, match: Match, timeout: float, start: int = 0) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            async with self._changed:
                while True:
                    found = self._find(match, start)
                    if found is not None:
                        return found
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(wait(), min(timeout, MAX_WAIT))
        except TimeoutError:
            recent = self.events[-40:]
            raise TimeoutError(f"no matching event within {timeout}s; last events: "
                               f"{recent}") from None

    def expect(self, event: str, timeout: float = WAIT, **fields: Any) -> Deferred[dict[str, Any]]:
        """
        The first event called C{event} whose fields equal C{fields} and that
        no earlier expect returned; waits for it up to C{timeout} seconds.
        """
        return aio(self._expect(self._matcher(event, fields), timeout), timeout + 1)

    def expect_match(self, match: Match, timeout: float = WAIT) -> Deferred[dict[str, Any]]:
        return aio(self._expect(match, timeout), timeout + 1)

    async def _absent(self, match: Match, within: float, start: int) -> bool:
        try:
            await self._expect(match, within, start)
        except TimeoutError:
            return True
        return False

    def absent(self, event: str, within: float = 0.5, **fields: Any) -> Deferred[bool]:
        """True when no event like that arrives from now on, for C{within} seconds."""
        start = len(self.events)
        return aio(self._absent(self._matcher(event, fields), within, start), within + 1)

    def seen(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """Every event so far with that name and those fields, consumed or not."""
        match = self._matcher(event, fields)
        return [e for e in self.events if match(e)]

    def log(self) -> str:
        """Every event so far, one JSON a line: for assertion messages."""
        return "\n".join(json.dumps(e, ensure_ascii=False) for e in self.events)

    def errors(self) -> list[dict[str, Any]]:
        """Driver-level problems: a throwing handler, an unhandled rejection."""
        return self.seen("driver_error")


class JsDrivers:
    """Starts drivers for one test and kills them all afterwards."""

    def __init__(self) -> None:
        self.started: list[JsDriver] = []

    def start(self, url: str, **options: Any) -> Deferred[JsDriver]:
        async def start() -> JsDriver:
            driver = JsDriver(url, options)
            self.started.append(driver)
            await driver._start()
            return driver

        return aio(start(), MAX_WAIT + 1)

    async def stop_all(self) -> None:
        for driver in self.started:  # all killed at once, then reaped
            driver.kill()
        for driver in self.started:
            with contextlib.suppress(Exception):
                await aio(driver._stop(), 10)


@pytest_twisted.async_yield_fixture(name="js")
async def js_drivers() -> AsyncIterator[JsDrivers]:
    """C{await js.start(url, **options)}: a driver, killed after the test."""
    drivers = JsDrivers()
    try:
        yield drivers
    finally:
        await drivers.stop_all()
