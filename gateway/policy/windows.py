"""Protected windows and holds: is an automatic cut allowed at an instant, and if not, until when?

Windows are evaluated in the calendar's local time so "18:00-10:00" means the customer's evening
on both sides of a DST change; the instants returned are aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from gateway.core.calendar import DayType, WorkCalendar
from gateway.policy.inputs import Hold
from gateway.policy.rules import Windows

# A run of protected days longer than this is treated as "no end found" rather than looped over.
_MAX_STEPS = 800


@dataclass(frozen=True)
class Blocker:
    """Why an instant is protected and when that protection ends (``None``: not by itself)."""

    rule: str
    detail: str
    until: datetime | None


def _at_local(cal: WorkCalendar, d: date, t: time) -> datetime:
    # fold=0 for ambiguous and non-existent wall times: in a gap this lands just after the change.
    return datetime.combine(d, t, tzinfo=cal.tz).astimezone(UTC)


def window_blocker(at: datetime, cal: WorkCalendar, windows: Windows) -> Blocker | None:
    """The first protected window containing ``at``, with the end of that window."""
    local = cal.local(at)
    d = local.date()
    kind = cal.day_type(d)
    next_midnight = _at_local(cal, d + timedelta(days=1), time(0))
    if windows.public_holidays and cal.is_unknown(d):
        # No official calendar for the year: the day may be a day off, so it is protected like a
        # holiday, with no end set (new data, not time, lifts it; docs/enforcement.md).
        return Blocker("windows.calendar_unknown", f"{d} has no official {cal.country} calendar for {d.year} "
                       f"(source {cal.source_of(d.year)}): treated as a day off", None)
    if windows.public_holidays and kind is DayType.HOLIDAY:
        return Blocker("windows.public_holidays", f"{d} is a public holiday ({cal.holiday_name(d)})", next_midnight)
    if windows.weekends and kind is DayType.WEEKEND:
        return Blocker("windows.weekends", f"{d} is a weekend day", next_midnight)
    wall = local.time().replace(tzinfo=None)
    for rng in windows.hours:
        if rng.contains(wall):
            end_day = d if wall < rng.end else d + timedelta(days=1)
            return Blocker("windows.hours", f"{local:%H:%M} local is inside {rng.label()}",
                           _at_local(cal, end_day, rng.end))
    return None


def hold_blocker(at: datetime, holds: Sequence[Hold]) -> Blocker | None:
    active = [h for h in holds if h.active(at)]
    if not active:
        return None
    if any(h.expires_at is None for h in active):
        h = next(h for h in active if h.expires_at is None)
        return Blocker(f"hold.{h.kind}", f"{h.reason} (by {h.actor}, until cleared)", None)
    h = max(active, key=lambda h: h.expires_at or at)
    return Blocker(f"hold.{h.kind}", f"{h.reason} (by {h.actor})", h.expires_at)


def first_blocker(at: datetime, cal: WorkCalendar, windows: Windows, holds: Sequence[Hold]) -> Blocker | None:
    return window_blocker(at, cal, windows) or hold_blocker(at, holds)


def earliest_allowed(
    start: datetime, cal: WorkCalendar, windows: Windows, holds: Sequence[Hold]
) -> tuple[datetime | None, tuple[Blocker, ...]]:
    """The first instant at or after ``start`` outside every window and hold, and what was in the way.

    ``None`` when a hold without expiry (or an implausibly long protected run) is in the way.
    """
    t = start
    seen: list[Blocker] = []
    for _ in range(_MAX_STEPS):
        b = first_blocker(t, cal, windows, holds)
        if b is None:
            return t, tuple(seen)
        if seen and seen[-1].rule == b.rule:
            seen[-1] = Blocker(b.rule, seen[-1].detail, b.until)  # one entry per run of the same rule
        else:
            seen.append(b)
        if b.until is None:
            return None, tuple(seen)
        t = b.until if b.until > t else t + timedelta(minutes=1)
    return None, tuple(seen)
