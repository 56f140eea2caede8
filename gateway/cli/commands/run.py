"""``pmg run`` (the daemon) and ``pmg demo`` (the whole story on simulated meters)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gateway.cli.common import FiniteFloat, config_option, load
from gateway.config import GatewayConfig

if TYPE_CHECKING:  # the CLI imports the daemon's parts only when a command needs them
    from gateway.runtime.components import Components


@click.command()
@config_option
@click.option("--check", is_flag=True, help="Validate the configuration (and tariffs, rules) and exit.")
def run(config_path: Path, check: bool) -> None:
    """Run the gateway daemon (under systemd: Type=notify, watchdog).

    Stops gracefully on SIGTERM (finishes the frame in flight, commits, flushes the outbox within a
    deadline); reloads meters, tariffs and rules on SIGHUP, keeping the old ones if the new file is
    invalid.
    """
    cfg = load(config_path)
    from gateway.runtime.daemon import run_daemon

    parts = _validate(cfg, config_path)
    if check:
        _report_registers(cfg, config_path, parts)
        return
    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    asyncio.run(run_daemon(config_path, cfg))


def _validate(cfg: GatewayConfig, config_path: Path) -> Components:
    """What ``run`` and ``run --check`` both refuse before anything starts — one function, so the
    check cannot pass what the daemon then rejects: the money unit pinned in an existing database,
    then rules, calendar and tariffs (with the database's own tariffs)."""
    from gateway.config import resolve
    from gateway.runtime.components import build_components
    from gateway.store.db import open_store
    from gateway.store.pins import check_money_pins

    database = resolve(config_path, cfg.database)
    store = open_store(database, readonly=True) if database.exists() else None
    try:
        if store is not None:
            check_money_pins(store, cfg.currency, cfg.minor_digits, write=False)
        return build_components(cfg, config_path, store)
    finally:
        if store is not None:
            store.close()


def _report_registers(cfg: GatewayConfig, config_path: Path, parts: Components) -> None:
    """``--check`` also asks whether every meter's energy can be priced (``gateway.registercheck``):
    one line per problem; exit status 2 if any is an error (a warning alone still passes)."""
    from gateway.core.timeutil import system_clock
    from gateway.registercheck import register_problems

    problems = register_problems(cfg, parts.book.tariffs, system_clock())
    for p in problems:
        click.echo(f"pmg: {p.severity}: {config_path}: {p.line}", err=True)
    if any(p.severity == "error" for p in problems):
        raise SystemExit(2)
    click.echo(f"{config_path}: OK ({len(cfg.buses)} buses, {len(cfg.meters)} meters)")


@click.command()
@click.option(
    "--speed",
    type=FiniteFloat(min=0, min_open=True, max=1e6),
    default=2700.0,
    show_default=True,
    help="How many times faster than real time the simulated clock runs.",
)
@click.option(
    "--minutes",
    type=FiniteFloat(min=0, max=1e6),
    default=4.0,
    show_default=True,
    help="Stop after this many real minutes (0: run until Ctrl-C).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to keep the demo's database and configuration (default: a temporary directory).",
)
@click.option("--no-broker", is_flag=True, help="Do not start a local Mosquitto even if one is installed.")
@click.option("--plain", is_flag=True, help="Print log lines instead of the live view.")
def demo(speed: float, minutes: float, workdir: Path | None, no_broker: bool, plain: bool) -> None:
    """Run the whole flow on simulated meters: credit runs down, warnings, notice, cut, top-up, power back.

    Starts DL/T 645 and Modbus simulators on pseudo-terminals, a private Mosquitto broker on a free
    port when one is installed (otherwise the outbox buffers), and the daemon with a fast clock, and
    shows meters, balances and relays changing live.  Ctrl-C stops everything cleanly.
    """
    from simulators.demo.app import run_demo

    raise SystemExit(
        run_demo(speed=speed, minutes=minutes, workdir=workdir, broker=not no_broker, plain=plain)
    )
