"""``pmg sim fleet --config FILE``: serve a whole concentrator's simulated meters until SIGTERM/Ctrl-C.

Prints one ``bus ID PROTOCOL URL (N meters)`` line per bus, then ``ready``; with
``--write-gateway-config OUT.toml`` it first writes the gateway configuration that points at the
served buses (``--fragment`` for buses, meters only), so a lab starts a real gateway with
``pmg run -c OUT.toml`` in another process.  A fleet whose clocks run so fast that its DL/T 645 meters
soon refuse the gateway's relay commands as expired says so on stderr at start, in one line.
``python -m simulators.fleet`` runs the same command (options: simulators/command.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from simulators.command import fast_clock_warning, serve_until, stop_on_signals, warn
from simulators.fleet.config import gateway_toml, load_fleet
from simulators.fleet.runtime import Fleet


@click.command("fleet", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "-c",
    "config",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The fleet file: buses, meters, faults (example: config/fleet.example.toml).",
)
@click.option(
    "--write-gateway-config",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="OUT",
    help="Write the gateway configuration that points at the served buses to OUT (atomically).",
)
@click.option("--fragment", is_flag=True, help="Write only the [[buses]] and [[meters]] of that configuration.")
@click.option("--database", metavar="PATH", help="The database path to put in the written configuration.")
@click.option(
    "--mqtt-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Add a plaintext [mqtt] section for a broker on the fleet's host at this port.",
)
def command(
    config: Path,
    write_gateway_config: Path | None,
    fragment: bool,
    database: str | None,
    mqtt_port: int | None,
) -> None:
    """Serve a fleet of simulated meters (many buses of both protocols, scheduled faults) until Ctrl-C."""
    cfg = load_fleet(config)  # a bad file: one line naming file, line and key, exit 2 (TomlError)
    if any(bus.protocol == "dlt645" for bus in cfg.buses):
        warn(fast_clock_warning(cfg.speed, f"speed = {cfg.speed:g} ({config})"))
    fleet = Fleet(cfg)
    stop = stop_on_signals()
    try:
        try:
            endpoints = fleet.start()
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot serve the fleet: {exc}") from None
        if write_gateway_config is not None:
            text = gateway_toml(
                cfg,
                endpoints,
                base_dir=config.resolve().parent,
                database=database,
                mqtt_port=mqtt_port,
                fragment=fragment,
            )
            tmp = write_gateway_config.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, write_gateway_config)  # a watcher never sees half a file
        for bus in cfg.buses:
            print(f"bus {bus.id} {bus.protocol} {endpoints[bus.id]} ({bus.meters} meters)")
        print(f"ready: {cfg.meter_count} meters on {len(cfg.buses)} buses, pid {os.getpid()}", flush=True)
        serve_until(stop)
    finally:
        fleet.stop()
    print("stopped", flush=True)


if __name__ == "__main__":
    command(prog_name="python -m simulators.fleet")
