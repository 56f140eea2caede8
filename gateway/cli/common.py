"""Helpers shared by the CLI commands: config and store opening, output in table or JSON."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from gateway.config import GatewayConfig, load_config, resolve
from gateway.store.db import Store, open_store
from gateway.store.pins import check_money_pins

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CONFIG = "/etc/pmg/gateway.toml"


class CliFailure(Exception):
    """An operation failed; ``status`` is the exit status (1 by default)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


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
