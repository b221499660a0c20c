"""
Channel streams: offsets, epochs, bounded history and all-or-nothing
recovery, as pure logic with the time passed in.

Every publication on a channel gets the stream's next offset (from 1).  A
stream's epoch names one unbroken run of offsets: when a stream is lost
(expired, or a broker restart) the next publication starts a new epoch at
offset 1, and a client holding the old epoch cannot recover.  History
keeps the last C{size} publications for C{ttl} seconds.

Memory is bounded: publications older than C{ttl} are dropped, and a
stream with nothing published for C{meta_ttl} seconds is forgotten.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Publication", "Recovery", "StreamPosition", "Streams"]


class Publication:
    """
    One message on one channel, as the broker numbered it.

    C{data} is the JSON text exactly as it was published, as UTF-8 bytes;
    it is delivered byte for byte.  Encoded forms (a WebSocket frame per
    wire format) are computed once per publication and shared by every
    subscriber through L{encoded}.
    """

    __slots__ = ("channel", "offset", "epoch", "data", "_encoded")

    def __init__(self, channel: str, offset: int, epoch: str, data: bytes) -> None:
        self.channel = channel
        self.offset = offset
        self.epoch = epoch
        self.data = data
        self._encoded: dict[str, object] = {}

    def encoded(self, wire_format: str, encode: Callable[[Publication], object]) -> object:
        """C{encode(self)}, computed once per C{wire_format} and then reused."""
        try:
            return self._encoded[wire_format]
        except KeyError:
            value = self._encoded[wire_format] = encode(self)
            return value

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


@dataclass(slots=True)
class _Stream:
    epoch: str
    offset: int = 0
    touched: float = 0.0
    # (publication, time published), oldest first
    entries: deque[tuple[Publication, float]] = field(default_factory=deque)


def new_epoch() -> str:
    return secrets.token_hex(4)


class Streams:
    """All channel streams of one broker."""

    def __init__(self, size: int, ttl: float, meta_ttl: float) -> None:
        self.size = size
        self.ttl = ttl
        self.meta_ttl = meta_ttl
        self._streams: dict[str, _Stream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def _stream(self, channel: str, now: float) -> _Stream:
        """The channel's stream, created on first use; any use keeps it alive."""
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = _Stream(new_epoch())
        stream.touched = now
        return stream

    def add(self, channel: str, data: bytes, now: float) -> Publication:
        """Number C{data} as the channel's next publication and keep it in history."""
        stream = self._stream(channel, now)
        stream.offset += 1
        publication = Publication(channel, stream.offset, stream.epoch, data)
        if self.size > 0 and self.ttl > 0:
            stream.entries.append((publication, now))
            while len(stream.entries) > self.size:
                stream.entries.popleft()
        return publication

    def position(self, channel: str, now: float) -> StreamPosition:
        """The current epoch and top offset (0 before the first publication)."""
        stream = self._stream(channel, now)
        return StreamPosition(stream.epoch, stream.offset)

    def history(self, channel: str, now: float, since: StreamPosition | None = None,
                limit: int | None = None, reverse: bool = False) -> list[Publication]:
        """
        Kept publications, oldest first (newest first with C{reverse}); with
        C{since}, only those after it (before it with C{reverse}); nothing if
        its epoch is not current.
        """
        stream = self._stream(channel, now)
        self._trim(stream, now)
        publications = [p for p, _ in stream.entries]
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
        stream = self._stream(channel, now)
        self._trim(stream, now)
        position = StreamPosition(stream.epoch, stream.offset)
        # An empty epoch means "whatever the current one is", as in Centrifugo.
        epoch = since.epoch or stream.epoch
        if epoch != stream.epoch or since.offset > stream.offset:
            return Recovery(False, [], position)
        missed = stream.offset - since.offset
        if missed == 0:
            return Recovery(True, [], position)
        kept = [p for p, _ in stream.entries if p.offset > since.offset]
        if len(kept) != missed:
            return Recovery(False, [], position)
        return Recovery(True, kept, position)

    def expire(self, now: float) -> None:
        """
        Drop publications past their TTL and streams idle past C{meta_ttl};
        a stream nothing was ever published on (made by a read) goes after
        C{ttl}, so that reads of random channels cannot pile up streams.
        """
        for channel, stream in list(self._streams.items()):
            self._trim(stream, now)
            idle = now - stream.touched
            if idle >= self.meta_ttl or (stream.offset == 0 and idle >= self.ttl):
                del self._streams[channel]

    def _trim(self, stream: _Stream, now: float) -> None:
        entries = stream.entries
        while entries and now - entries[0][1] >= self.ttl:
            entries.popleft()
