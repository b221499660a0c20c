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

    @classmethod
    def for_publishing(cls, rate: float, burst: int, now: float) -> TokenBucket | None:
        """The per-connection publish limit (C{server.publish_rate}); None when off."""
        return cls(rate, burst, now) if rate else None

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
