"""``pmg sim …``: simulated meters on pseudo-terminals and TCP, for tests, labs and the demo."""

from __future__ import annotations

import argparse
import contextlib
import io
import math
from collections.abc import Callable
from typing import Any

import click

from gateway.cli.common import CliFailure

# Numbers the simulators take, checked here so that a bad one is one line and exit 2 (argparse only
# checks the type: ``--tcp 99999`` used to reach ``bind()`` and ``--speed nan`` a clock).
_PORT = (0, 65535)
_LIMITS: dict[str, tuple[float, float]] = {
    "tcp": _PORT,
    "baud": (300, 921600),
    "start_address": (0, 999_999_999_999),
    "power_w": (0, 10_000_000),
    "watts": (0, 10_000_000),
    "units": (1, 247),
    "speed": (1e-6, 1e6),
    "response_delay_ms": (0, 60_000),
    "mqtt_port": (1, 65535),
}


def register(cli: click.Group) -> None:
    cli.add_command(sim)


def check_args(parse: Callable[[list[str]], argparse.Namespace], prog: str, args: list[str]) -> None:
    """Parse ``args`` with the simulator's own parser; a mistake becomes one ``CliFailure`` line.

    argparse prints a usage block and exits 2; that block is captured and its last line (the error)
    kept.  ``-h`` is left to the simulator, which prints its help.
    """
    if any(a in ("-h", "--help") for a in args):
        return
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = parse(args)
    except SystemExit as exc:
        lines = err.getvalue().strip().splitlines() or [f"bad arguments (status {exc.code})"]
        raise CliFailure(lines[-1].removeprefix(f"{prog}: error: "), 2) from None
    for name, (lo, hi) in _LIMITS.items():
        value: Any = getattr(ns, name, None)
        if value is None or isinstance(value, bool):
            continue
        if not (math.isfinite(value) and lo <= value <= hi):
            option = "--" + name.replace("_", "-")
            raise CliFailure(f"{option}: {value} is not in {lo:g}..{hi:g}", 2)


@click.group()
def sim() -> None:
    """Serve simulated meters that speak the real protocols (with faults)."""


@sim.command("dlt645", context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sim_dlt645(args: tuple[str, ...]) -> None:
    """DL/T 645-2007 meters: --meters N (--pty | --tcp PORT) [--baud --parity --speed …]; -h for all."""
    from simulators.dlt645.__main__ import main, parse_args

    check_args(parse_args, "pmg sim dlt645", list(args))
    raise SystemExit(main(list(args)))


@sim.command("modbus", context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sim_modbus(args: tuple[str, ...]) -> None:
    """Modbus meters: --profile NAME --units N (--tcp PORT | --pty); -h for all."""
    from simulators.modbus.cli import _parser, main

    check_args(_parser().parse_args, "pmg sim modbus", list(args))
    raise SystemExit(main(list(args)))


@sim.command("fleet", context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sim_fleet(args: tuple[str, ...]) -> None:
    """Many buses of both protocols with scheduled faults: --config FILE [--write-gateway-config OUT]."""
    from simulators.fleet.__main__ import main, parse_args

    check_args(parse_args, "pmg sim fleet", list(args))
    raise SystemExit(main(list(args)))
