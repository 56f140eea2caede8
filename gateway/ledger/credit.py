"""Credit features: how a payment is split, debts with recovery from top-ups, and adjustments.

Two pockets per account, both sums of entry columns:

* the **balance** (``entries.amount_minor``) — what the customer spends from.  It may go below zero
  while the customer runs on emergency credit (once the policy has offered it, it treats
  ``balance + emergency_credit_minor`` as available credit until that is used up — see
  ``gateway.policy.credit`` and docs/enforcement.md, "Emergency credit") or, for a customer who may
  not be cut, into arrears.  Emergency credit is a *limit*, not money posted: what is used of it is
  the negative part of the balance up to the limit, so "repaid first from the next payment" is simply
  the payment filling the hole first.  Repaying it does not lend it again within the cycle: supply
  returns when the balance reaches the reconnect threshold.
* the **debt** (``entries.debt_minor``) — an amount owed outside the balance (e.g. arrears carried
  over from a former supplier), recovered as a configured share of each top-up.  A ``debt`` entry
  raises it without touching the balance (the customer keeps their supply); a ``debt_recovery`` entry
  moves money from the balance to the debt, so the customer sees exactly where the share went.

The split of a payment (``split_payment``) is pure and documented in docs/ledger.md.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_DOWN, Decimal, InvalidOperation

from gateway.core.errors import UserError
from gateway.core.money import format_money
from gateway.ledger.accounts import post_entry
from gateway.store import events
from gateway.store.db import dumps

MAX_DEBT_MINOR = 10**11


class CreditError(UserError, ValueError):
    """A debt, share or adjustment that cannot be applied; nothing was changed."""


@dataclass(frozen=True)
class PaymentSplit:
    """Where a payment went.  The four parts sum to the payment."""

    emergency_repayment_minor: int  # filled the part of a negative balance that was emergency credit
    arrears_repayment_minor: int  # filled the rest of a negative balance (beyond the emergency limit)
    debt_recovery_minor: int  # the recovery share, moved from the balance to the debt
    credit_minor: int  # what is left as spendable credit above zero


def parse_share(text: str | Decimal) -> Decimal:
    """A recovery share in [0, 1] ("0.25" is 25 % of each top-up); floats refused, like money."""
    if isinstance(text, float):
        raise CreditError("debt recovery share must be a decimal string like '0.25', not a float")
    try:
        share = Decimal(str(text).strip())
    except InvalidOperation:
        raise CreditError(f"debt recovery share {text!r} is not a decimal like '0.25'") from None
    if not share.is_finite() or share < 0 or share > 1:
        raise CreditError(f"debt recovery share must be between 0 and 1 (got {text})")
    return share


def split_payment(
    amount_minor: int, balance_minor: int, emergency_limit_minor: int, debt_minor: int, share: Decimal
) -> PaymentSplit:
    """Split a payment: emergency credit first, then arrears, then the debt share of what remains.

    The debt share applies only to the part of the payment left after the balance is back at zero, so
    recovery never keeps a customer off supply longer than the hole they are in; it is rounded *down*
    to the minor unit (the customer's favour) and never exceeds the outstanding debt.
    """
    negative = max(0, -balance_minor)
    emergency_part = min(negative, max(0, emergency_limit_minor))
    emergency = min(amount_minor, emergency_part)
    arrears = min(amount_minor - emergency, negative - emergency_part)
    remainder = amount_minor - emergency - arrears
    recovery = int((Decimal(remainder) * share).to_integral_value(rounding=ROUND_DOWN))
    recovery = max(0, min(recovery, max(0, debt_minor)))
    return PaymentSplit(emergency, arrears, recovery, remainder - recovery)


def add_debt(
    conn: sqlite3.Connection,
    debt_id: str,
    account_id: str,
    amount_minor: int,
    now: datetime,
    *,
    reason: str,
    actor: str,
    share: Decimal | None = None,
    minor_digits: int = 2,
) -> bool:
    """Record a debt owed outside the balance, once per ``debt_id``; returns False on a replay.

    ``share`` (when given) becomes the account's recovery share for every later payment.
    """
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
        raise CreditError(f"debt amount must be a positive number of minor units (got {amount_minor!r})")
    if amount_minor > MAX_DEBT_MINOR:
        raise CreditError(f"debt {format_money(amount_minor, minor_digits)} is implausibly large")
    if not debt_id or len(debt_id) > 128:
        raise CreditError("debt id must be 1–128 characters")
    if not reason.strip() or not actor.strip():
        raise CreditError("a debt needs a reason and an actor (they are audited)")
    prior = conn.execute(
        "SELECT account_id, debt_minor FROM entries WHERE kind = 'debt' AND external_id = ?", (debt_id,)
    ).fetchone()
    if prior is not None:
        if prior[0] != account_id or prior[1] != amount_minor:
            raise CreditError(f"debt id '{debt_id}' was already used for another debt")
        return False
    if conn.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone() is None:
        raise CreditError(f"no account '{account_id}'")
    if share is not None:
        set_recovery_share(conn, account_id, share, now, actor=actor, reason=reason)
    post_entry(
        conn,
        account_id,
        "debt",
        0,
        now,
        external_id=debt_id,
        debt_minor=amount_minor,
        detail_json=dumps({"reason": reason, "actor": actor}),
    )
    events.record(
        conn,
        "debt_added",
        now,
        account_id=account_id,
        actor=actor,
        detail={"debt_id": debt_id, "amount": format_money(amount_minor, minor_digits), "reason": reason},
    )
    return True


def set_recovery_share(
    conn: sqlite3.Connection, account_id: str, share: Decimal, now: datetime, *, actor: str, reason: str
) -> None:
    """Set the share of each top-up that goes to the account's debt (audited)."""
    share = parse_share(share)
    cur = conn.execute("UPDATE accounts SET debt_recovery_share = ? WHERE id = ?", (str(share), account_id))
    if cur.rowcount == 0:
        raise CreditError(f"no account '{account_id}'")
    events.record(
        conn,
        "debt_recovery_share",
        now,
        account_id=account_id,
        actor=actor,
        detail={"share": str(share), "reason": reason},
    )


def post_adjustment(
    conn: sqlite3.Connection,
    adjustment_id: str,
    account_id: str,
    amount_minor: int,
    now: datetime,
    *,
    reason: str,
    actor: str,
    minor_digits: int = 2,
) -> bool:
    """A signed correction of the balance (refund, goodwill credit), once per id; False on a replay."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor == 0:
        raise CreditError(f"adjustment must be a non-zero number of minor units (got {amount_minor!r})")
    if abs(amount_minor) > MAX_DEBT_MINOR:
        raise CreditError(f"adjustment {format_money(amount_minor, minor_digits)} is implausibly large")
    if not adjustment_id or len(adjustment_id) > 128:
        raise CreditError("adjustment id must be 1–128 characters")
    if not reason.strip() or not actor.strip():
        raise CreditError("an adjustment needs a reason and an actor (they are audited)")
    prior = conn.execute(
        "SELECT account_id, amount_minor FROM entries WHERE kind = 'adjustment' AND external_id = ?",
        (adjustment_id,),
    ).fetchone()
    if prior is not None:
        if prior[0] != account_id or prior[1] != amount_minor:
            raise CreditError(f"adjustment id '{adjustment_id}' was already used for another adjustment")
        return False
    if conn.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone() is None:
        raise CreditError(f"no account '{account_id}'")
    post_entry(
        conn,
        account_id,
        "adjustment",
        amount_minor,
        now,
        external_id=adjustment_id,
        detail_json=dumps({"reason": reason, "actor": actor}),
    )
    events.record(
        conn,
        "adjustment",
        now,
        account_id=account_id,
        actor=actor,
        detail={
            "adjustment_id": adjustment_id,
            "amount": format_money(amount_minor, minor_digits),
            "reason": reason,
        },
    )
    return True
