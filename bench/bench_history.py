"""History: what the recurring work costs after four months of service, against after forty days.

A gateway runs for years, and a benchmark on a fresh database cannot see work that grows with the
history.  This one seeds two databases of the gateway's schema with the same accounts, each meter read
every minute — one holding ``--short-days`` (40: every window the daemon looks back over is full), the
other ``--days`` (120) — and times, in each, what the daemon does again and again:

- the hourly forecast (days of credit left: a week's charged energy, priced a day ahead);
- the daily risk grade's inputs (a week's and a month's consumption, the first reading);
- the block-position recount at the start of a new cycle (an hour into it, the whole past before it);
- charging a reading (``record_reading``, one durable commit each), as the ledger bench does;
- the hourly downsampling pass of housekeeping (after the one catch-up pass of a first start).

The ratio is long-history throughput ÷ short-history throughput, same run; target ≥ 0.8 for each (the
work must not grow with the history).  Rows are seeded directly in the ledger's shapes (no pricing), so a
four-month database of 10 accounts takes seconds to build.

    .venv/bin/python -m bench.bench_history [--accounts 10] [--days 120] [--short-days 40] [--repeat 20] [--dir DIR]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.bench_ledger import seed_meter
from bench.common import Result, emit
from drivers.base import Quality, Reading
from gateway.core.calendar import WorkCalendar
from gateway.core.timeutil import iso
from gateway.ledger.charging import record_reading
from gateway.ledger.forecast import DailyCostCache
from gateway.ledger.risk import RiskRule, risk_inputs
from gateway.ledger.tariff_book import TariffBook, cycle_usage_wh
from gateway.runtime.housekeeping import downsample_readings
from gateway.store.db import Store, open_store
from gateway.tariffs.model import load_tariff_dir
from gateway.tariffs.pricing import cycle_start

REPO = Path(__file__).resolve().parent.parent
TARIFF = "zhejiang-residential"
NOW = datetime(2026, 3, 2, tzinfo=UTC)  # the end of both histories
STEP_WH = 20  # per minute: 1.2 kW, 28.8 kWh a day


def seed(path: Path, accounts: int, days: int, book: TariffBook) -> Store:
    """Accounts ``acc<i>`` with meter ``m<i>``, read and charged every minute for ``days`` before NOW."""
    store = open_store(path)
    minutes = days * 1440
    start = NOW - timedelta(minutes=minutes)
    version = book.get(TARIFF).version_at(NOW)
    cycle = cycle_start(version, NOW)
    assert cycle is not None
    with store.tx() as conn:
        for a in range(accounts):
            seed_meter(conn, a, TARIFF, start)

        def readings() -> Iterator[tuple[int, str, str, int]]:
            for k in range(1, minutes + 1):
                at = iso(start + timedelta(minutes=k))
                for a in range(accounts):
                    yield (k * accounts + a, f"m{a}", at, k * STEP_WH)

        conn.executemany(
            "INSERT INTO readings(id, meter_id, taken_at, quality, register_wh, outcome, delta_wh) "
            "VALUES (?, ?, ?, 'ok', ?, 'charged', 20)",
            readings(),
        )
        conn.execute(
            "INSERT INTO entries(account_id, kind, amount_minor, energy_wh, meter_id, reading_id, period_start, "
            "period_end, detail_json, created_at) "
            "SELECT 'acc' || substr(r.meter_id, 2), 'charge', -1, r.delta_wh, r.meter_id, r.id, "
            "strftime('%Y-%m-%dT%H:%M:%SZ', r.taken_at, '-60 seconds'), r.taken_at, "
            "'{\"exact\":\"0.0114\",\"lines\":[]}', r.taken_at FROM readings r ORDER BY r.id"
        )
        for a in range(accounts):
            in_cycle = min(minutes, int((NOW - cycle).total_seconds() // 60)) * STEP_WH
            conn.execute(
                "UPDATE meters SET last_register_wh = ?, last_reading_at = ?, last_reading_id = ? WHERE id = ?",
                (minutes * STEP_WH, iso(NOW), minutes * accounts + a, f"m{a}"),
            )
            conn.execute(
                "UPDATE accounts SET balance_minor = 10000000, cycle_start = ?, cycle_used_wh = ? WHERE id = ?",
                (iso(cycle), in_cycle, f"acc{a}"),
            )
    return store


def rate(repeat: int, accounts: int, work: Callable[[int], object]) -> float:
    """Calls per second of ``work(account index)``, over every account ``repeat`` times (best of 3)."""
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _r in range(repeat):
            for a in range(accounts):
                work(a)
        best = max(best, repeat * accounts / (time.perf_counter() - start))
    return best


def measure(store: Store, accounts: int, repeat: int, book: TariffBook) -> dict[str, float]:
    conn: sqlite3.Connection = store.conn
    rule = RiskRule()

    def forecast(a: int) -> object:
        return DailyCostCache().days_left(conn, book, f"acc{a}", 10_000, NOW)  # a fresh cache: the hourly work

    def risk(a: int) -> object:
        return risk_inputs(conn, f"acc{a}", NOW, None, rule)

    def recount(a: int) -> object:
        return cycle_usage_wh(conn, f"acc{a}", NOW - timedelta(hours=1), NOW)

    registers = [
        int(conn.execute("SELECT last_register_wh FROM meters WHERE id = ?", (f"m{a}",)).fetchone()[0])
        for a in range(accounts)
    ]
    charged = [0] * accounts

    def charge(a: int) -> object:
        charged[a] += 1
        registers[a] += STEP_WH
        reading = Reading(f"{a}", NOW + timedelta(minutes=charged[a]), Quality.OK, energy_import_wh=registers[a])
        with store.tx() as tx:
            return record_reading(tx, f"m{a}", reading, book.pricer(tx), max_power_w=30_000)

    downsample_readings(store, NOW - timedelta(days=2))  # the catch-up pass of a first start: once
    passes = []
    for hour in range(1, 4):
        started = time.perf_counter()
        downsample_readings(store, NOW - timedelta(days=2) + timedelta(hours=hour))
        passes.append(time.perf_counter() - started)
    return {
        "forecast": rate(repeat, accounts, forecast),
        "risk": rate(repeat, accounts, risk),
        "recount": rate(repeat, accounts, recount),
        "charge": rate(repeat, accounts, charge),
        "housekeeping": 1 / min(passes),
    }


LABELS = {
    "forecast": "hourly forecast per account",
    "risk": "daily risk inputs per account",
    "recount": "block recount at a new cycle",
    "charge": "charging a reading (durable commit)",
    "housekeeping": "hourly downsampling pass (all meters)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=10)
    ap.add_argument("--days", type=int, default=120, help="The long history.")
    ap.add_argument(
        "--short-days", type=int, default=40, help="The short history: it must cover every window (35 days)."
    )
    ap.add_argument("--repeat", type=int, default=20, help="Rounds over every account per measurement.")
    ap.add_argument("--dir", type=Path, default=None, help="Where the databases go (default: the temp dir).")
    args = ap.parse_args()
    book = TariffBook(load_tariff_dir(REPO / "gateway" / "tariffs" / "examples"), WorkCalendar("Asia/Shanghai", "CN"))
    figures = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for days in (args.short_days, args.days):
            started = time.perf_counter()
            store = seed(Path(tmp) / f"history-{days}.db", args.accounts, days, book)
            seeded = time.perf_counter() - started
            size = (Path(tmp) / f"history-{days}.db").stat().st_size / 1e6
            print(f"{days:3d} days: {args.accounts} accounts seeded in {seeded:.1f} s, {size:.0f} MB")
            figures[days] = measure(store, args.accounts, args.repeat, book)
            store.close()
    short, long = figures[args.short_days], figures[args.days]
    worst = min(long[k] / short[k] for k in short)
    for key, label in LABELS.items():
        print(
            f"{label:38s} {short[key]:9.1f} /s at {args.short_days} days, {long[key]:9.1f} /s at {args.days} days: "
            f"ratio {long[key] / short[key]:.2f}"
        )
    detail = "; ".join(f"{LABELS[k]} {long[k] / short[k]:.2f}" for k in LABELS)
    emit(
        Result(
            f"History: per-account work at {args.days} days of history",
            f"forecast {1000 / long['forecast']:.2f} ms/account",
            f"the same at {args.short_days} days: {1000 / short['forecast']:.2f} ms/account",
            worst,
            ">= 0.8",
            worst >= 0.8,
            f"worst of: {detail} ({args.accounts} accounts read every minute)",
        )
    )


if __name__ == "__main__":
    main()
