"""What an operator may do from the console, each through the very functions the CLI uses:

* a cash payment is ``pmg payment add``'s path: ``apply_payment`` (idempotent by payment id) and the
  policy's ``payment_outcome`` in one transaction; the payment's ``policy_inbox`` mark makes the
  running daemon re-decide the account and close the relay within a second
  (``gateway.runtime.payment_watch``);
* a close / keep-power order is ``pmg relay METER close``'s path (``gateway.policy.orders``): a
  ``connect`` override until its expiry — the gateway's temporary keep-power, no automatic cut while
  it lasts — and a durable close command the daemon's enforcer confirms by read-back;
* a read now is ``pmg meter read-now``'s path: a ``read_requests`` row (``gateway.store.read_requests``)
  that the running daemon, which owns the line, serves at the head of the bus's queue and finishes
  with the reading's id (``gateway.runtime.read_watch``); the console waits a few seconds for it.

Every field is checked first; a refusal writes nothing and says which field and why.  The person's
name goes into the audit log as ``web:NAME``.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig
from gateway.core.errors import PmgError, UserError
from gateway.core.money import format_money, parse_money
from gateway.ledger.payments import apply_payment
from gateway.policy.engine import outcome_json
from gateway.policy.orders import order_trace, queue_order
from gateway.runtime.components import Components
from gateway.store import read_requests
from gateway.store.db import open_store
from gateway.store.pins import check_money_pins

MAX_ORDER_HOURS = 24 * 92  # as ``pmg relay --hours``: the head office's override limit
_AMOUNT = re.compile(r"^[0-9]{1,15}(\.[0-9]{1,12})?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_HOURS = re.compile(r"^[0-9]{1,5}(\.[0-9]{1,3})?$")


class Refused(UserError):
    """Bad input: messages by form field (``""`` for the form as a whole); nothing was written."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k or 'form'}: {v}" for k, v in errors.items()))
        self.errors = errors


def audit_text(value: str, name: str, errors: dict[str, str], *, max_length: int = 500) -> str:
    """The CLI's ``AuditText`` rules: not blank, no control characters, bounded."""
    if not value.strip():
        errors[name] = "must not be empty"
    elif _CONTROL.search(value):
        errors[name] = "must not contain control characters"
    elif len(value) > max_length:
        errors[name] = f"is longer than {max_length} characters"
    return value.strip()


def new_payment_id() -> str:
    """Put in the form when it is shown: submitting it twice applies the payment once."""
    return f"web-{uuid.uuid4()}"


def record_payment(
    cfg: GatewayConfig, db: Path, parts: Components, account: str, form: dict[str, str], who: str, now: datetime
) -> dict[str, Any]:
    errors: dict[str, str] = {}
    amount = form.get("amount", "").strip()
    minor = 0
    if not _AMOUNT.match(amount):
        errors["amount"] = "a decimal amount like 50.00"
    else:
        try:
            minor = parse_money(amount, cfg.minor_digits)
        except PmgError as exc:
            errors["amount"] = str(exc)
        else:
            if minor <= 0:
                errors["amount"] = "must be more than zero"
    payment_id = audit_text(form.get("payment_id", ""), "payment_id", errors, max_length=128)
    if errors:
        raise Refused(errors)
    store = open_store(db)
    try:
        check_money_pins(store, cfg.currency, cfg.minor_digits)
        try:
            with store.tx() as conn:
                result = apply_payment(
                    conn, payment_id, account, minor, now, source=f"web:{who}", minor_digits=cfg.minor_digits
                )
                supply = parts.policy.payment_outcome(conn, account, now)
        except PmgError as exc:  # a payment id used for another amount, an implausible amount
            raise Refused({"": str(exc)}) from None
    finally:
        store.close()
    digits = cfg.minor_digits
    return {
        "payment_id": result.payment_id,
        "replayed": result.replayed,
        "amount": format_money(minor, digits),
        "balance": format_money(result.balance_minor, digits),
        "supply": outcome_json(supply, digits),
    }


def request_close(
    cfg: GatewayConfig, db: Path, parts: Components, meter_id: str, form: dict[str, str], who: str, now: datetime
) -> dict[str, Any]:
    errors: dict[str, str] = {}
    reason = audit_text(form.get("reason", ""), "reason", errors)
    hours_text = form.get("hours", "").strip()
    hours = Decimal(0)
    try:
        hours = Decimal(hours_text) if _HOURS.match(hours_text) else Decimal(-1)
    except InvalidOperation:
        hours = Decimal(-1)
    if not Decimal("0.1") <= hours <= MAX_ORDER_HOURS:
        errors["hours"] = f"a number of hours from 0.1 to {MAX_ORDER_HOURS}"
    if errors:
        raise Refused(errors)
    store = open_store(db)
    try:
        check_money_pins(store, cfg.currency, cfg.minor_digits)
        with store.tx() as conn:
            m = conn.execute(
                "SELECT m.keep_power, a.id, a.protected, a.protected_category FROM meters m "
                "JOIN accounts a ON a.id = m.account_id WHERE m.id = ?",
                (meter_id,),
            ).fetchone()
            if m is None:
                raise Refused({"": f"no meter '{meter_id}'"})
            protected = bool(m[2]) or m[3] in parts.rules.protected.categories
            actor = f"web:{who}"
            trace = order_trace("close", reason, actor, protected, m[3], bool(m[0]), False)
            until = now + timedelta(seconds=int(hours * 3600))
            return queue_order(conn, meter_id, m[1], "close", reason, actor, False, now, until, trace)
    finally:
        store.close()


def request_read(cfg: GatewayConfig, db: Path, meter_id: str, who: str, now: datetime) -> int:
    """Ask the daemon to read a polled meter now (audited as ``web:NAME``); returns the request's id."""
    if meter_id not in {m.id for m in cfg.meters}:
        raise Refused({"": f"meter '{meter_id}' is not polled by this gateway's configuration"})
    store = open_store(db)
    try:
        with store.tx() as conn:
            return read_requests.put(conn, meter_id, f"web:{who}", now)
    finally:
        store.close()


def read_outcome(db: Path, request_id: int) -> dict[str, Any] | None:
    """The request as the page shows it (with its reading when there is one); None while pending."""
    store = open_store(db, readonly=True)
    try:
        req = read_requests.get(store.conn, request_id)
        if req is None or req.pending:
            return None
        out: dict[str, Any] = {"request_id": req.id, "status": req.status, "result": req.result}
        if req.reading_id is not None:
            row = store.one("SELECT taken_at, register_wh, relay FROM readings WHERE id = ?", req.reading_id)
            if row is not None:
                out.update(reading_id=req.reading_id, taken_at=row["taken_at"], relay=row["relay"],
                           kwh=None if row["register_wh"] is None else f"{row['register_wh'] / 1000:.3f}")
        return out
    finally:
        store.close()
