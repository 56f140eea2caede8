"""Register codecs and block planning (pure functions).

Vectors: IEEE 754 single/double precision encodings (e.g. 230.0 = 0x43660000), the word layouts
Eastron and CHINT document (float32, high word first), and two's complement for s16/s32.
"""

from __future__ import annotations

import struct
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.base import Point
from drivers.modbus.blocks import Item, plan
from drivers.modbus.codec import (
    CodecError,
    DataType,
    WordOrder,
    decode_raw,
    encode_raw,
    from_value,
    quantize,
    scaled,
    to_decimal,
    to_wh,
)

BIG, LITTLE = WordOrder.BIG, WordOrder.LITTLE


@pytest.mark.parametrize(
    ("registers", "dtype", "order", "expected"),
    [
        ([0x4366, 0x0000], DataType.FLOAT32, BIG, 230.0),
        ([0x0000, 0x4366], DataType.FLOAT32, LITTLE, 230.0),
        ([0x40A8, 0x0000], DataType.FLOAT32, BIG, 5.25),
        ([0x4059, 0x0000, 0x0000, 0x0000], DataType.FLOAT64, BIG, 100.0),
        ([0xFF88], DataType.S16, BIG, -120),
        ([0xFF88], DataType.U16, BIG, 65416),
        ([0x0001, 0xE240], DataType.U32, BIG, 123456),
        ([0xE240, 0x0001], DataType.U32, LITTLE, 123456),
        ([0xFFFF, 0xFFFE], DataType.S32, BIG, -2),
    ],
)
def test_decode_vectors(registers: list[int], dtype: DataType, order: WordOrder, expected: float) -> None:
    assert decode_raw(registers, dtype, order) == expected
    assert encode_raw(expected, dtype, order) == registers


def test_float32_energy_goes_through_the_exact_binary_value() -> None:
    # 1234.56 kWh as float32 is exactly 1234.56005859375 kWh: Decimal(float) keeps every digit
    value = scaled([0x449A, 0x51EC], DataType.FLOAT32, BIG, Decimal(1))
    assert value == Decimal("1234.56005859375")
    assert to_wh(value * 1000) == 1_234_560


def test_wh_rounding_is_half_even() -> None:
    assert [to_wh(Decimal(v)) for v in ("0.5", "1.5", "2.5", "2.5000001", "-0.5")] == [0, 2, 2, 3, 0]


def test_quantize_is_half_even_at_the_meter_resolution() -> None:
    assert quantize(Decimal("230.05"), 1) == Decimal("230.0")
    assert quantize(Decimal("230.15"), 1) == Decimal("230.2")
    assert quantize(to_decimal(struct.unpack(">f", struct.pack(">f", 230.1))[0]), 1) == Decimal("230.1")


@pytest.mark.parametrize("bits", [0x7FC00000, 0x7F800000, 0xFF800000])  # NaN, +inf, -inf
def test_nan_and_infinity_are_refused(bits: int) -> None:
    with pytest.raises(CodecError, match="not a number"):
        scaled([bits >> 16, bits & 0xFFFF], DataType.FLOAT32, BIG, Decimal(1))


def test_wrong_register_count_is_an_error() -> None:
    with pytest.raises(CodecError, match="float32 needs 2 registers, got 1"):
        decode_raw([1], DataType.FLOAT32)
    with pytest.raises(CodecError, match="not 16-bit"):
        decode_raw([0x10000], DataType.U16)


def test_from_value_floors_energy_and_rounds_the_rest() -> None:
    assert from_value(Decimal("1234.567"), DataType.U32, BIG, Decimal("0.01"), floor=True) == [0x0001, 0xE240]
    assert from_value(Decimal("230.05"), DataType.U16, BIG, Decimal("0.1")) == [2300]
    with pytest.raises(CodecError, match="does not fit u16"):
        from_value(Decimal(70000), DataType.U16, BIG, Decimal(1))


@given(st.integers(0, 0xFFFFFFFF), st.sampled_from([BIG, LITTLE]))
def test_u32_roundtrip(value: int, order: WordOrder) -> None:
    assert decode_raw(encode_raw(value, DataType.U32, order), DataType.U32, order) == value


@given(st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2), st.sampled_from([BIG, LITTLE]))
def test_any_float32_registers_decode_or_are_refused(registers: list[int], order: WordOrder) -> None:
    try:
        value = scaled(registers, DataType.FLOAT32, order, Decimal("0.001"))
    except CodecError:
        return
    assert value.is_finite()


def items(*spec: tuple[str, int, int, int]) -> list[Item[str]]:
    return [Item(k, f, a, c) for k, f, a, c in spec]


def test_plan_merges_contiguous_registers_per_function() -> None:
    blocks = plan(items(("f", 4, 0x46, 2), ("e", 4, 0x48, 2), ("x", 4, 0x4A, 2), ("v", 4, 0, 2), ("h", 3, 0, 2)), 64)
    assert [(b.function, b.address, b.count, [i.key for i in b.items]) for b in blocks] == [
        (3, 0, 2, ["h"]),
        (4, 0, 2, ["v"]),
        (4, 0x46, 6, ["f", "e", "x"]),
    ]


def test_plan_respects_block_limit_and_gap() -> None:
    spec = items(("a", 4, 0, 2), ("b", 4, 2, 2), ("c", 4, 4, 2))
    assert [b.count for b in plan(spec, 4)] == [4, 2]
    assert [b.count for b in plan(items(("a", 4, 0, 2), ("b", 4, 3, 2)), 64)] == [2, 2]
    assert [b.count for b in plan(items(("a", 4, 0, 2), ("b", 4, 3, 2)), 64, max_gap=1)] == [5]


def test_split_halves_items() -> None:
    (block,) = plan(items(("a", 4, 0, 2), ("b", 4, 2, 2), ("c", 4, 4, 2)), 64)
    left, right = block.split()
    assert (left.address, left.count, right.address, right.count) == (0, 2, 2, 4)
    with pytest.raises(ValueError, match="cannot be split"):
        left.split()


def test_point_names_are_base_points() -> None:
    from drivers.modbus.profile import PointsTable

    assert set(PointsTable.model_fields) <= {p.value for p in Point}
