"""Period reports on ``<prefix>/<gw>/reports``: each day, ISO week, dekad (旬) and month, once it has ended.

The figures are those of ``pmg report`` (``gateway.ledger.reports.usage_report``: energy, charges,
standing charges, payments, other movements and the closing balance per account), one message per
period and gateway (schema ``pmg.report/1``), written to the outbox — billing, so at least once, with
epoch and seq like every message — in the same transaction as its row in ``reports_published``,
whose key (period, start) makes it exactly once: a second run, a restart, a job that runs late or
twice finds the row and publishes nothing again.

Run every 60 s by the job registry (``gateway.runtime.jobs``), it works from the database, not from
the trigger time: each run queues every period that ended (in the gateway's time zone, by the
monotonic-corrected clock ``JobContext.ended_now``) after the last one queued, so a daemon that was
down over a period's end publishes the missed reports when it starts.  The first run starts with the
periods containing the earliest ledger entry, but not more than ``BACKFILL_DAYS`` back (a gateway
upgraded with years of history does not publish years of reports), and remembers that day.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from gateway.core.money import format_money
from gateway.core.timeutil import iso, parse_iso
from gateway.ledger.reports import PERIODS, Period, ended_periods, period_label, usage_report
from gateway.store import outbox
from gateway.store.db import Store

if TYPE_CHECKING:
    from gateway.runtime.ports import JobContext

log = logging.getLogger("pmg.reports")

SCHEMA = "pmg.report/1"
TOPIC = "reports"
SINCE_KEY = "reports.since"  # meta: the first local day whose periods are published
BACKFILL_DAYS = 32  # at the first run, at most this far back: the last month, its dekads, weeks, days
MAX_PER_RUN = 200  # reports queued by one run; the next run (a minute later) goes on


@dataclass(frozen=True)
class Due:
    period: Period
    start: date
    end: date  # exclusive


def since(store: Store, now: datetime, tz: ZoneInfo) -> date:
    """The first local day reported: remembered from the first run (see the module docstring)."""
    with store.tx() as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (SINCE_KEY,)).fetchone()
        if row is not None:
            return date.fromisoformat(row[0])
        first = conn.execute("SELECT MIN(created_at) FROM entries").fetchone()[0]
        today = now.astimezone(tz).date()
        day = today if first is None else parse_iso(first).astimezone(tz).date()
        day = min(max(day, today - timedelta(days=BACKFILL_DAYS)), today)
        conn.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (SINCE_KEY, day.isoformat()))
        return day


def due(conn: sqlite3.Connection, first_day: date, now: datetime, tz: ZoneInfo) -> list[Due]:
    """Every period that ended by ``now`` and was not queued yet, oldest end first."""
    out: list[Due] = []
    for period in PERIODS:
        last = conn.execute(
            "SELECT MAX(period_start) FROM reports_published WHERE period = ?", (period,)
        ).fetchone()[0]
        after = date.fromisoformat(last) if last else None
        out += [Due(period, s, e) for s, e in ended_periods(period, after, first_day, now, tz)]
    return sorted(out, key=lambda d: (d.end, PERIODS.index(d.period)))


def body(
    conn: sqlite3.Connection, d: Due, tz: ZoneInfo, currency: str, digits: int
) -> dict[str, Any]:
    """The ``pmg.report/1`` payload of one period (what ``pmg report --format json`` lists for it)."""
    rows = usage_report(conn, tz, d.period, d.start, d.start)
    return {
        "schema": SCHEMA,
        "period": d.period,
        "label": period_label(d.start, d.period),
        "period_start": iso(datetime(d.start.year, d.start.month, d.start.day, tzinfo=tz)),
        "period_end": iso(datetime(d.end.year, d.end.month, d.end.day, tzinfo=tz)),
        "timezone": tz.key,
        "currency": currency,
        "accounts": [
            {
                "account_id": r.account_id,
                "energy_wh": r.energy_wh,
                "charges": format_money(r.charges_minor, digits),
                "standing": format_money(r.standing_minor, digits),
                "payments": format_money(r.payments_minor, digits),
                "other": format_money(r.other_minor, digits),
                "closing_balance": format_money(r.closing_balance_minor, digits),
            }
            for r in rows
        ],
    }


def queue(store: Store, d: Due, payload: dict[str, Any], now: datetime) -> int | None:
    """Queue one report and mark its period in one transaction; None if it was already queued."""
    with store.tx() as conn:
        if conn.execute(
            "SELECT 1 FROM reports_published WHERE period = ? AND period_start = ?", (d.period, d.start.isoformat())
        ).fetchone():
            return None
        seq = outbox.put(conn, TOPIC, payload, now, billing=True)
        conn.execute(
            "INSERT INTO reports_published(period, period_start, seq, queued_at) VALUES (?, ?, ?, ?)",
            (d.period, d.start.isoformat(), seq, iso(now)),
        )
        return seq


async def publish_due(
    store: Store, tz: ZoneInfo, now: datetime, *, currency: str, digits: int, limit: int = MAX_PER_RUN
) -> list[Due]:
    """Queue the reports of every period that ended by ``now``; returns those queued.  Each report
    reads a period of entries (a month of minute readings: tens of thousands of rows an account), so
    the event loop gets a turn between reports."""
    first_day = since(store, now, tz)
    done: list[Due] = []
    for d in due(store.conn, first_day, now, tz)[:limit]:
        await asyncio.sleep(0)
        payload = body(store.conn, d, tz, currency, digits)
        if queue(store, d, payload, now) is not None:
            done.append(d)
    return done


async def run(gateway: JobContext) -> list[Due]:
    """The scheduler's entry point."""
    cfg = gateway.cfg
    done = await publish_due(
        gateway.store, cfg.tz, gateway.ended_now(), currency=cfg.currency, digits=cfg.minor_digits
    )
    if done:
        gateway.notify_outbox()
        log.info("reports queued=%s", [f"{d.period}:{period_label(d.start, d.period)}" for d in done])
    return done
