"""``python -m simulators.dlt645 --meters 20 --pty`` (or ``--tcp 7645``): a bus of simulated meters.

Prints where to connect and the meter addresses, then serves until Ctrl-C (SIGINT) or SIGTERM.
The lead wires this to ``pmg sim dlt645``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from simulators.dlt645.bus import SimulatedDlt645Bus, make_models
from simulators.model import FastClock


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="pmg sim dlt645", description="Serve simulated DL/T 645-2007 meters.")
    ap.add_argument("--meters", type=int, default=1, help="number of meters on the bus (default 1)")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="serve on a pseudo-terminal")
    where.add_argument("--tcp", type=int, metavar="PORT", help="serve on TCP port PORT (0 = any free port)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--baud", type=int, default=2400)
    ap.add_argument("--parity", choices=["N", "E", "O"], default="E")
    ap.add_argument("--start-address", type=int, default=1)
    ap.add_argument("--power-w", type=int, default=500)
    ap.add_argument("--speed", type=float, default=1.0, help="clock speed-up factor (energy accrues faster)")
    ap.add_argument("--response-delay-ms", type=float, default=20.0)
    ap.add_argument("--no-timing", action="store_true", help="answer at full speed, no byte-time emulation")
    args = ap.parse_args(argv)
    if not 1 <= args.meters <= 999:
        ap.error(f"--meters must be 1..999, got {args.meters}")
    return args


def main(argv: list[str] | None = None, *, stop: threading.Event | None = None) -> int:
    args = parse_args(argv)
    models = make_models(
        args.meters, clock=FastClock(args.speed), start_address=args.start_address, power_w=args.power_w
    )
    bus = SimulatedDlt645Bus(
        models,
        baud=args.baud,
        parity=args.parity,
        response_delay_s=args.response_delay_ms / 1000,
        emulate_timing=not args.no_timing,
    )
    stop = stop or threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
    try:
        if args.pty:
            print(f"serving {args.meters} DL/T 645 meters on {bus.start_pty()} ({args.baud} 8{args.parity}1)")
        else:
            port = bus.start_tcp(args.host, args.tcp)
            print(f"serving {args.meters} DL/T 645 meters on socket://{args.host}:{port}")
        print("addresses: " + " ".join(m.address for m in models), flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        bus.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
