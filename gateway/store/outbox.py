"""The transactional outbox: put inside the change's transaction, get a pack, mark it delivered.

A message is written in the same SQLite transaction as the change it reports, so the head office can
never hear of a charge that did not happen nor miss one that did.  Its ``seq`` (an AUTOINCREMENT key,
never reused even after trimming) is the per-gateway sequence number the head office deduplicates by.
Rows are only marked delivered on the broker's acknowledgement (a cheap, non-fsync'ed commit: see
``mark_delivered``) and trimmed later by housekeeping.  Every message is published with its epoch
(``gateway.store.epochs``) beside its seq; a retained snapshot is marked ``"snapshot": true`` and a
message published again on the head office's request (``kept``) ``"resent": true``.
"""

from __future__ import annotations

import json
import sqlite3
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple

from gateway.core.timeutil import iso, parse_iso
from gateway.store import epochs
from gateway.store.db import Store, dumps

SCHEMA_VERSION = 1


class OutboxMessage(NamedTuple):
    """One outbox row as published (a NamedTuple: immutable, and cheap to build for every message the
    drain reads, where a frozen dataclass set each of its eight fields through object.__setattr__)."""

    seq: int
    topic: str  # relative to "<prefix>/<gateway_id>/"
    payload: str  # JSON object without the envelope
    qos: int
    retain: bool
    billing: bool
    created_at: str
    epoch: str = ""  # the epoch of seq (gateway.store.epochs: 32 hex digits); "" only for one built by hand

    def envelope(self, gateway_id: str, *, resent: bool = False) -> bytes:
        """The bytes published: the payload with gateway id, epoch and sequence number added, and
        ``"snapshot": true`` for a retained message, ``"resent": true`` for one sent again.

        The stored payload is already compact JSON, so the keys are spliced in front of it rather
        than parsing and re-encoding every message (the drain's hottest line)."""
        body = self.payload
        if (
            not body.startswith("{")
            or '"gateway_id":' in body
            or '"seq":' in body
            or '"epoch":' in body
            or '"snapshot":' in body
            or '"resent":' in body
        ):
            parsed: dict[str, Any] = json.loads(body)
            parsed["gateway_id"] = gateway_id
            parsed["epoch"] = self.epoch
            parsed["seq"] = self.seq
            if self.retain:
                parsed["snapshot"] = True
            if resent:
                parsed["resent"] = True
            return json.dumps(parsed, separators=(",", ":"), ensure_ascii=False).encode()
        # the epoch is hex digits: no escaping needed
        head = f'{_gateway_json(gateway_id)},"epoch":"{self.epoch}","seq":{self.seq}'
        if self.retain:
            head += ',"snapshot":true'
        if resent:
            head += ',"resent":true'
        return (head + ("}" if body.strip() == "{}" else "," + body[1:])).encode()


@lru_cache(maxsize=16)
def _gateway_json(gateway_id: str) -> str:
    """The envelope's first member: the same for every message of a gateway, encoded once."""
    return '{"gateway_id":' + json.dumps(gateway_id)


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
    return put_text(conn, topic, dumps(payload), now, billing=billing, retain=retain, qos=qos)


_INSERT_MESSAGE = "INSERT INTO outbox(topic, payload, qos, retain, billing, created_at) VALUES (?, ?, ?, ?, ?, ?)"
# The same insert for the usual message (QoS 1, not retained, billing): its constants in the SQL text
# rather than bound, each a parameter less for sqlite3 to convert and bind.
_INSERT_BILLING_MESSAGE = (
    "INSERT INTO outbox(topic, payload, qos, retain, billing, created_at) VALUES (?, ?, 1, 0, 1, ?)"
)


def put_text(
    conn: sqlite3.Connection,
    topic: str,
    payload: str,
    now: datetime,
    *,
    billing: bool = True,
    retain: bool = False,
    qos: int = 1,
) -> int:
    """``put`` of a body already serialised as compact JSON (an object), for the per-reading path."""
    if billing is True and retain is False and type(qos) is int and qos == 1:  # the usual message: constants
        cur = conn.execute(_INSERT_BILLING_MESSAGE, (topic, payload, iso(now)))
    else:
        cur = conn.execute(_INSERT_MESSAGE, (topic, payload, qos, int(retain), int(billing), iso(now)))
    assert cur.lastrowid is not None
    return cur.lastrowid


_PENDING = (
    "SELECT seq, topic, payload, qos, retain, billing, created_at FROM outbox "
    "WHERE delivered_at IS NULL AND seq > ? ORDER BY seq LIMIT ?"
)


def pending(store: Store, after_seq: int = 0, limit: int = 500) -> list[OutboxMessage]:
    """The oldest undelivered messages with ``seq > after_seq``, in sequence order.

    The drain's read: plain tuples (not ``sqlite3.Row``), and the epoch looked up once when the whole
    batch lies in one epoch (epochs begin at increasing seqs), as it nearly always does."""
    cur = store.conn.cursor()
    cur.row_factory = None
    rows = cur.execute(_PENDING, (after_seq, limit)).fetchall()
    if not rows:
        return []
    known = epochs.load(store.conn)
    starts = known.first_seqs
    if bisect_right(starts, rows[0][0]) == bisect_right(starts, rows[-1][0]):
        epoch = known.of(rows[0][0]) or ""
        return [
            OutboxMessage(seq, topic, payload, qos, bool(retain), bool(billing), created_at, epoch)
            for seq, topic, payload, qos, retain, billing, created_at in rows
        ]
    return [
        OutboxMessage(seq, topic, payload, qos, bool(retain), bool(billing), created_at, known.of(seq) or "")
        for seq, topic, payload, qos, retain, billing, created_at in rows
    ]


def _messages(store: Store, rows: list[Any]) -> list[OutboxMessage]:
    known = epochs.load(store.conn) if rows else None
    return [
        OutboxMessage(
            r["seq"],
            r["topic"],
            r["payload"],
            r["qos"],
            bool(r["retain"]),
            bool(r["billing"]),
            r["created_at"],
            (known.of(r["seq"]) if known else None) or "",
        )
        for r in rows
    ]


@dataclass(frozen=True)
class Kept:
    """What the outbox still holds of one epoch's seq range (the ``resend`` command)."""

    delivered: list[OutboxMessage]  # to publish again, in seq order
    undelivered: list[int]  # seqs the normal publisher will send anyway
    gone: list[list[int]]  # inclusive ranges no longer kept, never allocated, or of another epoch

    @property
    def resent(self) -> list[list[int]]:
        return seq_ranges([m.seq for m in self.delivered] + self.undelivered)


def kept(store: Store, epoch: str, from_seq: int, to_seq: int) -> Kept:
    """The rows of ``epoch`` with ``from_seq <= seq <= to_seq`` the outbox still holds."""
    span = epochs.load(store.conn).span(epoch, epochs.last_seq(store.conn))
    lo, hi = (max(from_seq, span[0]), min(to_seq, span[1])) if span else (1, 0)
    delivered: list[OutboxMessage] = []
    undelivered: list[int] = []
    if lo <= hi:
        rows = store.all(
            "SELECT seq, topic, payload, qos, retain, billing, created_at, delivered_at FROM outbox "
            "WHERE seq BETWEEN ? AND ? ORDER BY seq",
            lo,
            hi,
        )
        for m, r in zip(_messages(store, rows), rows, strict=True):
            if r["delivered_at"] is None:
                undelivered.append(m.seq)
            else:
                delivered.append(m)
    present = {m.seq for m in delivered} | set(undelivered)
    gone = seq_ranges([s for s in range(from_seq, to_seq + 1) if s not in present])
    return Kept(delivered, undelivered, gone)


def mark_delivered(store: Store, seqs: list[int], now: datetime) -> None:
    """Record the broker's acknowledgements (idempotent).

    Committed without an fsync (``store.tx(durable=False)``): at a trickle every message would
    otherwise cost two fsync'ed commits, its own and its mark.  A mark lost to a power cut only
    leaves the message undelivered, so it is sent again with the same seq and the head office drops
    the duplicate; a lost mark can never make a message look delivered that was not."""
    if not seqs:
        return
    with store.tx(durable=False) as conn:
        # PUBACKs come in order, so the seqs form a few runs: one statement per run, not per message
        conn.executemany(
            "UPDATE outbox SET delivered_at = ? WHERE seq BETWEEN ? AND ? AND delivered_at IS NULL",
            [(iso(now), lo, hi) for lo, hi in seq_ranges(seqs)],
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


def backlog_metrics(store: Store, now: datetime) -> dict[str, int | float | None]:
    """Backlog size and age for ``pmg status`` and the metrics endpoint (gauges, plain numbers)."""
    b = backlog(store)
    age = (
        None
        if b.oldest_created_at is None
        else max(0.0, (now - parse_iso(b.oldest_created_at)).total_seconds())
    )
    delivered = store.scalar("SELECT COALESCE(MAX(seq), 0) FROM outbox WHERE delivered_at IS NOT NULL")
    return {
        "pmg_outbox_backlog_messages": b.messages,
        "pmg_outbox_backlog_billing_messages": b.billing_messages,
        "pmg_outbox_backlog_oldest_age_seconds": age,
        "pmg_outbox_last_seq": b.last_seq,
        "pmg_outbox_last_delivered_seq": int(delivered or 0),
    }


def seq_ranges(seqs: list[int]) -> list[list[int]]:
    """[1, 2, 3, 7, 9, 10] -> [[1, 3], [7, 7], [9, 10]] (inclusive ranges, compact in an event)."""
    out: list[list[int]] = []
    for s in sorted(seqs):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out
