"""The file and wire form of a tariff: pydantic models that check types and shapes field by field.

A tariff arrives as TOML from ``tariff_dir`` or as JSON over MQTT; both pass through these
models (``extra="forbid"``) so a misspelt key is refused rather than ignored.  Prices are decimal
*strings*: a TOML or JSON float has already been rounded to binary by the parser, so it is refused
with a message saying so.  Rules that relate several fields (periods tiling the day, blocks rising)
are checked in ``model`` where the error can point at the offending entry.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

DAY_TYPES: tuple[str, ...] = ("workday", "weekend", "holiday")
REGISTERS: tuple[str, ...] = ("T1", "T2", "T3", "T4")
_HHMM = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")


def _decimal_text(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ValueError('expected a quoted decimal string such as "0.538", not a boolean')
    if isinstance(value, float):
        raise ValueError('a float is lossy; write the amount as a quoted decimal string such as "0.538"')
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"not a decimal number: {value!r}") from None
    else:
        raise ValueError('expected a quoted decimal string such as "0.538"')
    if not number.is_finite():
        raise ValueError(f"not a finite decimal number: {value!r}")
    if number < 0:
        raise ValueError(f"must not be negative: {value!r}")
    return number


def _time_of_day(value: Any) -> int:
    if not isinstance(value, str) or not _HHMM.match(value) or (value[:2] == "24" and value != "24:00"):
        raise ValueError(f'expected a local time "HH:MM" from 00:00 to 24:00 (got {value!r})')
    return int(value[:2]) * 60 + int(value[3:])


def _aware(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an ISO 8601 date-time: {value!r}") from None
    if not isinstance(value, datetime):
        raise ValueError("expected a date-time with a UTC offset, e.g. 2026-01-01T00:00:00+08:00")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("needs a UTC offset (e.g. 2026-01-01T00:00:00+08:00); a local time is ambiguous")
    return value


def _kwh_to_wh(value: Any) -> int:
    number = _decimal_text(value)
    wh = number * 1000
    if wh != wh.to_integral_value():
        raise ValueError(f"a block bound must be a whole number of Wh (got {value!r} kWh)")
    return int(wh)


Amount = Annotated[Decimal, BeforeValidator(_decimal_text)]
Minute = Annotated[int, BeforeValidator(_time_of_day)]
Instant = Annotated[datetime, BeforeValidator(_aware)]
BoundWh = Annotated[int, BeforeValidator(_kwh_to_wh)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WindowSpec(_Strict):
    """A stretch of local wall time on some day types; ``end`` before ``start`` wraps past midnight."""

    days: list[Literal["workday", "weekend", "holiday"]] = Field(min_length=1)
    start: Minute
    end: Minute
    period: str = Field(min_length=1)


class TouSpec(_Strict):
    windows: list[WindowSpec] = Field(min_length=1)
    registers: dict[Literal["T1", "T2", "T3", "T4"], str] = Field(default_factory=dict)


class BlockSpec(_Strict):
    up_to_kwh: BoundWh | None = None
    price: Amount | None = None
    prices: dict[str, Amount] | None = None


class CycleSpec(_Strict):
    kind: Literal["annual", "monthly"]
    start_month: int = Field(default=1, ge=1, le=12)
    start_day: int = Field(default=1, ge=1, le=28)


class VersionSpec(_Strict):
    version: int = Field(ge=1)
    effective_from: Instant
    timezone: str = Field(min_length=1)
    standing_charge_per_day: Amount = Decimal(0)
    price: Amount | None = None
    prices: dict[str, Amount] | None = None
    blocks: list[BlockSpec] | None = None
    cycle: CycleSpec | None = None
    tou: TouSpec | None = None


class TariffSpec(_Strict):
    id: str = Field(pattern=_NAME.pattern, max_length=64)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    minor_digits: int = Field(default=2, ge=0, le=4)
    versions: list[VersionSpec] = Field(min_length=1)
