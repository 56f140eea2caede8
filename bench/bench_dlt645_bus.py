"""Reads per second on an emulated DL/T 645 bus, against the wire limit of the frames exchanged.

Wire limit per read = (request bytes + reply bytes) x bits per byte / baud + the meter's response
delay: what a perfect master could do on that line.  The simulator paces bytes at that rate, so the
ratio measures the driver's own overhead (executor hop, scanning, inter-frame gap).

    .venv/bin/python bench/bench_dlt645_bus.py [--seconds 5] [--meters 5] [--gap 0.0] [--tcp]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from drivers.base import Point
from drivers.dlt645 import Dlt645Link, Dlt645Meter
from drivers.dlt645.commands import read_request
from drivers.dlt645.di import ENERGY_IMPORT
from drivers.dlt645.frame import Frame, Function, encode
from simulators.dlt645 import SimulatedDlt645Bus, make_models

RESPONSE_DELAY_S = 0.02


def wire_limit(baud: int, wakeup: int, response_delay_s: float) -> tuple[int, int, float]:
    """(request bytes, reply bytes, reads per second a perfect master could do)."""
    req = len(encode(read_request("000000000001", ENERGY_IMPORT), wakeup=wakeup))
    reply = len(encode(Frame("000000000001", 0x80 | Function.READ, bytes(8))))
    per_read = (req + reply) * 11 / baud + response_delay_s
    return req, reply, 1 / per_read


async def measure(
    url: str, baud: int, meters: int, seconds: float, gap: float, wakeup: int
) -> tuple[float, int]:
    async with Dlt645Link(url, baud=baud, inter_frame_gap_s=gap, wakeup=wakeup, timeout_s=1.0) as link:
        ms = [Dlt645Meter(link, f"{i:012d}") for i in range(1, meters + 1)]
        await ms[0].read([Point.ENERGY_IMPORT])  # warm up the executor thread
        reads = failures = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            r = await ms[reads % meters].read([Point.ENERGY_IMPORT])
            reads += 1
            failures += not r.chargeable
        return reads / (time.monotonic() - t0), failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--meters", type=int, default=5)
    ap.add_argument("--gap", type=float, default=0.0, help="driver inter-frame gap in seconds")
    ap.add_argument("--wakeup", type=int, default=4, help="FE wake-up bytes before each request")
    ap.add_argument("--tcp", action="store_true", help="serve on TCP instead of a pty")
    args = ap.parse_args(argv)
    worst = 1.0
    for baud in (2400, 9600):
        bus = SimulatedDlt645Bus(make_models(args.meters), baud=baud, response_delay_s=RESPONSE_DELAY_S)
        try:
            url = f"socket://127.0.0.1:{bus.start_tcp()}" if args.tcp else bus.start_pty()
            rate, failures = asyncio.run(measure(url, baud, args.meters, args.seconds, args.gap, args.wakeup))
        finally:
            bus.stop()
        req, reply, limit = wire_limit(baud, args.wakeup, RESPONSE_DELAY_S)
        worst = min(worst, rate / limit)
        print(
            f"{baud:>5} baud 8E1: {rate:6.2f} reads/s, wire limit {limit:6.2f} reads/s "
            f"({req}+{reply} bytes, {RESPONSE_DELAY_S * 1000:.0f} ms response delay, gap {args.gap * 1000:.0f} ms), "
            f"ratio {rate / limit:.3f}, failed reads {failures}"
        )
    print(f"worst ratio {worst:.3f} (target >= 0.85)")
    return 0 if worst >= 0.85 else 1


if __name__ == "__main__":
    raise SystemExit(main())
