"""``pmg sim modbus``: serve simulated Modbus meters until Ctrl-C or SIGTERM.

Example: ``pmg sim modbus --profile dds238 --meters 3 --tcp 5020`` serves unit ids 1..3 on port 5020;
``--pty`` serves RTU on a new pseudo-terminal and prints its path.  ``--units`` and ``--watts``, the
earlier names of ``--meters`` and ``--power-w``, are still accepted (hidden from the help).
``python -m simulators.modbus.cli`` runs the same command (options: simulators/command.py).
"""

from __future__ import annotations

import click

from drivers.modbus.profile import list_profiles, load_profile
from simulators.command import (
    alias,
    endpoint,
    meters_option,
    power_option,
    serve_until,
    speed_option,
    stop_on_signals,
    where_options,
)
from simulators.modbus.bus import SimulatedModbusBus
from simulators.model import FastClock, LoadProfile, MeterModel


@click.command("modbus", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--profile",
    required=True,
    metavar="NAME|FILE",
    help=f"Meter profile: a shipped one ({', '.join(list_profiles())}) or a profile's TOML file.",
)
@meters_option(247, "unit ids 1..N")
@where_options
@click.option(
    "--baud",
    type=click.IntRange(300, 921600),
    default=None,
    help="Pace RTU replies on the pty at this line speed (default: as fast as the pty goes).",
)
@power_option
@speed_option
@click.option("--units", "units", type=click.IntRange(1, 247), default=None, hidden=True)
@click.option("--watts", "watts", type=click.IntRange(0, 10_000_000), default=None, hidden=True)
def command(
    profile: str,
    meters: int | None,
    tcp: int | None,
    pty: bool,
    host: str,
    baud: int | None,
    power_w: int | None,
    speed: float,
    units: int | None,
    watts: int | None,
) -> None:
    """Serve simulated Modbus meters (RTU on a pseudo-terminal, or TCP) until Ctrl-C or SIGTERM."""
    endpoint(tcp, pty)
    count = alias(meters, units, "--meters", "--units", 1)
    power = alias(power_w, watts, "--power-w", "--watts", 500)
    loaded = load_profile(profile)  # an unknown name or a bad file: one line, exit 2 (TomlError/ValueError)
    clock = FastClock(speed)
    models = {
        unit: (MeterModel(str(unit), clock=clock, profile=LoadProfile((power,))), loaded)
        for unit in range(1, count + 1)
    }
    stop = stop_on_signals()
    with SimulatedModbusBus(models) as bus:
        where = bus.start_pty(baud=baud) if pty else f"tcp://{host}:{bus.start_tcp(host, tcp or 0)}"
        print(f"{loaded.meter.name} x{count} (units 1..{count}) listening on {where}", flush=True)
        serve_until(stop)
    print("stopped", flush=True)


if __name__ == "__main__":
    command(prog_name="python -m simulators.modbus.cli")
