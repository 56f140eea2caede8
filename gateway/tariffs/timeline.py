"""Cutting an interval of time where its price can change, in the tariff's local wall time.

An interval is cut at version changes, at time-of-use window edges, at local midnights (day type and
block cycle changes) and at UTC-offset changes.  Edges are local wall times, so each is converted to
an instant for every local date in the interval; a wall time that occurs twice (autumn DST) yields
both instants and one that never occurs (spring DST) is covered by cutting at the offset change
itself.  Each resulting piece has a constant UTC offset and crosses no edge, so the period at its
first instant holds for all of it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from itertools import pairwise
from typing import NamedTuple
from zoneinfo import ZoneInfo

from gateway.tariffs.values import DAY_MINUTES, Tariff, TariffVersion

_US = timedelta(microseconds=1)


class Segment(NamedTuple):
    """A stretch of time with one version, one TOU period and one block cycle; instants in UTC.

    A NamedTuple (immutable, and built without a frozen dataclass's per-field ``object.__setattr__``):
    pricing a reading builds a few."""

    start: datetime
    end: datetime
    version: TariffVersion
    period: str | None
    cycle: datetime | None

    @property
    def micros(self) -> int:
        return (self.end - self.start) // _US


def require_aware(name: str, value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is refused because its instant is unknown."""
    if type(value) is datetime and value.tzinfo is UTC:  # already UTC (every instant the ledger passes)
        return value
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime (got {value!r})")
    return value.astimezone(UTC)


def _offset(instant: datetime, zone: ZoneInfo) -> timedelta | None:
    return instant.astimezone(zone).utcoffset()


def _transition(lo: datetime, hi: datetime, zone: ZoneInfo) -> datetime:
    """The first instant in (lo, hi] whose UTC offset is hi's (one transition assumed between them)."""
    target = _offset(hi, zone)
    low, high = 0, (hi - lo) // _US
    while high - low > 1:
        mid = (low + high) // 2
        if _offset(lo + mid * _US, zone) == target:
            high = mid
        else:
            low = mid
    return lo + high * _US


@lru_cache(maxsize=4096)
def wall_to_instant(day: date, minute: int, zone: ZoneInfo) -> datetime:
    """The first instant (UTC) at which local wall time ``day minute`` is reached.

    For a wall time that occurs twice this is the first occurrence; for one skipped by a DST change it
    is the instant of the change, when the clock jumps past it.
    """
    day = day + timedelta(days=minute // DAY_MINUTES)
    naive = datetime.combine(day, time((minute % DAY_MINUTES) // 60, minute % 60))
    found = []
    for fold in (0, 1):
        instant = naive.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        if instant.astimezone(zone).replace(tzinfo=None) == naive:
            found.append(instant)
    if found:
        return min(found)
    early, late = sorted(naive.replace(tzinfo=zone, fold=f).astimezone(UTC) for f in (0, 1))
    return _transition(early, late, zone)


def cycle_start(version: TariffVersion, instant: datetime) -> datetime | None:
    """Start (UTC) of the block cycle containing ``instant``; ``None`` for a version without a cycle."""
    cycle = version.cycle
    if cycle is None:
        return None
    zone = version.zone
    local = require_aware("instant", instant).astimezone(zone)
    if cycle.kind == "annual":
        candidate = date(local.year, cycle.start_month, cycle.start_day)
        if local.date() < candidate:
            candidate = date(local.year - 1, cycle.start_month, cycle.start_day)
    else:
        candidate = date(local.year, local.month, cycle.start_day)
        if local.date() < candidate:
            year, month = (local.year, local.month - 1) if local.month > 1 else (local.year - 1, 12)
            candidate = date(year, month, cycle.start_day)
    start = wall_to_instant(candidate, 0, zone)
    if start > instant:  # only when the cycle day's midnight is itself inside a DST gap
        return cycle_start(version, start - _US)
    return start


@lru_cache(maxsize=2048)
def _day_edges(day: date, edges: frozenset[int], zone: ZoneInfo) -> tuple[datetime, ...]:
    """Every instant (UTC) at which the local wall clock shows one of ``edges`` on ``day``.

    Cached per day: a gateway prices thousands of short intervals a day, all inside the same few local
    days, and converting each edge (both folds) was most of the cost of pricing a reading."""
    found: list[datetime] = []
    for minute in sorted(edges):
        naive = datetime.combine(day, time(minute // 60, minute % 60))
        for fold in (0, 1):
            instant = naive.replace(tzinfo=zone, fold=fold).astimezone(UTC)
            if instant.astimezone(zone).replace(tzinfo=None) == naive:
                found.append(instant)
    return tuple(found)


def _cuts(version: TariffVersion, start: datetime, end: datetime) -> list[datetime]:
    zone = version.zone
    cuts = {start, end}
    if version.tou is not None or version.cycle is not None:
        edges = version.tou.edges if version.tou is not None else frozenset({0})
        day = start.astimezone(zone).date() - timedelta(days=1)
        last = end.astimezone(zone).date() + timedelta(days=1)
        while day <= last:
            cuts.update(instant for instant in _day_edges(day, edges, zone) if start < instant < end)
            day += timedelta(days=1)
    ordered = sorted(cuts)
    with_changes = [ordered[0]]
    for lo, hi in pairwise(ordered):
        if _offset(lo, zone) != _offset(hi, zone):
            change = _transition(lo, hi, zone)
            if change < hi:
                with_changes.append(change)
        with_changes.append(hi)
    return with_changes


def _direct_segments(
    version: TariffVersion, lo: datetime, hi: datetime, day_type: Callable[[date], str]
) -> list[Segment]:
    """``lo``..``hi`` (UTC, inside one version's span) cut at every edge and classified piece by piece.

    The reference cut: ``_day_plan`` runs it once per local day, and the tests compare ``segments``
    against it over arbitrary intervals."""
    zone = version.zone
    day_types: dict[date, str] = {}
    out: list[Segment] = []
    for a, b in pairwise(_cuts(version, lo, hi)):
        period = None
        if version.tou is not None:
            local = a.astimezone(zone)
            if local.date() not in day_types:
                day_types[local.date()] = day_type(local.date())
            moment = local.time()
            micros = (
                (moment.hour * 60 + moment.minute) * 60 + moment.second
            ) * 1_000_000 + moment.microsecond
            period = version.tou.period_at(day_types[local.date()], micros)
        _append(out, Segment(a, b, version, period, cycle_start(version, a)))
    return out


def _append(out: list[Segment], seg: Segment) -> None:
    """Add ``seg`` to the stretches, joining it to the last one when nothing that prices differs."""
    last = out[-1] if out else None
    if (
        last is not None
        and last.version is seg.version
        and last.period == seg.period
        and last.cycle == seg.cycle
    ):
        out[-1] = Segment(last.start, seg.end, seg.version, seg.period, seg.cycle)
    else:
        out.append(seg)


# Day plans kept per version: a gateway prices thousands of short intervals a day, nearly all inside
# the same local day, so each day is cut and classified once.  Bounded: a few days are live at once.
_PLANS_KEPT = 16


def _day_plan(version: TariffVersion, day: date, day_type: Callable[[date], str]) -> tuple[Segment, ...]:
    """The stretches of local ``day`` (its first instant to the next day's) under ``version``."""
    return _plan_of(version, day, day_type(day) if version.tou is not None else None)


def _plan_of(version: TariffVersion, day: date, kind: str | None) -> tuple[Segment, ...]:
    """``_day_plan`` for a day of type ``kind`` (``None`` for a version without time of use)."""
    plans = version.day_plans
    key = (day, kind)
    plan = plans.get(key)
    if plan is None:
        zone = version.zone
        begins = wall_to_instant(day, 0, zone)
        ends = wall_to_instant(day + timedelta(days=1), 0, zone)
        plan = tuple(_direct_segments(version, begins, ends, lambda _d: kind or ""))
        if len(plans) >= _PLANS_KEPT:
            plans.clear()
        plans[key] = plan
    return plan


def segments(
    tariff: Tariff, start: datetime, end: datetime, day_type: Callable[[date], str]
) -> list[Segment]:
    """``start``..``end`` (aware, start < end) cut into maximal stretches of constant price inputs.

    Each local day's stretches come from its cached plan, clipped to the interval; a stretch is
    constant inside (no edge, midnight or offset change falls within it), so clipping keeps its class.
    """
    return segments_utc(tariff, require_aware("start", start), require_aware("end", end), day_type)


def segments_utc(
    tariff: Tariff, start: datetime, end: datetime, day_type: Callable[[date], str]
) -> list[Segment]:
    """``segments`` of instants already converted by ``require_aware`` (pricing checks them once)."""
    first = tariff.version_index(start)
    starts = tariff.starts_utc  # the versions that begin inside the interval follow the first
    after = max(first + 1, bisect_left(starts, end, first + 1))
    out: list[Segment] = []
    for index in range(first, after):
        version = tariff.versions[index]
        lo = start if index == first else starts[index]
        hi = starts[index + 1] if index + 1 < after else end
        if version.tou is None and version.cycle is None:
            _append(out, Segment(lo, hi, version, None, None))
            continue
        day, day_end = _local_day(version, lo)
        while True:
            plan = _day_plan(version, day, day_type)
            for piece in plan:
                if piece.end <= lo:
                    continue
                if piece.start >= hi:
                    break
                _append(
                    out, Segment(max(piece.start, lo), min(piece.end, hi), version, piece.period, piece.cycle)
                )
            if day_end >= hi:  # the next local day starts at or after the end (a skipped day has no plan)
                break
            day += _DAY
            day_end = wall_to_instant(day + _DAY, 0, version.zone)
    return out


def one_stretch(
    tariff: Tariff, start: datetime, end: datetime, day_type: Callable[[date], str]
) -> Segment | None:
    """The stretch of ``segments_utc`` that holds all of ``start``..``end`` (UTC), if one does: the usual
    reading (minutes inside one version, one local day and one time-of-use window).  ``None`` otherwise,
    and the caller cuts the interval with ``segments_utc``.

    The same stretch as ``segments_utc`` would return alone, found without building the list: the
    version by one bisection, the day's plan from its cache and the piece holding ``start`` in it.
    The returned segment is the plan's piece itself (its start and end are the piece's, not the
    interval's); its version, period and cycle are the interval's.

    The last stretch found is remembered per tariff with the span it holds for (the piece, within
    its version's span) and its day's type: the next reading's interval usually lies in it, and then
    only the day type is asked again (the calendar may have changed it)."""
    memo = _LAST_STRETCH.get(id(tariff))
    if memo is not None and memo[0] is tariff and memo[1] <= start and end <= memo[2]:
        kind = memo[4]
        if kind is None or day_type(memo[3]) == kind:
            return memo[5]
    first = tariff.version_index(start)
    starts = tariff.starts_utc
    if first + 1 < len(starts) and starts[first + 1] < end:
        return None  # a later version begins inside the interval
    version = tariff.versions[first]
    if version.tou is None and version.cycle is None:
        return Segment(start, end, version, None, None)
    day, day_end = _local_day(version, start)
    if end > day_end:
        return None  # the interval crosses a local midnight
    kind = day_type(day) if version.tou is not None else None
    for piece in _plan_of(version, day, kind):
        if piece.end > start:  # the first piece ending after the start holds it (the plan tiles the day)
            if end > piece.end:
                return None
            # the span this piece answers for: inside it and inside the version's span
            lo = max(piece.start, starts[first])
            hi = piece.end if first + 1 == len(starts) else min(piece.end, starts[first + 1])
            if len(_LAST_STRETCH) >= _LAST_STRETCHES_KEPT:
                _LAST_STRETCH.clear()
            _LAST_STRETCH[id(tariff)] = (tariff, lo, hi, day, kind, piece)
            return piece
    return None


# Per tariff (by id, the tariff itself kept and compared): the stretch ``one_stretch`` found last, the
# span it holds for, its local day and that day's type (``None`` without time of use).
_LAST_STRETCH: dict[int, tuple[Tariff, datetime, datetime, date, str | None, Segment]] = {}
_LAST_STRETCHES_KEPT = 64


# Per version (by id, the version itself kept and compared): the local day an instant was last placed
# in, with its first instant and the next day's.  Readings come minutes apart, so nearly every interval
# starts in the day the previous one did; converting its start to local time was a tenth of pricing it.
_LAST_DAY: dict[int, tuple[TariffVersion, datetime, datetime, date]] = {}
_LAST_DAYS_KEPT = 64
_DAY = timedelta(days=1)


def _local_day(version: TariffVersion, instant: datetime) -> tuple[date, datetime]:
    """The local date of ``instant`` (UTC) under ``version`` and the first instant of the next local
    day.  Only a day of constant UTC offset is remembered: all its instants have that local date."""
    memo = _LAST_DAY.get(id(version))
    if memo is not None and memo[0] is version and memo[1] <= instant < memo[2]:
        return memo[3], memo[2]
    zone = version.zone
    day = instant.astimezone(zone).date()
    begins, ends = wall_to_instant(day, 0, zone), wall_to_instant(day + _DAY, 0, zone)
    if ends - begins == _DAY and _offset(begins, zone) == _offset(ends, zone) and begins <= instant < ends:
        if len(_LAST_DAY) >= _LAST_DAYS_KEPT:
            _LAST_DAY.clear()
        _LAST_DAY[id(version)] = (version, begins, ends, day)
    return day, ends
