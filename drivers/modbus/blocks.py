"""Grouping of register reads into as few requests as the meter allows.

On a 9600-baud line a request costs a round trip of tens of milliseconds, so contiguous registers
(same function code, next address) are fetched in one request, up to the profile's block limit.
When a meter answers a block with an exception, the block is halved and each half retried, so a
single unsupported register costs about log2(n) extra requests and hides nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")


@dataclass(frozen=True)
class Item(Generic[K]):
    key: K
    function: int
    address: int
    count: int

    @property
    def end(self) -> int:
        return self.address + self.count


@dataclass(frozen=True)
class Block(Generic[K]):
    function: int
    address: int
    count: int
    items: tuple[Item[K], ...]

    def split(self) -> tuple[Block[K], Block[K]]:
        """Two blocks of half the items each; only for blocks with more than one item."""
        if len(self.items) < 2:
            raise ValueError("a single-item block cannot be split")
        half = len(self.items) // 2
        return make_block(self.items[:half]), make_block(self.items[half:])


def make_block(items: Iterable[Item[K]]) -> Block[K]:
    ordered = tuple(sorted(items, key=lambda i: i.address))
    start = ordered[0].address
    end = max(i.end for i in ordered)
    return Block(ordered[0].function, start, end - start, ordered)


def plan(items: Iterable[Item[K]], max_block: int, max_gap: int = 0) -> list[Block[K]]:
    """Merge items of one function code whose registers touch (or are ``max_gap`` apart) into blocks
    of at most ``max_block`` registers.  Overlapping items share a block."""
    out: list[Block[K]] = []
    by_function: dict[int, list[Item[K]]] = {}
    for item in items:
        by_function.setdefault(item.function, []).append(item)
    for function in sorted(by_function):
        current: list[Item[K]] = []
        start = end = 0
        for item in sorted(by_function[function], key=lambda i: (i.address, i.count)):
            fits = current and item.address - end <= max_gap and max(end, item.end) - start <= max_block
            if fits:
                current.append(item)
                end = max(end, item.end)
                continue
            if current:
                out.append(make_block(current))
            current, start, end = [item], item.address, item.end
        if current:
            out.append(make_block(current))
    return out
