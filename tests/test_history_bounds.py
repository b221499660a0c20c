"""
Tests for the bounds of L{omega_ws.broker.history.Streams}: bytes per channel and
in all, streams made only by publications, the stream cap, and history
holding each publication's data alone.  Time is passed in.
"""

from __future__ import annotations

from omega_ws.broker.history import Publication, StreamPosition, Streams


def _streams(**bounds: int) -> Streams:
    return Streams(size=1000, ttl=100.0, meta_ttl=1000.0, **bounds)


def _offsets(publications: list[Publication]) -> list[int]:
    return [p.offset for p in publications]


def test_history_is_bounded_in_bytes_per_channel() -> None:
    streams = _streams(max_bytes=350)
    for _ in range(10):
        streams.add("a", b"x" * 100, 0.0)
    assert _offsets(streams.history("a", 0.0)) == [8, 9, 10]
    assert streams.bytes == 300
    assert streams.dropped == 7
    assert streams.position("a", 0.0).offset == 10  # numbering is not affected


def test_a_publication_larger_than_the_bound_is_numbered_but_not_kept() -> None:
    streams = _streams(max_bytes=50)
    streams.add("a", b"x" * 10, 0.0)
    big = streams.add("a", b"x" * 51, 0.0)
    assert big.offset == 2
    assert _offsets(streams.history("a", 0.0)) == [1]
    recovery = streams.recover("a", StreamPosition(big.epoch, 0), 0.0)
    assert not recovery.recovered  # offset 2 is missing from history: all or nothing


def test_history_is_bounded_in_total_oldest_first_across_channels() -> None:
    streams = _streams(total_bytes=500)
    for i in range(8):
        streams.add("a" if i % 2 else "b", b"x" * 100, float(i))
    # Published b1 a1 b2 a2 b3 a3 b4 a4: the three oldest went.
    assert _offsets(streams.history("b", 8.0)) == [3, 4]
    assert _offsets(streams.history("a", 8.0)) == [2, 3, 4]
    assert streams.bytes == 500 and streams.dropped == 3


def test_dropped_entries_do_not_pile_up_behind_an_old_one() -> None:
    streams = _streams(max_bytes=100)
    streams.add("old", b"x", 0.0)  # stays at the head of the global queue
    for _ in range(10000):
        streams.add("busy", b"y" * 100, 1.0)  # each pushes out the one before
    assert len(streams._entries) < 2100
    assert streams.bytes == 101


def test_reads_create_no_stream() -> None:
    streams = _streams()
    position = streams.position("fresh", 0.0)
    assert streams.history("fresh", 0.0) == []
    recovery = streams.recover("fresh", StreamPosition(position.epoch, 0), 0.0)
    assert recovery.recovered and recovery.position == position
    assert not streams.recover("fresh", StreamPosition(position.epoch, 3), 0.0).recovered
    assert len(streams) == 0
    assert streams.position("fresh", 5.0) == position  # stable until published
    assert streams.add("fresh", b"{}", 6.0).epoch == position.epoch
    assert position.epoch != streams.position("other", 0.0).epoch


def test_the_stream_cap_evicts_an_empty_one_first_then_the_least_recently_used() -> None:
    streams = Streams(size=10, ttl=10.0, meta_ttl=1000.0, max_streams=3)
    streams.add("a", b"{}", 0.0)  # its history expires at 10
    streams.add("b", b"{}", 5.0)
    streams.add("c", b"{}", 12.0)
    streams.position("a", 13.0)  # a is now the most recently used, but empty
    streams.add("d", b"{}", 14.0)
    assert sorted(streams._streams) == ["b", "c", "d"]
    streams.add("e", b"{}", 15.0)  # none empty: the least recently used (b) goes
    assert sorted(streams._streams) == ["c", "d", "e"]
    assert streams.evicted_streams == 2


def test_a_forgotten_stream_comes_back_on_a_new_epoch() -> None:
    streams = Streams(size=10, ttl=10.0, meta_ttl=1000.0, max_streams=1)
    old = streams.add("a", b"{}", 0.0)
    streams.add("b", b"{}", 1.0)  # evicts a
    new = streams.add("a", b"{}", 2.0)
    assert new.offset == 1 and new.epoch != old.epoch
    assert not streams.recover("a", StreamPosition(old.epoch, 1), 2.0).recovered


def test_encodings_live_only_while_dispatching() -> None:
    publication = Publication("a", 1, "e", b"{}")
    calls: list[int] = []

    def encode(p: Publication) -> object:
        calls.append(1)
        return b"frame"

    publication.encoded("raw", encode)
    publication.encoded("raw", encode)
    assert len(calls) == 1
    publication.dispatched()
    assert publication._encoded is None
    publication.encoded("raw", encode)  # a replay: encoded, not kept
    assert publication._encoded is None and len(calls) == 2
