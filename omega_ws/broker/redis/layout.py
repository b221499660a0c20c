"""
The pure parts of the Redis broker: broker URLs, which shard holds a
channel, the names of its keys, the frames on pub/sub, and telling a gap
on a channel's live stream from a duplicate.  No I/O; the time is passed
in.

Every key of one channel carries the channel in a hash tag
(C{omega-ws.meta.{news}}), so all of them land on one Redis Cluster slot
too; channels are spread over shards by a jump consistent hash of their
FNV-1a hash, as Centrifugo does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["Keys", "LiveStreams", "RedisAddress", "Verdict", "fnv1a_64", "jump_hash",
           "parse_broker_url", "parse_publication", "redacted"]


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """One Redis server (a shard), or the master a set of Sentinels names."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinel: tuple[tuple[str, int], ...] = ()
    master: str = ""

    def __str__(self) -> str:
        if self.sentinel:
            return f"sentinel {self.sentinel[0][0]}:{self.sentinel[0][1]} master {self.master}"
        return f"{self.host}:{self.port}/{self.db}"


def _port(text: str | None, default: int, url: str) -> int:
    try:
        port = int(text) if text else default
    except ValueError:
        raise ValueError(f"{url!r}: port {text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{url!r}: port {port} is out of range")
    return port


def _host_port(text: str, default: int, url: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError(f"{url!r}: no host in {text!r}")
    return host.strip("[]"), _port(port, default, url)


def redacted(url: str) -> str:
    """C{url} with its password replaced by C{***}, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None and not parts.username:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***" if parts.password is not None else "***"
    return parts._replace(netloc=f"{user}@{host}").geturl()


def _one_url(text: str) -> RedisAddress:
    url = redacted(text)  # what messages show
    parts = urlsplit(text)
    scheme = parts.scheme
    if scheme not in ("redis", "rediss", "redis+sentinel"):
        raise ValueError(f"{url!r}: the scheme must be redis://, rediss:// or redis+sentinel://")
    query = parse_qs(parts.query)
    password = unquote(parts.password) if parts.password is not None else None
    username = unquote(parts.username) if parts.username else None
    if password is None and username is not None:  # redis://secret@host: a password alone
        password, username = username, None
    path = [p for p in parts.path.split("/") if p]
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 and parts.netloc.rpartition("@")[2].rpartition("]")[2].count(":"):
        raise ValueError(f"{url!r}: the port is not a number from 1 to 65535")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    if scheme == "redis+sentinel":
        if not path:
            raise ValueError(f"{url!r}: name the master: redis+sentinel://host:26379/mymaster")
        sentinels = [(parts.hostname, port or 26379)]
        sentinels += [_host_port(s, 26379, url) for s in query.get("sentinel", [])]
        db = _db(path[1] if len(path) > 1 else query.get("db", ["0"])[0], url)
        return RedisAddress(db=db, username=username, password=password,
                            sentinel=tuple(sentinels), master=path[0])
    db = _db(path[0] if path else "0", url)
    return RedisAddress(parts.hostname, port or 6379, db, username, password, scheme == "rediss")


def _db(text: str, url: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{url!r}: the database {text!r} is not a number")
    return int(text)


def parse_broker_url(url: str) -> tuple[RedisAddress, ...]:
    """
    The shards a C{broker.url} names: Redis URLs separated by commas.
    @raise ValueError: with what is wrong, for the configuration error.
    """
    urls = [u.strip() for u in url.split(",")]
    shown = ",".join(redacted(u) for u in urls)
    if not all(urls):
        raise ValueError(f"{shown!r}: an empty URL between commas")
    addresses = tuple(_one_url(u) for u in urls)
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"{shown!r}: the same Redis is named twice")
    return addresses


# -- sharding --------------------------------------------------------------------

_FNV_OFFSET, _FNV_PRIME, _MASK = 0xCBF29CE484222325, 0x100000001B3, 0xFFFFFFFFFFFFFFFF


def fnv1a_64(data: bytes) -> int:
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return h


def jump_hash(key: int, buckets: int) -> int:
    """Lamping and Veach's jump consistent hash: a bucket in [0, buckets)."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


# -- names ----------------------------------------------------------------------------


class Keys:
    """The names of everything omega-ws keeps in Redis, under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._pub = f"{prefix}.pub.{{".encode()
        self.control = f"{prefix}.control"
        self.generation = f"{prefix}.generation"

    def meta(self, channel: str) -> str:
        """Hash: C{e} the epoch, C{s} the top offset."""
        return f"{self.prefix}.meta.{{{channel}}}"

    def stream(self, channel: str) -> str:
        """Stream of publications: entry id C{<offset>-0}, fields C{d} data, C{t} time."""
        return f"{self.prefix}.stream.{{{channel}}}"

    def pubsub(self, channel: str) -> bytes:
        return self._pub + channel.encode() + b"}"

    def channel_of(self, pubsub: bytes) -> str | None:
        """The channel a pub/sub name carries, or None for another of ours."""
        if pubsub.startswith(self._pub):
            return pubsub[len(self._pub):-1].decode()
        return None

    def presence(self, channel: str) -> str:
        """Hash: client id -> JSON of who it is."""
        return f"{self.prefix}.presence.{{{channel}}}"

    def presence_expiry(self, channel: str) -> str:
        """Sorted set: client id scored by when its presence expires."""
        return f"{self.prefix}.presence.expire.{{{channel}}}"

    def session(self, client_id: str) -> str:
        return f"{self.prefix}.session.{{{client_id}}}"

    def node(self, node_id: str) -> str:
        """A node's own pub/sub channel: replies to it, and its liveness probes."""
        return f"{self.prefix}.node.{node_id}"


def parse_publication(payload: bytes) -> tuple[int, str, bytes]:
    """C{b"p<offset> <epoch> <data>"}, as the publish script frames it."""
    head, epoch, data = payload.split(b" ", 2)
    return int(head[1:]), epoch.decode(), data


# -- the live stream ---------------------------------------------------------------


class Verdict(enum.Enum):
    DELIVER = "deliver"
    DUPLICATE = "duplicate"  # seen already: skip it
    GAP = "gap"  # something was lost before it (or the epoch changed): resync


class LiveStreams:
    """
    What this node last saw on each subscribed channel's live stream, to
    tell the next publication's fate, and what the periodic checks found.
    Redis delivers one channel's messages in order, so on one epoch offset
    N+1 follows N: anything else is a duplicate (at most N) or a loss.
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[str, int]] = {}
        # A check's reading of the stream while nothing had been seen yet.
        self._baseline: dict[str, tuple[str, int]] = {}
        # Where the stream was at the last check, when this node was behind.
        self._behind: dict[str, tuple[str, int]] = {}

    def forget(self, channel: str) -> None:
        self._last.pop(channel, None)
        self._baseline.pop(channel, None)
        self._behind.pop(channel, None)

    def last(self, channel: str) -> tuple[str, int] | None:
        return self._last.get(channel)

    def accept(self, channel: str, epoch: str, offset: int) -> Verdict:
        last = self._last.get(channel)
        self._last[channel] = (epoch, offset)
        if last is None or (epoch == last[0] and offset == last[1] + 1):
            return Verdict.DELIVER
        if epoch == last[0] and offset <= last[1]:
            self._last[channel] = last
            return Verdict.DUPLICATE
        return Verdict.GAP

    def learned(self, channel: str, epoch: str, top: int) -> None:
        """
        A read found the stream at C{(epoch, top)}: the start, if nothing
        was seen yet.  (Once messages flow, they are the authority: a read
        may answer before messages it already counts arrive.)
        """
        if channel not in self._last:
            self._last[channel] = (epoch, top)

    def check(self, channel: str, epoch: str, top: int) -> bool:
        """
        The periodic check read C{(epoch, top)}: True when the node must
        resync the channel, because it is still behind where the stream
        was at the previous check (one check's grace: messages in flight).
        Afterwards the node counts as up to date with C{(epoch, top)}.
        """
        seen = self._last.get(channel)
        if seen is None:
            baseline = self._baseline.setdefault(channel, (epoch, top))
            behind = baseline != (epoch, top)
        else:
            behind = epoch != seen[0] or top > seen[1]
        if not behind:
            self._behind.pop(channel, None)
            return False
        before = self._behind.get(channel)
        self._behind[channel] = (epoch, top)
        if before is None or not self._short_of(channel, before):
            return False
        self._behind.pop(channel, None)
        self._baseline.pop(channel, None)
        self._last[channel] = (epoch, top)
        return True

    def _short_of(self, channel: str, target: tuple[str, int]) -> bool:
        seen = self._last.get(channel)
        return seen is None or seen[0] != target[0] or seen[1] < target[1]
