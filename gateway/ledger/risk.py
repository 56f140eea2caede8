"""Risk grade per account: three warning levels (why three: docs/sources/rules.md, "Why three warning
levels"), from data the ledger holds.

The rule (defaults below; every number configurable in the ``[risk]`` section of the gateway
configuration, validated with the rest of it — ``gateway.config.RiskConfig``):

1. **Days of credit left** gives the base grade: at or below 14 days → 1, 7 → 2, 3 → 3 (no forecast
   possible → 0).  A balance below zero (emergency credit or arrears) is grade 3.
2. **Payment history** raises it by one: no payment in the last 30 days on an account older than that.
3. **Consumption change** raises it by one: daily energy over the last 7 days at least 50 % above the
   daily energy of the 28 days before (credit will run out faster than the customer is used to).

The grade is capped at 3; 0 means no warning.  ``grade`` is pure and returns its reasons, which the
settlement job stores in the audit log when a grade changes.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from gateway.config import RiskConfig
from gateway.core.timeutil import parse_iso
from gateway.ledger.consumption import charged_energy_wh, first_read_at

# The rule is part of the validated gateway configuration (``[risk]``): read once at start,
# ``run --check`` and SIGHUP, never by the settlement run itself.
RiskRule = RiskConfig


@dataclass(frozen=True)
class RiskInputs:
    balance_minor: int
    days_left: Decimal | None
    account_age_days: Decimal
    days_since_payment: Decimal | None  # None: never paid
    recent_wh_per_day: Decimal | None
    baseline_wh_per_day: Decimal | None


def grade(inputs: RiskInputs, rule: RiskRule) -> tuple[int, list[str]]:
    """The account's grade 0–3 and the reasons for it."""
    reasons: list[str] = []
    g = 0
    if inputs.days_left is not None:
        for level, limit in enumerate(rule.days_left, start=1):
            if inputs.days_left <= limit:
                g = level
        if g:
            reasons.append(f"{inputs.days_left} days of credit left (grade {g})")
    if inputs.balance_minor < 0 and rule.negative_balance_grade > g:
        g = rule.negative_balance_grade
        reasons.append(f"balance below zero ({inputs.balance_minor}) (grade {g})")
    stale = inputs.days_since_payment is None or inputs.days_since_payment > rule.no_payment_days
    if stale and inputs.account_age_days > rule.no_payment_days:
        g += 1
        reasons.append(f"no payment in {rule.no_payment_days} days (+1)")
    recent, base = inputs.recent_wh_per_day, inputs.baseline_wh_per_day
    if recent is not None and base is not None and base > 0 and recent >= base * (1 + rule.consumption_rise):
        g += 1
        reasons.append(f"consumption up from {base:.0f} to {recent:.0f} Wh/day (+1)")
    return min(g, 3), reasons


def _wh_per_day(conn: sqlite3.Connection, account_id: str, start: datetime, end: datetime) -> Decimal | None:
    first = first_read_at(conn, account_id)
    if first is None or first > start:
        return None  # the meters were not read for the whole span: no fair comparison
    return Decimal(charged_energy_wh(conn, account_id, start, end)) / _days(end - start)


def risk_inputs(
    conn: sqlite3.Connection, account_id: str, now: datetime, days_left: Decimal | None, rule: RiskRule
) -> RiskInputs:
    row = conn.execute(
        "SELECT balance_minor, created_at FROM accounts WHERE id = ?", (account_id,)
    ).fetchone()
    if row is None:
        raise LookupError(f"no account '{account_id}'")
    paid = conn.execute(
        "SELECT MAX(received_at) FROM payments WHERE account_id = ?", (account_id,)
    ).fetchone()[0]
    recent_start = now - timedelta(days=rule.recent_days)
    return RiskInputs(
        balance_minor=int(row[0]),
        days_left=days_left,
        account_age_days=_days(now - parse_iso(row[1])),
        days_since_payment=None if paid is None else _days(now - parse_iso(paid)),
        recent_wh_per_day=_wh_per_day(conn, account_id, recent_start, now),
        baseline_wh_per_day=_wh_per_day(
            conn, account_id, recent_start - timedelta(days=rule.baseline_days), recent_start
        ),
    )


def _days(delta: timedelta) -> Decimal:
    return Decimal(int(delta.total_seconds())) / 86400
