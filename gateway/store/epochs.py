"""Outbox epochs: which run of sequence numbers a message belongs to (docs/mqtt.md, "Epochs").

A seq alone does not identify a message: a reinstalled gateway (a new database) starts again at seq
1, and a restored backup allocates again the seqs that followed the backup — with other content.  So
every published message carries an ``epoch`` beside its ``seq``, and the head office deduplicates on
``(gateway_id, epoch, seq)``.

An epoch is 32 lowercase hex digits (``uuid4().hex``), created with the database (migration) and
kept in ``outbox_epochs`` with the first seq it covers: a row's epoch is the one with the greatest
``first_seq`` not above its seq, so rows written before a rotation keep the epoch they were written
in (a restored backup's rows are the very rows the head office already has under that epoch).

A restored backup is noticed without anyone's help.  Before the publisher hands messages to the
broker it writes, beside the database, ``<database>.epoch``: the epoch and the highest seq handed
out (``Recorder``).  Whoever opens the database for writing (``check_restored``, called by
``open_store``) compares: a database whose epoch is not the recorded one, or whose outbox never
allocated the recorded seq, is not the database the gateway last published from — a new epoch
starts at its next seq, before any new row can reuse a seq the head office already holds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import uuid
from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("pmg.epochs")

EPOCH_RE = re.compile(r"^[0-9a-f]{32}$")
SIDECAR_SUFFIX = ".epoch"


@dataclass(frozen=True)
class Epochs:
    """The epochs of one database, oldest first (a handful of rows: loaded whole)."""

    first_seqs: tuple[int, ...]
    ids: tuple[str, ...]

    @property
    def current(self) -> str:
        return self.ids[-1]

    def of(self, seq: int) -> str | None:
        """The epoch of ``seq`` (None below the first epoch's first seq)."""
        i = bisect_right(self.first_seqs, seq) - 1
        return self.ids[i] if i >= 0 else None

    def span(self, epoch: str, last_seq: int) -> tuple[int, int] | None:
        """[first, last] seqs allocated in ``epoch`` (``last_seq``: the outbox's highest allocated);
        None for an unknown epoch.  ``first > last`` when the epoch has no row yet."""
        if epoch not in self.ids:
            return None
        i = self.ids.index(epoch)
        end = self.first_seqs[i + 1] - 1 if i + 1 < len(self.ids) else last_seq
        return self.first_seqs[i], end


def load(conn: sqlite3.Connection) -> Epochs:
    rows = conn.execute("SELECT first_seq, epoch FROM outbox_epochs ORDER BY first_seq").fetchall()
    return Epochs(tuple(int(r[0]) for r in rows), tuple(str(r[1]) for r in rows))


def current(conn: sqlite3.Connection) -> str:
    return load(conn).current


def last_seq(conn: sqlite3.Connection) -> int:
    """The highest seq the outbox ever allocated (kept by AUTOINCREMENT after rows are trimmed)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    return int(row[0]) if row else 0


def rotate(conn: sqlite3.Connection, reason: str, now: datetime | None = None) -> str:
    """Start a new epoch at the outbox's next seq (inside the caller's transaction); returns it.
    An epoch that has no row yet is replaced rather than followed: it was never published."""
    epoch = uuid.uuid4().hex
    at = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    first = last_seq(conn) + 1
    conn.execute(
        "INSERT INTO outbox_epochs(first_seq, epoch, started_at, reason) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(first_seq) DO UPDATE SET epoch = excluded.epoch, started_at = excluded.started_at, "
        "reason = excluded.reason",
        (first, epoch, at, reason),
    )
    return epoch


def sidecar_path(database: Path) -> Path:
    return database.with_name(database.name + SIDECAR_SUFFIX)


@dataclass(frozen=True)
class Published:
    epoch: str
    seq: int


def read_published(database: Path) -> Published | None:
    """What the publisher last recorded beside ``database`` (None: nothing, or unreadable)."""
    try:
        data = json.loads(sidecar_path(database).read_text())
        epoch, seq = data["epoch"], data["published_seq"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(epoch, str) or not EPOCH_RE.match(epoch) or not isinstance(seq, int):
        return None
    return Published(epoch, seq)


def record_published(database: Path, epoch: str, seq: int) -> None:
    """Record that seqs up to ``seq`` of ``epoch`` are about to be public (a one-off write; the
    publisher keeps a ``Recorder`` open instead)."""
    recorder = Recorder(database)
    try:
        recorder.record(epoch, seq)
    finally:
        recorder.close()


RECORD_BYTES = 128  # the record is overwritten in place, padded with spaces to this size


class Recorder:
    """Writes the record beside the database before the publisher hands a new seq to the broker.

    One ``pwrite`` of a fixed-size record at offset 0 on a file kept open, without an fsync: about
    as cheap as a syscall gets (a temporary file renamed over the old one cost 2 ms here).  It
    survives the process being killed (the page cache has it); a power cut in the seconds after can
    lose it, and then a backup restored right after that cut is not noticed (docs/mqtt.md, "Epochs")."""

    def __init__(self, database: Path) -> None:
        self.path = sidecar_path(database)
        self._fd: int | None = None

    def record(self, epoch: str, seq: int) -> None:
        data = json.dumps({"epoch": epoch, "published_seq": seq}).encode()
        if self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
            os.ftruncate(fd, 0)
            self._fd = fd
        os.pwrite(self._fd, data.ljust(RECORD_BYTES - 1) + b"\n", 0)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def check_restored(conn: sqlite3.Connection, database: Path) -> str | None:
    """Start a new epoch if ``database`` is not the one the gateway last published from; returns the
    reason, or None.  Called when the database is opened for writing, before anything is written."""
    published = read_published(database)
    if published is None:
        return None
    epochs = load(conn)
    span = epochs.span(published.epoch, last_seq(conn))
    if span is None:
        reason = "other_database"  # a reinstall, or a backup of an older epoch
    elif published.seq > span[1]:
        reason = "restored"  # this database never allocated a seq that was published
    else:
        return None
    conn.execute("BEGIN IMMEDIATE")
    try:
        new = rotate(conn, reason)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    # the new epoch has published nothing yet; recorded so that the next opening does not rotate again
    try:
        record_published(database, new, last_seq(conn))
    except OSError as exc:
        log.warning("cannot record the outbox epoch beside %s: %s", database, exc)
    log.warning(
        "outbox epoch=%s started reason=%s (recorded epoch=%s published_seq=%d; database last seq=%d)",
        new,
        reason,
        published.epoch,
        published.seq,
        last_seq(conn),
    )
    return reason
