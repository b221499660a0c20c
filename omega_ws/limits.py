"""Per-connection publish rate limit: a token bucket, pure arithmetic."""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """
    Allows C{rate} events per second on average and C{burst} at once.
    Time is passed in, so a test drives it with any clock.
    """

    __slots__ = ("rate", "burst", "_tokens", "_updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means over the limit."""
        # max(): a wall clock stepped backwards must not drain the bucket.
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._updated = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class SharedBuckets:
    """
    One L{TokenBucket} per key (a client address, a token user), shared by
    every connection with that key, so that reconnecting does not refill
    it.  Buckets that have refilled are forgotten by L{prune}.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def get(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket

    def prune(self, now: float) -> None:
        """Forget the buckets that would be full by now: they are new ones again."""
        refill = self.burst / self.rate
        for key, bucket in list(self._buckets.items()):
            if now - bucket._updated >= refill:
                del self._buckets[key]


class PublishLimit:
    """The buckets one connection's publications draw from: its own, its address's, its user's."""

    __slots__ = ("_buckets",)

    def __init__(self, buckets: tuple[TokenBucket, ...]) -> None:
        self._buckets = buckets

    def take(self, now: float) -> bool:
        """One token from every bucket; False when one of them is empty."""
        return all(bucket.take(now) for bucket in self._buckets)
