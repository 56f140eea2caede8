"""COSEM attribute values to the gateway's exact values: scaler-unit applied with Decimal, never floats.

A register (interface class 3) holds an integer ``value`` (attribute 2) and a ``scaler_unit``
(attribute 3): the quantity is ``value × 10^scaler`` in ``unit`` (IEC 62056-6-2, 4.3.2; the unit
codes are its table "Enumerated values for physical units").  The scaling is an exponent shift of a
Decimal, so 123456 Wh with scaler -1 is exactly 12345.6 Wh.  Decoding the A-XDR bytes is the
``dlms-cosem`` library's; anything it cannot decode, or decodes to a value that cannot be the
quantity asked for, is a ``ValueProblem`` (a ``BadFrame``), never a crash or a silent zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from dlms_cosem import time as cosem_time
from dlms_cosem import utils

from drivers.base import BadFrame

# IEC 62056-6-2, "Enumerated values for physical units" (the ones a billing meter's points use).
UNITS: dict[int, str] = {27: "W", 28: "VA", 29: "var", 30: "Wh", 31: "VAh", 32: "varh", 33: "A", 35: "V", 44: "Hz", 255: "1"}


class ValueProblem(BadFrame):
    """An attribute's bytes do not decode to the value expected of it."""


@dataclass(frozen=True)
class ScalerUnit:
    """Attribute 3 of a register: the power of ten and the unit of its value."""

    scaler: int
    unit: int

    @property
    def unit_name(self) -> str:
        return UNITS.get(self.unit, f"unit {self.unit}")


def decode(data: bytes) -> Any:
    """One A-XDR ``Data`` value (a GET response's data) as the library's Python value."""
    try:
        return utils.parse_as_dlms_data(bytes(data))
    except Exception as exc:  # the library raises whatever its parser hits; all of it is a bad value
        raise ValueProblem(f"undecodable value {bytes(data[:16]).hex()}: {type(exc).__name__}") from None


def scaler_unit(data: bytes) -> ScalerUnit:
    """Decode attribute 3 of a register: a structure {integer scaler, enum unit}."""
    value = decode(data)
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or not -128 <= value[0] <= 127
        or not 0 <= value[1] <= 255
    ):
        raise ValueProblem(f"scaler_unit is not {{int8, enum}}: {value!r}")
    return ScalerUnit(int(value[0]), int(value[1]))


def raw_number(data: bytes) -> Decimal:
    """Attribute 2 of a register as an exact Decimal (integers; a float register exactly as stored)."""
    value = decode(data)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueProblem(f"register value is not a number: {type(value).__name__}")
    number = Decimal(value)  # exact: an int, or the binary value a float32/64 register really holds
    if not number.is_finite():
        raise ValueProblem(f"register value is {number}")
    return number


def scaled(raw: Decimal, su: ScalerUnit) -> Decimal:
    """``raw × 10^scaler``: an exponent shift, exact."""
    return raw.scaleb(su.scaler)


_TO_BASE: dict[str, dict[int, Decimal]] = {
    # the Reading's unit per quantity: unit code -> factor
    "energy": {30: Decimal(1)},
    "voltage": {35: Decimal(1)},
    "current": {33: Decimal(1)},
    "power": {27: Decimal(1)},
    "frequency": {44: Decimal(1)},
    "ratio": {255: Decimal(1)},
}


def in_unit(raw: Decimal, su: ScalerUnit, quantity: str) -> Decimal:
    """The scaled value, checked to be in the quantity's unit (Wh for energy, V, A, W, Hz)."""
    allowed = _TO_BASE[quantity]
    if su.unit not in allowed:
        want = ", ".join(UNITS.get(u, str(u)) for u in allowed)
        raise ValueProblem(f"unit is {su.unit_name}, expected {want}")
    return scaled(raw, su) * allowed[su.unit]


def to_wh(value_wh: Decimal) -> int:
    """Energy in Wh to integer Wh, rounded half-even (a scaler below 0 gives tenths of a Wh)."""
    if value_wh < 0:
        raise ValueProblem(f"negative energy {value_wh} Wh")
    try:
        return int(value_wh.to_integral_value(rounding=ROUND_HALF_EVEN))
    except (InvalidOperation, OverflowError):
        raise ValueProblem(f"energy {value_wh:.6E} Wh is out of range") from None


def quantize(value: Decimal, decimals: int) -> Decimal:
    """Round to the profile's resolution, half-even; an absurd magnitude is a ``ValueProblem``."""
    try:
        return value.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_EVEN)
    except InvalidOperation:
        raise ValueProblem(f"value {value:.6E} is out of range for {decimals} decimal places") from None


def clock_time(data: bytes, tz: timezone | Any = UTC) -> datetime:
    """Attribute 2 of the clock (class 8): a 12-byte date-time (IEC 62056-6-2, 4.1.6.1) as aware UTC.

    A date-time without a deviation (0x8000, "not specified") is the meter's local time in ``tz``; the
    deviation is minutes from local time to UTC (IEC 62056-6-2: UTC+01:00 is -60)."""
    value = decode(data)
    if not isinstance(value, bytes | bytearray) or len(value) != 12:
        raise ValueProblem("clock is not a 12-byte date-time")
    try:
        when, _status = cosem_time.datetime_from_bytes(bytes(value))
    except Exception as exc:
        raise ValueProblem(f"clock {bytes(value).hex()} is not a date-time ({type(exc).__name__})") from None
    if when.tzinfo is None:
        # The library leaves a deviation of 0 (UTC) as naive, like 0x8000 ("not specified"): only
        # the latter is the meter's local time.
        unspecified = bytes(value[9:11]) == b"\x80\x00"
        when = when.replace(tzinfo=tz if unspecified else UTC)
    try:
        return when.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueProblem(f"clock {bytes(value).hex()} is out of range") from None


def clock_bytes(when: datetime) -> bytes:
    """A date-time for a clock set: UTC with deviation 0 (the meter applies its own zone)."""
    if when.tzinfo is None:
        raise ValueError("a clock set needs an aware datetime")
    utc = when.astimezone(UTC).replace(tzinfo=timezone(timedelta(0)))
    return bytes(cosem_time.datetime_to_bytes(utc))
