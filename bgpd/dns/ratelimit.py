"""Per-source token buckets, pure: one pod's flood uses up its own bucket, never the others'."""
from __future__ import annotations


class RateLimiter:
    """Each source may send `burst` queries at once and `rate` per second on average.

    At most `max_sources` buckets are kept: when a new source would exceed that, the buckets that are full
    again (idle sources, which lose nothing by being forgotten) are dropped first; if none is, the new
    source is refused until one is, so a spray of forged sources cannot grow the table."""

    def __init__(self, rate: float, burst: float, max_sources: int = 65536):
        self.rate, self.burst, self.max_sources = rate, burst, max_sources
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, when)
        self.limited = 0

    def allow(self, source: str, now: float) -> bool:
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources and not self._forget_idle(now):
                self.limited += 1
                return False
            tokens = self.burst
        else:
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        if tokens < 1:
            self._buckets[source] = (tokens, now)
            self.limited += 1
            return False
        self._buckets[source] = (tokens - 1, now)
        return True

    def _forget_idle(self, now: float) -> bool:
        full = [s for s, (tokens, when) in self._buckets.items() if tokens + (now - when) * self.rate >= self.burst]
        for s in full:
            del self._buckets[s]
        return bool(full)
