"""Line of a data path in a TOML file, including tables nested in arrays of tables.

``drivers.tomlsource.locate`` indexes ``[[versions]]`` but not its sub-tables: ``[versions.cycle]``
and ``[[versions.blocks]]`` resolve without the parent's index, so every error inside a version
falls back to the ``[[versions]]`` line.  Tariff files nest that way throughout, so this resolves
each header against the arrays of tables seen so far (TOML's own rule: a dotted header continues
the *last* element of an array of tables).  Remove once ``tomlsource.locate`` does the same.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.\-]+)\s*=""")


def _clean(raw: str) -> str:
    raw = raw.strip()
    return raw[1:-1] if raw[:1] in "\"'" else raw


def _resolve(names: list[str], counters: dict[tuple[str | int, ...], int]) -> list[str | int]:
    resolved: list[str | int] = []
    for name in names:
        resolved.append(name)
        index = counters.get(tuple(resolved))
        if index is not None:
            resolved.append(index)
    return resolved


def locate_nested(text: str, path: Sequence[str | int]) -> int | None:
    """Best line (1-based) for ``path``: the exact key or header, else the deepest enclosing one."""
    want = list(path)
    best: int | None = None
    counters: dict[tuple[str | int, ...], int] = {}
    current: list[str | int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            names = [_clean(part) for part in header.group(2).split(".")]
            if header.group(1) == "[[":
                parent = _resolve(names[:-1], counters)
                key = (*parent, names[-1])
                counters[key] = counters.get(key, -1) + 1
                current = [*key, counters[key]]
            else:
                current = _resolve(names, counters)
        else:
            match = _KEY.match(line)
            if not match:
                continue
            full = [*current, *(_clean(p) for p in match.group(1).split("."))]
            if full == want[: len(full)]:
                if full == want:
                    return lineno
                best = lineno
            continue
        if current == want[: len(current)]:
            if current == want:
                return lineno
            best = lineno
    return best
