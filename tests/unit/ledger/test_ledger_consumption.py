"""Consumption over a span and the first reading: exact answers, by index, whatever the history.

The forecast asks these for every account every hour, the risk job every day; both used to scan an
account's whole history.  The answers are checked against a brute-force recount of the rows, and the
query plans are checked to seek by index (a full scan would pass the first check and stall a large
gateway at the top of every hour)."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.ledger_books import T0, make_book, new_ledger, reading

from drivers.base import Quality
from gateway.core.timeutil import iso, parse_iso
from gateway.ledger import consumption
from gateway.ledger.charging import record_reading
from gateway.ledger.tariff_book import cycle_usage_wh


@pytest.fixture()
def ledger(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Two accounts, three meters; one meter starts late, failed readings sprinkled in."""
    book = make_book(tmp_path)
    store = new_ledger(
        tmp_path / "l.db",
        accounts=[("acc1", "flat-cn"), ("acc2", "flat-cn")],
        meters=[("m1", "acc1"), ("m2", "acc1"), ("m3", "acc2")],
    )
    with store.tx() as conn:
        for minute in range(0, 600, 7):
            at = T0 + timedelta(minutes=minute)
            for meter, start, step in (("m1", 0, 11), ("m2", 200, 5), ("m3", 0, 3)):
                if minute < start:
                    continue
                quality = Quality.TIMEOUT if minute % 5 == 0 else Quality.OK
                record_reading(
                    conn, meter, reading(minute * step, at, quality), book.pricer(conn), max_power_w=10**6
                )
    yield store
    store.close()


def test_answers_equal_a_recount_of_the_rows(ledger) -> None:  # type: ignore[no-untyped-def]
    rows = ledger.all(
        "SELECT m.account_id, r.taken_at FROM readings r JOIN meters m ON m.id = r.meter_id "
        "WHERE r.outcome IN ('baseline', 'charged')"
    )
    entries = ledger.all("SELECT account_id, created_at, energy_wh FROM entries WHERE kind = 'charge'")
    checked = 0
    for account in ("acc1", "acc2", "nobody"):
        for lo_min, hi_min in ((0, 600), (100, 300), (250, 260), (590, 700), (-50, 10)):
            lo, hi = T0 + timedelta(minutes=lo_min), T0 + timedelta(minutes=hi_min)
            times = [parse_iso(r["taken_at"]) for r in rows if r["account_id"] == account]
            inside = [t for t in times if lo <= t <= hi]
            with ledger.tx() as conn:
                assert consumption.first_read_at(conn, account, lo, hi) == (min(inside) if inside else None)
                assert consumption.first_read_at(conn, account) == (min(times) if times else None)
                expected = sum(
                    e["energy_wh"]
                    for e in entries
                    if e["account_id"] == account and lo < parse_iso(e["created_at"]) <= hi
                )
                assert consumption.charged_energy_wh(conn, account, lo, hi) == expected
            checked += expected
    assert checked > 0  # the spans did hold energy


def test_neither_question_scans_a_history_table(ledger) -> None:  # type: ignore[no-untyped-def]
    lo, hi = T0.astimezone(UTC).isoformat(), (T0 + timedelta(days=1)).astimezone(UTC).isoformat()
    plans = {
        "first": ledger.all("EXPLAIN QUERY PLAN " + consumption._FIRST_READ, lo, hi, "acc1"),
        "energy": ledger.all("EXPLAIN QUERY PLAN " + consumption._ENERGY, "acc1", lo, hi),
    }
    details = {name: " | ".join(r["detail"] for r in plan) for name, plan in plans.items()}
    for name, detail in details.items():
        assert "SCAN" not in detail, (name, detail)
    assert "USING INDEX readings_meter_time" in details["first"]
    assert "USING COVERING INDEX entries_account" in details["energy"]


def _steps(conn: sqlite3.Connection, ask: Callable[[], object]) -> int:
    """SQLite virtual-machine instructions spent answering (counted in hundreds): a measure of work
    that, unlike a timer, is the same on every run and every machine."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 100)
    try:
        ask()
    finally:
        conn.set_progress_handler(None, 100)
    return steps


def _growing_history(tmp_path: Path) -> Iterator[tuple[sqlite3.Connection, datetime]]:
    """Meter m1 (10 Wh a minute) read every minute: yields (transaction, the end of the history) at 300
    minutes of history and again at 3,000."""
    book = make_book(tmp_path)
    store = new_ledger(tmp_path / "l.db")
    with store.tx() as conn:
        minute = 0
        for total in (300, 3000):
            while minute < total:
                at = T0 + timedelta(minutes=minute)
                record_reading(conn, "m1", reading(minute * 10, at), book.pricer(conn), max_power_w=10**6)
                minute += 1
            yield conn, T0 + timedelta(minutes=total)
    store.close()


def test_finding_the_first_reading_costs_the_same_with_ten_times_the_history(tmp_path: Path) -> None:
    cost = []
    for conn, until in _growing_history(tmp_path):
        cost.append(_steps(conn, functools.partial(consumption.first_read_at, conn, "acc1", T0, until)))
        assert consumption.first_read_at(conn, "acc1", T0, until) == T0
    assert cost[1] <= cost[0] + 2, cost  # an index seek: no walk over the span's readings


def test_block_position_recount_reads_only_the_cycle(tmp_path: Path) -> None:
    """At a new block cycle the pricer recounts the cycle's energy from the entries: the answer is
    the brute-force sum, and its cost does not grow with the history before the cycle began."""
    cost = []
    for conn, until in _growing_history(tmp_path):
        since = until - timedelta(minutes=30)
        whole = conn.execute(
            "SELECT SUM(energy_wh) FROM entries WHERE kind = 'charge' AND period_start >= ? "
            "AND period_end <= ?",
            (iso(since), iso(until)),
        ).fetchone()[0]
        assert cycle_usage_wh(conn, "acc1", since, until) == whole == 290
        # a cycle that begins inside a reading's interval counts that reading's later lines only
        assert cycle_usage_wh(conn, "acc1", since + timedelta(seconds=30), until) == 280
        cost.append(_steps(conn, functools.partial(cycle_usage_wh, conn, "acc1", since, until)))
    assert cost[1] <= cost[0] + 2, cost
