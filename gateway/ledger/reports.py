"""Monitoring reports (by day, week and ten-day period: docs/sources/rules.md, "Why three warning levels"):
usage and money per account and period, and collection.

Periods are local to the gateway's time zone: ``day``; ``week`` (ISO, Monday first); ``dekad`` (旬:
days 1–10 上旬, 11–20 中旬, 21–end of month 下旬); ``month``.  An entry belongs to the period
containing its ``created_at`` in local time — for a charge that is the reading that closed the
interval, for a standing charge the settlement run, for a payment its receipt.

Per account and period: energy charged (Wh), energy charges, standing charges, payments, other
movements (debt recovery, adjustments), and the closing balance — the sum of every entry of the
account up to the period's end, so the closing balance of one period plus the next period's movements
is the next closing balance, exactly.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Literal
from zoneinfo import ZoneInfo

from gateway.core.timeutil import iso, parse_iso

Period = Literal["day", "week", "dekad", "month"]
PERIODS: tuple[Period, ...] = ("day", "week", "dekad", "month")


def period_start(d: date, period: Period) -> date:
    if period == "day":
        return d
    if period == "week":
        return d - timedelta(days=d.weekday())
    if period == "dekad":
        return d.replace(day=1 if d.day <= 10 else 11 if d.day <= 20 else 21)
    return d.replace(day=1)


def next_period(start: date, period: Period) -> date:
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    first_of_next = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    if period == "dekad" and start.day < 21:
        return start + timedelta(days=10)
    return first_of_next


def period_label(start: date, period: Period) -> str:
    if period == "day":
        return start.isoformat()
    if period == "week":
        year, week, _ = start.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "dekad":
        return f"{start:%Y-%m}-D{(start.day - 1) // 10 + 1}"
    return f"{start:%Y-%m}"


def periods(first: date, last: date, period: Period) -> list[tuple[date, date]]:
    """[start, end) local-date spans covering ``first`` to ``last`` inclusive."""
    out: list[tuple[date, date]] = []
    start = period_start(first, period)
    while start <= last:
        end = next_period(start, period)
        out.append((start, end))
        start = end
    return out


def ended_periods(
    period: Period, after: date | None, since: date, until: datetime, tz: ZoneInfo
) -> list[tuple[date, date]]:
    """[start, end) local-date spans of ``period`` that ended (in ``tz``) by ``until``: those after
    the one starting ``after`` (the last one published), or from the one containing ``since``."""
    start = next_period(after, period) if after is not None else period_start(since, period)
    out: list[tuple[date, date]] = []
    while _instant(end := next_period(start, period), tz) <= until:
        out.append((start, end))
        start = end
    return out


@dataclass(frozen=True)
class UsageRow:
    account_id: str
    period: str
    start: date
    end: date  # exclusive
    energy_wh: int = 0
    charges_minor: int = 0  # energy charges (positive = charged)
    standing_minor: int = 0
    payments_minor: int = 0
    other_minor: int = 0  # signed: debt recovery, adjustments, anything else
    closing_balance_minor: int = 0


def _instant(d: date, tz: ZoneInfo) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=tz)


def usage_report(
    conn: sqlite3.Connection,
    tz: ZoneInfo,
    period: Period,
    first: date,
    last: date,
    account_id: str | None = None,
) -> list[UsageRow]:
    """One row per account and period from ``first`` to ``last`` (local dates, inclusive)."""
    spans = periods(first, last, period)
    if not spans:
        return []
    begin, finish = _instant(spans[0][0], tz), _instant(spans[-1][1], tz)
    where, params = ("WHERE id = ?", [account_id]) if account_id else ("", [])
    accounts = [r[0] for r in conn.execute(f"SELECT id FROM accounts {where} ORDER BY id", params)]
    rows: list[UsageRow] = []
    for acc in accounts:
        balance = int(
            conn.execute(
                "SELECT COALESCE(SUM(amount_minor), 0) FROM entries WHERE account_id = ? AND created_at < ?",
                (acc, iso(begin)),
            ).fetchone()[0]
        )
        sums: dict[date, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for kind, amount, energy, created in conn.execute(
            "SELECT kind, amount_minor, energy_wh, created_at FROM entries WHERE account_id = ? AND created_at >= ? "
            "AND created_at < ? ORDER BY id",
            (acc, iso(begin), iso(finish)),
        ):
            local = period_start(parse_iso(created).astimezone(tz).date(), period)
            bucket = sums[local]
            bucket["net"] += amount
            if kind == "charge":
                bucket["energy"] += energy or 0
                bucket["charges"] -= amount
            elif kind == "standing_charge":
                bucket["standing"] -= amount
            elif kind == "payment":
                bucket["payments"] += amount
            else:
                bucket["other"] += amount
        for start, end in spans:
            b = sums.get(start, {})
            balance += b.get("net", 0)
            rows.append(
                UsageRow(
                    acc,
                    period_label(start, period),
                    start,
                    end,
                    b.get("energy", 0),
                    b.get("charges", 0),
                    b.get("standing", 0),
                    b.get("payments", 0),
                    b.get("other", 0),
                    balance,
                )
            )
    return rows


@dataclass
class Collection:
    """Collection figures for one gateway over a span (state counts are as of now)."""

    accounts: int = 0
    by_policy_state: dict[str, int] = field(default_factory=dict)
    by_risk_grade: dict[int, int] = field(default_factory=dict)
    arrears_accounts: int = 0
    arrears_minor: int = 0  # sum of negative balances, as a positive number
    debt_minor: int = 0
    disconnections: int = 0
    reconnections: int = 0
    payments: int = 0
    payments_minor: int = 0
    payment_to_power_samples: int = 0
    median_payment_to_power_s: Decimal | None = None


def collection_report(conn: sqlite3.Connection, since: datetime | None, until: datetime | None) -> Collection:
    """Accounts by warning level and grade, arrears, cuts and reconnections, payments, time to power."""
    lo = iso(since) if since else ""
    hi = iso(until) if until else "9999"
    c = Collection()
    for state, n in conn.execute(
        "SELECT policy_state, COUNT(*) FROM accounts GROUP BY policy_state ORDER BY 1"
    ):
        c.by_policy_state[state] = int(n)
        c.accounts += int(n)
    for grade, n in conn.execute("SELECT risk_grade, COUNT(*) FROM accounts GROUP BY risk_grade ORDER BY 1"):
        c.by_risk_grade[int(grade)] = int(n)
    row = conn.execute(
        "SELECT COUNT(*), COALESCE(-SUM(balance_minor), 0) FROM accounts WHERE balance_minor < 0"
    ).fetchone()
    c.arrears_accounts, c.arrears_minor = int(row[0]), int(row[1])
    c.debt_minor = int(conn.execute("SELECT COALESCE(SUM(debt_minor), 0) FROM accounts").fetchone()[0])
    for action, n in conn.execute(
        "SELECT action, COUNT(*) FROM relay_commands WHERE status = 'confirmed' AND updated_at >= ? "
        "AND updated_at < ? GROUP BY action",
        (lo, hi),
    ):
        if action == "trip":
            c.disconnections += int(n)
        elif action in ("close_permitted", "direct_close"):
            c.reconnections += int(n)
    row = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(amount_minor), 0) FROM payments WHERE received_at >= ? AND received_at < ?",
        (lo, hi),
    ).fetchone()
    c.payments, c.payments_minor = int(row[0]), int(row[1])
    samples = [
        Decimal(str(json.loads(d)["payment_to_power_s"]))
        for (d,) in conn.execute(
            "SELECT detail_json FROM events WHERE kind = 'relay_confirmed' AND at >= ? AND at < ?", (lo, hi)
        )
        if "payment_to_power_s" in json.loads(d)
    ]
    c.payment_to_power_samples = len(samples)
    c.median_payment_to_power_s = statistics.median(samples) if samples else None
    return c
