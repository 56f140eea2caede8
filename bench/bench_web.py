"""``pmg web`` page times with 2,000 meters (docs/web.md, "Speed"; target: no page above 300 ms).

A database is written by the real code (the configuration's meters seeded, a payment and three
charged readings per meter through ``apply_payment`` and ``record_reading``), then ``pmg web`` runs
as its own process on a free loopback port and each page is fetched ``--rounds`` times, one request
at a time, over a fresh HTTP connection each (as a browser's first visit).  Printed: median and
worst per page, and one result line for ``run_all``'s table.

    .venv/bin/python -m bench.bench_web [--meters 2000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import http.client
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import REPO, Result, emit, machine, stop_process

TARGET_MS = 300.0
PAGES = (
    "/",
    "/meters",
    "/meters?sort=balance&page=10",
    "/meters?q=m01&state=normal",
    "/meters/m01000",
    "/events",
)


def write_config(folder: Path, meters: int, port: int) -> Path:
    """``meters`` DL/T 645 meters on four buses that cannot open (nothing polls: the figures are the
    console's alone), on the example flat tariff."""
    tariffs = REPO / "gateway" / "tariffs" / "examples"
    body = (
        f'gateway_id = "gw-bench"\ntimezone = "Asia/Shanghai"\ndatabase = "{folder / "pmg.db"}"\n'
        f'currency = "CNY"\ntariff_dir = "{tariffs}"\n\n[web]\nlisten = "127.0.0.1:{port}"\n'
    )
    for b in range(4):
        body += f'\n[[buses]]\nid = "b{b}"\nprotocol = "dlt645"\nurl = "{folder / f"no-port-{b}"}"\n'
    for i in range(meters):
        body += (
            f'\n[[meters]]\nid = "m{i:05d}"\nbus = "b{i % 4}"\naddress = "{i + 1:012d}"\naccount = "a{i:05d}"\n'
            'tariff = "flat-cn"\n'
        )
    path = folder / "gw.toml"
    path.write_text(body)
    return path


def build_database(cfg_path: Path, readings: int = 3) -> None:
    """Seed the meters and write, for each, a payment and ``readings`` charged readings, through the
    ledger's own functions."""
    from drivers.base import Quality, Reading, RelayState
    from gateway.config import load_config, resolve
    from gateway.ledger.accounts import seed_from_config
    from gateway.ledger.charging import record_reading
    from gateway.ledger.payments import apply_payment
    from gateway.runtime.components import build_components
    from gateway.store.db import open_store

    cfg = load_config(cfg_path)
    store = open_store(resolve(cfg_path, cfg.database))
    try:
        start = datetime.now(UTC) - timedelta(days=2)
        seed_from_config(store, cfg, start)
        parts = build_components(cfg, cfg_path, store)
        with store.tx() as conn:
            pricer = parts.book.pricer(conn)
            for i, m in enumerate(cfg.meters):
                apply_payment(conn, f"seed-{m.id}", m.account, 5000 + i, start, source="bench", minor_digits=2)
                for k in range(readings):
                    at = start + timedelta(hours=8 * k, seconds=i)
                    reading = Reading(m.address, at, Quality.OK, energy_import_wh=1000 + 1500 * k + i,
                                      relay=RelayState.CLOSED)
                    record_reading(conn, m.id, reading, pricer, max_power_w=m.max_power_w)
    finally:
        store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch_ms(port: int, path: str) -> tuple[float, int]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return (time.perf_counter() - started) * 1000, response.status
    finally:
        conn.close()


def start_web(cfg_path: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli.main", "web", "-c", str(cfg_path)], cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"pmg web exited {proc.returncode}: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            if time.monotonic() > deadline:
                stop_process(proc)
                raise RuntimeError("pmg web did not listen within 30 s") from None
            time.sleep(0.05)


def time_pages(port: int, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    for path in PAGES:
        ms, status = fetch_ms(port, path)  # the first visit fills the forecast cache: counted too
        if status != 200:
            raise RuntimeError(f"{path}: HTTP {status}")
        times[path] = [ms] + [fetch_ms(port, path)[0] for _ in range(rounds - 1)]
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        cfg = write_config(Path(tmp), args.meters, port)
        t0 = time.monotonic()
        build_database(cfg)
        print(f"database: {args.meters} meters written in {time.monotonic() - t0:.1f} s")
        proc = start_web(cfg, port)
        try:
            times = time_pages(port, args.rounds)
        finally:
            stop_process(proc)
    worst = 0.0
    for path, ms in times.items():
        worst = max(worst, max(ms))
        print(f"{path:34s} median {statistics.median(ms):6.1f} ms  worst {max(ms):6.1f} ms  (first {ms[0]:.1f})")
    emit(Result(
        name=f"pmg web page load, {args.meters} meters",
        figure=f"worst {worst:.0f} ms",
        baseline="",
        ratio=round(worst / TARGET_MS, 3),
        target=f"<= {TARGET_MS:.0f} ms",
        ok=worst <= TARGET_MS,
        note=f"{len(PAGES)} pages x {args.rounds} requests",
    ))


if __name__ == "__main__":
    main()
