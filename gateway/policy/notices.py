"""Delivery of disconnection notices: which notice, and when and how it reached the customer.

The policy *issues* a notice (``policy_serve_notice`` event, carrying the ``notice_id`` below); the
notice is *served* — and its period starts — only once it reached the customer.  Where the rules
say ``notice.delivery = "head_office"`` the head office confirms that with a signed ``notice``
command (SMS gateway receipt, letter handed over, visit, app read receipt); this module checks such a
confirmation against the account and records it.  Nothing here decides a cut: the caller re-decides
the account in the same transaction (docs/enforcement.md, "Notice delivery").
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.core.errors import UserError
from gateway.core.timeutil import iso, parse_iso
from gateway.store import events

# How a notice can reach a customer, as the head office reports it.
CHANNELS = ("sms", "letter", "in_person", "app", "email", "phone")
# A delivery time this far ahead of the gateway's clock is clock skew, not a claim about the future
# (the same allowance a command's ``issued_at`` gets).
FUTURE_TOLERANCE = timedelta(minutes=5)


class NoticeError(UserError, ValueError):
    """A delivery confirmation that does not fit the account; ``str()`` is one line, nothing changed."""


def notice_id(account_id: str, issued_at: datetime) -> str:
    """The id of the notice issued to ``account_id`` at ``issued_at``: stable, readable, unique per account."""
    t = issued_at.astimezone(UTC)
    frac = f".{t.microsecond:06d}" if t.microsecond else ""
    return f"{account_id}:{t:%Y%m%dT%H%M%S}{frac}Z"


def confirm_delivery(
    conn: sqlite3.Connection,
    account_id: str,
    confirmed_notice: str,
    channel: str,
    delivered_at: datetime,
    now: datetime,
    *,
    actor: str,
) -> dict[str, Any]:
    """Record that the outstanding notice of ``account_id`` reached the customer, inside the caller's
    transaction; raises ``NoticeError`` (and changes nothing) when the confirmation does not fit."""
    if channel not in CHANNELS:
        raise NoticeError(f"unknown channel {channel!r} (known: {', '.join(CHANNELS)})")
    row = conn.execute(
        "SELECT notice_served_at, notice_delivered_at, notice_channel FROM accounts WHERE id = ?", (account_id,)
    ).fetchone()
    if row is None:
        raise NoticeError(f"no account '{account_id}'")
    if row[0] is None:
        raise NoticeError(f"notice '{confirmed_notice}' was not issued: account '{account_id}' has no notice outstanding")
    issued = parse_iso(row[0])
    current = notice_id(account_id, issued)
    if confirmed_notice != current:
        raise NoticeError(
            f"notice '{confirmed_notice}' was not issued or is no longer outstanding "
            f"(account '{account_id}' has '{current}')"
        )
    if row[1] is not None:
        raise NoticeError(f"notice '{current}' was already delivered at {row[1]} ({row[2] or 'unknown channel'})")
    if delivered_at > now + FUTURE_TOLERANCE:
        raise NoticeError(f"delivered_at {iso(delivered_at)} is in the future (gateway time {iso(now)})")
    if delivered_at < issued:
        raise NoticeError(f"delivered_at {iso(delivered_at)} is before the notice was issued ({iso(issued)})")
    conn.execute(
        "UPDATE accounts SET notice_delivered_at = ?, notice_channel = ? WHERE id = ?",
        (iso(delivered_at), channel, account_id),
    )
    detail = {"notice_id": current, "channel": channel, "delivered_at": iso(delivered_at), "issued_at": iso(issued)}
    events.record(conn, "notice_delivered", now, account_id=account_id, actor=actor, detail=detail)
    return detail
