"""A technician's manual relay order (``pmg relay``, the web console): an override so the automatic
policy does not undo it while it lasts, and a durable relay command the running daemon's enforcer
executes and confirms by read-back — both audited with the order's rule trace, in the caller's
transaction (docs/enforcement.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from drivers.base import RelayAction
from gateway.core.timeutil import iso
from gateway.store import events, relay_queue


def order_trace(
    operation: str,
    reason: str,
    who: str,
    protected: bool,
    category: str | None,
    keep_power: bool,
    allow_protected: bool,
) -> list[dict[str, Any]]:
    """The rule trace of a manual order, in the shape the policy's traces have."""
    trace: list[dict[str, Any]] = [
        {"rule": "override.manual", "passed": True, "detail": f"{who} ordered {operation}: {reason}"},
        {
            "rule": "protected.customer",
            "passed": not protected,
            "detail": f"protected ({category or 'flagged'})" if protected else "not protected",
        },
        {
            "rule": "keep_power",
            "passed": not keep_power,
            "detail": "keep-power (保电) is set" if keep_power else "keep-power not set",
        },
    ]
    if operation == "open" and (protected or keep_power):
        trace.append(
            {
                "rule": "override.allow_protected",
                "passed": allow_protected,
                "detail": f"{who} gave --allow-protected" if allow_protected else "not allowed",
            }
        )
    return trace


def queue_order(
    conn: Any,
    meter_id: str,
    account_id: str,
    operation: str,
    reason: str,
    who: str,
    allow_protected: bool,
    now: datetime,
    until: datetime,
    trace: list[dict[str, Any]],
) -> dict[str, Any]:
    action, relay_action = (
        ("disconnect", RelayAction.TRIP) if operation == "open" else ("connect", RelayAction.DIRECT_CLOSE)
    )
    # The latest order wins: an earlier opposite order on this meter is cleared, not left to conflict.
    opposite = "connect" if action == "disconnect" else "disconnect"
    for (oid,) in conn.execute(
        "SELECT id FROM overrides WHERE target = ? AND action = ? AND cleared_at IS NULL AND expires_at > ?",
        (meter_id, opposite, iso(now)),
    ).fetchall():
        conn.execute("UPDATE overrides SET cleared_at = ? WHERE id = ?", (iso(now), oid))
        events.record(
            conn,
            "override_cleared",
            now,
            meter_id=meter_id,
            account_id=account_id,
            actor=who,
            detail={"override_id": oid, "reason": f"superseded by {operation}: {reason}"},
        )
    cur = conn.execute(
        "INSERT INTO overrides(target, action, reason, actor, allow_protected, created_at, expires_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (meter_id, action, reason, who, int(allow_protected), iso(now), iso(until)),
    )
    override_id = cur.lastrowid
    command_id = relay_queue.request(
        conn, meter_id, relay_action, now, reason=f"manual {operation}: {reason}", actor=who, trace=trace
    )
    detail = {
        "override_id": override_id,
        "command_id": command_id,
        "target": meter_id,
        "action": action,
        "reason": reason,
        "until": iso(until),
        "allow_protected": allow_protected,
        "trace": trace,
    }
    events.record(
        conn,
        "override_set",
        now,
        severity="warning",
        account_id=account_id,
        meter_id=meter_id,
        actor=who,
        detail=detail,
    )
    return {"meter_id": meter_id, "operation": operation, **detail}
