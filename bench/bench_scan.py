"""How long ``pmg scan`` takes: 20 DL/T 645 meters found without their addresses, and Modbus units 1-247.

DL/T 645: a simulated bus on a pty paced at the line rate (8E1, 20 ms response delay), 20 meters with
consecutive addresses (a building's meters, one per flat: they differ in the last digit pair) or at
random (seeded: some share their last pair, so the search splits below it).  The search uses its default
listening window and the identification reads of each meter; the figure is the whole search.

Modbus: a simulated RTU bus on a pty paced at 9600 baud with 5 units of mixed models.  "before" is the
single pass the command made until now (one request per unit at min(timeout, 0.5 s), no retries); at the
configuration's default timeout (1 s, 2 retries) an absent unit costs 3 s, 247 units up to 12 minutes.
"after" is the two-pass scan (``drivers.modbus.scan``): 0.15 s probes, then confirmation and
identification at the configured timeout.

    .venv/bin/python -m bench.bench_scan [--only dlt645|modbus] [--bauds 2400,9600] [--layouts seq,random]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time

from bench.common import Result, emit
from drivers.dlt645.link import Dlt645Link
from drivers.dlt645.search import DEFAULT_WINDOW_S, search
from drivers.modbus.link import ModbusLink
from drivers.modbus.profile import list_profiles, load_profile
from drivers.modbus.scan import scan_single_pass as single_pass
from drivers.modbus.scan import scan_units
from simulators.dlt645 import SimulatedDlt645Bus
from simulators.modbus import SimulatedModbusBus
from simulators.model import MeterModel

MIXED = {3: "sdm120", 7: "sdm630", 12: "ddsu666", 200: "dds238", 247: "sdm630"}


def addresses(layout: str) -> list[str]:
    if layout == "seq":
        return [f"2026120001{i:02d}" for i in range(1, 21)]
    rng = random.Random(20)
    out: set[str] = set()
    while len(out) < 20:
        out.add(f"{rng.randrange(10**12):012d}")
    return sorted(out)


async def dlt645(baud: int, layout: str) -> tuple[float, int, int]:
    wanted = addresses(layout)
    bus = SimulatedDlt645Bus([MeterModel(address=a) for a in wanted], baud=baud, response_delay_s=0.02)
    try:
        url = bus.start_pty()
        async with Dlt645Link(url, baud=baud, timeout_s=1.0, retries=1) as link:
            result = await search(link, window_s=DEFAULT_WINDOW_S)
    finally:
        bus.stop()
    assert sorted(result.addresses) == wanted, (sorted(result.addresses), wanted)
    return result.elapsed_s, result.stats.probes, len(result.meters)


async def modbus(after: bool) -> tuple[float, list[int]]:
    bus = SimulatedModbusBus({u: (MeterModel(str(u)), load_profile(p)) for u, p in MIXED.items()})
    try:
        url = bus.start_pty(baud=9600)
        link = ModbusLink(url, baud=9600, timeout_s=1.0, retries=2)
        await link.open()
        began = time.monotonic()
        try:
            if after:
                result = await scan_units(link, range(1, 248), [load_profile(n) for n in list_profiles()])
                assert {u.unit: u.profile for u in result.units} == MIXED
                found = [u.unit for u in result.units]
            else:
                link.set_timing(0.5, 0)
                found = await single_pass(link, range(1, 248))
        finally:
            await link.close()
        return time.monotonic() - began, found
    finally:
        bus.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["dlt645", "modbus"])
    ap.add_argument("--bauds", default="2400,9600")
    ap.add_argument("--layouts", default="seq,random")
    args = ap.parse_args()
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if args.only in (None, "dlt645"):
        for layout in args.layouts.split(","):
            for baud in (int(b) for b in args.bauds.split(",")):
                seconds, probes, found = asyncio.run(dlt645(baud, layout))
                emit(
                    Result(
                        f"DL/T 645 search, 20 meters ({layout} addresses), {baud} baud",
                        f"{seconds:.1f} s ({probes} probes, {found} found and identified)",
                        "before: the wildcard read collides, no meter found",
                        None,
                        "all 20 found",
                        found == 20,
                    )
                )
    if args.only in (None, "modbus"):
        before, found_before = asyncio.run(modbus(after=False))
        after, found_after = asyncio.run(modbus(after=True))
        emit(
            Result(
                "Modbus scan of units 1-247, 9600 baud, 5 units",
                f"{after:.1f} s two-pass, each named",
                f"{before:.1f} s single pass at 0.5 s (found {len(found_before)})",
                round(after / before, 2),
                "faster than before, all 5 found",
                found_after == sorted(MIXED) and after < before,
            )
        )


if __name__ == "__main__":
    main()
