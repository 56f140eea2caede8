"""Helpers shared by the CLI commands: config and store opening, output in table or JSON."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from gateway.config import GatewayConfig, load_config, resolve
from gateway.core.errors import OperationFailed
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


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


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
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def emit_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A human table (rich when the terminal is a TTY, plain aligned text otherwise)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False, header_style="bold")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    Console(width=160).print(table)
