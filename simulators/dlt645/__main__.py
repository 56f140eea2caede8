"""``pmg sim dlt645 --meters 20 --pty`` (or ``--tcp 7645``): a bus of simulated DL/T 645 meters.

Prints where to connect and the meter addresses, then serves until Ctrl-C (SIGINT) or SIGTERM.
``python -m simulators.dlt645`` runs the same command (options: simulators/command.py).
"""

from __future__ import annotations

import click

from simulators.command import (
    Finite,
    endpoint,
    fast_clock_warning,
    meters_option,
    power_option,
    serve_until,
    speed_option,
    stop_on_signals,
    warn,
    where_options,
)
from simulators.dlt645.bus import SimulatedDlt645Bus, make_models
from simulators.model import FastClock


@click.command("dlt645", context_settings={"help_option_names": ["-h", "--help"]})
@meters_option(999, "addresses from --start-address up")
@where_options
@click.option(
    "--baud", type=click.IntRange(300, 921600), default=2400, show_default=True, help="Line speed the replies are paced at."
)
@click.option(
    "--parity", type=click.Choice(["N", "E", "O"]), default="E", show_default=True, help="Parity of the 8-bit frames."
)
@click.option(
    "--start-address",
    type=click.IntRange(0, 999_999_999_999),
    default=1,
    show_default=True,
    help="The first meter's address as a number (1 is 000000000001).",
)
@power_option
@speed_option
@click.option(
    "--response-delay-ms",
    type=Finite(0, 60_000),
    default=20.0,
    show_default=True,
    help="How long a meter thinks before it answers.",
)
@click.option("--no-timing", is_flag=True, help="Answer at full speed, without the line's byte timing.")
def command(
    meters: int | None,
    tcp: int | None,
    pty: bool,
    host: str,
    baud: int,
    parity: str,
    start_address: int,
    power_w: int | None,
    speed: float,
    response_delay_ms: float,
    no_timing: bool,
) -> None:
    """Serve simulated DL/T 645-2007 meters on a pseudo-terminal or TCP until Ctrl-C or SIGTERM."""
    endpoint(tcp, pty)
    count = meters or 1
    if start_address + count - 1 > 999_999_999_999:
        raise click.BadParameter("the last address would exceed 12 digits", param_hint="--start-address")
    models = make_models(count, clock=FastClock(speed), start_address=start_address, power_w=power_w or 500)
    bus = SimulatedDlt645Bus(
        models,
        baud=baud,
        parity=parity,
        response_delay_s=response_delay_ms / 1000,
        emulate_timing=not no_timing,
    )
    stop = stop_on_signals()
    try:
        if pty:
            print(f"serving {count} DL/T 645 meters on {bus.start_pty()} ({baud} 8{parity}1)")
        else:
            assert tcp is not None
            print(f"serving {count} DL/T 645 meters on socket://{host}:{bus.start_tcp(host, tcp)}")
        print("addresses: " + " ".join(m.address for m in models), flush=True)
        warn(fast_clock_warning(speed))
        serve_until(stop)
    finally:
        bus.stop()
    print("stopped", flush=True)


if __name__ == "__main__":
    command(prog_name="python -m simulators.dlt645")
