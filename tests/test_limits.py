"""Tests for L{omega_ws.limits.TokenBucket}: time is passed in, no clock needed."""

from __future__ import annotations

from omega_ws.limits import TokenBucket


def _takes(bucket: TokenBucket, times: list[float]) -> list[bool]:
    return [bucket.take(t) for t in times]


def test_starts_full_and_allows_a_burst_at_once() -> None:
    bucket = TokenBucket(rate=1, burst=3, now=100.0)
    assert _takes(bucket, [100.0] * 5) == [True, True, True, False, False]


def test_refills_at_rate() -> None:
    bucket = TokenBucket(rate=2, burst=2, now=0.0)
    assert _takes(bucket, [0.0, 0.0, 0.0]) == [True, True, False]
    assert bucket.take(0.25) is False  # half a token
    assert bucket.take(0.5) is True  # one token
    assert bucket.take(0.5) is False
    assert _takes(bucket, [1.5, 1.5, 1.5]) == [True, True, False]


def test_fractional_tokens_accumulate_across_denied_attempts() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=0.0)
    assert bucket.take(0.0) is True
    assert _takes(bucket, [0.25, 0.5, 0.75]) == [False, False, False]
    assert bucket.take(1.0) is True
    assert bucket.take(1.0) is False


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=10, burst=4, now=0.0)
    assert _takes(bucket, [0.0] * 4) == [True] * 4
    assert _takes(bucket, [3600.0] * 6) == [True] * 4 + [False] * 2


def test_fresh_bucket_does_not_start_above_burst() -> None:
    bucket = TokenBucket(rate=100, burst=2, now=0.0)
    assert _takes(bucket, [50.0] * 3) == [True, True, False]


def test_long_run_average_is_rate_plus_the_initial_burst() -> None:
    bucket = TokenBucket(rate=4, burst=1, now=0.0)
    times = [n * 0.125 for n in range(65)]  # 0 .. 8 s, eight tries per second
    allowed = _takes(bucket, times)
    assert sum(allowed) == 1 + 4 * 8
    assert allowed[:6] == [True, False, True, False, True, False]


def test_sustained_overload_is_limited_to_rate() -> None:
    bucket = TokenBucket(rate=5, burst=10, now=0.0)
    allowed = 0
    for second in range(10):
        allowed += sum(_takes(bucket, [float(second)] * 100))
    assert allowed == 10 + 5 * 9


def test_zero_burst_allows_nothing() -> None:
    bucket = TokenBucket(rate=1000, burst=0, now=0.0)
    assert _takes(bucket, [0.0, 1.0, 100.0]) == [False, False, False]


def test_attributes() -> None:
    bucket = TokenBucket(rate=2.5, burst=7, now=3.0)
    assert (bucket.rate, bucket.burst) == (2.5, 7)


def test_independent_buckets() -> None:
    one = TokenBucket(rate=1, burst=1, now=0.0)
    two = TokenBucket(rate=1, burst=1, now=0.0)
    assert one.take(0.0) is True
    assert one.take(0.0) is False
    assert two.take(0.0) is True


def test_clock_stepping_backwards_does_not_drain_the_bucket() -> None:
    # Connections pass reactor.seconds(), which is wall-clock time.time():
    # an NTP step back must not turn into a minute of "Publish rate exceeded".
    bucket = TokenBucket(rate=1, burst=5, now=100.0)
    assert bucket.take(100.0) is True
    assert bucket.take(40.0) is True  # 3 tokens left, none earned for going back
    assert _takes(bucket, [40.0] * 4) == [True, True, True, False]
    assert bucket.take(41.0) is True


def test_shared_buckets_outlive_the_connections_that_use_them() -> None:
    from omega_ws.limits import PublishLimit, SharedBuckets

    shared = SharedBuckets(rate=1, burst=2)
    first = PublishLimit((TokenBucket(10, 10, 0.0), shared.get("192.0.2.1", 0.0)))
    assert _takes(first, [0.0, 0.0, 0.0]) == [True, True, False]  # type: ignore[arg-type]
    # A new connection from the same address gets a fresh bucket of its own,
    # but the address's is still empty.
    second = PublishLimit((TokenBucket(10, 10, 0.0), shared.get("192.0.2.1", 0.0)))
    assert second.take(0.0) is False
    assert PublishLimit((shared.get("192.0.2.2", 0.0),)).take(0.0) is True
    assert len(shared) == 2
    shared.prune(1.0)  # not refilled yet
    assert len(shared) == 2
    shared.prune(3.0)  # both full again: forgotten
    assert len(shared) == 0
