"""``pmg sim fleet --config FILE``: serve a whole concentrator's simulated meters until SIGTERM/Ctrl-C.

Prints one ``bus ID PROTOCOL URL (N meters)`` line per bus, then ``ready``; with
``--write-gateway-config OUT.toml`` it first writes the gateway configuration that points at the
served buses (``--fragment`` for buses, meters only), so a lab starts a real gateway with
``pmg run -c OUT.toml`` in another process.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from drivers.tomlsource import TomlError
from simulators.fleet.config import gateway_toml, load_fleet
from simulators.fleet.runtime import Fleet


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="pmg sim fleet", description="Serve a fleet of simulated meters.")
    ap.add_argument("--config", "-c", required=True, type=Path, help="fleet file (see config/fleet.example.toml)")
    ap.add_argument("--write-gateway-config", type=Path, metavar="OUT", help="write a matching gateway config")
    ap.add_argument("--fragment", action="store_true", help="write only [[buses]] and [[meters]]")
    ap.add_argument("--database", help="database path for the written gateway config")
    ap.add_argument("--mqtt-port", type=int, help="add a plaintext [mqtt] section for a local broker")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None, *, stop: threading.Event | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_fleet(args.config)
    except TomlError as exc:
        print(f"pmg: error: {exc}", file=sys.stderr)
        return 2
    stop = stop or threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
    fleet = Fleet(cfg)
    try:
        try:
            endpoints = fleet.start()
        except (OSError, ValueError) as exc:
            print(f"pmg: error: cannot serve the fleet: {exc}", file=sys.stderr)
            return 1
        if args.write_gateway_config is not None:
            text = gateway_toml(
                cfg,
                endpoints,
                base_dir=args.config.resolve().parent,
                database=args.database,
                mqtt_port=args.mqtt_port,
                fragment=args.fragment,
            )
            tmp = args.write_gateway_config.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, args.write_gateway_config)  # a watcher never sees half a file
        for bus in cfg.buses:
            print(f"bus {bus.id} {bus.protocol} {endpoints[bus.id]} ({bus.meters} meters)")
        print(f"ready: {cfg.meter_count} meters on {len(cfg.buses)} buses, pid {os.getpid()}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        fleet.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
