"""Time: stored in UTC as RFC 3339, evaluated in the configured zone, injected everywhere.

Every time-dependent decision takes ``now`` or a ``Clock`` so that a test can walk through a week of
notices and protected windows in a millisecond, and the demo can run a fast clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


class ScaledClock:
    """Wall time running ``speed`` times faster than real time from ``start`` (the demo's fast clock)."""

    def __init__(self, speed: float, start: datetime | None = None) -> None:
        self.speed = speed
        self._start = start or datetime.now(UTC)
        self._mono0 = time.monotonic()

    def __call__(self) -> datetime:
        from datetime import timedelta

        return self._start + timedelta(seconds=(time.monotonic() - self._mono0) * self.speed)

    def epoch(self) -> float:
        """The same instant as seconds since the epoch (for simulators' clocks)."""
        return self().timestamp()

    def monotonic(self) -> float:
        """Seconds elapsed at this clock's rate, which nothing can set: what ``gateway.runtime.timetrust``
        measures wall-clock steps against (a fast clock is not a stepping one)."""
        return (time.monotonic() - self._mono0) * self.speed


def iso(dt: datetime) -> str:
    """RFC 3339 UTC with a Z, second precision kept to microseconds when present."""
    text = _ISO_TEXTS.get(dt)
    if text is not None:
        return text
    if dt.tzinfo is None:  # never in the memo: a naive datetime is not equal to any aware one
        raise ValueError("naive datetime: every stored instant must be timezone-aware")
    text = dt.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if len(_ISO_TEXTS) >= _ISO_KEPT:
        _ISO_TEXTS.clear()
        _PARSED.clear()
    _ISO_TEXTS[dt] = text
    if type(dt) is datetime and dt.tzinfo is UTC and not dt.fold:
        _PARSED[text] = dt  # exactly what parse_iso(text) returns
    return text


# The texts of recently formatted instants: one reading formats the same few instants a dozen times
# (the reading row, the entry, the meter's position, the outbox message, the audit trail).  A plain
# dict rather than ``lru_cache``: a datetime keeps its hash once computed, so a hit is one lookup,
# where the cache's wrapper built a key and moved the entry to the front of its list on every call.
# Equal aware datetimes are the same instant whatever their zone, and the text depends only on the
# instant.  Bounded by clearing: the live instants come back within a reading.  1,024 texts hold a
# commit's batch of readings many times over; every reading brings new instants, so a larger memo only
# fills (4,096 cost a running gateway about 1.4 MB, with the parsed instants below).
_ISO_TEXTS: dict[datetime, str] = {}
_ISO_KEPT = 1024
# The other way round, for the instants formatted here: a reading parses its meter's last reading
# instant, which the previous reading formatted.  Only plain UTC datetimes (what ``parse_iso`` returns).
_PARSED: dict[str, datetime] = {}


def parse_iso(text: str) -> datetime:
    """Parse an RFC 3339 instant; naive input is refused (it would be ambiguous)."""
    known = _PARSED.get(text)
    if known is not None:
        return known
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"time '{text}' has no UTC offset")
    return dt.astimezone(UTC)
