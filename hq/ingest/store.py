"""One batch, one transaction: what a worker received goes into PostgreSQL exactly once.

The rows are COPYed into temporary staging tables, then ``received`` admits the new
``(gateway_id, epoch, seq)`` keys (``ON CONFLICT DO NOTHING``) and only the admitted ones reach the
typed tables.  Two workers holding the same redelivered message (one died after its commit but
before its PUBACK) race on ``received``'s primary key: the second waits for the first's transaction
and then admits nothing.  The worker acknowledges the batch to the broker only after ``commit``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from hq.ingest.schema import Message, Rejected, money

STAGING = """
CREATE TEMP TABLE IF NOT EXISTS stage_recv (gateway_id text, epoch text, seq bigint, topic text, kind text,
    counted boolean, resent boolean, body jsonb) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_usage (gateway_id text, epoch text, seq bigint, meter_id text,
    account_id text, interval_start timestamptz, interval_end timestamptz, register_wh bigint, energy_wh bigint,
    charge numeric, balance numeric) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS fresh (gateway_id text, epoch text, seq bigint) ON COMMIT DELETE ROWS;
"""


def configure(conn: Any) -> None:
    """Per connection (the pool's ``configure``): the staging tables live as long as the session."""
    conn.autocommit = True
    conn.execute(STAGING)
    conn.autocommit = False


@dataclass
class Outcome:
    stored: int = 0  # new sequenced messages
    duplicates: int = 0
    unsequenced: int = 0
    quarantined: int = 0
    months: set[date] = field(default_factory=set)


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def month_of(instant: str) -> date:
    d = datetime.fromisoformat(instant)
    if d.utcoffset():
        from datetime import UTC

        d = d.astimezone(UTC)
    return date(d.year, d.month, 1)


def ensure_month(conn: Any, month: date) -> None:
    """The usage partition for ``month`` (in its own short transaction, before the batch's).

    Rows of a month without a partition land in ``usage_default``; once such rows exist the month's
    partition cannot be created (PostgreSQL refuses a partition whose rows sit in the default), so
    partitions are made ahead, on first sight of a month.
    """
    nxt = date(month.year + (month.month == 12), month.month % 12 + 1, 1)
    name = f"usage_{month.year:04d}_{month.month:02d}"
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (0x504D4750,))
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]
        if exists:
            return
        busy = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM usage_default WHERE interval_end >= %s AND interval_end < %s)",
            (month, nxt),
        ).fetchone()[0]
        if not busy:
            conn.execute(f"CREATE TABLE {name} PARTITION OF usage FOR VALUES FROM ('{month}') TO ('{nxt}')")


def write_batch(conn: Any, messages: Iterable[Message], rejected: Iterable[Rejected] = ()) -> Outcome:
    """Store one batch in one transaction (committed on return)."""
    out = Outcome()
    recv: dict[tuple[str, str, int], Message] = {}
    unseq: list[Message] = []
    statuses: dict[str, Message] = {}
    heads: list[Message] = []
    for m in messages:
        if m.kind == "status":
            heads.append(m)
            prev = statuses.get(m.gateway_id)
            if prev is None or str(m.body["at"]) >= str(prev.body["at"]):
                statuses[m.gateway_id] = m
        elif m.seq is None or m.epoch is None:
            unseq.append(m)
        else:
            key = (m.gateway_id, m.epoch, m.seq)
            if key in recv:
                out.duplicates += 1
            else:
                recv[key] = m
    bad = list(rejected)
    with conn.transaction(), conn.cursor() as cur:
        usage = [m for m in recv.values() if m.kind == "usage"]
        others = [m for m in recv.values() if m.kind != "usage"]
        if usage:  # the hot path: one COPY; received and usage filled from it in one statement
            with cur.copy(
                "COPY stage_usage (gateway_id, epoch, seq, meter_id, account_id, interval_start, "
                "interval_end, register_wh, energy_wh, charge, balance) FROM STDIN"
            ) as copy:
                for m in usage:
                    b = m.body
                    copy.write_row(
                        (m.gateway_id, m.epoch, m.seq, b["meter_id"], b["account_id"], b["interval_start"],
                         b["interval_end"], b["register_wh"], b["energy_wh"], b["charge"], b["balance"])
                    )
            resent = [k for k, m in recv.items() if m.kind == "usage" and m.resent]
            cur.execute(
                "WITH ins AS (INSERT INTO received (gateway_id, epoch, seq, topic, kind, counted, resent) "
                "SELECT gateway_id, epoch, seq, 'meters/' || meter_id || '/usage', 'usage', true, false "
                "FROM stage_usage ON CONFLICT DO NOTHING RETURNING gateway_id, epoch, seq) "
                "INSERT INTO usage SELECT s.* FROM stage_usage s JOIN ins USING (gateway_id, epoch, seq)"
            )
            out.stored += cur.rowcount
            if resent:  # a resent usage message: marked as such (rare: only after a gap)
                cur.executemany(
                    "UPDATE received SET resent = true WHERE gateway_id = %s AND epoch = %s AND seq = %s "
                    "AND received_at = now()",
                    resent,
                )
            cur.execute(
                "INSERT INTO epochs (gateway_id, epoch) SELECT DISTINCT gateway_id, epoch FROM stage_usage "
                "ON CONFLICT DO NOTHING"
            )
        if others:
            with cur.copy(
                "COPY stage_recv (gateway_id, epoch, seq, topic, kind, counted, resent, body) FROM STDIN"
            ) as copy:
                for m in others:
                    copy.write_row(
                        (m.gateway_id, m.epoch, m.seq, m.topic, m.kind, m.counted, m.resent, _dumps(m.body))
                    )
            cur.execute(
                "WITH ins AS (INSERT INTO received (gateway_id, epoch, seq, topic, kind, counted, resent, body) "
                "SELECT gateway_id, epoch, seq, topic, kind, counted, resent, body FROM stage_recv "
                "ON CONFLICT DO NOTHING RETURNING gateway_id, epoch, seq) INSERT INTO fresh SELECT * FROM ins"
            )
            out.stored += cur.rowcount
            cur.execute(
                "INSERT INTO epochs (gateway_id, epoch) SELECT DISTINCT gateway_id, epoch FROM stage_recv "
                "ON CONFLICT DO NOTHING"
            )
        out.duplicates += len(recv) - out.stored
        if others:
            _payments(cur, [m for m in recv.values() if m.kind == "event" and m.body["kind"] == "payment_applied"])
            _skips(cur, [m for m in recv.values() if m.kind == "event" and m.body["kind"] == "outbox_coalesced"])
            _resend_acks(cur, [m for m in recv.values() if m.kind == "ack"])
        for m in unseq:
            cur.execute(
                "INSERT INTO unsequenced (gateway_id, topic, kind, body) VALUES (%s, %s, %s, %s)",
                (m.gateway_id, m.topic, m.kind, _dumps(m.body)),
            )
            out.unsequenced += 1
        _resend_acks(cur, [m for m in unseq if m.kind == "ack"])
        for m in statuses.values():
            _status(cur, m)
        for m in heads:
            _head(cur, m)
        for r in bad:
            cur.execute(
                "INSERT INTO quarantine (topic, gateway_id, reason, payload) VALUES (%s, %s, %s, %s)",
                (r.topic, r.gateway_id, r.reason, r.payload),
            )
            out.quarantined += 1
    return out


def _payments(cur: Any, events: list[Message]) -> None:
    if not events:
        return
    cur.executemany(
        "INSERT INTO payments (gateway_id, epoch, seq, account_id, payment_id, amount, balance, at) "
        "SELECT %s, %s, %s, %s, %s, %s, %s, %s "
        "WHERE EXISTS (SELECT 1 FROM fresh WHERE gateway_id = %s AND epoch = %s AND seq = %s)",
        [
            (m.gateway_id, m.epoch, m.seq, m.body["account_id"], m.body["detail"]["payment_id"],
             money(m.body["detail"]["amount"]), money(m.body["detail"]["balance"]), m.body["at"],
             m.gateway_id, m.epoch, m.seq)
            for m in events
        ],
    )


def _ranges(value: Any) -> list[tuple[int, int]]:
    """``[[from, to], ...]`` as published; anything else is ignored (the message itself was valid)."""
    out: list[tuple[int, int]] = []
    if isinstance(value, list):
        for r in value:
            if (
                isinstance(r, list) and len(r) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) for x in r) and 1 <= r[0] <= r[1]
            ):
                out.append((r[0], r[1]))
    return out


def _skips(cur: Any, events: list[Message]) -> None:
    rows = [
        (m.gateway_id, m.epoch, lo, hi, "coalesced")
        for m in events
        for lo, hi in _ranges(m.body["detail"].get("seq_ranges"))
    ]
    if rows:
        cur.executemany(
            "INSERT INTO seq_skips (gateway_id, epoch, from_seq, to_seq, reason) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            rows,
        )


def _resend_acks(cur: Any, acks: list[Message]) -> None:
    """A ``resend``'s ack: ranges the gateway no longer keeps are lost, not gaps to ask for again."""
    for m in acks:
        if m.body.get("type") != "resend" or not isinstance(m.body.get("command_id"), str):
            continue
        row = cur.execute(
            "UPDATE resends SET ack = %s WHERE command_id = %s AND gateway_id = %s RETURNING epoch",
            (_dumps(m.body), m.body["command_id"], m.gateway_id),
        ).fetchone()
        if row is None:
            continue
        result = m.body.get("result")
        gone = _ranges(m.body.get("gone", result.get("gone") if isinstance(result, dict) else None))
        if gone:
            cur.executemany(
                "INSERT INTO seq_skips (gateway_id, epoch, from_seq, to_seq, reason) "
                "VALUES (%s, %s, %s, %s, 'gone') ON CONFLICT DO NOTHING",
                [(m.gateway_id, row[0], lo, hi) for lo, hi in gone],
            )


def _status(cur: Any, m: Message) -> None:
    b = m.body
    cur.execute(
        "INSERT INTO gateways AS g (gateway_id, epoch, status, status_at, last_seen) VALUES (%s, %s, %s, %s, now()) "
        "ON CONFLICT (gateway_id) DO UPDATE SET epoch = coalesce(excluded.epoch, g.epoch), status = excluded.status, "
        "status_at = excluded.status_at, last_seen = now() "
        "WHERE g.status_at IS NULL OR excluded.status_at >= g.status_at",
        (m.gateway_id, m.epoch, _dumps(b), b["at"]),
    )


def _head(cur: Any, m: Message) -> None:
    """Every chain head a status carried (docs/ledger.md, "Tamper evidence"): reconcile compares them."""
    b = m.body
    cur.execute(
        "INSERT INTO chain_heads (gateway_id, epoch, chain_length, chain_head) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT DO NOTHING",
        (m.gateway_id, m.epoch or "", b["chain_length"], b["chain_head"]),
    )
