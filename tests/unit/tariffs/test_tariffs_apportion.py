"""Exact integer splitting: parts sum to the whole, follow their quotas, and blocks split at the threshold."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.tariffs.apportion import apportion, one_block, split_blocks


def test_apportion_largest_remainder_gives_spare_units_to_largest_remainders() -> None:
    # 10 over weights 1:1:1 -> quotas 3.33 each; the one spare unit goes to the first (tie -> earliest)
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    # quotas 2.5, 7.5 over 1:3 of 10 -> remainders .5/.5 tie, earliest wins
    assert apportion(10, [1, 3]) == [3, 7]
    # quotas 1.2, 2.4, 6.4 -> floors 1, 2, 6 (9); spare to the .4s in order
    assert apportion(10, [3, 6, 16]) == [1, 3, 6]


def test_apportion_edge_cases() -> None:
    assert apportion(0, [0, 0]) == [0, 0]
    assert apportion(0, []) == []
    assert apportion(5, [0, 7]) == [0, 5]
    with pytest.raises(ValueError, match="all weigh 0"):
        apportion(5, [0, 0])
    with pytest.raises(ValueError, match="negative total"):
        apportion(-1, [1])
    with pytest.raises(ValueError, match="must not be negative"):
        apportion(1, [1, -1])
    with pytest.raises(ValueError, match="no parts"):
        apportion(1, [])


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(min_value=0, max_value=10**12),
    weights=st.lists(st.integers(min_value=0, max_value=10**11), min_size=1, max_size=12).filter(any),
)
def test_apportion_parts_sum_exactly_and_stay_within_one_of_their_quota(
    total: int, weights: list[int]
) -> None:
    parts = apportion(total, weights)
    assert sum(parts) == total
    for part, weight in zip(parts, weights, strict=True):
        quota = Fraction(total * weight, sum(weights))
        assert quota - 1 < part < quota + 1
        assert part >= 0


def test_split_blocks_exact_at_the_threshold() -> None:
    bounds = [2_760_000, 4_800_000, None]
    assert split_blocks(0, 2_760_000, bounds) == [(1, 2_760_000)]
    assert split_blocks(2_759_000, 3_000, bounds) == [(1, 1_000), (2, 2_000)]
    assert split_blocks(2_760_000, 1, bounds) == [(2, 1)]
    assert split_blocks(0, 5_000_000, bounds) == [(1, 2_760_000), (2, 2_040_000), (3, 200_000)]
    assert split_blocks(9_000_000, 5, bounds) == [(3, 5)]
    assert split_blocks(5, 0, bounds) == []
    with pytest.raises(ValueError, match="unbounded"):
        split_blocks(0, 10, [5])


def _bounds(steps: list[int]) -> list[int | None]:
    """Block upper bounds rising by ``steps``, then an unbounded last block."""
    bounds: list[int | None] = []
    acc = 0
    for step in steps:
        acc += step
        bounds.append(acc)
    return [*bounds, None]


@settings(max_examples=300, deadline=None)
@given(
    used=st.integers(min_value=0, max_value=10**7),
    energy=st.integers(min_value=0, max_value=10**7),
    steps=st.lists(st.integers(min_value=1, max_value=10**6), max_size=4),
)
def test_split_blocks_sums_and_respects_bounds(used: int, energy: int, steps: list[int]) -> None:
    bounds = _bounds(steps)
    pieces = split_blocks(used, energy, bounds)
    assert sum(e for _, e in pieces) == energy
    position = used
    for block, part in pieces:
        upper = bounds[block - 1]
        lower = 0 if block == 1 else bounds[block - 2]
        assert lower is not None
        assert part > 0
        assert lower <= position  # the piece starts inside its own block, never in a lower one
        assert upper is None or position + part <= upper
        position += part


@settings(max_examples=300, deadline=None)
@given(
    used=st.integers(min_value=0, max_value=10**7),
    energy=st.integers(min_value=1, max_value=10**7),
    steps=st.lists(st.integers(min_value=1, max_value=10**6), max_size=4),
)
def test_one_block_is_the_split_when_it_has_one_part(used: int, energy: int, steps: list[int]) -> None:
    """Pricing's shortcut for the usual reading names the block only when the split has one part."""
    bounds = _bounds(steps)
    pieces = split_blocks(used, energy, bounds)
    assert one_block(used, energy, bounds) == (pieces[0][0] if len(pieces) == 1 else None)
