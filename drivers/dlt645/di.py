"""Data identifiers (DI) and their value formats: one table, pure codecs.

Values on the wire are BCD, least significant byte first (DL/T 645-2007 Appendix A).  Signed
quantities (current, power, power factor) carry the sign in the top bit of the most significant
byte; the standard's tables imply this and public implementations agree, but no primary text was
available (see docs/sources/protocols.md, "inferred").  Decoding is exact: energy becomes
integer Wh, everything else a Decimal at the meter's resolution, never a float.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal

from drivers.dlt645.frame import FrameError


class Kind(enum.Enum):
    BCD = "bcd"  # unsigned or signed BCD number with ``decimals`` implied decimals
    WORD = "word"  # binary status word, little-endian
    DATE = "date"  # YYMMDDWW (WW = weekday, 0 = Sunday)
    TIME = "time"  # hhmmss
    DATETIME6 = "datetime6"  # ssmmhhDDMMYY (broadcast time, relay deadline)
    DIGITS = "digits"  # a BCD number kept as its digit string (addresses, meter numbers: 12 digits)
    ASCII = "ascii"  # text, sent last character first like every value (padding: NUL or space)


@dataclass(frozen=True)
class DataFormat:
    """How one DI's value is laid out: ``length`` bytes, ``decimals`` implied, optional sign bit."""

    di: int
    name: str
    kind: Kind
    length: int
    decimals: int = 0
    signed: bool = False
    unit: str = ""

    def decode(self, raw: bytes) -> Decimal | int | date | time | str:
        if len(raw) != self.length:
            raise FrameError(f"DI {self.di:08X} ({self.name}): {len(raw)} data bytes, expected {self.length}")
        if self.kind is Kind.DIGITS:
            return "".join(f"{bcd_byte(b, self.di):02d}" for b in reversed(raw))
        if self.kind is Kind.ASCII:
            return decode_ascii(raw, self.di)
        if self.kind is Kind.WORD:
            return int.from_bytes(raw, "little")
        if self.kind is Kind.DATE:
            _, dd, mm, yy = (bcd_byte(b, self.di) for b in raw)
            return _checked(lambda: date(2000 + yy, mm, dd), self.di, raw)
        if self.kind is Kind.TIME:
            ss, mi, hh = (bcd_byte(b, self.di) for b in raw)
            return _checked(lambda: time(hh, mi, ss), self.di, raw)
        if self.kind is Kind.DATETIME6:
            raise FrameError(f"DI {self.di:08X}: 6-byte date-times are decoded with decode_datetime6")
        return decode_bcd(raw, self.decimals, self.signed, self.di)

    def encode(self, value: Decimal | int | date | time | str) -> bytes:
        if self.kind is Kind.DIGITS:
            assert isinstance(value, str) and value.isdigit() and len(value) == 2 * self.length
            return bytes(int(value[i : i + 2], 16) for i in range(len(value) - 2, -1, -2))
        if self.kind is Kind.ASCII:
            assert isinstance(value, str)
            text = value.encode("ascii")
            if len(text) > self.length:
                raise ValueError(f"{value!r} is longer than {self.length} characters")
            return text.ljust(self.length, b"\0")[::-1]
        if self.kind is Kind.WORD:
            assert isinstance(value, int)
            return value.to_bytes(self.length, "little")
        if self.kind is Kind.DATE:
            assert isinstance(value, date)
            wd = (value.weekday() + 1) % 7
            return bytes(to_bcd_byte(v) for v in (wd, value.day, value.month, value.year % 100))
        if self.kind is Kind.TIME:
            assert isinstance(value, time)
            return bytes(to_bcd_byte(v) for v in (value.second, value.minute, value.hour))
        assert isinstance(value, (Decimal, int))
        return encode_bcd(Decimal(value), self.length, self.decimals, self.signed)


def _checked(make: Callable[[], date | time], di: int, raw: bytes) -> date | time:
    try:
        return make()
    except ValueError as exc:
        raise FrameError(f"DI {di:08X}: invalid date/time {raw.hex(' ')}: {exc}") from None


def decode_ascii(raw: bytes, di: int = 0) -> str:
    """Text of an ASCII DI: the bytes reversed (the last character is sent first, like every value's
    least significant byte), NUL and space padding removed; a non-printable byte is a ``FrameError``."""
    text = bytes(reversed(raw)).strip(b"\0 ")
    if any(not 0x20 <= b < 0x7F for b in text):
        raise FrameError(f"DI {di:08X}: {raw.hex(' ')} is not printable ASCII")
    return text.decode("ascii")


def bcd_byte(b: int, di: int = 0) -> int:
    hi, lo = b >> 4, b & 0x0F
    if hi > 9 or lo > 9:
        raise FrameError(f"DI {di:08X}: byte 0x{b:02X} is not BCD")
    return hi * 10 + lo


def to_bcd_byte(v: int) -> int:
    if not 0 <= v <= 99:
        raise ValueError(f"{v} does not fit one BCD byte")
    return (v // 10) << 4 | (v % 10)


def decode_bcd(raw: bytes, decimals: int, signed: bool, di: int = 0) -> Decimal:
    """Little-endian BCD → Decimal with ``decimals`` implied places (exact)."""
    msb = raw[-1]
    negative = signed and bool(msb & 0x80)
    digits = [*raw[:-1], msb & 0x7F if signed else msb]
    n = 0
    for b in reversed(digits):
        n = n * 100 + bcd_byte(b, di)
    value = Decimal(n).scaleb(-decimals)
    return -value if negative else value


def encode_bcd(value: Decimal, length: int, decimals: int, signed: bool) -> bytes:
    """Decimal → little-endian BCD; the value must be exact at ``decimals`` places and fit."""
    scaled = value.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{value} has more than {decimals} decimals")
    n = int(abs(scaled))
    # with a sign bit the top nibble can only hold 0..7
    limit = 8 * 10 ** (2 * length - 1) if signed else 10 ** (2 * length)
    if n >= limit:
        raise ValueError(f"{value} does not fit {length} BCD bytes")
    out = bytearray(to_bcd_byte((n // 100**i) % 100) for i in range(length))
    if signed and value < 0:
        out[-1] |= 0x80
    return bytes(out)


def decode_datetime6(raw: bytes) -> datetime:
    """``ss mm hh DD MM YY`` → naive local datetime (how meters keep their clocks)."""
    if len(raw) != 6:
        raise FrameError(f"date-time needs 6 bytes, got {len(raw)}")
    ss, mi, hh, dd, mo, yy = (bcd_byte(b) for b in raw)
    try:
        return datetime(2000 + yy, mo, dd, hh, mi, ss)
    except ValueError as exc:
        raise FrameError(f"invalid date-time {raw.hex(' ')}: {exc}") from None


def encode_datetime6(when: datetime) -> bytes:
    if not 2000 <= when.year <= 2099:
        raise ValueError(f"year {when.year} is outside what DL/T 645 can express (2000-2099)")
    parts = (when.second, when.minute, when.hour, when.day, when.month, when.year % 100)
    return bytes(to_bcd_byte(v) for v in parts)


def di_bytes(di: int, *, v1997: bool = False) -> bytes:
    """DI as sent on the wire, DI0 first (4 bytes for 2007, 2 bytes for 1997)."""
    return di.to_bytes(2 if v1997 else 4, "little")


# --- the table -----------------------------------------------------------------------------------
ENERGY_COMBINED = 0x00000000
ENERGY_IMPORT = 0x00010000
ENERGY_IMPORT_BLOCK = 0x0001FF00  # data block: import total, then T1..Tn (4 bytes each)
ENERGY_EXPORT = 0x00020000
VOLTAGE_A = 0x02010100
CURRENT_A = 0x02020100
POWER_TOTAL = 0x02030000
POWER_FACTOR_TOTAL = 0x02060000
FREQUENCY = 0x02800002
DATE = 0x04000101
TIME = 0x04000102
REMAINING_MONEY = 0x00900200
OVERDRAFT_MONEY = 0x00900201
# Identity (DL/T 645-2007 Appendix A, parameter table: 通信地址, 表号, 资产管理编码, 电表型号).
COMM_ADDRESS = 0x04000401
METER_NUMBER = 0x04000402
ASSET_NUMBER = 0x04000403
METER_MODEL = 0x0400040B
# 上1次购电后总购电次数: DL/T 645-2007 prepaid extension; meters differ, so treat as optional.
PURCHASE_COUNT = 0x03330201


def energy_tariff(base: int, tariff: int) -> int:
    """DI of tariff ``tariff`` (1..63) under an energy total, e.g. (ENERGY_IMPORT, 1) → 00010100."""
    if not 1 <= tariff <= 63:
        raise ValueError(f"tariff must be 1..63, got {tariff}")
    return base | tariff << 8


def status_word(n: int) -> int:
    if not 1 <= n <= 7:
        raise ValueError(f"status word must be 1..7, got {n}")
    return 0x04000500 | n


def _energy(di: int, name: str) -> DataFormat:
    return DataFormat(di, name, Kind.BCD, 4, 2, unit="kWh")


def _build_table() -> dict[int, DataFormat]:
    items = [
        _energy(ENERGY_COMBINED, "combined active energy"),
        _energy(ENERGY_IMPORT, "forward active energy"),
        _energy(ENERGY_EXPORT, "reverse active energy"),
        DataFormat(0x02010100, "voltage A", Kind.BCD, 2, 1, unit="V"),
        DataFormat(0x02010200, "voltage B", Kind.BCD, 2, 1, unit="V"),
        DataFormat(0x02010300, "voltage C", Kind.BCD, 2, 1, unit="V"),
        DataFormat(0x02020100, "current A", Kind.BCD, 3, 3, signed=True, unit="A"),
        DataFormat(0x02020200, "current B", Kind.BCD, 3, 3, signed=True, unit="A"),
        DataFormat(0x02020300, "current C", Kind.BCD, 3, 3, signed=True, unit="A"),
        DataFormat(POWER_TOTAL, "active power total", Kind.BCD, 3, 4, signed=True, unit="kW"),
        DataFormat(POWER_FACTOR_TOTAL, "power factor total", Kind.BCD, 2, 3, signed=True),
        DataFormat(FREQUENCY, "frequency", Kind.BCD, 2, 2, unit="Hz"),
        DataFormat(DATE, "date and weekday", Kind.DATE, 4),
        DataFormat(TIME, "time", Kind.TIME, 3),
        DataFormat(REMAINING_MONEY, "remaining money", Kind.BCD, 4, 2),
        DataFormat(OVERDRAFT_MONEY, "overdraft money", Kind.BCD, 4, 2),
        DataFormat(PURCHASE_COUNT, "purchase count", Kind.BCD, 2, 0),
        DataFormat(COMM_ADDRESS, "communication address", Kind.DIGITS, 6),
        DataFormat(METER_NUMBER, "meter number", Kind.DIGITS, 6),
        DataFormat(ASSET_NUMBER, "asset number", Kind.ASCII, 32),
        DataFormat(METER_MODEL, "meter model", Kind.ASCII, 10),
        DataFormat(0x04001001, "alarm amount 1", Kind.BCD, 4, 2),
        DataFormat(0x04001002, "alarm amount 2", Kind.BCD, 4, 2),
        DataFormat(0x04001003, "overdraft limit", Kind.BCD, 4, 2),
        DataFormat(0x04001004, "hoarding limit", Kind.BCD, 4, 2),
        DataFormat(0x04001005, "minimum balance to close", Kind.BCD, 4, 2),
    ]
    bases = ((ENERGY_COMBINED, "combined"), (ENERGY_IMPORT, "forward"), (ENERGY_EXPORT, "reverse"))
    for base, label in bases:
        items += [_energy(energy_tariff(base, t), f"{label} active energy T{t}") for t in range(1, 5)]
    items += [
        DataFormat(0x02030000 | p << 8, f"active power phase {c}", Kind.BCD, 3, 4, True, "kW")
        for p, c in ((1, "A"), (2, "B"), (3, "C"))
    ]
    items += [DataFormat(status_word(n), f"status word {n}", Kind.WORD, 2) for n in range(1, 8)]
    return {f.di: f for f in items}


TABLE: dict[int, DataFormat] = _build_table()

# DL/T 645-1997: 2-byte DIs, same BCD conventions, coarser resolutions.
TABLE_1997: dict[int, DataFormat] = {
    f.di: f
    for f in (
        DataFormat(0x9010, "forward active energy", Kind.BCD, 4, 2, unit="kWh"),
        DataFormat(0x9020, "reverse active energy", Kind.BCD, 4, 2, unit="kWh"),
        DataFormat(0xB611, "voltage A", Kind.BCD, 2, 0, unit="V"),
        DataFormat(0xB621, "current A", Kind.BCD, 2, 2, unit="A"),
        DataFormat(0xB630, "active power total", Kind.BCD, 3, 4, signed=True, unit="kW"),
        DataFormat(0xC010, "date and weekday", Kind.DATE, 4),
        DataFormat(0xC011, "time", Kind.TIME, 3),
    )
}


def lookup(di: int, *, v1997: bool = False) -> DataFormat:
    table = TABLE_1997 if v1997 else TABLE
    try:
        return table[di]
    except KeyError:
        version, width = ("1997", 4) if v1997 else ("2007", 8)
        raise ValueError(f"unknown DL/T 645-{version} DI {di:0{width}X}") from None


def kwh_to_wh(value: Decimal) -> int:
    """XXXXXX.XX kWh → integer Wh (exact: the register resolution is 10 Wh)."""
    wh = value * 1000
    if wh != wh.to_integral_value():
        raise ValueError(f"{value} kWh is not a whole number of Wh")
    return int(wh)


# Status word 3 (04000503) bits, DL/T 645-2007 Appendix A.
SW3_RELAY_OPEN = 1 << 4
SW3_RELAY_COMMAND_TRIP = 1 << 6
SW3_PRE_TRIP_ALARM = 1 << 7
SW3_METER_TYPE_SHIFT = 8
SW3_KEEP_POWER = 1 << 12


def decode_status3(word: int) -> dict[str, bool | int]:
    return {
        "relay_open": bool(word & SW3_RELAY_OPEN),
        "relay_command_trip": bool(word & SW3_RELAY_COMMAND_TRIP),
        "pre_trip_alarm": bool(word & SW3_PRE_TRIP_ALARM),
        "meter_type": (word >> SW3_METER_TYPE_SHIFT) & 0x3,
        "keep_power": bool(word & SW3_KEEP_POWER),
        "status_word_3": word,
    }
