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
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import HousekeepingConfig, resolve
from gateway.store.db import Store, StoreError
from gateway.sync import outbox
from gateway.timeutil import iso, parse_iso

if TYPE_CHECKING:
    from gateway.daemon import Gateway

log = logging.getLogger("pmg.housekeeping")

BACKUP_PREFIX = "pmg-"
BACKUP_SUFFIX = ".db"
META_LAST_BACKUP = "last_backup_at"
META_LAST_HOUSEKEEPING = "last_housekeeping_at"

# A reading is kept when anything durable refers to it (entries, a quarantine, the meter's last one).
_REFERENCED = (
    "SELECT reading_id FROM entries WHERE reading_id IS NOT NULL "
    "UNION SELECT quarantined_reading_id FROM meters WHERE quarantined_reading_id IS NOT NULL "
    "UNION SELECT last_reading_id FROM meters WHERE last_reading_id IS NOT NULL"
)
# The last reading of each (meter, UTC hour): taken_at is RFC 3339 UTC, so its first 13 characters
# ("YYYY-MM-DDTHH") name the hour; ties on taken_at go to the higher id.
_HOURLY_LAST = (
    "SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY meter_id, substr(taken_at, 1, 13) "
    "ORDER BY taken_at DESC, id DESC) AS rn FROM readings WHERE taken_at < :cutoff) WHERE rn = 1"
)


class BackupError(RuntimeError):
    """A backup could not be written (directory missing or not writable, disk full)."""


@dataclass(frozen=True)
class HousekeepingResult:
    readings_removed: int
    outbox_removed: int
    backup: Path | None


def downsample_readings(store: Store, before: datetime) -> int:
    """Thin readings older than ``before`` to one per meter per hour; returns rows removed."""
    with store.tx() as conn:
        cur = conn.execute(
            f"DELETE FROM readings WHERE taken_at < :cutoff AND id NOT IN ({_HOURLY_LAST}) "
            f"AND id NOT IN ({_REFERENCED})",
            {"cutoff": iso(before)},
        )
        return cur.rowcount


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
    trimmed = outbox.trim_delivered(store, now - timedelta(days=cfg.outbox_delivered_days))
    with store.tx():
        store.meta_set(META_LAST_HOUSEKEEPING, iso(now))
    return removed, trimmed


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


async def run(gateway: Gateway) -> None:
    """The scheduler's entry point (``gateway.jobs``); the backup copy runs off the event loop."""
    cfg = gateway.cfg.housekeeping
    store = gateway.store
    now = gateway.clock()
    database = resolve(gateway.config_path, gateway.cfg.database)
    written: Path | None = None
    try:
        removed, trimmed = trim(store, cfg, now)
        if backup_due(store, cfg, now):
            target = backup_dir(gateway.config_path, database, cfg)
            written = await asyncio.to_thread(backup_database, database, target, now, cfg.backups_kept)
            record_backup(store, now)
    except (BackupError, StoreError) as exc:
        log.error("housekeeping failed: %s", exc)
        return
    result = HousekeepingResult(removed, trimmed, written)
    log.info(
        "housekeeping readings_removed=%d outbox_removed=%d backup=%s",
        result.readings_removed,
        result.outbox_removed,
        result.backup or "-",
    )
