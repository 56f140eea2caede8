"""The retained ``meters/<id>/state`` snapshot the head office keeps for each meter."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from gateway.core.money import format_money
from gateway.core.timeutil import iso
from gateway.store import outbox


def state_snapshot(conn: sqlite3.Connection, meter_id: str, now: datetime, *, minor_digits: int = 2) -> None:
    """Queue the snapshot (retained, non-billing: each one supersedes the last) in the caller's transaction."""
    row = conn.execute(
        "SELECT m.id, m.account_id, m.relay, a.balance_minor, a.policy_state, m.last_register_wh "
        "FROM meters m JOIN accounts a ON a.id = m.account_id WHERE m.id = ?",
        (meter_id,),
    ).fetchone()
    if row is None:
        return
    outbox.put(
        conn,
        f"meters/{meter_id}/state",
        {
            "schema": "pmg.state/1",
            "meter_id": row[0],
            "account_id": row[1],
            "relay": row[2],
            "balance": format_money(row[3], minor_digits),
            "policy_state": row[4],
            "register_wh": row[5],
            "at": iso(now),
        },
        now,
        billing=False,
        retain=True,
    )
