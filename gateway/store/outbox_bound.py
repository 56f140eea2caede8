"""The outbox's size bound: coalesce superseded state messages when the backlog grows too long.

Apart from ``gateway.store.outbox`` because it records an alarm event, and events mirror into the
outbox: this module sits above both, so neither imports the other back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.core.timeutil import iso, parse_iso
from gateway.store import events
from gateway.store.db import Store
from gateway.store.outbox import seq_ranges


@dataclass(frozen=True)
class BoundResult:
    pending: int
    coalesced: int  # superseded snapshots removed
    over: bool  # still over the bound after coalescing (billing messages are never dropped)


def enforce_bound(store: Store, max_messages: int, now: datetime) -> BoundResult:
    """Keep the backlog under ``max_messages`` without ever dropping a billing message.

    Over the bound, undelivered retained non-billing messages (``meters/<id>/state`` snapshots) that a
    newer undelivered message on the same topic supersedes are removed — the head office would only
    keep the last one anyway — and an alarm event names the removed seqs, so the head office's
    continuity check can tell a coalesced seq from a lost one.  If the backlog is still over the bound
    (billing messages alone exceed it) nothing is dropped and an alarm is raised, at most hourly.
    """
    pending = int(store.scalar("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL") or 0)
    if pending <= max_messages:
        return BoundResult(pending, 0, False)
    with store.tx() as conn:
        seqs = [
            r[0]
            for r in conn.execute(
                "SELECT o.seq FROM outbox o WHERE o.delivered_at IS NULL AND o.retain = 1 AND o.billing = 0 "
                "AND EXISTS (SELECT 1 FROM outbox n WHERE n.topic = o.topic AND n.seq > o.seq "
                "AND n.delivered_at IS NULL) ORDER BY o.seq"
            )
        ]
        for i in range(0, len(seqs), 500):
            chunk = seqs[i : i + 500]
            conn.execute(f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(chunk))})", chunk)
        if seqs:
            events.record(
                conn,
                "outbox_coalesced",
                now,
                severity="alarm",
                detail={"count": len(seqs), "seq_ranges": seq_ranges(seqs), "bound": max_messages},
            )
        remaining = pending - len(seqs) + (1 if seqs else 0)
        over = remaining > max_messages
        if over:
            last = conn.execute("SELECT value FROM meta WHERE key = 'outbox_over_bound_alarm_at'").fetchone()
            if last is None or (now - parse_iso(last[0])).total_seconds() >= 3600:
                events.record(
                    conn,
                    "outbox_over_bound",
                    now,
                    severity="alarm",
                    detail={"pending": remaining, "bound": max_messages, "note": "billing messages are kept"},
                )
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('outbox_over_bound_alarm_at', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (iso(now),),
                )
    return BoundResult(remaining, len(seqs), over)
