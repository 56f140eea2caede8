"""Read requests: "read this meter now" asked by a process that cannot open the line.

The running daemon owns every serial line (one bus worker per line, ``gateway.runtime.bus``), so
``pmg meter read-now`` and the web console cannot read a meter themselves.  They ``put`` a row here
(with its audit event, in one transaction); the daemon's watcher (``gateway.runtime.read_watch``)
``take``s the pending rows, reads the meter at the head of its bus's queue and ``finish``es the row
with the reading's id, or with why not.  The table is durable: a request written while the daemon is
down waits for its start, which serves it, or expires it when it has become stale.

Persistence only; no clock of its own (the caller passes ``now``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from gateway.core.timeutil import iso, parse_iso
from gateway.store import events

Final = Literal["done", "failed", "expired"]
STATUSES = ("pending", "done", "failed", "expired")


@dataclass(frozen=True)
class ReadRequest:
    id: int
    meter_id: str
    requested_at: datetime
    requested_by: str
    status: str
    finished_at: datetime | None = None
    reading_id: int | None = None
    result: str | None = None

    @property
    def pending(self) -> bool:
        return self.status == "pending"


_COLUMNS = "id, meter_id, requested_at, requested_by, status, finished_at, reading_id, result"


def _row(r: tuple[object, ...]) -> ReadRequest:
    return ReadRequest(
        id=int(r[0]),  # type: ignore[call-overload]
        meter_id=str(r[1]),
        requested_at=parse_iso(str(r[2])),
        requested_by=str(r[3]),
        status=str(r[4]),
        finished_at=None if r[5] is None else parse_iso(str(r[5])),
        reading_id=None if r[6] is None else int(r[6]),  # type: ignore[call-overload]
        result=None if r[7] is None else str(r[7]),
    )


def put(conn: sqlite3.Connection, meter_id: str, requested_by: str, now: datetime) -> int:
    """Ask for a read of ``meter_id`` (inside the caller's transaction, with the audit event that names
    who asked); returns the request's id."""
    cur = conn.execute(
        "INSERT INTO read_requests(meter_id, requested_at, requested_by) VALUES (?, ?, ?)",
        (meter_id, iso(now), requested_by),
    )
    assert cur.lastrowid is not None
    events.record(
        conn, "read_requested", now, meter_id=meter_id, actor=requested_by, detail={"request_id": cur.lastrowid}
    )
    return cur.lastrowid


def get(conn: sqlite3.Connection, request_id: int) -> ReadRequest | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM read_requests WHERE id = ?", (request_id,)).fetchone()
    return None if row is None else _row(tuple(row))


def take(conn: sqlite3.Connection, *, exclude: Collection[int] = (), limit: int = 100) -> list[ReadRequest]:
    """The pending requests, oldest first, but for ``exclude`` (those the daemon is already serving).

    Taking does not change a row: a request is pending until it is finished, so a daemon that dies
    while serving it serves it again at its next start (a second read of a meter is a normal poll)."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM read_requests WHERE status = 'pending' ORDER BY id LIMIT ?",
        (limit + len(exclude),),
    ).fetchall()
    return [r for r in (_row(tuple(x)) for x in rows) if r.id not in exclude][:limit]


def finish(
    conn: sqlite3.Connection,
    request_id: int,
    status: Final,
    now: datetime,
    result: str,
    *,
    reading_id: int | None = None,
) -> bool:
    """Record a request's outcome; False when it was no longer pending (finished once only)."""
    if status not in ("done", "failed", "expired"):
        raise ValueError(f"not a final status: {status!r}")
    cur = conn.execute(
        "UPDATE read_requests SET status = ?, finished_at = ?, result = ?, reading_id = ? "
        "WHERE id = ? AND status = 'pending'",
        (status, iso(now), result, reading_id, request_id),
    )
    return cur.rowcount == 1


def pending_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM read_requests WHERE status = 'pending'").fetchone()[0])
