"""The relay command queue: a decided action becomes a ``relay_commands`` row (status ``pending``)
in the same transaction as the audit event that explains it; a later decision cancels it.

Persistence only — the policy engine (``gateway.policy.engine``) and a technician's command queue
here; the enforcer (``gateway.runtime.relay``) executes the rows through the bus workers.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from drivers.base import RelayAction, RelayState
from gateway.core.errors import OperationFailed
from gateway.core.timeutil import iso
from gateway.store import events
from gateway.store.db import dumps

MAX_ATTEMPTS = 5
RELAY_VALIDITY = timedelta(minutes=30)  # DL/T 645 command validity deadline
# A close restores supply, so a late execution harms no one, while a deadline the meter already sees
# as past (the gateway's clock slow, as when its time is untrusted) would strand a paid customer:
# closes carry a day (docs/enforcement.md, "Untrusted time").
CLOSE_VALIDITY = timedelta(days=1)
RETRY_BASE_S = 2.0

OPPOSITES: dict[RelayAction, tuple[RelayAction, ...]] = {
    RelayAction.TRIP: (RelayAction.DIRECT_CLOSE, RelayAction.CLOSE_PERMITTED),
    RelayAction.DIRECT_CLOSE: (RelayAction.TRIP,),
    RelayAction.CLOSE_PERMITTED: (RelayAction.TRIP,),
    RelayAction.KEEP_POWER_ON: (RelayAction.KEEP_POWER_OFF,),
    RelayAction.KEEP_POWER_OFF: (RelayAction.KEEP_POWER_ON,),
    RelayAction.ALARM_ON: (RelayAction.ALARM_OFF,),
    RelayAction.ALARM_OFF: (RelayAction.ALARM_ON,),
}


@dataclass(frozen=True)
class RelayCommand:
    id: int
    meter_id: str
    action: RelayAction
    attempts: int
    payment_id: str | None
    reason: str
    actor: str
    # Send only if the relay still reads open (withdrawing a close permission must never cut supply).
    only_if_open: bool = False


class NotSent(OperationFailed):
    """The command's precondition failed on the meter just before sending; nothing was sent."""

    def __init__(self, message: str, relay: RelayState | None) -> None:
        super().__init__(message)
        self.relay = relay


ONLY_IF_OPEN_RULE = "relay.only_if_open"


def request(
    conn: sqlite3.Connection,
    meter_id: str,
    action: RelayAction,
    now: datetime,
    *,
    reason: str,
    actor: str,
    trace: list[dict[str, Any]] | None = None,
    payment_id: str | None = None,
) -> int | None:
    """Queue a relay command inside the caller's transaction.

    Cancels pending commands that it supersedes; returns None (and queues nothing) when the same
    action is already pending for the meter.
    """
    already = conn.execute(
        "SELECT 1 FROM relay_commands WHERE meter_id = ? AND action = ? AND status IN ('pending', 'sending')",
        (meter_id, action.value),
    ).fetchone()
    if already is not None:
        return None
    cancel(
        conn,
        meter_id,
        OPPOSITES.get(action, ()),
        now,
        reason=f"superseded by {action.value}: {reason}",
        actor=actor,
        superseded_by=action,
    )
    account = conn.execute("SELECT account_id FROM meters WHERE id = ?", (meter_id,)).fetchone()
    cur = conn.execute(
        "INSERT INTO relay_commands(meter_id, action, status, reason, actor, trace_json, payment_id, "
        "created_at, updated_at) VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?)",
        (meter_id, action.value, reason, actor, dumps(trace or []), payment_id, iso(now), iso(now)),
    )
    assert cur.lastrowid is not None
    events.record(
        conn,
        "relay_command_queued",
        now,
        severity="warning" if action is RelayAction.TRIP else "info",
        account_id=account[0] if account else None,
        meter_id=meter_id,
        actor=actor,
        detail={"command_id": cur.lastrowid, "action": action.value, "reason": reason, "trace": trace or []},
    )
    return cur.lastrowid


def cancel(
    conn: sqlite3.Connection,
    meter_id: str,
    actions: tuple[RelayAction, ...],
    now: datetime,
    *,
    reason: str,
    actor: str,
    statuses: tuple[str, ...] = ("pending", "sending"),
    only_actor: str | None = None,
    superseded_by: RelayAction | None = None,
) -> int:
    """Cancel open commands of the given kinds for a meter (a payment cancels a pending cut).

    ``statuses`` narrows which open rows are touched (``pending`` only: leave a frame on the wire
    alone); ``only_actor`` leaves other actors' orders (a technician's) in place.
    """
    if not actions:
        return 0
    rows = conn.execute(
        f"SELECT id, action FROM relay_commands WHERE meter_id = ? "
        f"AND status IN ({','.join('?' for _ in statuses)}) "
        f"AND action IN ({','.join('?' for _ in actions)}) AND (? IS NULL OR actor = ?)",
        (meter_id, *statuses, *[a.value for a in actions], only_actor, only_actor),
    ).fetchall()
    for row_id, row_action in rows:
        conn.execute(
            "UPDATE relay_commands SET status = 'cancelled', outcome = ?, updated_at = ? WHERE id = ?",
            (reason, iso(now), row_id),
        )
        events.record(
            conn,
            "relay_command_cancelled",
            now,
            meter_id=meter_id,
            actor=actor,
            detail={
                "command_id": row_id,
                "action": row_action,
                "reason": reason,
                **({"superseded_by": superseded_by.value} if superseded_by else {}),
            },
        )
    return len(rows)
