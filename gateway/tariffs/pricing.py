"""Pure, exact pricing of one metered interval and of a day's standing charge.

``price_interval`` cuts the interval where prices can change (``timeline``), gives each piece an
integer share of the energy (``apportion``), walks the pieces in time order through the inclining
blocks, and prices every resulting line as ``energy_wh * unit_price / 1000`` exactly.  Nothing is
rounded here: the ledger posts ``round_half_even(cumulative exact) - cumulative posted`` in minor
units, so rounding happens once, on totals.  The sum of line energies is always the input energy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Context, Decimal, Inexact, InvalidOperation, Rounded
from typing import Literal

from gateway.tariffs.apportion import apportion, one_block, split_blocks
from gateway.tariffs.spec import REGISTERS
from gateway.tariffs.timeline import (
    Segment,
    cycle_start,
    one_stretch,
    require_aware,
    segments_utc,
    wall_to_instant,
)
from gateway.tariffs.values import Tariff, TariffVersion

__all__ = ["ChargeLine", "cycle_start", "exact_amount", "price_interval", "standing_charge"]

_US = timedelta(microseconds=1)
# Wide enough for any price a file can sensibly hold times any energy; a loss would raise, not round.
_EXACT = Context(prec=80, traps=[Inexact, Rounded, InvalidOperation])
_THOUSAND = Decimal(1000)
# Bound once: a Context looks its attributes up through its own getattr, on every line of every reading.
_multiply, _divide = _EXACT.multiply, _EXACT.divide


@dataclass(frozen=True, init=False)
class ChargeLine:
    """One priced piece: ``amount == energy_wh * unit_price / 1000`` exactly (or the day's charge).

    ``start``/``end`` are UTC instants.  When energy crosses a block threshold inside a stretch of
    one period, the line boundary is placed by time in proportion to energy (an estimate of when the
    threshold was crossed); the energy split itself is exact at the threshold.
    """

    tariff_id: str
    version: int
    start: datetime
    end: datetime
    period: str | None
    block: int | None
    energy_wh: int
    unit_price: Decimal
    amount: Decimal
    kind: Literal["energy", "standing"] = "energy"
    # The start of the block cycle the line counts in (``None`` without blocks): carried so the ledger
    # can move the account's block position without working it out again.  Not part of the value.
    cycle: datetime | None = field(default=None, compare=False, repr=False)

    def __init__(
        self,
        tariff_id: str,
        version: int,
        start: datetime,
        end: datetime,
        period: str | None,
        block: int | None,
        energy_wh: int,
        unit_price: Decimal,
        amount: Decimal,
        kind: Literal["energy", "standing"] = "energy",
        cycle: datetime | None = None,
    ) -> None:
        # The fields go straight into the instance's dict: the generated __init__ of a frozen
        # dataclass sets each through object.__setattr__, eleven calls for every line of every
        # reading (and a keyword ``update`` builds a dict to copy).  Still frozen: assignment after
        # construction raises as before.
        fields = self.__dict__
        fields["tariff_id"] = tariff_id
        fields["version"] = version
        fields["start"] = start
        fields["end"] = end
        fields["period"] = period
        fields["block"] = block
        fields["energy_wh"] = energy_wh
        fields["unit_price"] = unit_price
        fields["amount"] = amount
        fields["kind"] = kind
        fields["cycle"] = cycle


def exact_amount(energy_wh: int, unit_price: Decimal) -> Decimal:
    """``energy_wh × unit_price / 1000`` with no rounding (raises rather than lose a digit)."""
    return _divide(_multiply(energy_wh, unit_price), _THOUSAND)  # an int converts exactly


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer number of Wh (got {value!r})")
    if value < 0:
        raise ValueError(f"{name} must not be negative (got {value})")
    return value


def _time_shares(items: list[Segment], energy_wh: int) -> list[tuple[Segment, int]]:
    if len(items) == 1:  # the usual reading: a minute inside one stretch takes all the energy
        return [(items[0], energy_wh)]
    return list(zip(items, apportion(energy_wh, [s.micros for s in items]), strict=True))


def _by_registers(
    tariff: Tariff, segs: list[Segment], energy_wh: int, registers: Mapping[str, int]
) -> list[tuple[Segment, int]]:
    """Energy per segment from the meter's own per-period registers.

    The register deltas are first scaled to ``energy_wh`` by largest remainder (register and total
    registers are rounded separately by the meter, so a few Wh of difference is normal; scaling
    spreads it by share instead of loading it all on one period).  Each register's energy is split
    across tariff versions by time, mapped to periods by that version's register map, and spread by
    time over the stretches of that period.  If the meter counted energy in a period our clock never
    saw in the interval (its clock differs from ours), the meter is believed: that energy becomes one
    line spanning the version's whole stretch of the interval, priced at that period.
    """
    names = sorted(registers)
    raw = [_check_int(f"register {name}", registers[name]) for name in names]
    unknown = [n for n in names if n not in REGISTERS]
    if unknown:
        raise ValueError(f"unknown register(s) {', '.join(unknown)}; expected {', '.join(REGISTERS)}")
    if sum(raw) == 0:
        return _time_shares(segs, energy_wh)
    scaled = apportion(energy_wh, raw)
    spans: list[list[Segment]] = []
    for seg in segs:
        if spans and spans[-1][0].version is seg.version:
            spans[-1].append(seg)
        else:
            spans.append([seg])
    span_micros = [sum(s.micros for s in span) for span in spans]
    per_span = [apportion(total, span_micros) for total in scaled]
    out: list[tuple[Segment, int]] = []
    for k, span in enumerate(spans):
        version = span[0].version
        mapping = version.tou.register_map if version.tou is not None else {}
        if not mapping:
            out.extend(_time_shares(span, sum(shares[k] for shares in per_span)))
            continue
        for name, measured in zip(names, raw, strict=True):
            if measured and name not in mapping:
                raise ValueError(
                    f"register {name} measured {measured} Wh but tariff {tariff.id} v{version.version} "
                    f"maps only {', '.join(sorted(mapping))}"
                )
        by_period: dict[str, int] = {}
        for name, shares in zip(names, per_span, strict=True):
            if shares[k]:
                by_period[mapping[name]] = by_period.get(mapping[name], 0) + shares[k]
        unseen: list[tuple[Segment, int]] = []
        seen: list[tuple[Segment, int]] = []
        for period, energy in by_period.items():
            mine = [s for s in span if s.period == period]
            if mine:
                seen.extend(_time_shares(mine, energy))
            else:
                unseen.append((Segment(span[0].start, span[-1].end, version, period, span[0].cycle), energy))
        out.extend(sorted(unseen + seen, key=lambda item: item[0].start))  # stable: unseen first
    return out


def price_interval(
    tariff: Tariff,
    start: datetime,
    end: datetime,
    energy_wh: int,
    *,
    day_type: Callable[[date], str],
    cycle_usage_wh: int = 0,
    register_split_wh: Mapping[str, int] | None = None,
) -> list[ChargeLine]:
    """Price ``energy_wh`` consumed from ``start`` to ``end`` (aware) under ``tariff``.

    ``day_type(local_date)`` gives "workday", "weekend" or "holiday".  ``cycle_usage_wh`` is the
    account's energy in the block cycle containing ``start`` before ``start``, i.e. since
    ``cycle_start(tariff.version_at(start), start)``.  When a later part of the interval is in another
    cycle (a new cycle began, or a new version counts cycles differently), its usage is the energy of
    this interval's pieces that start at or after that cycle's start, as a ledger summing its lines
    would count it.  (If the version at ``start`` has no blocks, the usage before ``start`` in a later
    version's cycle is unknown here; the ledger should then price the two sides of the change
    separately.)  Without register deltas (or
    for a version without a register map) energy is split across pieces in proportion to time.
    Lines come in time order; their energies sum to ``energy_wh``.
    """
    # The instants the ledger passes are UTC already and its energies plain non-negative ints: those
    # pass without a call each (the checks below refuse anything else, as they always did).
    start_utc = start if type(start) is datetime and start.tzinfo is UTC else require_aware("start", start)
    end_utc = end if type(end) is datetime and end.tzinfo is UTC else require_aware("end", end)
    if type(energy_wh) is not int or energy_wh < 0:
        _check_int("energy_wh", energy_wh)
    used = cycle_usage_wh
    if type(used) is not int or used < 0:
        _check_int("cycle_usage_wh", used)
    if energy_wh == 0:
        return []
    if end_utc <= start_utc:
        raise ValueError(
            f"interval end {end.isoformat()} is not after start {start.isoformat()} but carries {energy_wh} Wh"
        )
    if register_split_wh is None:
        piece = one_stretch(tariff, start_utc, end_utc, day_type)
        if piece is not None:
            version = piece.version
            block = one_block(used, energy_wh, version.block_bounds)
            if block is not None:
                # The usual reading: one stretch, one block, one line — the general loop below would
                # price it the same (start to end, all the energy), without its lists and bookkeeping.
                price = version.price(block, piece.period)
                return [
                    ChargeLine(
                        tariff.id,
                        version.version,
                        start_utc,
                        end_utc,
                        piece.period,
                        block if version.cycle is not None else None,
                        energy_wh,
                        price,
                        exact_amount(energy_wh, price),
                        "energy",
                        piece.cycle,
                    )
                ]
    segs = segments_utc(tariff, start_utc, end_utc, day_type)
    shares = (
        _time_shares(segs, energy_wh)
        if register_split_wh is None
        else _by_registers(tariff, segs, energy_wh, register_split_wh)
    )
    lines: list[ChargeLine] = []
    first_cycle = cycle = segs[0].cycle
    seen: list[tuple[datetime, int]] = []  # (start, energy) already placed, to count usage in a new cycle
    for seg, energy in shares:
        if seg.cycle != cycle:
            cycle = seg.cycle
            before = cycle_usage_wh if cycle == first_cycle else 0
            used = before + sum(e for at, e in seen if cycle is not None and at >= cycle)
        seen.append((seg.start, energy))
        if energy == 0:
            continue
        done = 0
        line_start = seg.start
        for block, part in split_blocks(used, energy, seg.version.block_bounds):
            done += part
            line_end = seg.end if done == energy else seg.start + (seg.micros * done // energy) * _US
            price = seg.version.price(block, seg.period)
            lines.append(
                ChargeLine(
                    tariff_id=tariff.id,
                    version=seg.version.version,
                    start=line_start,
                    end=line_end,
                    period=seg.period,
                    block=block if seg.version.cycle is not None else None,
                    energy_wh=part,
                    unit_price=price,
                    amount=exact_amount(part, price),
                    cycle=seg.cycle,
                )
            )
            line_start = line_end
        used += energy
    return lines


def _version_for_day(tariff: Tariff, local_day: date) -> tuple[TariffVersion, datetime]:
    for version in reversed(tariff.versions):
        day_start = wall_to_instant(local_day, 0, version.zone)
        if version.effective_from <= day_start:
            return version, day_start
    raise LookupError(f"tariff {tariff.id} has no version in force at the start of {local_day.isoformat()}")


def standing_charge(tariff: Tariff, local_day: date) -> ChargeLine | None:
    """The standing charge for one local day, from the version in force at that day's local start.

    ``None`` when that version has no standing charge; ``LookupError`` when no version was in force
    at the day's start (a tariff that starts mid-day charges from the next day).  The line spans the
    local day, which is 23 or 25 hours long on DST change days; the charge is per day regardless.
    """
    version, day_start = _version_for_day(tariff, local_day)
    charge = version.standing_charge_per_day
    if charge == 0:
        return None
    day_end = wall_to_instant(local_day + timedelta(days=1), 0, version.zone)
    return ChargeLine(
        tariff_id=tariff.id,
        version=version.version,
        start=day_start,
        end=day_end,
        period=None,
        block=None,
        energy_wh=0,
        unit_price=charge,
        amount=charge,
        kind="standing",
    )
