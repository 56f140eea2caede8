"""``pmg sim modbus``: serve simulated Modbus meters until Ctrl-C.

Example: ``pmg sim modbus --profile dds238 --units 3 --tcp 5020`` serves units 1..3 on port 5020;
``--pty`` serves RTU on a new pseudo-terminal and prints its path.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from drivers.modbus.profile import list_profiles, load_profile
from drivers.tomlsource import TomlError
from simulators.modbus.bus import SimulatedModbusBus
from simulators.model import FastClock, LoadProfile, MeterModel


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pmg sim modbus", description="Serve simulated Modbus meters.")
    p.add_argument("--profile", required=True, help=f"meter profile name or path ({', '.join(list_profiles())})")
    p.add_argument("--units", type=int, default=1, help="number of meters, unit ids 1..N (default 1)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", type=int, metavar="PORT", help="serve Modbus TCP on PORT (0: any free port)")
    where.add_argument("--pty", action="store_true", help="serve Modbus RTU on a new pseudo-terminal")
    p.add_argument("--host", default="127.0.0.1", help="TCP address to bind (default 127.0.0.1)")
    p.add_argument("--watts", type=int, default=500, help="constant load of each meter in W (default 500)")
    p.add_argument("--speed", type=float, default=1.0, help="clock speed-up factor (default 1)")
    p.add_argument("--baud", type=int, default=None, help="pace pty replies at this line speed")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 1 <= args.units <= 247:
        print("error: --units must be 1..247", file=sys.stderr)
        return 2
    try:
        profile = load_profile(args.profile)
    except (TomlError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    clock = FastClock(args.speed)
    meters = {
        unit: (MeterModel(str(unit), clock=clock, profile=LoadProfile((args.watts,))), profile)
        for unit in range(1, args.units + 1)
    }
    stop = threading.Event()
    with SimulatedModbusBus(meters) as bus:
        try:
            if args.pty:
                where = bus.start_pty(baud=args.baud)
            else:
                where = f"tcp://{args.host}:{bus.start_tcp(args.host, args.tcp)}"
        except OSError as exc:
            print(f"error: cannot listen: {exc}", file=sys.stderr)
            return 1
        print(f"{profile.meter.name} x{args.units} (units 1..{args.units}) listening on {where}", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
