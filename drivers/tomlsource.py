"""Strict TOML loading with errors that name file, line and key.

Configuration, meter profiles, tariffs and rule presets are all TOML validated by pydantic models
with ``extra="forbid"``.  ``tomllib`` and pydantic report *where in the data* something is wrong
(``meters[2].baud_rate``) but not *where in the file*; a technician with a text editor needs the
line.  This module maps a data path back to a line by scanning the table headers and keys, which is
exact for the plain layouts our files use and falls back to the nearest table header otherwise.

It lives in ``drivers`` because profiles are driver data and ``drivers`` may not import
``gateway``; the gateway reuses it for its own files.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.\-]+)\s*=""")


class TomlError(ValueError):
    """A TOML file is unreadable or invalid; ``str()`` is one line: ``file:line: where: why``."""

    def __init__(self, file: str | Path, line: int | None, where: str, reason: str) -> None:
        self.file = str(file)
        self.line = line
        self.where = where
        self.reason = reason
        loc = f"{self.file}:{line}" if line else self.file
        super().__init__(f"{loc}: {where + ': ' if where else ''}{reason}")


def _clean_key(raw: str) -> str:
    raw = raw.strip()
    if raw[:1] in "\"'":
        return raw[1:-1]
    return raw


def locate(text: str, path: Sequence[str | int]) -> int | None:
    """Best line (1-based) for a data path such as ``("meters", 2, "baud")``.

    Walks the file once, tracking the current table (with array-of-table indices), and returns the
    line of the deepest part of ``path`` it can find.
    """
    want = list(path)
    best: int | None = None
    # Current index of every array of tables, keyed by its resolved path (indices of enclosing arrays
    # included), so that [[versions.blocks]] lands under the right [[versions]] element.
    counters: dict[tuple[str | int, ...], int] = {}
    current: list[str | int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            name = [_clean_key(part) for part in header.group(2).split(".")]
            resolved: list[str | int] = []
            for i, part in enumerate(name):
                resolved.append(part)
                key = tuple(resolved)
                if i == len(name) - 1 and header.group(1) == "[[":
                    counters[key] = counters.get(key, -1) + 1
                    resolved.append(counters[key])
                elif key in counters:
                    resolved.append(counters[key])
            current = resolved
            if _is_prefix(current, want):
                best = lineno  # headers come in file order: a later matching one is as specific
                if current == want:
                    return lineno
            continue
        km = _KEY.match(line)
        if km:
            dotted = [_clean_key(p) for p in km.group(1).split(".")]
            full = [*current, *dotted]
            if _is_prefix(full, want):
                if full == want:
                    return lineno
                best = lineno
    return best


def _is_prefix(prefix: Sequence[str | int], full: Sequence[str | int]) -> bool:
    return len(prefix) <= len(full) and list(full[: len(prefix)]) == list(prefix)


def _format_path(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def read_toml(file: str | Path) -> tuple[dict[str, Any], str]:
    """Parse a TOML file; a syntax error becomes a one-line ``TomlError`` with its line."""
    path = Path(file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TomlError(path, None, "", f"cannot read file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise TomlError(path, None, "", "file is not UTF-8 text") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11 has no ``lineno`` attribute yet; the message ends "(at line L, column C)".
        found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = int(found.group(1)) if found else getattr(exc, "lineno", None)
        msg = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(exc))
        return _raise(TomlError(path, line, "", f"TOML syntax error: {msg}"))


def _raise(err: TomlError) -> Any:
    raise err


def validation_to_toml_error(file: str | Path, text: str, exc: ValidationError) -> TomlError:
    """First pydantic error as a one-line, line-accurate ``TomlError``."""
    err = exc.errors()[0]
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    kind = err["type"]
    if kind == "extra_forbidden":
        reason = f"unknown key '{loc[-1]}'"
    elif kind == "missing":
        reason = f"missing required key '{loc[-1]}'"
    elif kind == "value_error":
        reason = str(err["msg"]).removeprefix("Value error, ")
    else:
        got = err.get("input")
        shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
        if len(shown) > 60:
            shown = shown[:57] + "..."
        reason = f"{err['msg']} (got {shown})"
    line = locate(text, loc) if loc else None
    if line is None and kind == "missing" and len(loc) > 1:
        line = locate(text, loc[:-1])
    return TomlError(file, line, _format_path(loc), reason)


def load_model(file: str | Path, model: type[M], context: dict[str, Any] | None = None) -> M:
    """Read ``file`` and validate it as ``model``; every failure is a one-line ``TomlError``."""
    data, text = read_toml(file)
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise validation_to_toml_error(file, text, exc) from None
