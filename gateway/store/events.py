"""The audit log: every relay action, blocked action, notice, warning, quarantine and alarm.

An event is inserted in the same transaction as the change it describes and mirrored to the outbox
(topic ``events``) so the head office has the same evidence the gateway keeps.  The table is
append-only (enforced by triggers).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

from gateway.core.timeutil import iso
from gateway.store import outbox
from gateway.store.db import dumps

SEVERITIES = ("info", "warning", "alarm")


def record(
    conn: sqlite3.Connection,
    kind: str,
    now: datetime,
    *,
    severity: str = "info",
    account_id: str | None = None,
    meter_id: str | None = None,
    actor: str = "gateway",
    detail: dict[str, Any] | None = None,
    publish: bool = True,
) -> int:
    """Append an audit event inside the caller's transaction (and queue it for the head office)."""
    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}")
    detail = detail or {}
    cur = conn.execute(
        "INSERT INTO events(at, kind, severity, account_id, meter_id, actor, detail_json) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (iso(now), kind, severity, account_id, meter_id, actor, dumps(detail)),
    )
    assert cur.lastrowid is not None
    if publish:
        outbox.put(
            conn,
            "events",
            {
                "schema": "pmg.event/1",
                "event_id": cur.lastrowid,
                "at": iso(now),
                "kind": kind,
                "severity": severity,
                "account_id": account_id,
                "meter_id": meter_id,
                "actor": actor,
                "detail": detail,
            },
            now,
            billing=kind not in ("comms_restored",),
        )
    return cur.lastrowid
