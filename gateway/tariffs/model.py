"""Tariff values, their versions, and the strict loaders that build them from TOML or JSON.

A tariff is an id, a currency and a tuple of versions, each in force from its ``effective_from``
instant until the next one.  Every version prices energy the same way: a tuple of blocks (a flat
tariff is one unbounded block), each block a price per time-of-use period (``None`` when the version
has no time of use).  Keeping that one shape means pricing has no special cases per tariff kind.

Versions are never backdated: ``Tariff.with_version`` refuses a version that would take effect
before the latest known one or before "now".
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError

from drivers.tomlsource import TomlError, read_toml, validation_to_toml_error
from gateway.tariffs.spec import DAY_TYPES, TariffSpec, TouSpec, VersionSpec
from gateway.tariffs.tomlpos import locate_nested

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

    @property
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

    def __post_init__(self) -> None:
        if self.effective_from.tzinfo is None or self.effective_from.utcoffset() is None:
            raise ValueError(
                f"version {self.version}: effective_from {self.effective_from} has no UTC offset"
            )
        if not self.blocks or self.blocks[-1].up_to_wh is not None:
            raise ValueError(f"version {self.version}: needs at least one block and an unbounded last block")

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def price(self, block: int, period: str | None) -> Decimal:
        """Unit price (currency per kWh) in 1-based ``block`` and TOU ``period``."""
        return self.blocks[block - 1].price(period)


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

    def version_at(self, instant: datetime) -> TariffVersion:
        """The version in force at ``instant`` (aware); before the first version there is none."""
        if instant.tzinfo is None or instant.utcoffset() is None:
            raise ValueError(f"tariff {self.id}: instant {instant.isoformat()} has no time zone")
        found = None
        for version in self.versions:
            if version.effective_from <= instant:
                found = version
        if found is None:
            raise LookupError(
                f"tariff {self.id} has no version in force at {instant.isoformat()} "
                f"(first is from {self.versions[0].effective_from.isoformat()})"
            )
        return found

    def with_version(self, version: TariffVersion, now: datetime) -> Tariff:
        """A copy with ``version`` appended; refuses a version that would backdate a price."""
        latest = self.versions[-1]
        if version.effective_from.tzinfo is None or version.effective_from.utcoffset() is None:
            raise ValueError(f"tariff {self.id} v{version.version}: effective_from has no time zone")
        if version.version <= latest.version:
            raise ValueError(
                f"tariff {self.id}: version {version.version} is not after the latest version {latest.version}"
            )
        if version.effective_from <= latest.effective_from:
            raise ValueError(
                f"tariff {self.id} v{version.version}: effective_from {version.effective_from.isoformat()} "
                f"is not after v{latest.version}'s {latest.effective_from.isoformat()} (no backdating)"
            )
        if version.effective_from < now:
            raise ValueError(
                f"tariff {self.id} v{version.version}: effective_from {version.effective_from.isoformat()} "
                f"is before now ({now.isoformat()}); tariffs are never backdated"
            )
        try:
            _check_version(_version_spec_of(version), ("versions", len(self.versions)))
        except (_SpecError, ValidationError) as exc:
            reason = (
                str(validation_to_toml_error("version", "", exc))
                if isinstance(exc, ValidationError)
                else f"{_format(exc.path)}: {exc}"
            )
            raise ValueError(f"tariff {self.id} v{version.version}: invalid version: {reason}") from None
        return replace(self, versions=(*self.versions, version))


class _SpecError(Exception):
    """A rule spanning several fields is broken at ``path``; turned into a located ``TomlError``."""

    def __init__(self, path: Sequence[str | int], reason: str) -> None:
        super().__init__(reason)
        self.path = tuple(path)
        self.reason = reason


_Loc = tuple[str | int, ...]


def _check_prices(
    price: Decimal | None, prices: Mapping[str, Decimal] | None, periods: tuple[str, ...], at: _Loc
) -> tuple[tuple[str | None, Decimal], ...]:
    if periods:
        if price is not None:
            raise _SpecError(
                (*at, "price"), f"this version has time of use: give 'prices' for {', '.join(periods)}"
            )
        if prices is None:
            raise _SpecError(at, f"missing 'prices' for periods {', '.join(periods)}")
        for name in prices:
            if name not in periods:
                raise _SpecError((*at, "prices", name), f"period '{name}' is not used by any tou window")
        missing = [p for p in periods if p not in prices]
        if missing:
            raise _SpecError((*at, "prices"), f"no price for period(s) {', '.join(missing)}")
        return tuple((p, prices[p]) for p in periods)
    if prices is not None:
        raise _SpecError(
            (*at, "prices"), "'prices' per period needs a [tou] table; use 'price' for a flat rate"
        )
    if price is None:
        raise _SpecError(at, "missing 'price'")
    return ((None, price),)


def _check_tou(tou: TouSpec, at: _Loc) -> TimeOfUse:
    owner: dict[str, list[int | None]] = {day: [None] * DAY_MINUTES for day in DAY_TYPES}
    periods: list[str] = []
    windows = []
    for index, spec in enumerate(tou.windows):
        window = Window(tuple(spec.days), spec.start, spec.end, spec.period)
        if spec.start == spec.end or spec.start == DAY_MINUTES:
            raise _SpecError(
                (*at, "windows", index, "end"),
                "a window must not be empty (use 00:00 to 24:00 for a whole day)",
            )
        for day in spec.days:
            for lo, hi in window.minutes():
                for minute in range(lo, hi):
                    other = owner[day][minute]
                    if other is not None:
                        raise _SpecError(
                            (*at, "windows", index),
                            f"overlaps window {other} on {day} at {minute // 60:02d}:{minute % 60:02d}",
                        )
                    owner[day][minute] = index
        if spec.period not in periods:
            periods.append(spec.period)
        windows.append(window)
    for day_type in DAY_TYPES:
        if None in owner[day_type]:
            first = owner[day_type].index(None)
            raise _SpecError(
                (*at, "windows"), f"no period covers {day_type} from {first // 60:02d}:{first % 60:02d}"
            )
    for register, period in tou.registers.items():
        if period not in periods:
            raise _SpecError(
                (*at, "registers", register), f"register {register} maps to unknown period '{period}'"
            )
    return TimeOfUse(tuple(periods), tuple(windows), tuple(sorted(tou.registers.items())))


def _check_blocks(spec: VersionSpec, periods: tuple[str, ...], at: _Loc) -> tuple[Block, ...]:
    given = [name for name in ("price", "prices", "blocks") if getattr(spec, name) is not None]
    if spec.blocks is None:
        if spec.cycle is not None:
            raise _SpecError((*at, "cycle"), "a block cycle needs [[versions.blocks]]")
        if len(given) > 1:
            raise _SpecError((*at, given[1]), "give either 'price' or 'prices', not both")
        return (Block(None, _check_prices(spec.price, spec.prices, periods, at)),)
    if len(given) > 1:
        raise _SpecError((*at, given[0]), "with [[versions.blocks]] each block carries its own price")
    blocks = []
    last_bound = 0
    for index, block in enumerate(spec.blocks):
        here = (*at, "blocks", index)
        final = index == len(spec.blocks) - 1
        if final and block.up_to_kwh is not None:
            raise _SpecError(
                (*here, "up_to_kwh"), "the last block must have no 'up_to_kwh' (it is unbounded)"
            )
        if not final and block.up_to_kwh is None:
            raise _SpecError(here, "missing 'up_to_kwh' (only the last block is unbounded)")
        if block.up_to_kwh is not None:
            if block.up_to_kwh <= last_bound:
                raise _SpecError(
                    (*here, "up_to_kwh"),
                    f"blocks must increase: {block.up_to_kwh / 1000:g} kWh is not above {last_bound / 1000:g} kWh",
                )
            last_bound = block.up_to_kwh
        blocks.append(Block(block.up_to_kwh, _check_prices(block.price, block.prices, periods, here)))
    if len(blocks) > 1 and spec.cycle is None:
        raise _SpecError(at, "inclining blocks need a [versions.cycle] (annual or monthly)")
    return tuple(blocks)


def _check_version(spec: VersionSpec, at: _Loc) -> TariffVersion:
    try:
        ZoneInfo(spec.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise _SpecError((*at, "timezone"), f"unknown time zone '{spec.timezone}'") from None
    tou = _check_tou(spec.tou, (*at, "tou")) if spec.tou is not None else None
    blocks = _check_blocks(spec, tou.periods if tou else (), at)
    cycle = BlockCycle(spec.cycle.kind, spec.cycle.start_month, spec.cycle.start_day) if spec.cycle else None
    return TariffVersion(
        version=spec.version,
        effective_from=spec.effective_from,
        timezone=spec.timezone,
        blocks=blocks,
        tou=tou,
        cycle=cycle,
        standing_charge_per_day=spec.standing_charge_per_day,
    )


def _build(spec: TariffSpec) -> Tariff:
    versions: list[TariffVersion] = []
    for index, version_spec in enumerate(spec.versions):
        version = _check_version(version_spec, ("versions", index))
        if versions and version.version <= versions[-1].version:
            raise _SpecError(
                ("versions", index, "version"),
                f"version numbers must increase (after {versions[-1].version})",
            )
        if versions and version.effective_from <= versions[-1].effective_from:
            raise _SpecError(
                ("versions", index, "effective_from"),
                f"must be after version {versions[-1].version}'s {versions[-1].effective_from.isoformat()}",
            )
        versions.append(version)
    return Tariff(
        id=spec.id, currency=spec.currency, versions=tuple(versions), minor_digits=spec.minor_digits
    )


def _format(path: Sequence[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else ("." if i else "") + p for i, p in enumerate(path))


def load_tariff(path: str | Path) -> Tariff:
    """Load one tariff file; any problem is a one-line ``TomlError`` naming file, line and key.

    This is ``drivers.tomlsource.load_model`` with a locator that also resolves tables nested in
    ``[[versions]]`` (see ``tomlpos``), then the cross-field checks, located the same way.
    """
    data, text = read_toml(path)
    try:
        spec = TariffSpec.model_validate(data)
    except ValidationError as exc:
        err = validation_to_toml_error(path, text, exc)
        loc = [p for p in exc.errors()[0]["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        line = locate_nested(text, loc) or err.line
        raise TomlError(path, line, err.where, err.reason) from None
    try:
        return _build(spec)
    except _SpecError as exc:
        raise TomlError(path, locate_nested(text, exc.path), _format(exc.path), exc.reason) from None


def load_tariff_dir(directory: str | Path) -> dict[str, Tariff]:
    """Every ``*.toml`` tariff in ``directory`` by id; two files with one id is an error."""
    tariffs: dict[str, Tariff] = {}
    origin: dict[str, Path] = {}
    for file in sorted(Path(directory).glob("*.toml")):
        tariff = load_tariff(file)
        if tariff.id in tariffs:
            raise TomlError(
                file, None, "id", f"tariff id '{tariff.id}' is already defined in {origin[tariff.id]}"
            )
        tariffs[tariff.id], origin[tariff.id] = tariff, file
    return tariffs


def tariff_from_dict(data: Mapping[str, Any], source: str) -> Tariff:
    """Build a tariff from its JSON form (as sent over MQTT); errors are one-line ``TomlError``s."""
    try:
        spec = TariffSpec.model_validate(data)
    except ValidationError as exc:
        raise validation_to_toml_error(source, "", exc) from None
    try:
        return _build(spec)
    except _SpecError as exc:
        raise TomlError(source, None, _format(exc.path), exc.reason) from None


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _prices_dict(block: Block) -> dict[str, Any]:
    if block.prices[0][0] is None:
        return {"price": str(block.prices[0][1])}
    return {"prices": {str(name): str(price) for name, price in block.prices}}


def _version_dict(version: TariffVersion) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": version.version,
        "effective_from": version.effective_from.isoformat(),
        "timezone": version.timezone,
        "standing_charge_per_day": str(version.standing_charge_per_day),
    }
    if len(version.blocks) == 1 and version.cycle is None:
        out.update(_prices_dict(version.blocks[0]))
    else:
        out["blocks"] = [
            ({"up_to_kwh": str(Decimal(b.up_to_wh) / 1000)} if b.up_to_wh is not None else {})
            | _prices_dict(b)
            for b in version.blocks
        ]
    if version.cycle is not None:
        c = version.cycle
        out["cycle"] = {"kind": c.kind, "start_month": c.start_month, "start_day": c.start_day}
    if version.tou is not None:
        out["tou"] = {
            "windows": [
                {"days": list(w.day_types), "start": _hhmm(w.start), "end": _hhmm(w.end), "period": w.period}
                for w in version.tou.windows
            ],
            "registers": dict(version.tou.registers),
        }
    return out


def tariff_to_dict(tariff: Tariff) -> dict[str, Any]:
    """The JSON form of a tariff; ``tariff_from_dict(tariff_to_dict(t), s) == t``."""
    return {
        "id": tariff.id,
        "currency": tariff.currency,
        "minor_digits": tariff.minor_digits,
        "versions": [_version_dict(v) for v in tariff.versions],
    }


def _version_spec_of(version: TariffVersion) -> VersionSpec:
    return VersionSpec.model_validate(_version_dict(version))


__all__ = [
    "Block",
    "BlockCycle",
    "Tariff",
    "TariffVersion",
    "TimeOfUse",
    "Window",
    "load_tariff",
    "load_tariff_dir",
    "tariff_from_dict",
    "tariff_to_dict",
]
