"""Readings charged per second, durably, against raw SQLite inserts of the same rows at the same durability.

"The same rows" is taken literally: the ledger run's own rows are read back and inserted again,
verbatim, into a fresh database of the gateway's schema, one durable transaction per reading — the
reading, its charge entry and its usage message (``replay_rate``).  The ledger side runs
``record_reading``: the meter's position, exact pricing (block position, time-of-use split), the
cumulative-rounding charge entry, the balance cache and the usage message, so the ratio (target ≥ 0.7)
is the share of the storage's durable throughput the ledger's logic keeps.  Both sides use the
gateway's store settings (WAL, ``synchronous=FULL``) and commit each reading alone: the daemon's worst
case (it charges whatever arrives within 250 ms in one commit).

Two more figures for comparison: the same replay plus the meter and account updates (every page a
charged reading writes), and one-row inserts of the reading alone (the baseline of earlier rounds,
which compares ten page writes per commit against two).

    .venv/bin/python -m bench.bench_ledger [--readings 3000] [--meters 20] [--tariff zhejiang-residential]
                                           [--batch 20] [--dir DIR] [--rounds 3]

The readings are built before the clock starts on the ledger side, as the rows are on the replay
side: building a ``Reading`` is the driver's work, not the ledger's.

``--dir`` matters: on tmpfs an fsync is free and the ratio measures CPU only; on a disk (the
gateway's SD card or eMMC) the commit dominates both sides.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import Result, emit
from drivers.base import Quality, Reading
from gateway.core.calendar import WorkCalendar
from gateway.ledger.accounts import ensure_account, ensure_meter
from gateway.ledger.charging import record_reading
from gateway.ledger.tariff_book import TariffBook
from gateway.store.db import Store, open_store
from gateway.tariffs.model import load_tariff_dir

REPO = Path(__file__).resolve().parent.parent
TARGET = 0.7  # the share of the same-run baseline the gateway aims for (0.5 before the efficiency round)
T0 = datetime(2026, 3, 2, tzinfo=UTC)


def seed_meter(conn: sqlite3.Connection, m: int, tariff: str, now: datetime = T0) -> None:
    """Account ``acc<m>`` on ``tariff`` with DL/T 645 meter ``m<m>``: how every ledger benchmark starts
    its accounts (this one on both sides, ``bench_history`` in both histories)."""
    ensure_account(conn, f"acc{m}", tariff_id=tariff, currency="CNY", now=now)
    ensure_meter(
        conn,
        f"m{m}",
        account_id=f"acc{m}",
        bus_id="b1",
        protocol="dlt645",
        address=f"{m:012d}",
        keep_power=False,
        now=now,
    )


def ledger_rate(
    directory: Path, readings: int, meters: int, tariff: str, book: TariffBook, batch: int = 1
) -> float:
    store = open_store(directory / "ledger.db")
    with store.tx() as conn:
        for m in range(meters):
            seed_meter(conn, m, tariff)
            record_reading(
                conn,
                f"m{m}",
                Reading(f"{m}", T0, Quality.OK, energy_import_wh=0),
                book.pricer(conn),
                max_power_w=30_000,
            )
    # The readings arrive built (a driver's work), as the replay's rows do: only charging is timed.
    inputs = [
        (f"m{i % meters}", Reading(f"{i % meters}", T0 + timedelta(minutes=i // meters + 1), Quality.OK, energy_import_wh=50 * (i // meters + 1)))
        for i in range(readings)
    ]
    start = time.perf_counter()
    for first in range(0, readings, batch):
        with store.tx() as conn:
            for meter_id, reading in inputs[first : first + batch]:
                out = record_reading(conn, meter_id, reading, book.pricer(conn), max_power_w=30_000)
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


def _ledger_rows(path: Path) -> list[tuple[tuple[object, ...], tuple[object, ...], tuple[object, ...]]]:
    """Each charged reading's (reading row, entry row, message row) as the ledger wrote them, in order."""
    conn = sqlite3.connect(path)
    try:
        readings = {r[0]: r for r in conn.execute("SELECT * FROM readings WHERE outcome = 'charged'")}
        entries = {r[6]: r for r in conn.execute("SELECT * FROM entries WHERE kind = 'charge'")}
        messages = conn.execute("SELECT * FROM outbox ORDER BY seq").fetchall()
    finally:
        conn.close()
    by_topic_time = {(m[1].split("/")[1], json.loads(m[2])["interval_end"]): m for m in messages}
    out = []
    for rid in sorted(entries):
        reading = readings[rid]
        out.append((reading, entries[rid], by_topic_time[(reading[1], reading[2])]))
    return out


def open_replay(
    directory: Path, rows: list[tuple[tuple[object, ...], ...]], meters: int
) -> tuple[Store, Callable[[tuple[object, ...], tuple[object, ...], tuple[object, ...]], None]]:
    """The replay's database (``replay.db``, the same schema and meters as the ledger's) and what inserts
    one reading's rows verbatim — its reading, entry and message — in the caller's transaction."""
    store = open_store(directory / "replay.db")
    conn = store.conn
    with store.tx():
        for m in range(meters):
            seed_meter(conn, m, "flat-cn")
    marks = lambda n: ", ".join("?" * n)  # noqa: E731
    insert_reading = f"INSERT INTO readings VALUES ({marks(len(rows[0][0]))})"
    insert_entry = f"INSERT INTO entries VALUES ({marks(len(rows[0][1]))})"
    insert_message = f"INSERT INTO outbox VALUES ({marks(len(rows[0][2]))})"

    def insert_rows(reading: tuple[object, ...], entry: tuple[object, ...], message: tuple[object, ...]) -> None:
        conn.execute(insert_reading, reading)
        conn.execute(insert_entry, entry)
        conn.execute(insert_message, message)

    return store, insert_rows


def replay_rate(
    directory: Path, rows: list[tuple[tuple[object, ...], ...]], meters: int, *, updates: bool
) -> float:
    """The same rows inserted raw (no logic), one durable transaction per reading, into the same schema.

    With ``updates`` each transaction also moves the meter's position and the account's balance, as
    the ledger does: every page a charged reading writes."""
    store, insert_rows = open_replay(directory, rows, meters)
    conn = store.conn
    start = time.perf_counter()
    for reading, entry, message in rows:
        conn.execute("BEGIN IMMEDIATE")
        insert_rows(reading, entry, message)
        if updates:
            conn.execute(
                "UPDATE meters SET last_register_wh = ?, last_reading_at = ?, last_reading_id = ?, "
                "comms_ok = comms_ok + 1, updated_at = ? WHERE id = ?",
                (reading[4], reading[2], reading[0], reading[2], reading[1]),
            )
            conn.execute(
                "UPDATE accounts SET balance_minor = balance_minor + ?, updated_at = ? WHERE id = ?",
                (entry[3], entry[11], entry[1]),
            )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    store.close()
    return len(rows) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=3000)
    ap.add_argument("--meters", type=int, default=20)
    ap.add_argument("--tariff", default="zhejiang-residential")
    ap.add_argument("--dir", type=Path, default=None, help="Where the databases go (default: the temp dir).")
    ap.add_argument("--rounds", type=int, default=3, help="Alternate the sides this often; best of each.")
    ap.add_argument(
        "--batch",
        type=int,
        default=0,
        help="Also measure N readings per commit (a bus's poll round), for comparison.",
    )
    args = ap.parse_args()
    book = TariffBook(load_tariff_dir(REPO / "gateway" / "tariffs" / "examples"), WorkCalendar("Asia/Shanghai", "CN"))
    best = {"ledger": 0.0, "replay": 0.0, "pages": 0.0, "one_row": 0.0}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            rate = ledger_rate(Path(tmp), args.readings, args.meters, args.tariff, book)
            best["ledger"] = max(best["ledger"], rate)
            rows = _ledger_rows(Path(tmp) / "ledger.db")
        assert len(rows) == args.readings, f"replay found {len(rows)} of {args.readings} charged readings"
        for key, updates in (("replay", False), ("pages", True)):
            with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
                best[key] = max(best[key], replay_rate(Path(tmp), rows, args.meters, updates=updates))
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            best["one_row"] = max(best["one_row"], raw_rate(Path(tmp), args.readings, args.meters))
    ledger, replay, pages, one_row = best["ledger"], best["replay"], best["pages"], best["one_row"]
    ratio = ledger / replay
    where = args.dir or Path(tempfile.gettempdir())
    print(f"directory            {where}")
    print(
        f"tariff               {args.tariff}, {args.meters} meters, {args.readings} readings, best of {args.rounds}"
    )
    print(f"readings charged/s   {ledger:10.1f}   (record_reading, one durable commit each)")
    print(f"same rows raw/s      {replay:10.1f}   (its reading, entry and message rows inserted verbatim)")
    print(f"ratio                {ratio:10.3f}   (target >= 0.7)")
    print(
        f"  with the updates/s {pages:10.1f}   (also the meter and balance updates: ledger at {ledger / pages:.3f})"
    )
    print(f"  one-row inserts/s  {one_row:10.1f}   (the reading row alone: ledger at {ledger / one_row:.3f})")
    emit(
        Result(
            f"Ledger: readings charged per durable commit ({args.tariff})",
            f"{ledger:,.0f} /s",
            f"the same rows inserted raw, same durability: {replay:,.0f} /s",
            ratio,
            ">= 0.7",
            ratio >= TARGET,
            f"with the meter and balance updates too {pages:,.0f} /s (ledger at {ledger / pages:.2f}); "
            f"the reading row alone {one_row:,.0f} /s (ledger at {ledger / one_row:.2f}); {where}",
        )
    )
    if args.batch > 1:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            batched = ledger_rate(Path(tmp), args.readings, args.meters, args.tariff, book, args.batch)
        print(
            f"charged/s, {args.batch:3d}/commit {batched:10.1f}   (ratio to the replay {batched / replay:.3f})"
        )


if __name__ == "__main__":
    main()
