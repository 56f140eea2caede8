"""Helpers shared by the CLI commands: config and store opening, output in table or JSON.

Output has one voice (docs/operations.md, "Reading pmg's output"): instants for a person in the
configured zone with its offset (``pmg --utc``: in UTC), JSON with ISO 8601 UTC instants
(``gateway.core.present``), tables as wide as the terminal (80 columns when the output is not a
terminal, unless ``COLUMNS`` says otherwise), lists newest first (``--reverse``: oldest first), and
an unknown meter or account is bad input (exit 2) with the known ones suggested.
"""

from __future__ import annotations

import difflib
import io
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import click

from gateway.config import GatewayConfig, load_config, resolve
from gateway.core.errors import OperationFailed
from gateway.core.present import Presenter, json_ready, scalar_text
from gateway.store.db import Store, open_store
from gateway.store.pins import check_money_pins

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CONFIG = "/etc/pmg/gateway.toml"


class CliFailure(OperationFailed):
    """An operation failed; ``status`` is the exit status (1 by default)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.exit_status = status


class FiniteFloat(click.FloatRange):
    """A float option within a range that also refuses ``nan`` and ``inf``.

    ``click.FloatRange`` lets ``nan`` through (every comparison with it is false), and a ``nan``
    timeout or duration turns a wait into a busy loop or a crash later; bad input must stop here.
    """

    name = "finite number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


_MONEY_ARG = re.compile(r"^-?[0-9]{1,15}(\.[0-9]{1,12})?$")


class MoneyText(click.ParamType):
    """A decimal amount ("50.00", "-3.50"), kept as text: the config's minor digits decide its
    exactness later (``gateway.core.money.parse_money``); this only refuses what is not a decimal."""

    name = "amount"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value).strip()
        if not _MONEY_ARG.match(text):
            self.fail(f"{value!r} is not a decimal amount like 12.00 or -3.50", param, ctx)
        return text


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class AuditText(click.ParamType):
    """Text recorded in the audit log (an actor, a reason, an idempotence id): not blank, no control
    characters (an ANSI escape or a newline would forge or repaint a line when it is shown), bounded.

    An empty ``--id ""`` is a script's unset variable: taking a fresh UUID instead would silently
    lose the idempotence the id was given for, so it is refused like any other bad input.
    """

    name = "text"

    def __init__(self, max_length: int = 500) -> None:
        self.max_length = max_length

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        if not text.strip():
            self.fail("must not be empty", param, ctx)
        if _CONTROL.search(text):
            self.fail("must not contain control characters", param, ctx)
        if len(text) > self.max_length:
            self.fail(f"is longer than {self.max_length} characters", param, ctx)
        return text


def config_option(f: F) -> F:
    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=DEFAULT_CONFIG,
        show_default=True,
        envvar="PMG_CONFIG",
        help="Gateway configuration file (or $PMG_CONFIG).",
    )(f)


def _set_utc(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        root = ctx.find_root()
        root.ensure_object(dict)["utc"] = True


def utc_option(f: F) -> F:
    """``--utc`` on a command too (``pmg events --utc`` as well as ``pmg --utc events``)."""
    return click.option(
        "--utc", is_flag=True, expose_value=False, callback=_set_utc, help="Show times in UTC."
    )(f)


def json_option(f: F) -> F:
    """``--json`` (instants ISO 8601 UTC) and ``--utc`` (for the human form): every data command."""
    f = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts (times in UTC).")(f)
    return utc_option(f)


def reverse_option(f: F) -> F:
    return click.option("--reverse", is_flag=True, help="Oldest first (default: newest first).")(f)


def wants_utc() -> bool:
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    obj = ctx.find_root().obj
    return bool(isinstance(obj, dict) and obj.get("utc"))


def presenter(cfg: GatewayConfig) -> Presenter:
    """How this site shows instants and amounts, as the reader asked (``--utc``)."""
    return Presenter(cfg.tz, cfg.currency, cfg.minor_digits, utc=wants_utc())


def require_id(store: Store, kind: Literal["meter", "account"], value: str) -> None:
    """Exit 2 with the known ids, closest first, when ``value`` is not a known meter or account."""
    table = "meters" if kind == "meter" else "accounts"
    if store.one(f"SELECT 1 FROM {table} WHERE id = ?", value) is not None:
        return
    raise CliFailure(unknown_message(kind, value, [r[0] for r in store.all(f"SELECT id FROM {table} ORDER BY id")]), 2)


def unknown_message(kind: str, value: str, known: Sequence[str], shown: int = 8, plural: str | None = None) -> str:
    """``no meter 'M-1' (did you mean M-01? known: M-01, M-02, …)``: close matches (difflib) first."""
    close = difflib.get_close_matches(value, known, n=3, cutoff=0.6)
    rest = [k for k in known if k not in close]
    listed = [*close, *rest][:shown]
    more = f", … {len(known) - len(listed)} more" if len(known) > len(listed) else ""
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    plural = plural or f"{kind}s"
    return f"no {kind} '{value}' ({hint}{plural}: {', '.join(listed) + more if listed else 'none'})"


def load(config_path: Path) -> GatewayConfig:
    return load_config(config_path)


@contextmanager
def opened_store(config_path: Path, *, readonly: bool = False) -> Iterator[tuple[GatewayConfig, Store]]:
    cfg = load_config(config_path)
    store = open_store(resolve(config_path, cfg.database), readonly=readonly)
    try:
        check_money_pins(store, cfg.currency, cfg.minor_digits, write=not readonly)
        yield cfg, store
    finally:
        store.close()


def emit_json(obj: Any) -> None:
    """JSON for scripts: instants as ISO 8601 UTC to the second, wherever they are in ``obj``."""
    click.echo(json.dumps(json_ready(obj), indent=2, ensure_ascii=False, default=str))


def terminal_width() -> int:
    """The terminal's width when stdout is one; else ``COLUMNS`` when set, else 80 (a pipe, a log)."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) >= 20:
        return int(env)
    if sys.stdout.isatty():
        return max(40, shutil.get_terminal_size((80, 24)).columns)
    return 80


def emit_wrapped(text: str, indent: int = 4) -> None:
    """One record as lines no wider than the terminal: the first line flush, the rest indented, so
    a long record reads as one block rather than wrapping at the terminal's edge mid-word."""
    import textwrap

    width = terminal_width()
    lines = textwrap.wrap(
        text, width=width, subsequent_indent=" " * indent, break_long_words=True, break_on_hyphens=False
    )
    click.echo("\n".join(lines) if lines else "")


def ago(seconds: float | None) -> str:
    """A duration for a person: ``45 s``, ``12 min``, ``16 h``, ``3 d`` (the exact figure is in --json)."""
    if seconds is None:
        return "-"
    s = abs(seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s // 60:.0f} min"
    if s < 172_800:
        return f"{s // 3600:.0f} h"
    return f"{s // 86_400:.0f} d"


@dataclass(frozen=True)
class Col:
    """A table column and how it gives way on a narrow terminal.

    ``fixed``: never wrapped (ids, instants, amounts: a folded amount misreads); the rest fold
    (wrap inside their cell) and share what is left; ``max_width`` caps a long text column.
    """

    header: str
    fixed: bool = False
    right: bool = False
    max_width: int | None = None
    min_width: int | None = None


def emit_table(
    title: str | None,
    columns: Sequence[str | Col],
    rows: Sequence[Sequence[Any]],
    *,
    width: int | None = None,
    compact: bool = False,
) -> None:
    """A table for a person, as wide as the terminal: no borders between columns (they cost two
    characters each), fixed columns kept whole and text columns folded inside their cells, so a row
    never wraps onto the next line of the terminal.  ``compact``: one blank between columns instead
    of two (a table with a full instant and six other columns at 80)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(
        box=box.SIMPLE_HEAD,  # a rule under the header, one blank between columns, no frame
        show_edge=False,
        header_style="bold",
        pad_edge=False,
        padding=(0, 0) if compact else (0, 1),
        collapse_padding=True,
    )
    for col in columns:
        c = Col(col) if isinstance(col, str) else col
        table.add_column(
            c.header,
            justify="right" if c.right else "left",
            no_wrap=c.fixed,
            overflow="ellipsis" if c.fixed else "fold",
            max_width=c.max_width,
            min_width=c.min_width,
        )
    for row in rows:
        table.add_row(*[scalar_text(v) for v in row])
    if title:  # above the table, at the terminal's width (rich would wrap it at the table's)
        emit_wrapped(title, indent=2)
    tty = sys.stdout.isatty()
    console = Console(width=width or terminal_width(), soft_wrap=False, record=True, file=io.StringIO())
    console.print(table)
    if tty:  # styles for a person at a terminal; plain text for a pipe or a file
        click.echo(console.export_text(styles=True), nl=False)
    else:  # cells are padded to the column: a pipe gets no trailing blanks
        click.echo("\n".join(line.rstrip() for line in console.export_text().splitlines()))
