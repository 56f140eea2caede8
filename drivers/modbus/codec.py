"""Pure register codecs: 16-bit Modbus registers to exact values and back.

Everything here is a function of its arguments (no I/O), so it can be fuzzed.  Floating-point
registers are turned into ``Decimal`` through the *exact* binary value of the float (``Decimal(f)``),
never through ``str(f)``, and every rounding names its mode.  Energy leaves this module as integer
Wh rounded half-even; charging works on integer deltas, never on float differences.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Sequence
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, InvalidOperation


class DataType(enum.StrEnum):
    """Register data types a profile may name."""

    U16 = "u16"
    S16 = "s16"
    U32 = "u32"
    S32 = "s32"
    FLOAT32 = "float32"
    FLOAT64 = "float64"

    @property
    def registers(self) -> int:
        return _LAYOUT[self][1]

    @property
    def is_float(self) -> bool:
        return self in (DataType.FLOAT32, DataType.FLOAT64)


class WordOrder(enum.StrEnum):
    """Order of the 16-bit words of a multi-register value (bytes inside a word are always big-endian)."""

    BIG = "big"  # high word first (Modbus convention, Eastron, CHINT)
    LITTLE = "little"  # low word first ("swapped", some Chinese meters)


_LAYOUT: dict[DataType, tuple[str, int]] = {
    DataType.U16: (">H", 1),
    DataType.S16: (">h", 1),
    DataType.U32: (">I", 2),
    DataType.S32: (">i", 2),
    DataType.FLOAT32: (">f", 2),
    DataType.FLOAT64: (">d", 4),
}


class CodecError(ValueError):
    """Registers cannot be decoded as asked (wrong count, out of range, not a finite number)."""


def _check_registers(registers: Sequence[int], dtype: DataType) -> None:
    if len(registers) != dtype.registers:
        raise CodecError(f"{dtype.value} needs {dtype.registers} registers, got {len(registers)}")
    for reg in registers:
        if not 0 <= reg <= 0xFFFF:
            raise CodecError(f"register value {reg} is not 16-bit")


def decode_raw(registers: Sequence[int], dtype: DataType, word_order: WordOrder = WordOrder.BIG) -> int | float:
    """Registers (in wire order) to the raw int or float they hold."""
    _check_registers(registers, dtype)
    words = list(registers) if word_order is WordOrder.BIG else list(reversed(registers))
    data = b"".join(w.to_bytes(2, "big") for w in words)
    value: int | float = struct.unpack(_LAYOUT[dtype][0], data)[0]
    return value


def encode_raw(value: int | float, dtype: DataType, word_order: WordOrder = WordOrder.BIG) -> list[int]:
    """The raw int or float as registers in wire order (inverse of ``decode_raw``)."""
    try:
        data = struct.pack(_LAYOUT[dtype][0], value)
    except struct.error as exc:
        raise CodecError(f"{value!r} does not fit {dtype.value}: {exc}") from None
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words if word_order is WordOrder.BIG else list(reversed(words))


def to_decimal(raw: int | float) -> Decimal:
    """Exact Decimal of a raw register value; a NaN or infinity is a ``CodecError`` (meters send them
    for "not available", and they must never reach a bill)."""
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise CodecError(f"register holds {raw!r}, not a number")
        return Decimal(raw)  # exact binary value, e.g. 230.1000061035156250 for float32 230.1
    return Decimal(raw)


def scaled(registers: Sequence[int], dtype: DataType, word_order: WordOrder, scale: Decimal) -> Decimal:
    """Registers to an exact Decimal in the profile's unit (raw × scale, no rounding yet)."""
    return to_decimal(decode_raw(registers, dtype, word_order)) * scale


def quantize(value: Decimal, decimals: int) -> Decimal:
    """Round to the meter's resolution, half-even (the rounding of IEEE 754 and of DL/T 645 meters).

    A value too large to hold at that resolution (a float register reading ~1e27, seen in fuzzing) is a
    ``CodecError`` — an implausible reading — never an arithmetic crash."""
    try:
        return value.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_EVEN)
    except InvalidOperation:
        raise CodecError(f"value {value:.6E} is out of range for {decimals} decimal places") from None


def to_wh(value_wh: Decimal) -> int:
    """Energy already expressed in Wh (exactly) to integer Wh, rounded half-even."""
    return int(value_wh.to_integral_value(rounding=ROUND_HALF_EVEN))


def from_value(
    value: Decimal, dtype: DataType, word_order: WordOrder, scale: Decimal, *, floor: bool = False
) -> list[int]:
    """A value in the profile's unit to registers, as a meter would present it.

    Integers are rounded half-even, or floored when ``floor`` (an energy register shows only what
    has fully accumulated); floats carry the nearest representable value.
    """
    raw = value / scale
    if dtype.is_float:
        return encode_raw(float(raw), dtype, word_order)
    rounding = ROUND_FLOOR if floor else ROUND_HALF_EVEN
    return encode_raw(int(raw.to_integral_value(rounding=rounding)), dtype, word_order)
