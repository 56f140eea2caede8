"""Tariff values: a tariff, its versions, and how each version prices energy.

A tariff is an id, a currency and a tuple of versions, each in force from its ``effective_from``
instant until the next one.  Every version prices energy the same way: a tuple of blocks (a flat
tariff is one unbounded block), each block a price per time-of-use period (``None`` when the version
has no time of use).  Keeping that one shape means pricing has no special cases per tariff kind.

Versions are never backdated: ``gateway.tariffs.build.with_version`` refuses a version that would take effect
before the latest known one or before "now".
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cached_property
from itertools import pairwise
from typing import TYPE_CHECKING, Literal
from zoneinfo import ZoneInfo

from gateway.tariffs.spec import DAY_TYPES

if TYPE_CHECKING:
    from gateway.tariffs.timeline import Segment

DAY_MINUTES = 24 * 60


@dataclass(frozen=True)
class Window:
    """Local wall time ``start``..``end`` (minutes after midnight) on ``day_types``; wraps if end <= start."""

    day_types: tuple[str, ...]
    start: int
    end: int
    period: str

    def minutes(self) -> list[tuple[int, int]]:
        """The half-open minute ranges of one local day this window covers."""
        if self.start < self.end:
            return [(self.start, self.end)]
        return [(self.start, DAY_MINUTES), (0, self.end)] if self.end else [(self.start, DAY_MINUTES)]


@dataclass(frozen=True)
class TimeOfUse:
    """Periods tiling every local day, per day type, and the meter registers that count each period."""

    periods: tuple[str, ...]
    windows: tuple[Window, ...]
    registers: tuple[tuple[str, str], ...] = ()
    _starts: Mapping[str, tuple[tuple[int, ...], tuple[str, ...]]] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        tiles: dict[str, list[tuple[int, str]]] = {day: [] for day in DAY_TYPES}
        for window in self.windows:
            for day in window.day_types:
                tiles[day].extend((lo, window.period) for lo, _hi in window.minutes())
        starts = {
            day: (tuple(lo * 60_000_000 for lo, _ in sorted(t)), tuple(p for _, p in sorted(t)))
            for day, t in tiles.items()
        }
        object.__setattr__(self, "_starts", starts)

    def period_at(self, day_type: str, microsecond_of_day: int) -> str:
        """The period in force at a local wall time (microseconds after local midnight)."""
        try:
            starts, periods = self._starts[day_type]
        except KeyError:
            raise ValueError(
                f"unknown day type {day_type!r}; expected one of {', '.join(DAY_TYPES)}"
            ) from None
        return periods[bisect.bisect_right(starts, microsecond_of_day) - 1]

    @property
    def register_map(self) -> dict[str, str]:
        return dict(self.registers)

    @cached_property
    def edges(self) -> frozenset[int]:
        """Every minute of the day at which some day type may change period (always includes 0)."""
        return frozenset(
            {0} | {w.start % DAY_MINUTES for w in self.windows} | {w.end % DAY_MINUTES for w in self.windows}
        )


@dataclass(frozen=True)
class Block:
    """One inclining block: energy up to ``up_to_wh`` in the cycle (``None`` = no limit), price per period."""

    up_to_wh: int | None
    prices: tuple[tuple[str | None, Decimal], ...]

    def price(self, period: str | None) -> Decimal:
        for name, price in self.prices:
            if name == period:
                return price
        raise LookupError(f"no price for period {period!r}")


@dataclass(frozen=True)
class BlockCycle:
    """Blocks count energy from local midnight of ``start_day`` (of ``start_month`` when annual)."""

    kind: Literal["annual", "monthly"]
    start_month: int = 1
    start_day: int = 1


@dataclass(frozen=True)
class TariffVersion:
    """One version of a tariff, in force from ``effective_from`` until the next version's instant."""

    version: int
    effective_from: datetime
    timezone: str
    blocks: tuple[Block, ...]
    tou: TimeOfUse | None = None
    cycle: BlockCycle | None = None
    standing_charge_per_day: Decimal = Decimal(0)
    # Per local day, the day's priced stretches (``timeline._day_plan``): a cache, not a value.
    day_plans: dict[tuple[date, str | None], tuple[Segment, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if self.effective_from.tzinfo is None or self.effective_from.utcoffset() is None:
            raise ValueError(
                f"version {self.version}: effective_from {self.effective_from} has no UTC offset"
            )
        if not self.blocks or self.blocks[-1].up_to_wh is not None:
            raise ValueError(f"version {self.version}: needs at least one block and an unbounded last block")

    @cached_property
    def zone(self) -> ZoneInfo:
        """The version's zone, looked up once (pricing a reading asks for it several times)."""
        return ZoneInfo(self.timezone)

    def price(self, block: int, period: str | None) -> Decimal:
        """Unit price (currency per kWh) in 1-based ``block`` and TOU ``period``."""
        return self.blocks[block - 1].price(period)

    @cached_property
    def block_bounds(self) -> tuple[int | None, ...]:
        """Each block's cumulative upper bound (Wh, ``None``: unbounded), for ``apportion.split_blocks``."""
        return tuple(block.up_to_wh for block in self.blocks)


@dataclass(frozen=True)
class Tariff:
    id: str
    currency: str
    versions: tuple[TariffVersion, ...]
    minor_digits: int = 2

    def __post_init__(self) -> None:
        if not self.versions:
            raise ValueError(f"tariff {self.id} has no versions")
        for earlier, later in pairwise(self.versions):
            if later.version <= earlier.version or later.effective_from <= earlier.effective_from:
                raise ValueError(f"tariff {self.id}: versions must increase in number and effective_from")

    @cached_property
    def starts_utc(self) -> tuple[datetime, ...]:
        """Each version's ``effective_from`` in UTC, in order: comparing instants that share one
        tzinfo is a field comparison, comparing across zones works out both offsets every time."""
        return tuple(version.effective_from.astimezone(UTC) for version in self.versions)

    def version_index(self, instant: datetime) -> int:
        """The index in ``versions`` of the version in force at ``instant`` (aware)."""
        utc = instant
        if utc.tzinfo is not UTC:  # UTC (every instant the ledger passes) needs no check
            if instant.tzinfo is None or instant.utcoffset() is None:
                raise ValueError(f"tariff {self.id}: instant {instant.isoformat()} has no time zone")
            utc = instant.astimezone(UTC)
        index = bisect.bisect_right(self.starts_utc, utc)
        if index == 0:
            raise LookupError(
                f"tariff {self.id} has no version in force at {instant.isoformat()} "
                f"(first is from {self.versions[0].effective_from.isoformat()})"
            )
        return index - 1

    def version_at(self, instant: datetime) -> TariffVersion:
        """The version in force at ``instant`` (aware); before the first version there is none."""
        return self.versions[self.version_index(instant)]
