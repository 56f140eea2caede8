"""Daily settlement: a standing charge per account for every local day that ended, then risk grades.

Run every 60 s by the job registry (``gateway.runtime.jobs``).  It works from the database, not the trigger
time: ``meta['settlement.last_day']`` is the last local day (gateway time zone) settled, and each run
settles every day after it that has ended — so a gateway that was off at midnight, or a job that runs
twice or late, settles each day exactly once.  "Exactly once per account and day" is also a property
of the schema: the entry's ``external_id`` is ``<account>/<day>`` (unique per kind) and
``(account_id, period_start)`` is unique for standing charges, so a second posting aborts the whole
transaction rather than doubling a charge.

Standing charges are rounded cumulatively per account, as energy charges are per meter: each entry is
``round_half_even(cumulative exact) − cumulative posted``.  They are charged whatever the account's
state — also during emergency credit and while disconnected (UK practice: docs/sources/rules.md, `uk`).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from gateway.core.logfields import kv
from gateway.core.money import to_minor
from gateway.core.timeutil import iso, parse_iso
from gateway.ledger.accounts import post_entry
from gateway.ledger.forecast import days_of_credit_left
from gateway.ledger.risk import RiskRule, grade, risk_inputs
from gateway.ledger.tariff_book import TariffBook
from gateway.store import events
from gateway.store.db import dumps
from gateway.tariffs.pricing import standing_charge

if TYPE_CHECKING:
    from gateway.runtime.ports import JobContext

log = logging.getLogger("pmg.settlement")

LAST_DAY_KEY = "settlement.last_day"
RISK_DAY_KEY = "settlement.risk_day"
GRADES_PER_STEP = 10  # accounts graded per transaction: tens of milliseconds away from the event loop


@dataclass
class SettlementResult:
    days: list[date] = field(default_factory=list)
    charges: dict[tuple[str, date], int] = field(default_factory=dict)  # (account, day) -> minor posted
    skipped: list[tuple[str, date, str]] = field(default_factory=list)  # (account, day, why)
    grades: dict[str, int] = field(default_factory=dict)  # accounts whose grade was (re)computed

    @property
    def accounts(self) -> set[str]:
        return {a for a, _ in self.charges} | set(self.grades)


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def days_to_settle(conn: sqlite3.Connection, tz: ZoneInfo, now: datetime) -> list[date]:
    """Local days that ended after the last settled one (from the first account's day on a new ledger)."""
    today = now.astimezone(tz).date()
    last = _meta(conn, LAST_DAY_KEY)
    if last is not None:
        first = date.fromisoformat(last) + timedelta(days=1)
    else:
        created = conn.execute("SELECT MIN(created_at) FROM accounts").fetchone()[0]
        if created is None:
            return []
        first = parse_iso(created).astimezone(tz).date()
    return [first + timedelta(days=i) for i in range((today - first).days)]


def post_standing_charge(
    conn: sqlite3.Connection,
    book: TariffBook,
    account_id: str,
    tariff_id: str,
    day: date,
    now: datetime,
    *,
    minor_digits: int = 2,
) -> int | None:
    """Post one account's standing charge for one local day; None if there is none or it exists."""
    key = f"{account_id}/{day.isoformat()}"
    if conn.execute(
        "SELECT 1 FROM entries WHERE kind = 'standing_charge' AND external_id = ?", (key,)
    ).fetchone():
        return None
    line = standing_charge(book.get(tariff_id), day)
    if line is None:
        return None
    row = conn.execute(
        "SELECT standing_exact, standing_minor FROM accounts WHERE id = ?", (account_id,)
    ).fetchone()
    cumulative_exact = Decimal(row[0]) + line.amount
    cumulative_minor = to_minor(cumulative_exact, minor_digits)
    charge = cumulative_minor - int(row[1])
    conn.execute(
        "UPDATE accounts SET standing_exact = ?, standing_minor = ? WHERE id = ?",
        (str(cumulative_exact), cumulative_minor, account_id),
    )
    post_entry(
        conn,
        account_id,
        "standing_charge",
        -charge,
        now,
        external_id=key,
        period_start=line.start,
        period_end=line.end,
        detail_json=dumps(
            {
                "day": day.isoformat(),
                "tariff_id": line.tariff_id,
                "version": line.version,
                "exact": str(line.amount),
            }
        ),
    )
    return charge


def settle(
    conn: sqlite3.Connection, book: TariffBook, tz: ZoneInfo, now: datetime, *, minor_digits: int = 2
) -> SettlementResult:
    """Post the standing charges of every ended, unsettled local day; advance the watermark.  In one tx."""
    result = SettlementResult()
    for day in days_to_settle(conn, tz, now):
        day_end = _local_midnight(day + timedelta(days=1), tz)
        for account_id, tariff_id in conn.execute(
            "SELECT id, tariff_id FROM accounts WHERE created_at < ? ORDER BY id", (iso(day_end),)
        ).fetchall():
            try:
                charge = post_standing_charge(
                    conn, book, account_id, tariff_id, day, now, minor_digits=minor_digits
                )
            except LookupError as exc:  # no tariff version in force at the day's start
                result.skipped.append((account_id, day, str(exc)))
                continue
            if charge is not None:
                result.charges[(account_id, day)] = charge
        result.days.append(day)
        _set_meta(conn, LAST_DAY_KEY, day.isoformat())
    return result


def update_risk_grades(
    conn: sqlite3.Connection,
    book: TariffBook,
    now: datetime,
    rule: RiskRule,
    *,
    minor_digits: int = 2,
    accounts: Sequence[str] | None = None,
) -> dict[str, int]:
    """Recompute the grade of every account (or of ``accounts``), store it, and audit each change with
    its reasons."""
    out: dict[str, int] = {}
    query = "SELECT id, balance_minor, emergency_credit_minor, risk_grade FROM accounts"
    if accounts is not None:
        query += f" WHERE id IN ({', '.join('?' * len(accounts))})"
    rows = conn.execute(query + " ORDER BY id", tuple(accounts or ())).fetchall()
    for account_id, balance, emergency, old in rows:
        try:
            days = days_of_credit_left(
                conn, book, account_id, int(balance) + int(emergency), now, minor_digits=minor_digits
            )
        except LookupError:
            days = None
        g, reasons = grade(risk_inputs(conn, account_id, now, days, rule), rule)
        out[account_id] = g
        if g != old:
            conn.execute("UPDATE accounts SET risk_grade = ? WHERE id = ?", (g, account_id))
            events.record(
                conn,
                "risk_grade",
                now,
                severity="warning" if g == 3 else "info",
                account_id=account_id,
                detail={
                    "from": old,
                    "to": g,
                    "reasons": reasons,
                    "days_left": None if days is None else str(days),
                },
            )
    return out


async def run(gateway: JobContext) -> SettlementResult:
    """The scheduler's entry point: settle, re-decide charged accounts, and grade once per local day.

    Grading reads a month of each account's consumption (a few ms an account): for 2,000 accounts that
    is seconds of work, so it goes a few accounts per transaction, yielding to the event loop between
    them — polling and payments carry on.  The day is marked graded after the last account; a stop
    half-way grades them all again on the next run (a grade that did not change is not audited).

    A day is settled only once it has ended by the monotonic-corrected clock too: a wall clock a
    day fast must not post today's standing charge (``JobContext.ended_now``, gateway.runtime.ports)."""
    now = gateway.ended_now()
    tz = gateway.cfg.tz
    rule = gateway.cfg.risk  # validated with the configuration (start, run --check, SIGHUP)
    policy: Any = gateway.parts.policy
    with gateway.store.tx() as conn:
        result = settle(conn, gateway.parts.book, tz, now, minor_digits=gateway.cfg.minor_digits)
        for account_id in sorted({a for a, _ in result.charges}):
            policy.evaluate_account(conn, account_id, now)
        today = now.astimezone(tz).date().isoformat()
        graded = _meta(conn, RISK_DAY_KEY) == today
        accounts = [] if graded else [row[0] for row in conn.execute("SELECT id FROM accounts ORDER BY id")]
    if result.days:
        log.info("settled", extra=kv(days=[d.isoformat() for d in result.days], standing_charges=len(result.charges)))
    if graded:
        return result
    for first in range(0, len(accounts), GRADES_PER_STEP):
        await asyncio.sleep(0)
        with gateway.store.tx() as conn:
            result.grades.update(
                update_risk_grades(
                    conn,
                    gateway.parts.book,
                    now,
                    rule,
                    minor_digits=gateway.cfg.minor_digits,
                    accounts=accounts[first : first + GRADES_PER_STEP],
                )
            )
    with gateway.store.tx() as conn:
        _set_meta(conn, RISK_DAY_KEY, today)
    return result
