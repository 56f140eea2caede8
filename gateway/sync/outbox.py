"""The transactional outbox: put inside the change's transaction, get a pack, mark it delivered.

A message is written in the same SQLite transaction as the change it reports, so the head office can
never hear of a charge that did not happen nor miss one that did.  Its ``seq`` (an AUTOINCREMENT key,
never reused even after trimming) is the per-gateway sequence number the head office deduplicates by.
Rows are only marked delivered on the broker's acknowledgement and trimmed later by housekeeping.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.store.db import Store, dumps
from gateway.timeutil import iso

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class OutboxMessage:
    seq: int
    topic: str  # relative to "<prefix>/<gateway_id>/"
    payload: str  # JSON object without the envelope
    qos: int
    retain: bool
    billing: bool
    created_at: str

    def envelope(self, gateway_id: str) -> bytes:
        """The bytes published: the payload with gateway id and sequence number added."""
        body: dict[str, Any] = json.loads(self.payload)
        body["gateway_id"] = gateway_id
        body["seq"] = self.seq
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def put(
    conn: sqlite3.Connection,
    topic: str,
    payload: dict[str, Any],
    now: datetime,
    *,
    billing: bool = True,
    retain: bool = False,
    qos: int = 1,
) -> int:
    """Append a message inside the caller's open transaction; returns its sequence number."""
    body = {"schema": payload.pop("schema"), **payload} if "schema" in payload else payload
    cur = conn.execute(
        "INSERT INTO outbox(topic, payload, qos, retain, billing, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (topic, dumps(body), qos, int(retain), int(billing), iso(now)),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def pending(store: Store, after_seq: int = 0, limit: int = 500) -> list[OutboxMessage]:
    """The oldest undelivered messages with ``seq > after_seq``, in sequence order."""
    rows = store.all(
        "SELECT seq, topic, payload, qos, retain, billing, created_at FROM outbox "
        "WHERE delivered_at IS NULL AND seq > ? ORDER BY seq LIMIT ?",
        after_seq,
        limit,
    )
    return [
        OutboxMessage(
            r["seq"],
            r["topic"],
            r["payload"],
            r["qos"],
            bool(r["retain"]),
            bool(r["billing"]),
            r["created_at"],
        )
        for r in rows
    ]


def mark_delivered(store: Store, seqs: list[int], now: datetime) -> None:
    """Record the broker's acknowledgements (idempotent)."""
    if not seqs:
        return
    with store.tx() as conn:
        conn.executemany(
            "UPDATE outbox SET delivered_at = ? WHERE seq = ? AND delivered_at IS NULL",
            [(iso(now), s) for s in seqs],
        )


@dataclass(frozen=True)
class Backlog:
    messages: int
    billing_messages: int
    oldest_created_at: str | None
    last_seq: int


def backlog(store: Store) -> Backlog:
    row = store.one(
        "SELECT COUNT(*) AS n, COALESCE(SUM(billing), 0) AS b, MIN(created_at) AS oldest "
        "FROM outbox WHERE delivered_at IS NULL"
    )
    last = store.scalar("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'") or 0
    assert row is not None
    return Backlog(row["n"], row["b"], row["oldest"], int(last))


def trim_delivered(store: Store, before: datetime, keep_last: int = 1000) -> int:
    """Delete delivered rows older than ``before`` (never undelivered ones).  Returns rows removed."""
    with store.tx() as conn:
        max_seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]
        cur = conn.execute(
            "DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < ? AND seq <= ?",
            (iso(before), max_seq - keep_last),
        )
        return cur.rowcount
