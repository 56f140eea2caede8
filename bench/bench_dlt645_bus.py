"""Reads per second on an emulated DL/T 645 bus against the wire limit, and the link's CPU per exchange.

Wire limit per read = (request bytes + reply bytes) x bits per byte / baud + the meter's response
delay: what a perfect master could do on that line.  The simulator paces bytes at that rate, so the
ratio measures the driver's own overhead (executor hop, scanning, inter-frame gap).

CPU per exchange: the simulator runs in a child process (``python -m simulators.dlt645``) so that this
process's CPU (``time.process_time``: every thread, the event loop included) is the master's alone.
``Dlt645Link.request`` is timed against a baseline measured in the same run on the same simulator: a
raw blocking pyserial loop (reset, write, ``read(reply length)``), the least a Python master can do.
Rounds alternate between the two so that noise from other processes on the machine hits both alike.

    .venv/bin/python -m bench.bench_dlt645_bus [--seconds 5] [--meters 5] [--gap 0.0] [--tcp]
        [--cpu-exchanges 80] [--cpu-rounds 3] [--cpu-gap 0.02] [--cpu-pty]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time

import serial

from bench.common import Result, emit, python_module, stop_process
from drivers.base import Point
from drivers.dlt645 import Dlt645Link, Dlt645Meter
from drivers.dlt645.commands import read_request
from drivers.dlt645.di import ENERGY_IMPORT
from drivers.dlt645.frame import Frame, Function, encode
from simulators.dlt645 import SimulatedDlt645Bus, make_models

RESPONSE_DELAY_S = 0.02
CPU_BAUD = 9600  # the capacity benchmark's line speed


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
        await ms[0].read([Point.ENERGY_IMPORT])  # warm up
        reads = failures = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            r = await ms[reads % meters].read([Point.ENERGY_IMPORT])
            reads += 1
            failures += not r.chargeable
        return reads / (time.monotonic() - t0), failures


# -- CPU per exchange ---------------------------------------------------------------------------------
def serve(meters: int, baud: int, tcp: bool) -> tuple[subprocess.Popen[str], str]:
    """Start the simulator in a child process; returns it and the URL it serves on."""
    where = ("--tcp", "0") if tcp else ("--pty",)
    proc = subprocess.Popen(
        python_module(
            "simulators.dlt645",
            "--meters",
            str(meters),
            "--baud",
            str(baud),
            *where,
            "--response-delay-ms",
            str(RESPONSE_DELAY_S * 1000),
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "serving N DL/T 645 meters on URL [(9600 8E1)]"
    if " on " not in line:
        stop_process(proc)
        raise RuntimeError(f"simulator did not start: {line!r}")
    return proc, line.split(" on ", 1)[1].split()[0]


def requests_for(meters: int, wakeup: int) -> list[bytes]:
    return [encode(read_request(f"{i:012d}", ENERGY_IMPORT), wakeup=wakeup) for i in range(1, meters + 1)]


def raw_cpu(url: str, baud: int, meters: int, n: int, gap: float, wakeup: int) -> float:
    """CPU seconds per exchange of a blocking pyserial request/reply loop (the baseline)."""
    wires = requests_for(meters, wakeup)
    reply_len = len(encode(Frame("000000000001", 0x80 | Function.READ, bytes(8))))
    ser = serial.serial_for_url(url, baudrate=baud, parity=serial.PARITY_EVEN, timeout=1.0)
    try:
        for i in range(-3, n):  # three exchanges of warm-up, not counted
            if i == 0:
                cpu0 = time.process_time()
            if gap:
                time.sleep(gap)
            ser.reset_input_buffer()
            ser.write(wires[i % meters])
            if len(ser.read(reply_len)) != reply_len:
                raise RuntimeError("baseline exchange got no full reply")
        return (time.process_time() - cpu0) / n
    finally:
        ser.close()


async def link_cpu(url: str, baud: int, meters: int, n: int, gap: float, wakeup: int) -> float:
    """CPU seconds per ``Dlt645Link.request`` (link thread if any + event loop), same exchanges."""
    reqs = [read_request(f"{i:012d}", ENERGY_IMPORT) for i in range(1, meters + 1)]
    async with Dlt645Link(url, baud=baud, inter_frame_gap_s=gap, wakeup=wakeup, timeout_s=1.0) as link:
        for i in range(3):
            await link.request(reqs[i % meters])
        cpu0 = time.process_time()
        for i in range(n):
            await link.request(reqs[i % meters])
        cpu = (time.process_time() - cpu0) / n
        if link.stats.timeouts or link.stats.bad_frames:
            raise RuntimeError(f"link exchanges failed: {link.stats}")
        return cpu


def cpu_per_exchange(
    meters: int, n: int, rounds: int, gap: float, wakeup: int, tcp: bool
) -> tuple[list[float], list[float]]:
    """(link, baseline) CPU seconds per exchange, one figure per round, rounds interleaved.

    Each measurement gets a simulator of its own: a pty slave cannot be opened a second time once
    pyserial has closed it (tcsetattr fails with EINVAL), and a fresh bus keeps the rounds alike."""
    link: list[float] = []
    raw: list[float] = []
    for _ in range(rounds):
        for out in (raw, link):
            proc, url = serve(meters, CPU_BAUD, tcp)
            try:
                if out is raw:
                    out.append(raw_cpu(url, CPU_BAUD, meters, n, gap, wakeup))
                else:
                    out.append(asyncio.run(link_cpu(url, CPU_BAUD, meters, n, gap, wakeup)))
            finally:
                stop_process(proc)
    return link, raw


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--meters", type=int, default=5)
    ap.add_argument("--gap", type=float, default=0.0, help="driver inter-frame gap in seconds")
    ap.add_argument("--wakeup", type=int, default=4, help="FE wake-up bytes before each request")
    ap.add_argument("--tcp", action="store_true", help="serve on TCP instead of a pty")
    ap.add_argument("--cpu-exchanges", type=int, default=80, help="exchanges per CPU round")
    ap.add_argument("--cpu-rounds", type=int, default=3, help="CPU rounds per transport (0: skip)")
    ap.add_argument("--cpu-gap", type=float, default=0.02, help="inter-frame gap for the CPU rounds")
    ap.add_argument(
        "--cpu-pty", action="store_true", help="measure CPU on a pty too (socket:// only by default)"
    )
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
    ok = worst >= 0.85
    if args.cpu_rounds > 0:
        for tcp in (True, False) if args.cpu_pty else (True,):
            link, raw = cpu_per_exchange(
                args.meters, args.cpu_exchanges, args.cpu_rounds, args.cpu_gap, args.wakeup, tcp
            )
            kind = "socket://" if tcp else "pty"
            ratio = statistics.median(link) / statistics.median(raw)
            spread = ", ".join(f"{a * 1e6:.0f}/{b * 1e6:.0f}" for a, b in zip(link, raw, strict=True))
            print(
                f"CPU per exchange on {kind} at {CPU_BAUD} baud, gap {args.cpu_gap * 1000:.0f} ms: link "
                f"{statistics.median(link) * 1e6:.0f} us, raw pyserial loop {statistics.median(raw) * 1e6:.0f} us "
                f"(medians of {args.cpu_rounds} x {args.cpu_exchanges}; link/raw per round in us: {spread}), "
                f"ratio {ratio:.2f}"
            )
            emit(
                Result(
                    f"DL/T 645 link CPU per exchange ({kind})",
                    f"{statistics.median(link) * 1e6:.0f} us",
                    f"raw pyserial loop {statistics.median(raw) * 1e6:.0f} us",
                    ratio,
                    "-",
                    None,
                    f"{CPU_BAUD} baud, {args.cpu_rounds} x {args.cpu_exchanges} exchanges",
                )
            )
    emit(
        Result(
            "Bus efficiency (DL/T 645)",
            f"worst {worst:.3f} of the wire limit",
            "wire limit at 2400 and 9600 baud",
            worst,
            ">= 0.85",
            ok,
        )
    )
    print(f"worst ratio {worst:.3f} (target >= 0.85)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
