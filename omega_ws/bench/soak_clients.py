"""
The soak's traffic (C{python -m omega_ws.bench soak}): clients of both wires
and admin-API publishers, each an asyncio task that stops by itself at the
deadline, every wait bounded.

What is checked as it goes: every admin-API publication carries
C{(channel, seq)}, published one at a time per channel, so that channel's
C{seq} stream has no holes.  A raw client checks that stream on its channel:
within one connection C{seq} goes up by one; after a resume (same
C{client_id}, within the session TTL) it may repeat some (duplicates), but
the first new C{seq} must be the last one seen + 1.  A Centrifuge client
checks offsets, which number every publication of a channel: pushes go up
by one, and C{recovered: true} must bring exactly the ones after its
position.  Anything else is a L{Gap}; which of those the server reported is
settled afterwards from its log.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

__all__ = ["BULK", "CHANNELS", "CentrifugeClient", "Gap", "Http", "RawClient", "Tally",
           "Target", "api_publisher", "chaos"]

CHANNELS = ("soak.a", "soak.b", "soak.c")
BULK = "soak.bulk"  # where slow readers live and flood
FLOOD_PAD = 32 * 1024
FLOOD_MAX = 256  # messages per flood: 8 MiB, more than the server's buffers
SMALL_RCVBUF = 4096


@dataclass
class Gap:
    """A hole in a client's view of a channel."""

    wire: str  # raw or centrifuge
    client: str  # client_id (raw) or the soak's name for the client
    channel: str
    kind: str  # "resume": first after a reconnect; "live": inside one connection
    last: int  # last seq (raw) / offset (centrifuge) seen
    got: int
    connected_at: float  # time.time() of the connection that saw it
    seen_at: float
    after: str  # how the connection before ended (close code), for a resume
    explained: bool = False


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)
    gaps: list[Gap] = field(default_factory=list)
    # raw resumes whose first api publication came with no gap: (client_id, channel, time)
    whole: list[tuple[str, str, float]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def problem(self, text: str) -> None:
        self.counts["problems"] += 1
        if len(self.problems) < 20:
            self.problems.append(text)


@dataclass
class Target:
    ws_port: int
    admin_port: int
    session_ttl: float
    deadline: float  # time.monotonic() when traffic stops
    tally: Tally
    roster: dict[str, _Client] = field(default_factory=dict)  # name -> client, for chaos

    def left(self) -> float:
        return self.deadline - time.monotonic()


class Http:
    """HTTP/1.1 to the admin listener on one keep-alive connection, one request at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, path: str, body: object = None, timeout: float = 5.0,
                      close: bool = False) -> tuple[int, bytes]:
        """GET (no body) or POST JSON; (status, content).  Raises on failure or timeout."""
        try:
            return await asyncio.wait_for(self._request(path, body, close), timeout)
        except BaseException:
            await self.close()
            raise

    async def _request(self, path: str, body: object, close: bool) -> tuple[int, bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self._streams
        data = b"" if body is None else json.dumps(body).encode()
        head = (f"{'GET' if body is None else 'POST'} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                + ("Connection: close\r\n" if close else "") + "\r\n")
        writer.write(head.encode() + data)
        status = int((await reader.readline()).split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        if headers.get("transfer-encoding") == "chunked":
            chunks = []
            while size := int((await reader.readline()).split(b";")[0], 16):
                chunks.append(await reader.readexactly(size))
                await reader.readline()
            await reader.readline()
            content = b"".join(chunks)
        elif "content-length" in headers:
            content = await reader.readexactly(int(headers["content-length"]))
        else:
            content, close = await reader.read(), True
        if close or headers.get("connection") == "close":
            await reader.read()  # the server's end: its socket is closed once this returns
            await self.close()
        return status, content

    async def close(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            self._streams = None
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 2)
            except (OSError, TimeoutError):
                pass


async def _open(target: Target, path: str, slow: bool) -> ClientConnection | None:
    """A WebSocket on C{path}, retrying refusals (429: after Retry-After) a few times."""
    tally = target.tally
    loop = asyncio.get_running_loop()
    for _ in range(5):
        if target.left() <= 0:
            return None
        sock = socket.socket()
        if slow:  # set before connecting, so that the window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RCVBUF)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", target.ws_port)), 5)
            return await connect(f"ws://127.0.0.1:{target.ws_port}{path}", sock=sock,
                                 ping_interval=None, compression=None, open_timeout=5,
                                 close_timeout=2, max_size=2 ** 20,
                                 max_queue=2 if slow else 64)
        except InvalidStatus as e:
            sock.close()
            status = e.response.status_code
            tally.add(f"refused.{status}")
            retry = e.response.headers.get("Retry-After", "1")
            await asyncio.sleep(min(5.0, float(retry) if retry.isdigit() else 1.0) + 0.05)
        except (OSError, TimeoutError, WebSocketException) as e:
            sock.close()
            tally.add("connect_failed")
            tally.problem(f"connecting to {path} failed: {e!r}")
            await asyncio.sleep(0.5)
    return None


def _close_code(ws: ClientConnection) -> str:
    return str(ws.close_code if ws.close_code is not None else 1006)


async def _drain(ws: ClientConnection, on_message: Any, tally: Tally,
                 limit: float = 5.0) -> bool:
    """Take what is still buffered, until the connection ends; False if it did not."""
    end = time.monotonic() + limit
    try:
        while (left := end - time.monotonic()) > 0:
            on_message(await asyncio.wait_for(ws.recv(), left))
    except (ConnectionClosed, TimeoutError):
        pass
    if ws.state.name != "CLOSED":
        tally.add("drain_timeouts")  # not closed 5 s after the end: given up on
        ws.transport.abort()
        return False
    return True


def _ping(target: Target, ws: ClientConnection, waiter: Awaitable[float]) -> None:
    target.tally.add("pings")

    def answered(future: asyncio.Future[float]) -> None:
        if not future.cancelled() and future.exception() is None:
            target.tally.add("pongs")

    asyncio.ensure_future(waiter).add_done_callback(answered)


class _Client:
    """What both wires share: a life of connections until the deadline."""

    wire = ""

    def __init__(self, target: Target, name: str, slow: bool, rng: random.Random) -> None:
        self.target, self.tally, self.name, self.slow, self.rng = (
            target, target.tally, name, slow, rng)
        self.live_id: str | None = None  # what the admin API's disconnect names
        self.sent = 0
        self.paused = False  # in this connection
        self.drained = True  # the connection's end was read to the last byte
        self.flaps = 0  # short connections still to make, back to back
        target.roster[name] = self

    async def run(self) -> None:
        try:
            while self.target.left() > 0.5:
                if not self.flaps and self.rng.random() < 0.04:
                    self.flaps = 5  # reconnects too often: HTTP 429 for raw sessions
                await self.connection()
                away = 0.05 if self.flaps else self.rng.choice((0.05, 0.3, 1.0, 2.5))
                self.flaps = max(0, self.flaps - 1)
                await asyncio.sleep(min(away, max(0.0, self.target.left())))
        except Exception as e:  # a bug of the soak's own: it must show
            self.tally.problem(f"{self.wire} client {self.name} crashed: {e!r}")

    async def connection(self) -> None:
        raise NotImplementedError

    async def act(self, ws: ClientConnection) -> None:
        """Something random between messages; returns when done."""
        roll = self.rng.random()
        if roll < 0.3:
            _ping(self.target, ws, await ws.ping())
        elif roll < 0.7:
            await self.publish(ws)
        elif self.slow and roll < 0.9:
            await self.pause(ws)

    async def publish(self, ws: ClientConnection) -> None:
        raise NotImplementedError

    async def pause(self, ws: ClientConnection) -> None:
        """Stop reading for a while (not answering pings either); maybe flood the channel."""
        self.tally.add(f"paused.{self.wire}")
        self.paused = True
        end = time.monotonic() + self.rng.uniform(1.0, 8.0)
        if self.rng.random() < 0.7:
            self.tally.add(f"floods.{self.wire}")
            pad = "f" * FLOOD_PAD
            for n in range(FLOOD_MAX):
                if time.monotonic() > end:
                    break
                await self.flood(ws, n, pad)  # raises ConnectionClosed once dropped
                await asyncio.sleep(0.002)
        await asyncio.sleep(max(0.0, min(end - time.monotonic(), self.target.left())))

    async def flood(self, ws: ClientConnection, n: int, pad: str) -> None:
        raise NotImplementedError

    async def live(self, ws: ClientConnection, on_message: Any, ending: str) -> None:
        """Read and act for a random while, then end the connection as C{ending} says."""
        self.paused = False
        end = time.monotonic() + min(0.2 if self.flaps else self.rng.uniform(2.0, 12.0),
                                     self.target.left())
        next_act = time.monotonic() + self.rng.uniform(0.1, 1.0)
        try:
            while (now := time.monotonic()) < end:
                try:
                    on_message(await asyncio.wait_for(ws.recv(), max(0.01, next_act - now)))
                    continue
                except TimeoutError:
                    pass
                await self.act(ws)
                next_act = time.monotonic() + self.rng.uniform(0.1, 1.0)
            if ending == "close":
                await asyncio.wait_for(ws.close(), 5)
            elif ending == "drop":  # TCP FIN, no close frame; what is in flight still arrives
                ws.transport.write_eof()
            elif ending == "reset":  # drops what is buffered, client side too
                ws.transport.abort()
        except (ConnectionClosed, OSError, TimeoutError):
            pass
        self.drained = ending != "reset" and await _drain(ws, on_message, self.tally)
        self.tally.add(f"closes.{self.wire}.{_close_code(ws)}")


class RawClient(_Client):
    """A raw-protocol client on one channel, with a session (C{?client_id=}) or not."""

    wire = "raw"

    def __init__(self, target: Target, name: str, channel: str, session: bool, slow: bool,
                 rng: random.Random) -> None:
        super().__init__(target, name, slow, rng)
        self.channel, self.session = channel, session
        self.last: int | None = None  # last api seq seen on the channel
        self.left_at: float | None = None  # monotonic time of the last disconnect
        self.after = "-"  # how the last connection ended

    async def connection(self) -> None:
        path = f"/{self.channel}" + (f"?client_id={self.name}" if self.session else "")
        ws = await _open(self.target, path, self.slow)
        if ws is None:
            return
        self.tally.add("connects.raw")
        resuming = (self.session and self.left_at is not None and self.last is not None
                    and time.monotonic() - self.left_at < self.target.session_ttl - 2)
        if resuming:
            self.tally.add("resumes.raw")
        self.live_id = self.name if self.session else None
        view = _RawView(self, resuming, time.time())
        roll = self.rng.random()
        # A reset throws away what the client has not read: only without a session.
        ending = "close" if roll < 0.65 else "drop" if roll < 0.9 or self.session else "reset"
        if self.session and not self.slow and self.rng.random() < 0.03:
            try:  # not an object: closed with 1003; it resumes afterwards
                await ws.send("[1]")
                self.tally.add("bad_input.raw")
            except ConnectionClosed:
                pass
        await self.live(ws, view.message, ending)
        self.live_id = None
        self.left_at = time.monotonic()
        self.after = (_close_code(ws) + (" (paused)" if self.paused else "")
                      + ("" if self.drained else " (the client gave up reading)"))
        if view.last is not None:
            self.last = view.last
        if not self.session:
            self.last = None

    async def publish(self, ws: ClientConnection) -> None:
        self.sent += 1
        await ws.send(json.dumps({"src": "raw", "from": self.name, "n": self.sent,
                                  "pad": "r" * self.rng.choice((10, 100, 1000))}))
        self.tally.add("published.raw")

    async def flood(self, ws: ClientConnection, n: int, pad: str) -> None:
        await ws.send(f'{{"src":"flood","from":"{self.name}","n":{n},"pad":"{pad}"}}')
        self.tally.add("flood.raw")


class _RawView:
    """One raw connection's view of its channel's api stream."""

    def __init__(self, client: RawClient, resuming: bool, connected_at: float) -> None:
        self.client = client
        self.last = client.last if resuming else None
        # Until the stream passes what the previous connection saw, this is the resume.
        self.resumed_from = self.last
        self.connected_at = connected_at

    def message(self, text: str | bytes) -> None:
        client = self.client
        tally = client.tally
        tally.add("received.raw")
        try:
            data = json.loads(text)
        except ValueError:
            tally.problem(f"raw client {client.name} got something not JSON: {text[:80]!r}")
            return
        if not isinstance(data, dict) or data.get("src") != "api":
            return
        seq, last = data["seq"], self.last
        if last is None:
            self.last = seq
            return
        resume = self.resumed_from is not None and last <= self.resumed_from
        if seq <= last:
            tally.add(f"duplicates.raw.{'resume' if resume else 'live'}")
            return
        if seq == last + 1 and resume:
            tally.whole.append((client.name, client.channel, self.connected_at))
        elif seq > last + 1:
            tally.gaps.append(Gap("raw", client.name, client.channel,
                                  "resume" if resume else "live", last, seq,
                                  self.connected_at, time.time(),
                                  client.after if resume else "-"))
        self.last = seq


class CentrifugeClient(_Client):
    """A Centrifuge-protocol client (JSON frames by hand) with recoverable subscriptions."""

    wire = "centrifuge"

    def __init__(self, target: Target, name: str, channels: list[str], slow: bool,
                 rng: random.Random) -> None:
        super().__init__(target, name, slow, rng)
        self.channels = channels
        self.position: dict[str, tuple[str, int]] = {}  # channel -> (epoch, offset) seen
        self.subscribing: dict[int, str] = {}  # command id -> channel
        self.subscribed: set[str] = set()
        self.asked: dict[str, tuple[str, int]] = {}  # the position a recover asked from
        # Unsubscribed and subscribed again in one connection: pushes already in
        # flight move the position past what the recover asked from.
        self.resubscribed: set[str] = set()
        self.next_id = 0
        self.ws: ClientConnection | None = None
        self.connected_at = 0.0
        self.pongs: set[asyncio.Task[None]] = set()  # held until done

    def command(self, method: str, body: dict[str, Any]) -> str:
        self.next_id += 1
        return json.dumps({method: body, "id": self.next_id})

    def subscribe(self, channel: str) -> str:
        body: dict[str, Any] = {"channel": channel, "recoverable": True}
        if channel in self.position:
            self.asked[channel] = self.position[channel]
            body.update(recover=True, epoch=self.position[channel][0],
                        offset=self.position[channel][1])
        text = self.command("subscribe", body)
        self.subscribing[self.next_id] = channel
        return text

    async def connection(self) -> None:
        ws = await _open(self.target, "/connection/websocket", self.slow)
        if ws is None:
            return
        self.ws, self.connected_at = ws, time.time()
        self.subscribing.clear()
        self.subscribed.clear()
        self.resubscribed.clear()
        self.tally.add("connects.centrifuge")
        first, *others = self.channels
        try:  # connect and the first subscribe in one frame, the others one per frame
            await ws.send(self.command("connect", {"name": "soak"}) + "\n" + self.subscribe(first))
            for channel in others:
                await ws.send(self.subscribe(channel))
        except ConnectionClosed:
            pass
        await self.live(ws, self.frame, "close" if self.rng.random() < 0.65 else "drop")
        self.live_id = self.ws = None

    async def act(self, ws: ClientConnection) -> None:
        if self.rng.random() < 0.1 and self.subscribed:  # leave a channel and come back
            channel = self.rng.choice(sorted(self.subscribed))
            self.subscribed.discard(channel)
            await ws.send(self.command("unsubscribe", {"channel": channel}))
            await ws.send(self.subscribe(channel))
            self.resubscribed.add(channel)
            self.tally.add("resubscribes.centrifuge")
        else:
            await super().act(ws)

    async def publish(self, ws: ClientConnection) -> None:
        self.sent += 1
        await ws.send(self.command("publish", {"channel": self.rng.choice(self.channels),
                                               "data": {"src": "cf", "from": self.name,
                                                        "n": self.sent}}))
        self.tally.add("published.centrifuge")

    async def flood(self, ws: ClientConnection, n: int, pad: str) -> None:
        await ws.send(self.command("publish", {"channel": BULK, "data": {
            "src": "flood", "from": self.name, "n": n, "pad": pad}}))
        self.tally.add("flood.centrifuge")

    def frame(self, text: str | bytes) -> None:
        for line in (text.decode() if isinstance(text, bytes) else text).split("\n"):
            if line.strip():
                self.handle(json.loads(line))

    def handle(self, message: dict[str, Any]) -> None:
        tally = self.tally
        if not message:  # the server's ping
            if self.ws is not None:
                task = asyncio.ensure_future(self._pong(self.ws))
                self.pongs.add(task)
                task.add_done_callback(self.pongs.discard)
            return
        if "push" in message:
            push = message["push"]
            if "pub" in push:
                tally.add("received.centrifuge")
                self.publication(push["channel"], push["pub"], "live")
            elif "disconnect" in push:
                tally.add(f"disconnect_push.{push['disconnect'].get('code')}")
            elif "unsubscribe" in push:
                self.subscribed.discard(push["channel"])
            return
        if "error" in message:
            tally.add(f"errors.centrifuge.{message['error'].get('code')}")
            self.subscribing.pop(message.get("id", 0), None)
        elif "connect" in message:
            self.live_id = message["connect"]["client"]
        elif "subscribe" in message:
            channel = self.subscribing.pop(message["id"], None)
            if channel is None:
                tally.problem(f"{self.name}: a subscribe reply nobody asked for: {message}")
            else:
                self.subscribed_reply(channel, message["subscribe"])

    async def _pong(self, ws: ClientConnection) -> None:
        try:
            await ws.send("{}")
        except ConnectionClosed:
            pass

    def subscribed_reply(self, channel: str, reply: dict[str, Any]) -> None:
        self.subscribed.add(channel)
        epoch, offset = reply.get("epoch", ""), reply.get("offset", 0)
        if reply.get("was_recovering") and reply.get("recovered"):
            self.tally.add("recovered.true")
            if (epoch, offset) != self.asked[channel]:
                self.tally.problem(f"{self.name} recovered {channel} at {epoch}/{offset}, "
                                   f"asked from {self.asked[channel]}")
            kind = "resubscribe" if channel in self.resubscribed else "resume"
            self.resubscribed.discard(channel)
            for publication in reply.get("publications", []):
                self.tally.add("recovered_publications")
                self.publication(channel, publication, kind)
            return
        self.resubscribed.discard(channel)
        if reply.get("was_recovering"):
            self.tally.add("recovered.false")
        self.position[channel] = (epoch, offset)

    def publication(self, channel: str, publication: dict[str, Any], kind: str) -> None:
        """Check one publication's offset; C{kind}: live, resume or resubscribe."""
        offset = publication.get("offset", 0)
        known = self.position.get(channel)
        if known is None:  # (after an unsubscribe, pushes already in flight are fine)
            self.tally.problem(f"{self.name} got a publication on {channel} before its "
                               f"first subscribe reply")
            return
        if offset <= known[1]:
            self.tally.add(f"duplicates.centrifuge.{kind}")
            return
        if offset > known[1] + 1:
            self.tally.gaps.append(Gap("centrifuge", self.name, channel, kind, known[1], offset,
                                       self.connected_at, time.time(), "-"))
        self.position[channel] = (known[0], offset)


async def api_publisher(target: Target, channel: str, rate: float, rng: random.Random) -> None:
    """POST /api/publish one at a time, C{seq} going up by one per accepted publication."""
    http = Http(target.admin_port)
    tally = target.tally
    seq, due = 1, time.monotonic()
    try:
        while target.left() > 0:
            data = {"src": "api", "ch": channel, "seq": seq,
                    "pad": "a" * rng.choice((20, 100, 300, 300, 4000))}
            try:
                status, body = await http.request("/api/publish", {"channel": channel,
                                                                   "data": data})
                ok = status == 200 and "result" in json.loads(body)
            except (OSError, EOFError, TimeoutError, ValueError, IndexError):
                ok = False
            if ok:
                seq += 1
                tally.add("published.api")
            else:  # the same seq again: at worst a duplicate
                tally.add("api_errors")
                await asyncio.sleep(0.2)
            due = max(due + 1 / rate, time.monotonic() - 1)
            await asyncio.sleep(max(0.0, min(due - time.monotonic(), target.left())))
    finally:
        await http.close()


async def chaos(target: Target, rng: random.Random) -> None:
    """Now and then: the admin API disconnects a client, or reads a channel's history."""
    http = Http(target.admin_port)
    try:
        while target.left() > 1:
            await asyncio.sleep(min(rng.uniform(1.0, 4.0), max(0.0, target.left())))
            live = [c for c in target.roster.values() if c.live_id is not None]
            try:
                if rng.random() < 0.7 and live:
                    client = rng.choice(live)
                    code = 4100 if client.wire == "raw" else 3100  # both mean "reconnect"
                    await http.request("/api/disconnect", {
                        "user": "", "client": client.live_id,
                        "disconnect": {"code": code, "reason": "soak"}})
                    target.tally.add(f"admin_disconnects.{client.wire}")
                else:
                    await http.request("/api/history", {"channel": rng.choice(CHANNELS),
                                                         "limit": 10})
                    target.tally.add("admin_history")
            except (OSError, EOFError, TimeoutError, ValueError, IndexError) as e:
                target.tally.problem(f"admin API request failed: {e!r}")
    finally:
        await http.close()
