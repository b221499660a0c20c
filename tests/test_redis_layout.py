"""
The pure parts of the Redis broker (omega_ws/broker/redis/layout.py): broker
URLs, sharding (FNV-1a 64 and jump consistent hash), key names, pub/sub
frames, and the live-stream bookkeeping that tells a gap from a duplicate.
No Redis, no reactor, no time.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from omega_ws.broker.redis.layout import (
    Keys,
    LiveStreams,
    RedisAddress,
    Verdict,
    fnv1a_64,
    jump_hash,
    parse_broker_url,
    parse_publication,
)

# -- parse_broker_url ---------------------------------------------------------------


def test_one_redis_url() -> None:
    assert parse_broker_url("redis://10.0.0.5:6380/2") == (RedisAddress("10.0.0.5", 6380, 2),)


def test_defaults_port_6379_and_database_0() -> None:
    (address,) = parse_broker_url("redis://cache.internal")
    assert (address.host, address.port, address.db) == ("cache.internal", 6379, 0)
    assert (address.username, address.password, address.tls) == (None, None, False)
    assert (address.sentinel, address.master) == ((), "")
    assert parse_broker_url("redis://h/") == parse_broker_url("redis://h:6379/0")


def test_several_shards_separated_by_commas_keep_their_order() -> None:
    shards = parse_broker_url("redis://a:7000/0, redis://b:7001/1 ,redis://c")
    assert shards == (RedisAddress("a", 7000, 0), RedisAddress("b", 7001, 1),
                      RedisAddress("c", 6379, 0))


def test_the_same_server_on_another_database_is_another_shard() -> None:
    assert len(parse_broker_url("redis://h:6379/0,redis://h:6379/1")) == 2


@pytest.mark.parametrize(("url", "username", "password"), [
    ("redis://:s3cret@h:6379/0", None, "s3cret"),
    ("redis://s3cret@h:6379/0", None, "s3cret"),  # a password alone, without the colon
    ("redis://app:s3cret@h:6379/0", "app", "s3cret"),
    ("redis://app:p%40ss%3Aw%2Frd@h/0", "app", "p@ss:w/rd"),  # percent-encoded
])
def test_credentials(url: str, username: str | None, password: str) -> None:
    (address,) = parse_broker_url(url)
    assert (address.username, address.password) == (username, password)
    assert (address.host, address.port, address.db) == ("h", 6379, 0)


def test_database_number() -> None:
    assert parse_broker_url("redis://h:1234/15")[0].db == 15


def test_rediss_means_tls() -> None:
    (address,) = parse_broker_url("rediss://:pw@secure.example:6390/3")
    assert address == RedisAddress("secure.example", 6390, 3, None, "pw", True)
    assert parse_broker_url("redis://secure.example")[0].tls is False


def test_ipv6_host() -> None:
    assert parse_broker_url("redis://[::1]:6380/1") == (RedisAddress("::1", 6380, 1),)


def test_sentinel_with_more_sentinels_and_a_database() -> None:
    (address,) = parse_broker_url(
        "redis+sentinel://:pw@s1:26380/mymaster?sentinel=s2:26381&sentinel=s3&db=3")
    assert address.sentinel == (("s1", 26380), ("s2", 26381), ("s3", 26379))
    assert address.master == "mymaster"
    assert address.db == 3
    assert address.password == "pw"
    assert str(address) == "sentinel s1:26380 master mymaster"


def test_sentinel_defaults_and_database_in_the_path() -> None:
    (address,) = parse_broker_url("redis+sentinel://s1/mymaster/4")
    assert address.sentinel == (("s1", 26379),)
    assert (address.master, address.db) == ("mymaster", 4)
    assert parse_broker_url("redis+sentinel://s1/mymaster")[0].db == 0


def test_an_address_names_itself_for_messages() -> None:
    assert str(parse_broker_url("redis://h:7000/2")[0]) == "h:7000/2"


# Every error names the URL it is about (the element, or the whole list for
# the errors about the list).
@pytest.mark.parametrize(("url", "named", "says"), [
    ("http://h:6379", "http://h:6379", "scheme"),
    ("h:6379", "h:6379", "scheme"),
    ("redis://h:abc/0", "redis://h:abc/0", "port"),
    ("redis://h:99999/0", "redis://h:99999/0", "port"),
    ("redis://h:6379/zero", "redis://h:6379/zero", "database"),
    ("redis://h:6379/-1", "redis://h:6379/-1", "database"),
    ("redis://a,,redis://b", "redis://a,,redis://b", "empty"),
    ("redis://a,", "redis://a,", "empty"),
    ("redis://a:6379/0,redis://a", "redis://a:6379/0,redis://a", "twice"),
    ("redis://", "redis://", "host"),
    ("redis+sentinel://s1", "redis+sentinel://s1", "master"),
    ("redis+sentinel://s1/m?sentinel=s2:x", "redis+sentinel://s1/m?sentinel=s2:x", "port"),
    ("redis+sentinel://s1/m?sentinel=s2:0", "redis+sentinel://s1/m?sentinel=s2:0", "range"),
    ("redis+sentinel://s1/m?db=x", "redis+sentinel://s1/m?db=x", "database"),
    ("redis://ok:6379/0,ftp://bad", "ftp://bad", "scheme"),
])
def test_errors_name_the_url(url: str, named: str, says: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_broker_url(url)
    assert repr(named) in str(error.value)
    assert says in str(error.value)


def test_port_zero_is_an_error() -> None:
    # BUG (layout.py _one_url, `port or 6379`): port 0 is silently read as 6379.
    with pytest.raises(ValueError, match="'redis://h:0/0'"):
        parse_broker_url("redis://h:0/0")


def test_a_database_in_other_digits_is_an_error_naming_the_url() -> None:
    # BUG (layout.py _db: str.isdigit() accepts "²", which int() refuses): the
    # error is int()'s own, "invalid literal for int()", without the URL.
    with pytest.raises(ValueError, match="'redis://h/²'.*database"):
        parse_broker_url("redis://h/²")


# -- sharding ------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "expected"), [
    # The FNV-1a 64 test vectors (Fowler, Noll, Vo: fnv_test.c).
    (b"", 0xCBF29CE484222325),
    (b"a", 0xAF63DC4C8601EC8C),
    (b"b", 0xAF63DF4C8601F1A5),
    (b"foobar", 0x85944171F73967E8),
    (b"chongo was here!\n", 0x46810940EFF5F915),
])
def test_fnv1a_64_known_vectors(data: bytes, expected: int) -> None:
    assert fnv1a_64(data) == expected


def test_fnv1a_64_stays_within_64_bits() -> None:
    values = [fnv1a_64(bytes([i]) * 50) for i in range(256)]
    assert all(0 <= value < 2 ** 64 for value in values)
    assert len(set(values)) == 256


@pytest.mark.parametrize(("key", "buckets", "expected"), [
    # Lamping & Veach's reference implementation, as other ports test it.
    (1, 1, 0),
    (42, 57, 43),
    (0xDEAD10CC, 1, 0),
    (0xDEAD10CC, 666, 361),
    (256, 1024, 520),
    (0, 1, 0),
    (3, 1, 0),
    (0, 2, 0),
    (4, 2, 1),
    (7, 2, 0),
    (1, 128, 55),
    (129, 128, 120),
    (128, 100000000, 38172097),
    (128, 2147483648, 1644467860),
    (2 ** 64 - 1, 128, 92),
])
def test_jump_hash_known_values(key: int, buckets: int, expected: int) -> None:
    assert jump_hash(key, buckets) == expected


def _keys(count: int) -> list[int]:
    return [fnv1a_64(f"channel-{i}".encode()) for i in range(count)]


def test_jump_hash_stays_in_range() -> None:
    for key in _keys(500):
        for buckets in (1, 2, 3, 7, 16, 100):
            assert 0 <= jump_hash(key, buckets) < buckets


def test_jump_hash_moves_keys_only_to_the_new_bucket() -> None:
    keys = _keys(2000)
    for n in range(1, 12):
        moved = 0
        for key in keys:
            before, after = jump_hash(key, n), jump_hash(key, n + 1)
            assert after in (before, n), (key, n, before, after)
            moved += after != before
        # About 1/(n+1) of the keys move: some, not all.
        assert 0 < moved < len(keys) * 2 / (n + 1)


def test_jump_hash_spreads_evenly() -> None:
    for buckets in (2, 3, 5, 8):
        counts = Counter(jump_hash(key, buckets) for key in _keys(10_000))
        assert set(counts) == set(range(buckets))
        expected = 10_000 / buckets
        assert all(abs(c - expected) < expected * 0.1 for c in counts.values()), counts


def test_jump_hash_spreads_random_keys_evenly() -> None:
    rng = random.Random(7)
    counts = Counter(jump_hash(rng.getrandbits(64), 4) for _ in range(10_000))
    assert all(abs(c - 2500) < 250 for c in counts.values()), counts


# -- names -----------------------------------------------------------------------------


def test_key_names_carry_the_channel_in_a_hash_tag() -> None:
    keys = Keys("omega-ws")
    assert keys.meta("news") == "omega-ws.meta.{news}"
    assert keys.stream("news") == "omega-ws.stream.{news}"
    assert keys.pubsub("news") == b"omega-ws.pub.{news}"
    assert keys.presence("news") == "omega-ws.presence.{news}"
    assert keys.presence_expiry("news") == "omega-ws.presence.expire.{news}"
    assert keys.session("c1") == "omega-ws.session.{c1}"
    assert keys.node("n1") == "omega-ws.node.n1"
    assert keys.control == "omega-ws.control"
    assert keys.generation == "omega-ws.generation"


def test_key_names_use_the_prefix() -> None:
    keys = Keys("app1")
    names = [keys.meta("c"), keys.stream("c"), keys.pubsub("c").decode(), keys.presence("c"),
             keys.presence_expiry("c"), keys.session("x"), keys.node("n"), keys.control,
             keys.generation]
    assert all(name.startswith("app1.") for name in names), names


@pytest.mark.parametrize("channel", ["news", "a.b:c", "x", "ünï-cödé", "with}brace", "ch{1}"])
def test_channel_of_a_pubsub_name_round_trips(channel: str) -> None:
    keys = Keys("omega-ws")
    assert keys.channel_of(keys.pubsub(channel)) == channel


def test_channel_of_other_names_is_none() -> None:
    keys = Keys("omega-ws")
    assert keys.channel_of(keys.node("n1").encode()) is None
    assert keys.channel_of(keys.control.encode()) is None
    assert keys.channel_of(b"other.pub.{news}") is None
    assert keys.channel_of(Keys("omega-ws2").pubsub("news")) is None
    assert keys.channel_of(b"omega-ws.pub") is None


# -- frames ------------------------------------------------------------------------------


def test_parse_publication() -> None:
    assert parse_publication(b"p17 0a1b2c3d {\"k\":1}") == (17, "0a1b2c3d", b'{"k":1}')


def test_parse_publication_keeps_the_data_byte_for_byte() -> None:
    data = b'  {"text": "a b  c"} \x00\xff\xfe\r\n p9 e '
    assert parse_publication(b"p3 ep " + data) == (3, "ep", data)
    assert parse_publication(b"p1 ep ") == (1, "ep", b"")
    assert parse_publication(b"p12345678901 ep \xc3\xa9") == (12345678901, "ep", "é".encode())


# -- the live stream ---------------------------------------------------------------------


def test_live_stream_delivers_in_order() -> None:
    live = LiveStreams()
    assert [live.accept("a", "E", n) for n in (1, 2, 3)] == [Verdict.DELIVER] * 3
    assert live.last("a") == ("E", 3)
    assert live.last("b") is None


def test_the_first_publication_seen_is_delivered_wherever_it_is() -> None:
    live = LiveStreams()
    assert live.accept("a", "E", 40) is Verdict.DELIVER
    assert live.accept("a", "E", 41) is Verdict.DELIVER


def test_live_stream_skips_duplicates() -> None:
    live = LiveStreams()
    for n in (1, 2, 3):
        live.accept("a", "E", n)
    assert live.accept("a", "E", 3) is Verdict.DUPLICATE
    assert live.accept("a", "E", 1) is Verdict.DUPLICATE
    assert live.last("a") == ("E", 3)  # a duplicate does not move it back
    assert live.accept("a", "E", 4) is Verdict.DELIVER


def test_live_stream_gap_then_continues_from_the_new_position() -> None:
    live = LiveStreams()
    live.accept("a", "E", 1)
    assert live.accept("a", "E", 5) is Verdict.GAP
    assert live.last("a") == ("E", 5)
    assert live.accept("a", "E", 6) is Verdict.DELIVER
    assert live.accept("a", "E", 6) is Verdict.DUPLICATE


def test_live_stream_foreign_epoch_is_a_gap() -> None:
    live = LiveStreams()
    live.accept("a", "E", 1)
    live.accept("a", "E", 2)
    assert live.accept("a", "F", 1) is Verdict.GAP
    assert live.accept("a", "F", 2) is Verdict.DELIVER
    assert live.accept("a", "E", 3) is Verdict.GAP  # the old epoch again is foreign too


def test_channels_are_independent() -> None:
    live = LiveStreams()
    live.accept("a", "E", 1)
    live.accept("b", "F", 7)
    assert live.accept("a", "E", 2) is Verdict.DELIVER
    assert live.accept("b", "F", 8) is Verdict.DELIVER
    assert live.accept("b", "E", 3) is Verdict.GAP
    assert live.last("a") == ("E", 2)


def test_learned_sets_the_start_only_when_nothing_was_seen() -> None:
    live = LiveStreams()
    live.learned("a", "E", 5)
    assert live.last("a") == ("E", 5)
    assert live.accept("a", "E", 5) is Verdict.DUPLICATE  # in flight when it was read
    assert live.accept("a", "E", 6) is Verdict.DELIVER
    live.learned("a", "E", 3)  # a read answered before messages it counts
    live.learned("a", "F", 9)
    assert live.last("a") == ("E", 6)


def test_learned_then_a_gap() -> None:
    live = LiveStreams()
    live.learned("a", "E", 5)
    assert live.accept("a", "E", 7) is Verdict.GAP


def test_check_without_resync_when_up_to_date() -> None:
    live = LiveStreams()
    live.accept("a", "E", 3)
    for _ in range(3):
        assert live.check("a", "E", 3) is False
    assert live.check("a", "E", 2) is False  # the read lags what arrived


def test_check_gives_one_check_of_grace() -> None:
    live = LiveStreams()
    live.accept("a", "E", 3)
    assert live.check("a", "E", 5) is False  # behind once: may be in flight
    assert live.check("a", "E", 5) is True  # still short of 5 at the next check
    assert live.last("a") == ("E", 5)  # counts as up to date now
    assert live.check("a", "E", 5) is False
    assert live.accept("a", "E", 6) is Verdict.DELIVER


def test_check_catching_up_between_checks_is_no_resync() -> None:
    live = LiveStreams()
    live.accept("a", "E", 3)
    assert live.check("a", "E", 5) is False
    live.accept("a", "E", 4)
    live.accept("a", "E", 5)
    assert live.check("a", "E", 7) is False  # caught up with the earlier reading
    live.accept("a", "E", 6)
    live.accept("a", "E", 7)
    assert live.check("a", "E", 7) is False


def test_check_behind_the_earlier_reading_though_some_arrived() -> None:
    live = LiveStreams()
    live.accept("a", "E", 3)
    assert live.check("a", "E", 6) is False
    live.accept("a", "E", 4)  # 5 and 6 never come
    assert live.check("a", "E", 8) is True


def test_check_with_another_epoch() -> None:
    live = LiveStreams()
    live.accept("a", "E", 3)
    assert live.check("a", "F", 1) is False
    assert live.check("a", "F", 1) is True
    assert live.last("a") == ("F", 1)


def test_check_when_nothing_was_ever_seen() -> None:
    live = LiveStreams()
    assert live.check("a", "E", 4) is False  # the baseline: what the stream was
    assert live.check("a", "E", 4) is False  # a quiet channel
    assert live.check("a", "E", 5) is False  # moved once: grace
    assert live.check("a", "E", 6) is True  # moved twice and nothing came
    assert live.last("a") == ("E", 6)
    assert live.check("a", "E", 6) is False


def test_check_when_nothing_seen_and_something_arrives_meanwhile() -> None:
    live = LiveStreams()
    assert live.check("a", "E", 4) is False
    assert live.check("a", "E", 5) is False
    assert live.accept("a", "E", 5) is Verdict.DELIVER
    assert live.check("a", "E", 5) is False


def test_forget() -> None:
    live = LiveStreams()
    live.accept("a", "E", 3)
    live.accept("b", "E", 1)
    assert live.check("a", "E", 5) is False  # behind, within grace
    live.forget("a")
    assert live.last("a") is None
    assert live.last("b") == ("E", 1)
    # Nothing of before is held: the next check is a fresh baseline, the next
    # publication a fresh start.
    assert live.check("a", "E", 5) is False
    assert live.check("a", "E", 5) is False
    assert live.accept("a", "E", 9) is Verdict.DELIVER
    live.forget("never-seen")  # harmless
