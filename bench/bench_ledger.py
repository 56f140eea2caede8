"""Readings charged per second, durably, against raw SQLite inserts of the same rows at the same durability.

Both sides use the gateway's store settings (WAL, ``synchronous=FULL``) and commit every reading in
its own transaction, as the daemon does.  The ledger side runs ``record_reading`` — the reading row,
the meter's position, exact pricing (block position, time-of-use split), the cumulative-rounding
charge entry, the balance cache and the usage message in the outbox.  The raw side inserts only the
reading row.  The ratio (target ≥ 0.5) is the share of durable-commit throughput the ledger keeps.

    .venv/bin/python bench/bench_ledger.py [--readings 3000] [--meters 20] [--tariff zhejiang-residential] [--batch 20]
                                           [--dir DIR] [--rounds 2]

``--dir`` matters: on tmpfs an fsync is free and the ratio measures CPU only; on a disk (the
gateway's SD card or eMMC) the commit dominates both sides.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import Result, emit
from drivers.base import Quality, Reading
from gateway.calendar import WorkCalendar
from gateway.ledger.accounts import ensure_account, ensure_meter
from gateway.ledger.charging import record_reading
from gateway.pricing import TariffBook
from gateway.store.db import open_store
from gateway.tariffs.model import load_tariff_dir

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 3, 2, tzinfo=UTC)


def _seed_meter(conn: sqlite3.Connection, m: int, tariff: str) -> None:
    """Account ``acc<m>`` on ``tariff`` with meter ``m<m>``, as both sides of the benchmark start."""
    ensure_account(conn, f"acc{m}", tariff_id=tariff, currency="CNY", now=T0)
    ensure_meter(
        conn,
        f"m{m}",
        account_id=f"acc{m}",
        bus_id="b1",
        protocol="dlt645",
        address=f"{m:012d}",
        keep_power=False,
        now=T0,
    )


def ledger_rate(
    directory: Path, readings: int, meters: int, tariff: str, book: TariffBook, batch: int = 1
) -> float:
    store = open_store(directory / "ledger.db")
    with store.tx() as conn:
        for m in range(meters):
            _seed_meter(conn, m, tariff)
            record_reading(
                conn,
                f"m{m}",
                Reading(f"{m}", T0, Quality.OK, energy_import_wh=0),
                book.pricer(conn),
                max_power_w=30_000,
            )
    start = time.perf_counter()
    for first in range(0, readings, batch):
        with store.tx() as conn:
            for i in range(first, min(first + batch, readings)):
                m = i % meters
                n = i // meters + 1
                reading = Reading(f"{m}", T0 + timedelta(minutes=n), Quality.OK, energy_import_wh=50 * n)
                out = record_reading(conn, f"m{m}", reading, book.pricer(conn), max_power_w=30_000)
                assert out.outcome == "charged"
    elapsed = time.perf_counter() - start
    store.close()
    return readings / elapsed


def raw_rate(directory: Path, readings: int, meters: int) -> float:
    conn = sqlite3.connect(directory / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, meter_id TEXT NOT NULL, taken_at TEXT NOT NULL, "
        "quality TEXT NOT NULL, register_wh INTEGER, export_wh INTEGER, tariffs_json TEXT, relay TEXT, "
        "outcome TEXT NOT NULL, delta_wh INTEGER, detail TEXT)"
    )
    conn.execute("CREATE INDEX readings_meter_time ON readings(meter_id, taken_at)")
    start = time.perf_counter()
    for i in range(readings):
        m = i % meters
        n = i // meters + 1
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO readings(meter_id, taken_at, quality, register_wh, outcome, delta_wh) "
            "VALUES (?, ?, 'ok', ?, 'charged', 50)",
            (f"m{m}", (T0 + timedelta(minutes=n)).isoformat(), 50 * n),
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return readings / elapsed


def rows_rate(directory: Path, readings: int, meters: int) -> float:
    """The storage floor: every row a charged reading writes, in the gateway's own schema, with no logic.

    One durable transaction per reading inserts the reading, the charge entry and the usage message and
    moves the meter's position and the account's balance — the ledger's writes without pricing,
    checks or decisions.  Shown for information: it separates what the schema's pages cost from what
    the code costs."""
    store = open_store(directory / "rows.db")
    conn = store.conn
    with store.tx():
        for m in range(meters):
            _seed_meter(conn, m, "flat")
    detail = '{"exact":"0.0283","lines":[{"energy_wh":50,"amount":"0.0283","tariff_id":"flat","period":null}]}'
    payload = '{"schema":"pmg.usage/1","meter_id":"m1","energy_wh":50,"charge":"0.03","balance":"99.97"}'
    start = time.perf_counter()
    for i in range(readings):
        m = i % meters
        at = (T0 + timedelta(minutes=i // meters + 1)).isoformat()
        conn.execute("BEGIN IMMEDIATE")
        rid = conn.execute(
            "INSERT INTO readings(meter_id, taken_at, quality, register_wh, outcome, delta_wh) "
            "VALUES (?, ?, 'ok', ?, 'charged', 50)",
            (f"m{m}", at, 50 * i),
        ).lastrowid
        conn.execute(
            "INSERT INTO entries(account_id, kind, amount_minor, energy_wh, meter_id, reading_id, period_start, "
            "period_end, detail_json, created_at) VALUES (?, 'charge', -3, 50, ?, ?, ?, ?, ?, ?)",
            (f"acc{m}", f"m{m}", rid, at, at, detail, at),
        )
        conn.execute(
            "INSERT INTO outbox(topic, payload, created_at) VALUES (?, ?, ?)", (f"meters/m{m}/usage", payload, at)
        )
        conn.execute(
            "UPDATE meters SET last_register_wh = ?, last_reading_at = ?, last_reading_id = ? WHERE id = ?",
            (50 * i, at, rid, f"m{m}"),
        )
        conn.execute("UPDATE accounts SET balance_minor = balance_minor - 3 WHERE id = ?", (f"acc{m}",))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    store.close()
    return readings / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=3000)
    ap.add_argument("--meters", type=int, default=20)
    ap.add_argument("--tariff", default="zhejiang-residential")
    ap.add_argument("--dir", type=Path, default=None, help="Where the databases go (default: the temp dir).")
    ap.add_argument("--rounds", type=int, default=3, help="Alternate the two sides this often; best of each.")
    ap.add_argument(
        "--batch",
        type=int,
        default=0,
        help="Also measure N readings per commit (a bus's poll round), for comparison.",
    )
    args = ap.parse_args()
    book = TariffBook(load_tariff_dir(REPO / "config" / "tariffs"), WorkCalendar("Asia/Shanghai", "CN"))
    best_ledger = best_raw = best_rows = 0.0
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            best_raw = max(best_raw, raw_rate(Path(tmp), args.readings, args.meters))
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            best_rows = max(best_rows, rows_rate(Path(tmp), args.readings, args.meters))
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            best_ledger = max(
                best_ledger, ledger_rate(Path(tmp), args.readings, args.meters, args.tariff, book)
            )
    where = args.dir or Path(tempfile.gettempdir())
    print(f"directory            {where}")
    print(
        f"tariff               {args.tariff}, {args.meters} meters, {args.readings} readings, best of {args.rounds}"
    )
    print(f"raw inserts/s        {best_raw:10.1f}   (one row per durable commit)")
    print(f"readings charged/s   {best_ledger:10.1f}   (record_reading per durable commit)")
    print(f"ratio                {best_ledger / best_raw:10.3f}   (target >= 0.5)")
    print(
        f"all rows, no logic/s {best_rows:10.1f}   (the storage floor: reading, entry, message, position, "
        f"balance; {best_rows / best_raw:.3f} of raw, ledger at {best_ledger / best_rows:.3f} of it)"
    )
    emit(
        Result(
            f"Ledger: readings charged per durable commit ({args.tariff})",
            f"{best_ledger:,.0f} /s",
            f"raw one-row inserts, same durability: {best_raw:,.0f} /s",
            best_ledger / best_raw,
            ">= 0.5",
            best_ledger / best_raw >= 0.5,
            f"storage floor (all rows, no logic) {best_rows:,.0f} /s = {best_rows / best_raw:.2f} of raw; "
            f"ledger at {best_ledger / best_rows:.2f} of the floor; {where}",
        )
    )
    if args.batch > 1:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            batched = ledger_rate(Path(tmp), args.readings, args.meters, args.tariff, book, args.batch)
        print(f"charged/s, {args.batch:3d}/commit {batched:10.1f}   (ratio to raw {batched / best_raw:.3f})")


if __name__ == "__main__":
    main()
