"""Fuzzing the Modbus response path: reply bytes → pymodbus RTU/TCP framers → registers → our values.

Whatever bytes a meter (or the noise on a line) produces, the master either gets a typed value it may
use or a typed refusal: ``convert`` returns an int (energy, Wh) or a Decimal, or raises ``CodecError``;
never a float, never a negative energy, never another exception.  The framers must turn any byte string
into "need more" / "skip" / a decoded PDU, or ``ModbusIOException`` — nothing that would escape the link.
Vectors: the shipped profiles' own register maps (drivers/modbus/profiles/*.toml) and frames built by pymodbus.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

from drivers.base import Point
from drivers.modbus.codec import CodecError
from drivers.modbus.meter import convert
from drivers.modbus.profile import PointSpec, list_profiles, load_profile

PROFILE_POINTS: list[tuple[str, Point, PointSpec]] = [
    (name, point, spec)
    for name in list_profiles()
    for point in Point
    if (spec := load_profile(name).point(point)) is not None
]
ENERGY = {Point.ENERGY_IMPORT, Point.ENERGY_EXPORT}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_shipped_profiles_give_points_to_fuzz() -> None:
    assert len(PROFILE_POINTS) >= 8
    assert {p for _, p, _ in PROFILE_POINTS} >= {Point.ENERGY_IMPORT, Point.VOLTAGE}


@FUZZ
@given(
    case=st.sampled_from(PROFILE_POINTS),
    words=st.lists(st.integers(0, 0xFFFF), min_size=0, max_size=6),
)
def test_any_registers_become_an_exact_value_or_a_codec_error(
    case: tuple[str, Point, PointSpec], words: list[int]
) -> None:
    _name, point, spec = case
    try:
        value = convert(point, spec, words)
    except CodecError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert len(words) == spec.count, f"{len(words)} registers accepted for a {spec.count}-register point"
    assert not isinstance(value, float)
    if point in ENERGY:
        assert isinstance(value, int) and value >= 0
    else:
        assert isinstance(value, Decimal) and value.is_finite()


FLOAT_WITH_DECIMALS = next(
    (p, spec) for _, p, spec in PROFILE_POINTS if spec.type.value == "float32" and spec.decimals is not None
)


def test_a_huge_float_is_a_codec_error_not_a_decimal_crash() -> None:
    point, spec = FLOAT_WITH_DECIMALS
    with pytest.raises(CodecError):
        convert(point, spec, [27727, 0])


def _decode(framer: FramerRTU | FramerSocket, data: bytes, unit: int) -> None:
    used = 0
    while used < len(data):
        try:
            n, pdu = framer.handleFrame(data[used:], unit, 0)
        except ModbusIOException:
            return
        if pdu is not None:
            assert pdu.function_code & 0x7F in range(1, 128)
            registers = getattr(pdu, "registers", None)
            if registers is not None:
                assert all(0 <= r <= 0xFFFF for r in registers)
        if n == 0:
            return
        used += n


@FUZZ
@given(data=st.binary(max_size=300), unit=st.integers(1, 247))
def test_any_bytes_on_the_line_are_skipped_or_decoded_never_a_crash(data: bytes, unit: int) -> None:
    _decode(FramerRTU(DecodePDU(False)), data, unit)
    _decode(FramerSocket(DecodePDU(False)), data, unit)


@FUZZ
@given(
    registers=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=10),
    unit=st.integers(1, 247),
    pos=st.integers(0, 40),
    burst=st.tuples(st.integers(0, 255), st.integers(0, 255)),
    holding=st.booleans(),
)
def test_a_burst_error_in_a_valid_reply_is_never_decoded_as_registers(
    registers: list[int], unit: int, pos: int, burst: tuple[int, int], holding: bool
) -> None:
    """CRC-16 catches every error burst of up to 16 bits: a corrupted RTU reply decodes to nothing."""
    cls = ReadHoldingRegistersResponse if holding else ReadInputRegistersResponse
    good = FramerRTU(DecodePDU(False)).buildFrame(cls(registers=registers, dev_id=unit))
    frame = bytearray(good)
    for i, xor in enumerate(burst):
        if pos + i < len(frame):
            frame[pos + i] ^= xor
    try:
        _used, pdu = FramerRTU(DecodePDU(False)).handleFrame(bytes(frame), unit, 0)
    except ModbusIOException:
        pdu = None
    if bytes(frame) == good:
        assert pdu is not None and list(pdu.registers)[: len(registers)] == registers
    else:
        assert pdu is None, f"corrupted frame {bytes(frame).hex()} decoded as {pdu}"
