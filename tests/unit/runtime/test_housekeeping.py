"""Housekeeping: downsampling never loses a reading the ledger cites, the outbox loses nothing
undelivered, and backups are consistent, rotated SQLite databases."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.config import HousekeepingConfig
from gateway.core.timeutil import iso
from gateway.runtime import housekeeping
from gateway.runtime.housekeeping import (
    BackupError,
    backup_database,
    downsample_readings,
    housekeep,
    list_backups,
)
from gateway.store import outbox
from gateway.store.db import Store, open_store

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return _new_store(tmp_path / "pmg.db")


def _new_store(path: Path, meters: int = 2) -> Store:
    """An account with meters m1..m<meters> and nothing else."""
    s = open_store(path)
    with s.tx() as conn:
        conn.execute(
            "INSERT INTO accounts(id, tariff_id, currency, created_at, updated_at) VALUES ('a1', 't', 'CNY', ?, ?)",
            (iso(NOW), iso(NOW)),
        )
        for m in range(1, meters + 1):
            conn.execute(
                "INSERT INTO meters(id, account_id, bus_id, protocol, address, created_at, updated_at) "
                "VALUES (?, 'a1', 'b1', 'dlt645', '000000000001', ?, ?)",
                (f"m{m}", iso(NOW), iso(NOW)),
            )
    return s


def _reading(store: Store, meter: str, at: datetime, wh: int) -> int:
    with store.tx() as conn:
        cur = conn.execute(
            "INSERT INTO readings(meter_id, taken_at, quality, register_wh, outcome) VALUES (?, ?, 'ok', ?, 'charged')",
            (meter, iso(at), wh),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid


def test_old_readings_keep_last_per_meter_per_hour_and_every_cited_one(store: Store) -> None:
    old = NOW - timedelta(days=100)
    ids = {
        m: [_reading(store, m, old + timedelta(minutes=10 * i), 1000 + i) for i in range(12)]
        for m in ("m1", "m2")
    }
    recent = _reading(store, "m1", NOW - timedelta(days=1), 5000)
    recent2 = _reading(store, "m1", NOW - timedelta(days=1, minutes=-1), 5001)
    cited = ids["m1"][2]  # a charge entry points at this one
    quarantined = ids["m2"][3]
    with store.tx() as conn:
        conn.execute(
            "INSERT INTO entries(account_id, kind, amount_minor, energy_wh, meter_id, reading_id, period_end, "
            "created_at) VALUES ('a1', 'charge', -5, 10, 'm1', ?, ?, ?)",
            (cited, iso(old), iso(old)),
        )
        conn.execute("UPDATE meters SET quarantined_reading_id = ? WHERE id = 'm2'", (quarantined,))

    removed = downsample_readings(store, NOW - timedelta(days=90))

    left = {r[0] for r in store.all("SELECT id FROM readings")}
    # 12 readings 10 min apart from 00:00 span two hours: the last of each hour survives.
    hour_last = {ids[m][5] for m in ids} | {ids[m][11] for m in ids}
    assert left == hour_last | {cited, quarantined, recent, recent2}
    assert removed == 24 - len(hour_last) - 2
    assert downsample_readings(store, NOW - timedelta(days=90)) == 0  # idempotent


def test_outbox_trim_keeps_undelivered(store: Store) -> None:
    with store.tx() as conn:
        for i in range(1005):
            outbox.put(conn, "usage", {"i": i}, NOW - timedelta(days=30))
    seqs = [m.seq for m in outbox.pending(store, limit=2000)]
    outbox.mark_delivered(store, seqs[:1004], NOW - timedelta(days=20))  # the last one stays undelivered
    result = housekeep(store, HousekeepingConfig(outbox_delivered_days=7), NOW, backups=None)
    # trim_delivered keeps the newest 1000 sequence numbers (seq <= 1005 - 1000), delivered or not
    assert result.outbox_removed == 5
    assert [m.seq for m in outbox.pending(store)] == [seqs[-1]]


def test_backup_is_a_consistent_database_and_rotates(store: Store, tmp_path: Path) -> None:
    _reading(store, "m1", NOW, 42)
    directory = tmp_path / "backups"
    made = [backup_database(store.path, directory, NOW + timedelta(hours=i), keep=3) for i in range(5)]
    assert list_backups(directory) == made[-3:]
    conn = sqlite3.connect(made[-1])
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT register_wh FROM readings").fetchall() == [(42,)]
    finally:
        conn.close()
    assert not list(directory.glob("*.partial"))


def test_backup_only_when_due(store: Store, tmp_path: Path) -> None:
    cfg = HousekeepingConfig(backup_every_hours=24, backups_kept=2)
    first = housekeep(store, cfg, NOW, backups=tmp_path / "b")
    again = housekeep(store, cfg, NOW + timedelta(hours=1), backups=tmp_path / "b")
    later = housekeep(store, cfg, NOW + timedelta(hours=25), backups=tmp_path / "b")
    assert first.backup is not None and again.backup is None and later.backup is not None
    assert store.meta_get("last_backup_at") == iso(NOW + timedelta(hours=25))


def test_backup_to_an_unwritable_place_is_one_clear_error(store: Store, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(BackupError, match="cannot create backup directory"):
        backup_database(store.path, blocker / "backups", NOW, keep=1)
    with pytest.raises(ValueError, match="at least 1"):
        backup_database(store.path, tmp_path / "b", NOW, keep=0)


def _minutely(
    store: Store, start: datetime, hours: int, meters: tuple[str, ...] = ("m1", "m2"), every_min: int = 10
) -> None:
    """The meters read every ``every_min`` minutes for ``hours``; every third reading cited by a charge."""
    with store.tx() as conn:
        for step in range(hours * 60 // every_min):
            at = iso(start + timedelta(minutes=every_min * step))
            for meter in meters:
                rid = conn.execute(
                    "INSERT INTO readings(meter_id, taken_at, quality, register_wh, outcome) "
                    "VALUES (?, ?, 'ok', ?, 'charged')",
                    (meter, at, step),
                ).lastrowid
                if step % 3 == 0:
                    conn.execute(
                        "INSERT INTO entries(account_id, kind, amount_minor, energy_wh, meter_id, reading_id, "
                        "period_end, created_at) VALUES ('a1', 'charge', -1, 10, ?, ?, ?, ?)",
                        (meter, rid, at, at),
                    )


def test_the_daemons_gentle_pass_thins_exactly_as_one_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Day by day and a meter at a time (yielding between steps), the result is the same rows."""
    monkeypatch.setattr(housekeeping, "THIN_METERS_PER_STEP", 1)
    left = []
    for name, gentle in (("one.db", False), ("gentle.db", True)):
        store = _new_store(tmp_path / name)
        _minutely(store, NOW - timedelta(days=100, minutes=7), 24 * 3 + 5)  # 3 days and 5 hours, odd start
        before = NOW - timedelta(days=98, minutes=30)
        if gentle:
            removed = asyncio.run(housekeeping.downsample_gently(store, before))
        else:
            removed = downsample_readings(store, before)
        left.append((removed, [r[0] for r in store.all("SELECT id FROM readings ORDER BY id")]))
        assert store.meta_get(housekeeping.META_DOWNSAMPLED_UNTIL) == iso(before.replace(minute=0))
        store.close()
    assert left[0] == left[1]
    assert left[0][0] > 0


def _pass_steps(store: Store, before: datetime) -> tuple[int, int]:
    """SQLite virtual-machine instructions (in hundreds) of one downsampling pass — work, not time —
    and the readings it removed."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    store.conn.set_progress_handler(count, 100)
    try:
        removed = downsample_readings(store, before)
    finally:
        store.conn.set_progress_handler(None, 100)
    return steps, removed


def test_an_hourly_pass_costs_the_same_at_ten_times_the_history(tmp_path: Path) -> None:
    """Each pass thins only what became old since the last one (a watermark), through the index."""

    def steps_of_next_pass(history_hours: int) -> int:
        store = _new_store(tmp_path / f"{history_hours}.db")
        start = NOW - timedelta(days=200)
        _minutely(store, start - timedelta(hours=history_hours), history_hours)
        downsample_readings(store, start)  # catch up: everything old so far
        _minutely(store, start, 1)  # one more hour becomes old
        steps, removed = _pass_steps(store, start + timedelta(hours=1))
        store.close()
        assert removed > 0
        return steps

    small = steps_of_next_pass(24)
    large = steps_of_next_pass(240)
    assert large <= small * 1.5 + 5, (small, large)


def test_only_a_charge_entry_may_cite_a_reading(store: Store) -> None:
    rid = _reading(store, "m1", NOW, 1)
    with pytest.raises(sqlite3.IntegrityError, match="only a charge entry may cite a reading"), store.tx() as conn:
        conn.execute(
            "INSERT INTO entries(account_id, kind, amount_minor, reading_id, created_at) "
            "VALUES ('a1', 'adjustment', 5, ?, ?)",
            (rid, iso(NOW)),
        )




def test_an_hourly_pass_costs_each_meter_the_same_in_a_bigger_fleet(tmp_path: Path) -> None:
    """Each meter's DELETE asks only its own row of the meters table: linear in meters, not square."""
    per_meter = []
    for count in (5, 50):
        store = _new_store(tmp_path / f"{count}.db", meters=count)
        start = NOW - timedelta(days=200)
        names = tuple(f"m{m}" for m in range(1, count + 1))
        _minutely(store, start - timedelta(hours=2), 2, names)
        downsample_readings(store, start)
        _minutely(store, start, 1, names)
        per_meter.append(_pass_steps(store, start + timedelta(hours=1))[0] / count)
        store.close()
    assert per_meter[1] <= per_meter[0] * 1.3, per_meter


def test_sub_second_readings_are_thinned_by_their_own_hour(tmp_path: Path) -> None:
    """A reading at 13:00:00.25 belongs to hour 13, though its text sorts before "13:00:00Z": hourly
    passes keep exactly what one pass keeps."""
    kept = []
    for name, hourly in (("one.db", False), ("hourly.db", True)):
        store = _new_store(tmp_path / name)
        start = NOW - timedelta(days=200)
        with store.tx() as conn:
            for minute in range(5 * 60):
                at = start + timedelta(minutes=minute, milliseconds=250)
                conn.execute(
                    "INSERT INTO readings(meter_id, taken_at, quality, register_wh, outcome) "
                    "VALUES ('m1', ?, 'ok', ?, 'charged')",
                    (iso(at), minute),
                )
        for hour in range(1, 6) if hourly else (5,):
            downsample_readings(store, start + timedelta(hours=hour))
        kept.append([r[0] for r in store.all("SELECT taken_at FROM readings ORDER BY id")])
        store.close()
    assert kept[0] == kept[1]
    assert len(kept[0]) == 5  # the last reading of each of the five hours


def test_a_watermark_left_ahead_by_a_clock_jump_is_brought_back(store: Store) -> None:
    start = NOW - timedelta(days=200)
    downsample_readings(store, NOW + timedelta(days=365))  # the clock was a year ahead for a while
    _minutely(store, start, 2)
    assert downsample_readings(store, start + timedelta(hours=2)) == 0  # this pass moves the mark back
    assert store.meta_get(housekeeping.META_DOWNSAMPLED_UNTIL) == iso(start + timedelta(hours=2))
    _minutely(store, start + timedelta(hours=2), 1)
    assert downsample_readings(store, start + timedelta(hours=3)) > 0  # and thinning goes on


def test_a_charge_entry_is_posted_at_its_period_end(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="posted at its period end"), store.tx() as conn:
        conn.execute(
            "INSERT INTO entries(account_id, kind, amount_minor, energy_wh, period_end, created_at) "
            "VALUES ('a1', 'charge', -5, 10, ?, ?)",
            (iso(NOW), iso(NOW + timedelta(seconds=1))),
        )
