"""A token bucket per rejection code, so a flood of bad commands cannot flood the log or the broker.

A broker anyone can publish to may deliver thousands of garbage commands a second; each used to
cost a warning line and an unstored rejection ack (20,000 lines in 10 s).  ``RejectionLimiter``
lets ``rate_per_minute`` rejections of each code through (with a burst of the same size) and counts
the rest; ``take_summary`` reports them once per interval as one line, "N rejected commands
suppressed".  The head office still learns of the flood (the summary, and the first acks of every
code), the gateway stays readable, and a legitimate command is never limited: only rejections are.

Pure bookkeeping: the clock is injected (``monotonic``), nothing here sleeps or does I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class RejectionLimiter:
    """``allow(code)``: may this rejection be logged and acknowledged?  Counts those that may not."""

    rate_per_minute: int = 60
    monotonic: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _suppressed: dict[str, int] = field(default_factory=dict)

    def allow(self, code: str) -> bool:
        now = self.monotonic()
        capacity = float(self.rate_per_minute)
        bucket = self._buckets.get(code)
        if bucket is None:
            bucket = self._buckets[code] = _Bucket(capacity, now)
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.at) * capacity / 60.0)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        self._suppressed[code] = self._suppressed.get(code, 0) + 1
        return False

    @property
    def suppressed(self) -> int:
        """Rejections suppressed since the last summary."""
        return sum(self._suppressed.values())

    def take_summary(self) -> str | None:
        """One line for what was suppressed since the last call (None if nothing), and reset."""
        if not self._suppressed:
            return None
        by_code = ", ".join(f"{code}={n}" for code, n in sorted(self._suppressed.items()))
        line = f"{self.suppressed} rejected commands suppressed ({by_code})"
        self._suppressed.clear()
        return line
