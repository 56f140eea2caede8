"""Housekeeping: keep the database small and safe without ever losing evidence.

Three jobs, each idempotent and safe to run late or twice (the scheduler may skip or repeat them):

- *Downsampling*: readings older than the retention period keep only the last one per meter per UTC
  hour, plus every reading the ledger or a quarantine points at — a charge entry must always be able
  to show the register values it was computed from, so those rows are never deleted.
- *Outbox trim*: only messages the broker acknowledged, and only after a grace period
  (``outbox.trim_delivered``); an undelivered message is never removed.
- *Backup*: SQLite's online backup API copies a consistent snapshot while the daemon keeps writing;
  backups are rotated, keeping the newest ``backups_kept``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import HousekeepingConfig, resolve
from gateway.core.errors import OperationFailed
from gateway.core.logfields import kv
from gateway.core.timeutil import iso, parse_iso
from gateway.store import outbox
from gateway.store.db import Store, StoreError

if TYPE_CHECKING:
    from gateway.runtime.ports import JobContext

log = logging.getLogger("pmg.housekeeping")

BACKUP_PREFIX = "pmg-"
BACKUP_SUFFIX = ".db"
# Page cache of each of the backup's two connections.  SQLite's default (2 MiB each) filled both while
# streaming a 2,000-meter database through them: 4 MB more at the daemon's peak (its start runs a
# backup), kept by the allocator afterwards; with 256 KiB the backup's peak is under 1 MB, and it takes
# the same 40 ms (the operating system's cache serves the pages).
BACKUP_CACHE_KIB = 256
META_LAST_BACKUP = "last_backup_at"
META_LAST_HOUSEKEEPING = "last_housekeeping_at"

META_DOWNSAMPLED_UNTIL = "readings_downsampled_until"
THIN_METERS_PER_STEP = 50  # a day of 50 meters' one-minute readings: about 0.1 s per step

# One meter's readings in hours [lo, hi) thinned to the last of each UTC hour, keeping every reading
# anything durable refers to: a charge entry (only charge entries carry a reading id — schema 5
# enforces it — so the partial unique index on them answers), a quarantine, the meter's last reading
# (always the meter's own, so only its row is asked).  ``lo`` and ``hi`` are hour prefixes
# ("YYYY-MM-DDTHH"): taken_at is RFC 3339 UTC, so the prefix names its hour and bounds it exactly,
# even for a reading at "HH:00:00.25Z" (which sorts before "HH:00:00Z" as text).  Ties on taken_at
# go to the higher id.
_THIN_METER = """
DELETE FROM readings WHERE meter_id = :meter AND taken_at >= :lo AND taken_at < :hi
  AND id NOT IN (
    SELECT id FROM (
      SELECT id, ROW_NUMBER() OVER (PARTITION BY substr(taken_at, 1, 13) ORDER BY taken_at DESC, id DESC) AS rn
      FROM readings WHERE meter_id = :meter AND taken_at >= :lo AND taken_at < :hi
    ) WHERE rn = 1)
  AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.reading_id = readings.id AND e.kind = 'charge')
  AND id NOT IN (
    SELECT quarantined_reading_id FROM meters WHERE id = :meter AND quarantined_reading_id IS NOT NULL
    UNION SELECT last_reading_id FROM meters WHERE id = :meter AND last_reading_id IS NOT NULL)
"""


class BackupError(OperationFailed, RuntimeError):
    """A backup could not be written (directory missing or not writable, disk full)."""


@dataclass(frozen=True)
class HousekeepingResult:
    readings_removed: int
    outbox_removed: int
    backup: Path | None


def downsample_span(store: Store, before: datetime) -> tuple[str, str] | None:
    """The readings a pass should thin: from where the last pass stopped to ``before``'s hour.

    Each pass takes only what became old since the last one (the watermark is kept in ``meta``), so
    an hourly pass reads an hour of readings, not the whole history; the span ends on an hour
    boundary so that no hour is ever thinned in two halves.  A watermark ahead of ``before`` (the
    clock had jumped forward) is brought back: thinning again is harmless, stopping for a year is not.
    Readings that arrive later with a time below the watermark (a clock stepped back) are kept."""
    hi = iso(before.astimezone(UTC).replace(minute=0, second=0, microsecond=0))
    lo = store.meta_get(META_DOWNSAMPLED_UNTIL) or ""
    if lo > hi:
        log.warning("downsampling watermark %s is ahead of %s (a clock jump?): moved back", lo, hi)
        with store.tx():
            store.meta_set(META_DOWNSAMPLED_UNTIL, hi)
        return None
    return (lo, hi) if lo < hi else None


def thin_meters(conn: sqlite3.Connection, meters: list[str], span: tuple[str, str]) -> int:
    """Thin these meters' readings in ``span`` (one index range per meter); returns rows removed."""
    removed = 0
    lo, hi = span[0][:13], span[1][:13]  # hour prefixes: exact hour bounds whatever the fraction
    for meter in meters:
        removed += conn.execute(_THIN_METER, {"meter": meter, "lo": lo, "hi": hi}).rowcount
    return removed


def _meter_ids(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT id FROM meters ORDER BY id")]


def _oldest_reading_hour(conn: sqlite3.Connection) -> str | None:
    """The hour of the oldest reading, found by one index seek per meter."""
    row = conn.execute(
        "SELECT MIN((SELECT taken_at FROM readings r WHERE r.meter_id = m.id ORDER BY taken_at LIMIT 1)) "
        "FROM meters m"
    ).fetchone()
    return None if row is None or row[0] is None else str(row[0])[:13] + ":00:00Z"


async def downsample_gently(store: Store, before: datetime) -> int:
    """``downsample_readings`` for the daemon: a day of readings for a few meters per transaction,
    yielding to the event loop between them, the watermark moved after each day.

    An hourly pass is one small step.  The first pass on a database with months of history (after an
    upgrade) is long, and must not stop polling and payments while it runs."""
    span = downsample_span(store, before)
    if span is None:
        return 0
    lo, hi = span
    with store.tx() as conn:
        meters = _meter_ids(conn)
        if not lo:
            lo = _oldest_reading_hour(conn) or hi
    removed = 0
    while lo < hi:
        day_end = min(hi, iso(parse_iso(lo) + timedelta(days=1)))
        for first in range(0, len(meters), THIN_METERS_PER_STEP):
            with store.tx() as conn:
                removed += thin_meters(conn, meters[first : first + THIN_METERS_PER_STEP], (lo, day_end))
            await asyncio.sleep(0)
        with store.tx():
            store.meta_set(META_DOWNSAMPLED_UNTIL, day_end)
        lo = day_end
    return removed


def downsample_readings(store: Store, before: datetime) -> int:
    """Thin readings older than ``before`` to one per meter per hour; returns rows removed."""
    span = downsample_span(store, before)
    if span is None:
        return 0
    with store.tx() as conn:
        meters = _meter_ids(conn)
        removed = thin_meters(conn, meters, span)
        store.meta_set(META_DOWNSAMPLED_UNTIL, span[1])
    return removed


def backup_database(database: Path, directory: Path, now: datetime, keep: int) -> Path:
    """Write a consistent online backup named by its UTC time, then keep only the newest ``keep``.

    Uses its own connection so it can run in a worker thread while the daemon keeps writing (WAL lets
    the reader see one consistent snapshot).
    """
    if keep < 1:
        raise ValueError(f"backups_kept must be at least 1 (got {keep})")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create backup directory {directory}: {exc.strerror}") from None
    stamp = now.strftime("%Y%m%dT%H%M%SZ") if now.utcoffset() == timedelta(0) else iso(now)
    target = directory / f"{BACKUP_PREFIX}{stamp}{BACKUP_SUFFIX}"
    partial = target.with_name(target.name + ".partial")
    try:
        source = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        dest = sqlite3.connect(partial)
        try:
            for conn in (source, dest):  # copying and checking stream every page through both caches:
                conn.execute(f"PRAGMA cache_size = -{BACKUP_CACHE_KIB}")  # keep them small (see below)
            source.backup(dest)
            if dest.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise BackupError(f"backup {partial} failed its integrity check")
        finally:
            dest.close()
            source.close()
        os.replace(partial, target)
    except (OSError, sqlite3.Error) as exc:
        partial.unlink(missing_ok=True)
        raise BackupError(f"cannot write backup {target}: {exc}") from None
    for old in list_backups(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return target


def list_backups(directory: Path) -> list[Path]:
    """Backups oldest first (their names sort by time)."""
    if not directory.is_dir():
        return []
    return sorted(
        p for p in directory.iterdir() if p.name.startswith(BACKUP_PREFIX) and p.name.endswith(BACKUP_SUFFIX)
    )


def backup_dir(config_path: Path, database: Path, cfg: HousekeepingConfig) -> Path:
    return resolve(config_path, cfg.backup_dir) if cfg.backup_dir else database.parent / "backups"


def backup_due(store: Store, cfg: HousekeepingConfig, now: datetime) -> bool:
    last = store.meta_get(META_LAST_BACKUP)
    return last is None or now - parse_iso(last) >= timedelta(hours=cfg.backup_every_hours)


def trim(store: Store, cfg: HousekeepingConfig, now: datetime) -> tuple[int, int]:
    """Downsample old readings and trim the delivered outbox: (readings removed, messages removed)."""
    removed = downsample_readings(store, now - timedelta(days=cfg.readings_full_days))
    return removed, _trim_outbox(store, cfg, now)


def _trim_outbox(store: Store, cfg: HousekeepingConfig, now: datetime) -> int:
    trimmed = outbox.trim_delivered(store, now - timedelta(days=cfg.outbox_delivered_days))
    with store.tx():
        store.meta_set(META_LAST_HOUSEKEEPING, iso(now))
    return trimmed


def record_backup(store: Store, now: datetime) -> None:
    with store.tx():
        store.meta_set(META_LAST_BACKUP, iso(now))


def housekeep(
    store: Store, cfg: HousekeepingConfig, now: datetime, *, backups: Path | None
) -> HousekeepingResult:
    """One synchronous pass (for the CLI and tests); the daemon's ``run`` backs up in a thread."""
    removed, trimmed = trim(store, cfg, now)
    written: Path | None = None
    if backups is not None and backup_due(store, cfg, now):
        written = backup_database(store.path, backups, now, cfg.backups_kept)
        record_backup(store, now)
    return HousekeepingResult(removed, trimmed, written)


async def run(gateway: JobContext) -> None:
    """The scheduler's entry point (``gateway.runtime.jobs``); the backup copy runs off the event loop."""
    cfg = gateway.cfg.housekeeping
    store = gateway.store
    now = gateway.clock()
    database = resolve(gateway.config_path, gateway.cfg.database)
    written: Path | None = None
    try:
        removed = await downsample_gently(store, now - timedelta(days=cfg.readings_full_days))
        trimmed = _trim_outbox(store, cfg, now)
        if backup_due(store, cfg, now):
            target = backup_dir(gateway.config_path, database, cfg)
            written = await asyncio.to_thread(backup_database, database, target, now, cfg.backups_kept)
            record_backup(store, now)
    except (BackupError, StoreError) as exc:
        log.error("housekeeping failed: %s", exc)
        return
    result = HousekeepingResult(removed, trimmed, written)
    log.info(
        "housekeeping done",
        extra=kv(
            readings_removed=result.readings_removed, outbox_removed=result.outbox_removed, backup=result.backup
        ),
    )
