"""Building tariff values from their checked file/wire form, and back.

``spec`` checks each field; this module checks the rules that tie fields together (windows tile
every day type without overlap, prices name exactly the periods in use, blocks rise, versions move
forward) and reports a broken rule with the data path it is at, so the loader can name the line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError

from drivers.tomlsource import validation_to_toml_error
from gateway.core.errors import UserError
from gateway.tariffs.spec import DAY_TYPES, TariffSpec, TouSpec, VersionSpec
from gateway.tariffs.values import DAY_MINUTES, Block, BlockCycle, Tariff, TariffVersion, TimeOfUse, Window


class SpecError(UserError):
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
            raise SpecError(
                (*at, "price"), f"this version has time of use: give 'prices' for {', '.join(periods)}"
            )
        if prices is None:
            raise SpecError(at, f"missing 'prices' for periods {', '.join(periods)}")
        for name in prices:
            if name not in periods:
                raise SpecError((*at, "prices", name), f"period '{name}' is not used by any tou window")
        missing = [p for p in periods if p not in prices]
        if missing:
            raise SpecError((*at, "prices"), f"no price for period(s) {', '.join(missing)}")
        return tuple((p, prices[p]) for p in periods)
    if prices is not None:
        raise SpecError(
            (*at, "prices"), "'prices' per period needs a [tou] table; use 'price' for a flat rate"
        )
    if price is None:
        raise SpecError(at, "missing 'price'")
    return ((None, price),)


def _check_tou(tou: TouSpec, at: _Loc) -> TimeOfUse:
    owner: dict[str, list[int | None]] = {day: [None] * DAY_MINUTES for day in DAY_TYPES}
    periods: list[str] = []
    windows = []
    for index, spec in enumerate(tou.windows):
        window = Window(tuple(spec.days), spec.start, spec.end, spec.period)
        if spec.start == spec.end or spec.start == DAY_MINUTES:
            raise SpecError(
                (*at, "windows", index, "end"),
                "a window must not be empty (use 00:00 to 24:00 for a whole day)",
            )
        for day in spec.days:
            for lo, hi in window.minutes():
                for minute in range(lo, hi):
                    other = owner[day][minute]
                    if other is not None:
                        raise SpecError(
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
            raise SpecError(
                (*at, "windows"), f"no period covers {day_type} from {first // 60:02d}:{first % 60:02d}"
            )
    for register, period in tou.registers.items():
        if period not in periods:
            raise SpecError(
                (*at, "registers", register), f"register {register} maps to unknown period '{period}'"
            )
    return TimeOfUse(tuple(periods), tuple(windows), tuple(sorted(tou.registers.items())))


def _check_blocks(spec: VersionSpec, periods: tuple[str, ...], at: _Loc) -> tuple[Block, ...]:
    given = [name for name in ("price", "prices", "blocks") if getattr(spec, name) is not None]
    if spec.blocks is None:
        if spec.cycle is not None:
            raise SpecError((*at, "cycle"), "a block cycle needs [[versions.blocks]]")
        if len(given) > 1:
            raise SpecError((*at, given[1]), "give either 'price' or 'prices', not both")
        return (Block(None, _check_prices(spec.price, spec.prices, periods, at)),)
    if len(given) > 1:
        raise SpecError((*at, given[0]), "with [[versions.blocks]] each block carries its own price")
    blocks = []
    last_bound = 0
    for index, block in enumerate(spec.blocks):
        here = (*at, "blocks", index)
        final = index == len(spec.blocks) - 1
        if final and block.up_to_kwh is not None:
            raise SpecError((*here, "up_to_kwh"), "the last block must have no 'up_to_kwh' (it is unbounded)")
        if not final and block.up_to_kwh is None:
            raise SpecError(here, "missing 'up_to_kwh' (only the last block is unbounded)")
        if block.up_to_kwh is not None:
            if block.up_to_kwh <= last_bound:
                raise SpecError(
                    (*here, "up_to_kwh"),
                    f"blocks must increase: {block.up_to_kwh / 1000:g} kWh is not above {last_bound / 1000:g} kWh",
                )
            last_bound = block.up_to_kwh
        blocks.append(Block(block.up_to_kwh, _check_prices(block.price, block.prices, periods, here)))
    if len(blocks) > 1 and spec.cycle is None:
        raise SpecError(at, "inclining blocks need a [versions.cycle] (annual or monthly)")
    return tuple(blocks)


def _check_version(spec: VersionSpec, at: _Loc) -> TariffVersion:
    try:
        ZoneInfo(spec.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SpecError((*at, "timezone"), f"unknown time zone '{spec.timezone}'") from None
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


def build_tariff(spec: TariffSpec) -> Tariff:
    versions: list[TariffVersion] = []
    for index, version_spec in enumerate(spec.versions):
        version = _check_version(version_spec, ("versions", index))
        if versions and version.version <= versions[-1].version:
            raise SpecError(
                ("versions", index, "version"),
                f"version numbers must increase (after {versions[-1].version})",
            )
        if versions and version.effective_from <= versions[-1].effective_from:
            raise SpecError(
                ("versions", index, "effective_from"),
                f"must be after version {versions[-1].version}'s {versions[-1].effective_from.isoformat()}",
            )
        versions.append(version)
    return Tariff(
        id=spec.id, currency=spec.currency, versions=tuple(versions), minor_digits=spec.minor_digits
    )


def format_path(path: Sequence[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else ("." if i else "") + p for i, p in enumerate(path))


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
            ({"up_to_kwh": f"{b.up_to_wh // 1000}.{b.up_to_wh % 1000:03d}"} if b.up_to_wh is not None else {})
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


def check_version(version: TariffVersion, label: str) -> None:
    """Apply the file rules to a version built in code; a one-line ``ValueError`` if one is broken."""
    try:
        _check_version(VersionSpec.model_validate(_version_dict(version)), ())
    except ValidationError as exc:
        raise ValueError(
            f"{label}: invalid version: {validation_to_toml_error('version', '', exc)}"
        ) from None
    except SpecError as exc:
        raise ValueError(f"{label}: invalid version: {format_path(exc.path)}: {exc.reason}") from None


def with_version(tariff: Tariff, version: TariffVersion, now: datetime) -> Tariff:
    """A copy of ``tariff`` with ``version`` appended; refuses a version that would backdate a price
    or that breaks the tariff file rules (``check_version``).  Here, not on ``Tariff``, because the
    rules are build's: the values stay below the builder that makes them."""
    latest = tariff.versions[-1]
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"tariff {tariff.id}: 'now' ({now.isoformat()}) has no time zone")
    if version.effective_from.tzinfo is None or version.effective_from.utcoffset() is None:
        raise ValueError(f"tariff {tariff.id} v{version.version}: effective_from has no time zone")
    if version.version <= latest.version:
        raise ValueError(
            f"tariff {tariff.id}: version {version.version} is not after the latest version {latest.version}"
        )
    if version.effective_from <= latest.effective_from:
        raise ValueError(
            f"tariff {tariff.id} v{version.version}: effective_from {version.effective_from.isoformat()} "
            f"is not after v{latest.version}'s {latest.effective_from.isoformat()} (no backdating)"
        )
    if version.effective_from < now:
        raise ValueError(
            f"tariff {tariff.id} v{version.version}: effective_from {version.effective_from.isoformat()} "
            f"is before now ({now.isoformat()}); tariffs are never backdated"
        )
    check_version(version, f"tariff {tariff.id} v{version.version}")
    return replace(tariff, versions=(*tariff.versions, version))
