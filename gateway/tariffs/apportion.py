"""Exact integer splitting of energy.

Energy is integer Wh and every split must give parts that add up to the whole, or a watt-hour is
charged twice or never.  Proportional splits use the largest-remainder (Hamilton) method: each part
is the floor or the ceiling of its exact quota, and ties go to the earlier part so the result is
deterministic.  Block splits are exact at the threshold, with no proportion involved.
"""

from __future__ import annotations

from collections.abc import Sequence


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` that sum exactly to ``total``.

    All-zero weights can only carry a zero total; anything else has no proportional answer.
    """
    if total < 0:
        raise ValueError(f"cannot apportion a negative total ({total})")
    if any(w < 0 for w in weights):
        raise ValueError(f"apportion weights must not be negative (got {list(weights)})")
    if not weights:
        if total:
            raise ValueError(f"cannot apportion {total} over no parts")
        return []
    denominator = sum(weights)
    if denominator == 0:
        if total:
            raise ValueError(f"cannot apportion {total} over parts that all weigh 0")
        return [0] * len(weights)
    parts = [total * w // denominator for w in weights]
    remainders = [total * w % denominator for w in weights]
    short = total - sum(parts)
    for i in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[:short]:
        parts[i] += 1
    return parts


def one_block(used_wh: int, energy_wh: int, upper_bounds_wh: Sequence[int | None]) -> int | None:
    """The block (1-based) that takes all of ``energy_wh`` after ``used_wh``, or ``None`` when the
    energy crosses a bound: ``split_blocks`` then gives the parts.  The usual reading stays in one
    block, and this answers it without building the list of parts (both non-negative, as there)."""
    for index, bound in enumerate(upper_bounds_wh, start=1):
        if bound is None:
            return index
        if used_wh < bound:
            return index if used_wh + energy_wh <= bound else None
    return None  # no unbounded last block: ``split_blocks`` says so


def split_blocks(
    used_wh: int, energy_wh: int, upper_bounds_wh: Sequence[int | None]
) -> list[tuple[int, int]]:
    """Split ``energy_wh`` consumed after ``used_wh`` (in the same cycle) across inclining blocks.

    ``upper_bounds_wh`` are the cumulative upper bounds of the blocks, the last being ``None``
    (unbounded).  The watt-hour numbered ``n`` in the cycle (1-based) falls in the first block whose
    bound is ``>= n``, so a bound of 2 760 000 Wh puts exactly the first 2 760 kWh in block 1.
    Returns ``(block, energy)`` pairs, block 1-based, with no zero-energy pairs.
    """
    if used_wh < 0 or energy_wh < 0:
        raise ValueError(f"block split needs non-negative usage and energy (got {used_wh}, {energy_wh})")
    out: list[tuple[int, int]] = []
    position = used_wh
    remaining = energy_wh
    for index, bound in enumerate(upper_bounds_wh, start=1):
        if remaining == 0:
            break
        room = remaining if bound is None else max(0, bound - position)
        take = min(room, remaining)
        if take:
            out.append((index, take))
            position += take
            remaining -= take
    if remaining:
        raise ValueError("the last block must be unbounded")
    return out
