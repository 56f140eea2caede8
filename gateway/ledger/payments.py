"""Payments: applied exactly once, whatever route they arrive by and however often.

The payment id is the idempotence key.  The first application stores its result; a replay with the
same content returns that result and applies nothing; a replay of the same id with different content
(another account or amount) is refused, because it means two different payments share an id.

A payment is split (``gateway.ledger.credit.split_payment``): emergency credit in use is repaid first,
then arrears, then the account's debt-recovery share of the rest; the result says so, the ``payment``
entry keeps the split in its detail, and the recovery is its own ``debt_recovery`` entry so that a
top-up never "vanishes" into debt without the customer being able to see why.

Whoever applies it, the payment's transaction also marks its account for the running daemon to
re-decide (``policy_inbox``, ``gateway.runtime.payment_watch``): a payment taken by ``pmg payment add`` in
another process, or while the daemon is down, reaches the relay as fast as one the daemon took itself
(docs/enforcement.md, "Payment to power").
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from datetime import datetime

from gateway.core.errors import UserError
from gateway.core.money import MAX_PAYMENT_MINOR, format_money
from gateway.core.timeutil import iso
from gateway.ledger.accounts import post_entry
from gateway.ledger.credit import parse_share, split_payment
from gateway.store import events
from gateway.store.db import dumps


class PaymentError(UserError, ValueError):
    """A payment that cannot be applied; nothing was changed."""


class PaymentConflict(PaymentError):
    """The payment id was already used for a different payment."""


@dataclass(frozen=True)
class PaymentResult:
    payment_id: str
    account_id: str
    amount_minor: int
    balance_minor: int
    applied_at: str
    emergency_repayment_minor: int = 0
    arrears_repayment_minor: int = 0
    debt_recovery_minor: int = 0
    credit_minor: int = 0
    debt_minor: int = 0  # debt still outstanding after this payment
    replayed: bool = False


def apply_payment(
    conn: sqlite3.Connection,
    payment_id: str,
    account_id: str,
    amount_minor: int,
    now: datetime,
    *,
    source: str,
    minor_digits: int = 2,
) -> PaymentResult:
    """Apply a payment inside the caller's transaction, or return the original result of a replay."""
    if not payment_id or len(payment_id) > 128:
        raise PaymentError("payment id must be 1–128 characters")
    if not isinstance(amount_minor, int) or isinstance(amount_minor, bool):
        raise PaymentError("payment amount must be an integer number of minor units")
    if amount_minor <= 0:
        raise PaymentError(
            f"payment amount must be positive (got {format_money(amount_minor, minor_digits)})"
        )
    if amount_minor > MAX_PAYMENT_MINOR:
        raise PaymentError(f"payment amount {format_money(amount_minor, minor_digits)} is implausibly large")
    prior = conn.execute(
        "SELECT account_id, amount_minor, result_json FROM payments WHERE payment_id = ?", (payment_id,)
    ).fetchone()
    if prior is not None:
        if prior[0] != account_id or prior[1] != amount_minor:
            raise PaymentConflict(
                f"payment id '{payment_id}' was already used for {format_money(prior[1], minor_digits)} "
                f"to account '{prior[0]}'"
            )
        return PaymentResult(**{**json.loads(prior[2]), "replayed": True})
    if conn.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone() is None:
        raise PaymentError(f"no account '{account_id}'")

    acc = conn.execute(
        "SELECT balance_minor, emergency_credit_minor, debt_minor, debt_recovery_share FROM accounts "
        "WHERE id = ?",
        (account_id,),
    ).fetchone()
    split = split_payment(amount_minor, int(acc[0]), int(acc[1]), int(acc[2]), parse_share(acc[3]))
    post_entry(
        conn,
        account_id,
        "payment",
        amount_minor,
        now,
        external_id=payment_id,
        detail_json=dumps({"source": source, "split": asdict(split)}),
    )
    if split.debt_recovery_minor:
        post_entry(
            conn,
            account_id,
            "debt_recovery",
            -split.debt_recovery_minor,
            now,
            external_id=payment_id,
            debt_minor=-split.debt_recovery_minor,
            detail_json=dumps({"payment_id": payment_id, "share": str(parse_share(acc[3]))}),
        )
    row = conn.execute(
        "SELECT balance_minor, debt_minor FROM accounts WHERE id = ?", (account_id,)
    ).fetchone()
    balance, debt = int(row[0]), int(row[1])
    result = PaymentResult(
        payment_id,
        account_id,
        amount_minor,
        balance,
        iso(now),
        split.emergency_repayment_minor,
        split.arrears_repayment_minor,
        split.debt_recovery_minor,
        split.credit_minor,
        debt,
    )
    conn.execute(
        "INSERT INTO payments(payment_id, account_id, amount_minor, received_at, source, result_json) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (payment_id, account_id, amount_minor, iso(now), source, dumps(asdict(result))),
    )
    mark_for_decision(conn, account_id, payment_id, now)
    events.record(
        conn,
        "payment_applied",
        now,
        account_id=account_id,
        actor=source,
        detail={
            "payment_id": payment_id,
            "amount": format_money(amount_minor, minor_digits),
            "balance": format_money(balance, minor_digits),
            "emergency_repayment": format_money(split.emergency_repayment_minor, minor_digits),
            "arrears_repayment": format_money(split.arrears_repayment_minor, minor_digits),
            "debt_recovery": format_money(split.debt_recovery_minor, minor_digits),
            "credit": format_money(split.credit_minor, minor_digits),
            "debt_outstanding": format_money(debt, minor_digits),
        },
    )
    return result


def mark_for_decision(conn: sqlite3.Connection, account_id: str, payment_id: str, now: datetime) -> None:
    """Ask the daemon to re-decide the account for this payment, in the payment's own transaction.

    Committed with the payment or not at all, so a payment can never exist without its mark; the
    daemon clears the mark in the transaction that decides (and queues the close command), so a
    crash between the two leaves the mark for the next start.  The latest payment's id wins: the
    close command carries it, for the payment-to-power figures."""
    conn.execute(
        "INSERT INTO policy_inbox(account_id, payment_id, marked_at) VALUES (?, ?, ?) "
        "ON CONFLICT(account_id) DO UPDATE SET payment_id = excluded.payment_id, marked_at = excluded.marked_at",
        (account_id, payment_id, iso(now)),
    )
