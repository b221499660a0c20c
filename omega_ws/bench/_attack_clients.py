"""
The pieces C{python -m omega_ws.bench.attacks} is made of: the server
process and what C{/proc} says about it, its admin C{/metrics}, a
bare-socket WebSocket client for the frames libraries will not send, and a
latency probe that runs as its own process (so that the attacking client's
own work does not show up as the server's latency).

C{python -m omega_ws.bench._attack_clients probe PORT} is that probe: it
publishes a small message on channel C{probe} every 20 ms until its stdin
closes, times each echo, then prints one JSON line of figures.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import websockets

__all__ = [
    "CLOSE", "CONTINUATION", "PING", "TEXT", "Metrics", "Monitor", "Probe", "RawClient",
    "Refused", "Server", "Usage", "frame", "http", "usage",
]

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LISTENING = "omega-ws listening on {url}"
# The tree this module is in: the server under attack is the same code.
SOURCE_ROOT = Path(__file__).resolve().parents[2]


# -- the server process ---------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """One look at a process: resident memory, open descriptors, CPU time."""

    rss_mib: float
    fds: int
    cpu_s: float


def usage(pid: int) -> Usage:
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
    return Usage(rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd")), cpu)


def toml(settings: Mapping[str, Mapping[str, object]]) -> str:
    """A TOML document from C{{section: {key: value}}} (strings, numbers, booleans)."""
    lines = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            text = str(value).lower() if isinstance(value, bool) else json.dumps(value)
            lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


class Server:
    """
    C{python -m omega_ws --port 0 --admin-port 0 --log-format json --config
    FILE} on 127.0.0.1; its ports come from the "omega-ws listening on" lines
    of its log.  An async context manager: started on entry, stopped
    (SIGTERM, then SIGKILL after 10 s) on exit.
    """

    def __init__(self, workdir: Path, name: str,
                 settings: Mapping[str, Mapping[str, object]]) -> None:
        self.config = workdir / f"{name}.toml"
        self.log = workdir / f"{name}.log"
        server = {"host": "127.0.0.1", **settings.get("server", {})}
        self.config.write_text(toml({**settings, "server": server}))
        self.process: subprocess.Popen[bytes] | None = None
        self.port = self.admin_port = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def __aenter__(self) -> Server:
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(SOURCE_ROOT), *filter(None, [environment.get("PYTHONPATH")])])
        command = [sys.executable, "-m", "omega_ws", "--port", "0", "--admin-port", "0",
                   "--log-format", "json", "--config", str(self.config)]
        # Its output goes to a file: a pipe nobody reads would stall it once full.
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            env=environment, cwd=self.config.parent)
        deadline = time.monotonic() + 20
        while True:
            urls = self._urls()
            if len(urls) >= 2:
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                await self.__aexit__(None, None, None)
                tail = self.log.read_text(errors="replace")[-600:]
                raise RuntimeError(f"the server did not start: {tail}")
            await asyncio.sleep(0.05)
        ports = {url.split(":")[0]: int(url.rsplit(":", 1)[1]) for url in urls}
        self.port, self.admin_port = ports["ws"], ports["http"]
        return self

    def _urls(self) -> list[str]:
        urls = []
        for line in self.log.read_bytes().splitlines():
            if b"omega-ws listening on" in line:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("log_format") == LISTENING:
                    urls.append(str(event["url"]))
        return urls

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        for _ in range(200):
            if process.poll() is not None:
                return
            await asyncio.sleep(0.05)
        process.kill()
        process.wait()

    def errors(self) -> list[str]:
        """Error and critical events of its log (a traceback is a bug under any attack)."""
        found = []
        for line in self.log.read_bytes().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            level = (event.get("log_level") or {}).get("name")
            if level in ("error", "critical") or "log_failure" in event:
                found.append(str(event.get("log_format", ""))[:200])
        return found


class Monitor:
    """Samples a process every 50 ms between C{start()} and C{stop()}: before, peak, after."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = self.after = usage(pid)
        self.peak_rss = self.before.rss_mib
        self.peak_fds = self.before.fds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.before = self.sample()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                await asyncio.sleep(0.05)
                self.sample()
        except OSError:
            pass  # the process is gone: the last sample stands

    def sample(self) -> Usage:
        now = usage(self.pid)
        self.peak_rss = max(self.peak_rss, now.rss_mib)
        self.peak_fds = max(self.peak_fds, now.fds)
        return now

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.after = self.sample()  # OSError when the process is gone


# -- admin HTTP ---------------------------------------------------------------------


async def http(port: int, method: str, path: str, body: Any = None,
               timeout: float = 10.0) -> tuple[int, bytes]:
    """One HTTP/1.0 request to 127.0.0.1:C{port}: (status, body).  C{body} is sent as JSON."""

    async def request() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        writer.write(head.encode() + b"\r\n" + data)
        response = await reader.read()
        writer.close()
        status_line, _, rest = response.partition(b"\r\n")
        return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]

    return await asyncio.wait_for(request(), timeout)


class Metrics(dict[str, float]):
    """The admin C{/metrics} samples, by series (C{name{labels}})."""

    @classmethod
    async def fetch(cls, admin_port: int) -> Metrics:
        status, body = await http(admin_port, "GET", "/metrics")
        if status != 200:
            raise RuntimeError(f"GET /metrics answered {status}")
        metrics = cls()
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                metrics[series] = float(value)
        return metrics

    def total(self, name: str) -> float:
        """A family's sum over its labels (0 when absent)."""
        return sum(v for k, v in self.items() if k == name or k.startswith(name + "{"))

    def by_label(self, name: str) -> dict[str, float]:
        """C{name{label="x"}} -> {"x": value}, for a family with one label."""
        return {k.split('"')[1]: v for k, v in self.items() if k.startswith(name + "{")}


# -- a WebSocket client on a bare socket --------------------------------------------


def frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True) -> bytes:
    """
    A client frame.  C{masked=False} still sets the mask bit but uses the key
    0000 (legal, and the payload goes out as it is: cheap for floods).
    """
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    if not masked:
        return header + b"\0\0\0\0" + payload
    key = os.urandom(4)
    mask = (key * (length // 4 + 1))[:length]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(length, "big")
    return header + key + body


class Refused(ConnectionError):
    """The server answered the opening handshake with something other than 101."""

    def __init__(self, status: int, head: str) -> None:
        super().__init__(head)
        self.status = status


class RawClient:
    """One WebSocket connection on a bare asyncio socket, frames written by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, path: str = "/", source: str = "127.0.0.1",
                   rcvbuf: int | None = None, timeout: float = 10.0) -> RawClient:
        """Connect from C{source}; raise L{Refused} unless the server switches protocols."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:  # before connect(), so the window stays small
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((source, 0))
            sock.setblocking(False)
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), timeout)
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock, limit=2 ** 16)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except BaseException:
            writer.close()
            raise
        status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if not status_line.startswith("HTTP/1.1 101"):
            writer.close()
            raise Refused(int(status_line.split()[1]), status_line)
        return cls(reader, writer)

    def send(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.writer.write(frame(opcode, payload, fin))

    async def receive(self, timeout: float = 10.0) -> tuple[int, bytes]:
        """The next server frame: (opcode, payload)."""

        async def read() -> tuple[int, bytes]:
            first, second = await self.reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return first & 0x0F, await self.reader.readexactly(length)

        return await asyncio.wait_for(read(), timeout)

    async def until_close(self, timeout: float = 10.0) -> int | str:
        """Skip frames up to the server's close frame: its code, or how TCP ended without one."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    opcode, payload = await self.receive(timeout)
                    if opcode == CLOSE:
                        return int(struct.unpack("!H", payload[:2])[0]) if payload else 1005
        except asyncio.IncompleteReadError:
            return "eof"
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "open"

    def close(self) -> None:
        self.writer.close()


# -- another client's latency, from its own process ---------------------------------


class Probe:
    """
    C{async with Probe(port) as probe:} runs the probe process meanwhile;
    C{probe.result} then holds its figures (C{p50_ms}, C{p99_ms}, C{max_ms},
    C{sent}, C{lost}, C{closed}).  Entered, it has already had one echo.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.result: dict[str, Any] = {}
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Probe:
        environment = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT)}
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "omega_ws.bench._attack_clients", "probe", str(self.port),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=environment)
        assert self._process.stdout is not None
        await asyncio.wait_for(self._process.stdout.readline(), 20)  # "ready"
        return self

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        process.stdin.close()
        try:
            line = await asyncio.wait_for(process.stdout.readline(), 15)
            self.result = json.loads(line) if line else {}
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _probe(port: int, interval: float = 0.02, patience: float = 5.0) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stdin_closed() -> None:  # readable means EOF: the attack is over
        loop.remove_reader(sys.stdin.fileno())
        stop.set()

    loop.add_reader(sys.stdin.fileno(), stdin_closed)
    latencies: list[float] = []
    sent = lost = 0
    closed = None
    async with websockets.connect(f"ws://127.0.0.1:{port}/probe", compression=None,
                                  max_size=None, open_timeout=20) as ws:
        await ws.send('{"probe":0}')  # the channel's stream exists before the attack
        await asyncio.wait_for(ws.recv(), patience)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        while not stop.is_set():
            sent += 1
            started = time.perf_counter()
            try:
                await ws.send(json.dumps({"probe": sent}))
                while True:  # skip echoes that came too late for the one before
                    echo = await asyncio.wait_for(ws.recv(), patience)
                    if json.loads(echo).get("probe") == sent:
                        break
                latencies.append((time.perf_counter() - started) * 1000)
            except TimeoutError:
                lost += 1
            except websockets.ConnectionClosed as e:
                closed = e.rcvd.code if e.rcvd else "abnormal"
                break
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass
    return {"sent": sent, "lost": lost, "closed": closed, "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99), "max_ms": max(latencies, default=None)}


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "probe":
        sys.exit("usage: python -m omega_ws.bench._attack_clients probe PORT")
    sys.stdout.write(json.dumps(asyncio.run(_probe(int(sys.argv[2])))) + "\n")
