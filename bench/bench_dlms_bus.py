"""DLMS reads per second on an emulated 9600-baud HDLC line against the wire limit of the same frames.

The meter is the Gurux peer (``simulators.dlms_meter``) on a pty that paces every byte at the baud rate
(10 bits a byte, 8N1).  The frame sizes are those of the run itself: the link counts the bytes of each
conversation (SNRM/UA, AARQ/AARE, the GETs, DISC/UA), so the wire limit is what a perfect master could
do with exactly these frames: 1 / ((bytes out + bytes in) x 10 / baud).  The ratio measures the driver's
own overhead (the link thread, the library's state machines, the turnarounds).

    .venv/bin/python -m bench.bench_dlms_bus [--seconds 10] [--baud 9600]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.common import Result, emit
from drivers.base import BILLING_POINTS, Point
from drivers.dlms.link import DlmsLink, Target
from drivers.dlms.meter import DlmsMeter
from drivers.dlms.profile import load_profile
from simulators.dlms_meter import DlmsMeterModel, DlmsPtyServer


async def measure(url: str, baud: int, seconds: float, points: frozenset[Point]) -> tuple[float, float, int]:
    """(reads/s, bytes per read, failures)."""
    async with DlmsLink(url, baud=baud, timeout_s=2.0, retries=0) as link:
        meter = DlmsMeter(link, Target(1, 17), load_profile("generic"))
        await meter.read(points)  # warm up: the scaler-units are read once
        out0, in0 = link.stats.bytes_out, link.stats.bytes_in
        reads = failures = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            r = await meter.read(points)
            reads += 1
            failures += r.quality.value != "ok"
        elapsed = time.monotonic() - t0
        per_read = (link.stats.bytes_out - out0 + link.stats.bytes_in - in0) / reads
        return reads / elapsed, per_read, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--baud", type=int, default=9600)
    args = parser.parse_args()
    worst = 1.0
    for name, points in (("billing read (energy + relay)", BILLING_POINTS), ("every point", frozenset(Point))):
        server = DlmsPtyServer(DlmsMeterModel(), baud=args.baud).start()
        try:
            rate, per_read, failures = asyncio.run(measure(server.url, args.baud, args.seconds, points))
        finally:
            server.stop()
        limit = args.baud / (per_read * 10)
        ratio = rate / limit
        worst = min(worst, ratio)
        print(f"{name}: {rate:.2f} reads/s, {per_read:.0f} bytes a read, wire limit {limit:.2f}/s, "
              f"ratio {ratio:.3f}, failures {failures}")
    emit(
        Result(
            "Bus efficiency (DLMS HDLC)",
            f"worst {worst:.3f} of the wire limit",
            f"wire limit at {args.baud} baud (frame sizes of the run)",
            worst,
            ">= 0.85",
            worst >= 0.85,
        )
    )


if __name__ == "__main__":
    main()
