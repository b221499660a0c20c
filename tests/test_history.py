"""Tests for L{omega_ws.broker.history}: streams, offsets, epochs, history and recovery."""

from __future__ import annotations

from omega_ws.broker.history import Publication, Recovery, StreamPosition, Streams


def _streams(size: int = 10, ttl: float = 100.0, meta_ttl: float = 1000.0) -> Streams:
    return Streams(size, ttl, meta_ttl)


def _offsets(publications: list[Publication]) -> list[int]:
    return [p.offset for p in publications]


def _fill(streams: Streams, channel: str, count: int, now: float = 0.0) -> list[Publication]:
    return [streams.add(channel, b'{"n":%d}' % i, now) for i in range(1, count + 1)]


# -- offsets and epochs -------------------------------------------------------


def test_offsets_count_from_one_per_channel() -> None:
    streams = _streams()
    got = [(c, streams.add(c, b"{}", 0.0).offset) for c in ["a", "a", "b", "a", "b", "c"]]
    assert got == [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("b", 2), ("c", 1)]
    assert len(streams) == 3


def test_one_epoch_per_stream() -> None:
    streams = _streams()
    a1 = streams.add("a", b"1", 0.0)
    a2 = streams.add("a", b"2", 1.0)
    b1 = streams.add("b", b"1", 2.0)
    assert a1.epoch == a2.epoch
    assert isinstance(a1.epoch, str) and a1.epoch != ""
    assert b1.epoch != a1.epoch
    assert streams.position("a", 3.0) == StreamPosition(a1.epoch, 2)


def test_publication_keeps_channel_and_data_verbatim() -> None:
    streams = _streams()
    p = streams.add("news", '{"é":1}'.encode(), 0.0)
    assert (p.channel, p.offset, p.data) == ("news", 1, '{"é":1}'.encode())


def test_position_before_first_publication_is_zero() -> None:
    streams = _streams()
    position = streams.position("empty", 0.0)
    assert position.offset == 0
    assert streams.add("empty", b"{}", 1.0).epoch == position.epoch


# -- bounds: size, ttl, meta_ttl ------------------------------------------------


def test_history_size_keeps_only_the_newest() -> None:
    streams = _streams(size=3)
    _fill(streams, "a", 5)
    assert _offsets(streams.history("a", 0.0)) == [3, 4, 5]
    assert streams.position("a", 0.0).offset == 5


def test_entries_older_than_ttl_are_dropped_on_access() -> None:
    streams = _streams(ttl=10.0)
    streams.add("a", b"1", 0.0)
    streams.add("a", b"2", 5.0)
    streams.add("a", b"3", 8.0)
    assert _offsets(streams.history("a", 9.9)) == [1, 2, 3]
    assert _offsets(streams.history("a", 12.0)) == [2, 3]
    assert _offsets(streams.history("a", 17.5)) == [3]
    assert streams.history("a", 30.0) == []
    # Offsets go on from where they were: only history was dropped.
    assert streams.add("a", b"4", 31.0).offset == 4


def test_expire_drops_old_entries() -> None:
    streams = _streams(ttl=10.0)
    first = streams.add("a", b"1", 0.0)
    streams.add("a", b"2", 6.0)
    streams.expire(11.0)
    assert _offsets(streams.history("a", 11.0)) == [2]
    assert streams.position("a", 11.0) == StreamPosition(first.epoch, 2)


def test_no_history_when_size_or_ttl_is_zero() -> None:
    for streams in (_streams(size=0), _streams(ttl=0.0)):
        assert _fill(streams, "a", 2)[-1].offset == 2
        assert streams.history("a", 0.0) == []


def test_meta_ttl_forgets_the_stream_and_starts_a_new_epoch() -> None:
    streams = _streams(ttl=10.0, meta_ttl=50.0)
    old = _fill(streams, "a", 3)[-1]
    streams.expire(40.0)
    assert len(streams) == 1
    streams.expire(60.0)
    assert len(streams) == 0
    new = streams.add("a", b"{}", 61.0)
    assert new.offset == 1
    assert new.epoch != old.epoch
    assert streams.recover("a", StreamPosition(old.epoch, 3), 62.0) == Recovery(
        False, [], StreamPosition(new.epoch, 1))


def test_a_busy_stream_is_not_forgotten() -> None:
    streams = _streams(ttl=10.0, meta_ttl=50.0)
    epoch = streams.add("a", b"{}", 0.0).epoch
    streams.add("a", b"{}", 40.0)
    streams.expire(60.0)
    assert streams.position("a", 60.0) == StreamPosition(epoch, 2)


# -- history() ------------------------------------------------------------------


def test_history_since_limit_reverse() -> None:
    streams = _streams()
    epoch = _fill(streams, "a", 6)[0].epoch
    since = StreamPosition(epoch, 2)
    assert _offsets(streams.history("a", 0.0)) == [1, 2, 3, 4, 5, 6]
    assert _offsets(streams.history("a", 0.0, reverse=True)) == [6, 5, 4, 3, 2, 1]
    assert _offsets(streams.history("a", 0.0, since=since)) == [3, 4, 5, 6]
    assert _offsets(streams.history("a", 0.0, since=since, limit=2)) == [3, 4]
    assert _offsets(streams.history("a", 0.0, limit=2)) == [1, 2]
    assert _offsets(streams.history("a", 0.0, limit=2, reverse=True)) == [6, 5]
    # As Centrifugo: with reverse, what came before the position, newest first.
    assert _offsets(streams.history("a", 0.0, since=since, reverse=True)) == [1]
    later = StreamPosition(epoch, 5)
    assert _offsets(streams.history("a", 0.0, since=later, reverse=True)) == [4, 3, 2, 1]
    assert streams.history("a", 0.0, limit=0) == []
    assert _offsets(streams.history("a", 0.0, limit=-1)) == [1, 2, 3, 4, 5, 6]
    assert streams.history("a", 0.0, since=StreamPosition(epoch, 6)) == []


def test_history_since_another_epoch_gives_nothing() -> None:
    streams = _streams()
    epoch = _fill(streams, "a", 3)[0].epoch
    assert streams.history("a", 0.0, since=StreamPosition(epoch + "x", 0)) == []


def test_history_since_empty_epoch_means_current() -> None:
    streams = _streams()
    _fill(streams, "a", 4)
    assert _offsets(streams.history("a", 0.0, since=StreamPosition("", 1))) == [2, 3, 4]


def test_history_returns_the_publications_as_added() -> None:
    streams = _streams()
    added = _fill(streams, "a", 2)
    assert streams.history("a", 0.0) == added
    assert [p.data for p in streams.history("a", 0.0)] == [b'{"n":1}', b'{"n":2}']


# -- recover() ------------------------------------------------------------------


def test_recover_nothing_missed() -> None:
    streams = _streams()
    epoch = _fill(streams, "a", 3)[0].epoch
    assert streams.recover("a", StreamPosition(epoch, 3), 1.0) == Recovery(
        True, [], StreamPosition(epoch, 3))


def test_recover_nothing_missed_on_a_new_stream() -> None:
    streams = _streams()
    position = streams.position("a", 0.0)
    assert streams.recover("a", position, 1.0) == Recovery(True, [], position)


def test_recover_missed_within_history() -> None:
    streams = _streams(size=5)
    added = _fill(streams, "a", 7)
    epoch = added[0].epoch
    recovery = streams.recover("a", StreamPosition(epoch, 3), 1.0)
    assert recovery.recovered is True
    assert recovery.publications == added[3:]
    assert _offsets(recovery.publications) == [4, 5, 6, 7]
    assert recovery.position == StreamPosition(epoch, 7)


def test_recover_gap_trimmed_by_size_is_all_or_nothing() -> None:
    streams = _streams(size=3)
    epoch = _fill(streams, "a", 6)[0].epoch  # keeps 4, 5, 6
    assert streams.recover("a", StreamPosition(epoch, 3), 1.0).recovered is True
    assert streams.recover("a", StreamPosition(epoch, 2), 1.0) == Recovery(
        False, [], StreamPosition(epoch, 6))
    assert streams.recover("a", StreamPosition(epoch, 0), 1.0) == Recovery(
        False, [], StreamPosition(epoch, 6))


def test_recover_gap_trimmed_by_ttl_is_all_or_nothing() -> None:
    streams = _streams(ttl=10.0)
    epoch = streams.add("a", b"1", 0.0).epoch
    streams.add("a", b"2", 5.0)
    streams.add("a", b"3", 9.0)
    assert _offsets(streams.recover("a", StreamPosition(epoch, 0), 9.5).publications) == [1, 2, 3]
    assert streams.recover("a", StreamPosition(epoch, 0), 12.0) == Recovery(
        False, [], StreamPosition(epoch, 3))
    recovery = streams.recover("a", StreamPosition(epoch, 1), 12.0)
    assert (recovery.recovered, _offsets(recovery.publications)) == (True, [2, 3])


def test_recover_other_epoch_fails() -> None:
    streams = _streams()
    epoch = _fill(streams, "a", 3)[0].epoch
    assert streams.recover("a", StreamPosition("other", 1), 1.0) == Recovery(
        False, [], StreamPosition(epoch, 3))
    assert streams.recover("a", StreamPosition("other", 3), 1.0).recovered is False


def test_recover_offset_ahead_of_the_stream_fails() -> None:
    streams = _streams()
    epoch = _fill(streams, "a", 3)[0].epoch
    assert streams.recover("a", StreamPosition(epoch, 4), 1.0) == Recovery(
        False, [], StreamPosition(epoch, 3))


def test_recover_empty_epoch_counts_as_current() -> None:
    streams = _streams()
    added = _fill(streams, "a", 3)
    assert streams.recover("a", StreamPosition("", 1), 1.0) == Recovery(
        True, added[1:], StreamPosition(added[0].epoch, 3))
    assert streams.recover("a", StreamPosition("", 9), 1.0).recovered is False


def test_recovery_joint_later_publications_follow_the_position() -> None:
    streams = _streams()
    epoch = _fill(streams, "a", 3)[0].epoch
    recovery = streams.recover("a", StreamPosition(epoch, 1), 1.0)
    later = _fill(streams, "a", 2, now=2.0)
    assert recovery.position == StreamPosition(epoch, 3)
    assert _offsets(later) == [4, 5]
    assert all(p.offset > recovery.position.offset and p.epoch == epoch for p in later)
    again = streams.recover("a", recovery.position, 3.0)
    assert (again.recovered, again.publications) == (True, later)


def test_encoded_is_computed_once_per_format() -> None:
    p = Publication("a", 1, "e", b"{}")
    calls: list[str] = []

    def encode(publication: Publication) -> object:
        calls.append("x")
        return publication.data + b"!"

    assert p.encoded("raw", encode) == b"{}!"
    assert p.encoded("raw", encode) == b"{}!"
    assert p.encoded("centrifuge", encode) == b"{}!"
    assert calls == ["x", "x"]


def test_a_stream_made_by_a_read_alone_goes_after_ttl() -> None:
    streams = _streams(ttl=100.0, meta_ttl=1000.0)
    streams.position("read-only", 0.0)
    streams.add("published", b"{}", 0.0)
    streams.expire(150.0)
    assert len(streams) == 1  # the published one stays until meta_ttl
    streams.expire(1200.0)
    assert len(streams) == 0
