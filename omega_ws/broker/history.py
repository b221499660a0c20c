"""
Channel streams: offsets, epochs, bounded history and all-or-nothing
recovery, as pure logic with the time passed in.

Every publication on a channel gets the stream's next offset (from 1).  A
stream's epoch names one unbroken run of offsets: when a stream is lost
(expired, or a broker restart) the next publication starts a new epoch at
offset 1, and a client holding the old epoch cannot recover.  History
keeps the last C{size} publications for C{ttl} seconds.

Memory is bounded: history keeps each publication's data once (its
encodings live only while it is dispatched), at most C{max_bytes} of it
per channel and C{total_bytes} in all (the oldest dropped first);
publications older than C{ttl} are dropped; a stream with nothing
published for C{meta_ttl} seconds is forgotten; and at most
C{max_streams} streams exist, the least recently used going first.  Only
a publication makes a stream: reading a channel nothing was published to
(subscribing, history) answers from a stream-to-be without storing it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Publication", "Recovery", "StreamPosition", "Streams"]


class Publication:
    """
    One message on one channel, as the broker numbered it.

    C{data} is the JSON text exactly as it was published, as UTF-8 bytes;
    it is delivered byte for byte.  While the hub dispatches it, its
    encoded forms (a WebSocket frame per wire format) are computed once and
    shared by every subscriber through L{encoded}; afterwards they are
    dropped, so that history holds the data alone.
    """

    __slots__ = ("channel", "offset", "epoch", "data", "_encoded")

    def __init__(self, channel: str, offset: int, epoch: str, data: bytes) -> None:
        self.channel = channel
        self.offset = offset
        self.epoch = epoch
        self.data = data
        # None once dispatched: encodings made later (replays) are not kept.
        self._encoded: dict[str, object] | None = {}

    def encoded(self, wire_format: str, encode: Callable[[Publication], object]) -> object:
        """C{encode(self)}, computed once per C{wire_format} until L{dispatched}."""
        cache = self._encoded
        if cache is None:
            return encode(self)
        try:
            return cache[wire_format]
        except KeyError:
            value = cache[wire_format] = encode(self)
            return value

    def dispatched(self) -> None:
        """Every subscriber has it: drop the encodings, keep the data alone."""
        self._encoded = None

    def __repr__(self) -> str:
        return f"<Publication {self.channel}@{self.epoch}:{self.offset} {len(self.data)} bytes>"


@dataclass(frozen=True, slots=True)
class StreamPosition:
    epoch: str
    offset: int


@dataclass(frozen=True, slots=True)
class Recovery:
    """What a client that last saw C{(epoch, offset)} missed: all of it, or nothing."""

    recovered: bool
    publications: list[Publication]
    position: StreamPosition


class _Entry:
    """A publication in history; C{publication} is None once it was dropped."""

    __slots__ = ("publication", "time", "stream")

    def __init__(self, publication: Publication, time: float, stream: _Stream) -> None:
        self.publication: Publication | None = publication
        self.time = time
        self.stream = stream


@dataclass(slots=True, eq=False)
class _Stream:
    epoch: str
    offset: int = 0
    touched: float = 0.0
    size: int = 0  # bytes of data kept
    entries: deque[_Entry] = field(default_factory=deque)  # oldest first


def new_epoch() -> str:
    return secrets.token_hex(4)


class Streams:
    """All channel streams of one broker."""

    def __init__(self, size: int, ttl: float, meta_ttl: float,
                 max_bytes: int = 16 * 1024 * 1024, total_bytes: int = 256 * 1024 * 1024,
                 max_streams: int = 100000) -> None:
        self.size = size
        self.ttl = ttl
        self.meta_ttl = meta_ttl
        self.max_bytes = max_bytes
        self.total_bytes = total_bytes
        self.max_streams = max_streams
        self.bytes = 0  # data kept in all histories
        # Publications dropped before their time (by a byte bound), and
        # streams dropped while in use (by max_streams): for the metrics.
        self.dropped = 0
        self.evicted_streams = 0
        self._streams: OrderedDict[str, _Stream] = OrderedDict()  # least recently used first
        self._entries: deque[_Entry] = deque()  # every kept entry, oldest first
        self._kept = 0
        # A stream-to-be's epoch derives from this and from how many times the
        # channel's stream was forgotten (with publications), so that reads
        # need not store a stream and a forgotten stream's next epoch is a new
        # one.  The count is kept for as many channels as there may be
        # streams; past that the generation changes (a resync, never a gap,
        # for a client that read a stream-to-be's epoch before).
        self._generation = new_epoch()
        self._forgotten: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._streams)

    def _epoch_for(self, channel: str) -> str:
        incarnation = self._forgotten.get(channel, 0)
        digest = hashlib.blake2s(f"{incarnation}:{channel}".encode(), digest_size=4,
                                 key=self._generation.encode())
        return digest.hexdigest()

    def _find(self, channel: str, now: float) -> _Stream | None:
        stream = self._streams.get(channel)
        if stream is not None:
            stream.touched = now
            self._streams.move_to_end(channel)
            self._trim(stream, now)
        return stream

    def add(self, channel: str, data: bytes, now: float) -> Publication:
        """Number C{data} as the channel's next publication and keep it in history."""
        stream = self._find(channel, now)
        if stream is None:
            while len(self._streams) >= self.max_streams:
                self._evict_one(now)
            stream = self._streams[channel] = _Stream(self._epoch_for(channel), touched=now)
        stream.offset += 1
        publication = Publication(channel, stream.offset, stream.epoch, data)
        if self.size > 0 and self.ttl > 0 and len(data) <= min(self.max_bytes,
                                                                self.total_bytes):
            entry = _Entry(publication, now, stream)
            stream.entries.append(entry)
            stream.size += len(data)
            self._entries.append(entry)
            self._kept += 1
            self.bytes += len(data)
            while len(stream.entries) > self.size:
                self._drop_oldest(stream)
            while stream.size > self.max_bytes:
                self._drop_oldest(stream)
                self.dropped += 1
            self._bound_total()
        return publication

    def position(self, channel: str, now: float) -> StreamPosition:
        """The current epoch and top offset (0 before the first publication)."""
        stream = self._find(channel, now)
        if stream is None:
            return StreamPosition(self._epoch_for(channel), 0)
        return StreamPosition(stream.epoch, stream.offset)

    def history(self, channel: str, now: float, since: StreamPosition | None = None,
                limit: int | None = None, reverse: bool = False) -> list[Publication]:
        """
        Kept publications, oldest first (newest first with C{reverse}); with
        C{since}, only those after it (before it with C{reverse}); nothing if
        its epoch is not current.
        """
        stream = self._find(channel, now)
        if stream is None:
            return []
        publications = [e.publication for e in stream.entries if e.publication is not None]
        if since is not None:
            if since.epoch and since.epoch != stream.epoch:
                return []
            # As Centrifugo: after the position going forward, before it going back.
            if reverse:
                publications = [p for p in publications if p.offset < since.offset]
            else:
                publications = [p for p in publications if p.offset > since.offset]
        if reverse:
            publications.reverse()
        if limit is not None and limit >= 0:
            publications = publications[:limit]
        return publications

    def recover(self, channel: str, since: StreamPosition, now: float) -> Recovery:
        """
        Everything after C{since}, in order, and C{recovered=True}; or none
        and C{recovered=False} when the epoch changed, the offset is ahead
        of the stream, or history no longer reaches back to it.
        """
        stream = self._find(channel, now)
        position = (StreamPosition(stream.epoch, stream.offset) if stream is not None
                    else self.position(channel, now))
        # An empty epoch means "whatever the current one is", as in Centrifugo.
        epoch = since.epoch or position.epoch
        if epoch != position.epoch or since.offset > position.offset:
            return Recovery(False, [], position)
        missed = position.offset - since.offset
        if missed == 0 or stream is None:
            return Recovery(True, [], position)
        kept = [e.publication for e in stream.entries
                if e.publication is not None and e.publication.offset > since.offset]
        if len(kept) != missed:
            return Recovery(False, [], position)
        return Recovery(True, kept, position)

    def expire(self, now: float) -> None:
        """Drop publications past their TTL and streams idle past C{meta_ttl}."""
        for channel, stream in list(self._streams.items()):
            self._trim(stream, now)
            if now - stream.touched >= self.meta_ttl:
                self._forget(channel)

    # -- bounds ------------------------------------------------------------------

    def _trim(self, stream: _Stream, now: float) -> None:
        entries = stream.entries
        while entries and now - entries[0].time >= self.ttl:
            self._drop_oldest(stream)

    def _drop_oldest(self, stream: _Stream) -> None:
        entry = stream.entries.popleft()
        if entry.publication is not None:
            size = len(entry.publication.data)
            stream.size -= size
            self.bytes -= size
            self._kept -= 1
            entry.publication = None
        # Entries dropped here stay in the global queue until they reach its
        # head; rebuild it when they are most of it, so it stays bounded.
        if len(self._entries) > 2 * self._kept + 1024:
            self._entries = deque(e for e in self._entries if e.publication is not None)

    def _bound_total(self) -> None:
        """The oldest publications of all channels go first past C{total_bytes}."""
        while self.bytes > self.total_bytes and self._entries:
            entry = self._entries.popleft()
            if entry.publication is not None:
                # The oldest entry of all is the oldest of its stream too.
                self._drop_oldest(entry.stream)
                self.dropped += 1

    def _evict_one(self, now: float) -> None:
        """Make room for a stream: an empty one among the least recently used, else the LRU."""
        victim = next(iter(self._streams))
        for checked, (channel, stream) in enumerate(self._streams.items()):
            if checked >= 32:
                break
            self._trim(stream, now)
            if not stream.entries:
                victim = channel
                break
        self.evicted_streams += 1
        self._forget(victim)

    def _forget(self, channel: str) -> None:
        stream = self._streams.pop(channel)
        while stream.entries:
            self._drop_oldest(stream)
        if stream.offset:
            forgotten = self._forgotten
            forgotten[channel] = forgotten.pop(channel, 0) + 1
            if len(forgotten) > self.max_streams:
                forgotten.clear()
                self._generation = new_epoch()
