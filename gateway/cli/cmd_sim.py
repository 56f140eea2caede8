"""``pmg sim …``: simulated meters on pseudo-terminals and TCP, for tests, labs and the demo."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    cli.add_command(sim)


@click.group()
def sim() -> None:
    """Serve simulated meters that speak the real protocols (with faults)."""


@sim.command("dlt645", context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sim_dlt645(args: tuple[str, ...]) -> None:
    """DL/T 645-2007 meters: --meters N (--pty | --tcp PORT) [--baud --parity --speed …]; -h for all."""
    from simulators.dlt645.__main__ import main

    raise SystemExit(main(list(args)))


@sim.command("modbus", context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sim_modbus(args: tuple[str, ...]) -> None:
    """Modbus meters: --profile NAME --units N (--tcp PORT | --pty); -h for all."""
    from simulators.modbus.cli import main

    raise SystemExit(main(list(args)))


@sim.command("fleet", context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sim_fleet(args: tuple[str, ...]) -> None:
    """Many buses of both protocols with scheduled faults: --config FILE [--write-gateway-config OUT]."""
    from simulators.fleet.__main__ import main

    raise SystemExit(main(list(args)))
