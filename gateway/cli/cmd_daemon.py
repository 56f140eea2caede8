"""``pmg run`` (the daemon) and ``pmg demo`` (the whole story on simulated meters)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click

from gateway.cli.common import FiniteFloat, config_option, load


def register(cli: click.Group) -> None:
    cli.add_command(run)
    cli.add_command(demo)


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
    from gateway.components import build_components
    from gateway.daemon import run_daemon

    build_components(cfg, config_path, None)
    if check:
        click.echo(f"{config_path}: OK ({len(cfg.buses)} buses, {len(cfg.meters)} meters)")
        return
    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    asyncio.run(run_daemon(config_path, cfg))


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
    from gateway.demo import run_demo

    raise SystemExit(
        run_demo(speed=speed, minutes=minutes, workdir=workdir, broker=not no_broker, plain=plain)
    )
