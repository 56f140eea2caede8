"""``pmg report``: usage and money per account and period (day, week, 旬, month) and collection figures.

Definitions are in ``gateway.ledger.reports`` and docs/ledger.md.  Reports only read the database
(opened read-only), so they are safe beside the running daemon.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from datetime import date, datetime
from pathlib import Path
from typing import Any

import click

from gateway.cli.common import (
    CliFailure,
    Col,
    config_option,
    emit_json,
    emit_table,
    json_option,
    opened_store,
    require_id,
)
from gateway.core.money import format_money
from gateway.core.timeutil import system_clock
from gateway.ledger.reports import PERIODS, Period, collection_report, usage_report

FORMATS = ("table", "csv", "json")


def _kwh(wh: int) -> str:
    return f"{'-' if wh < 0 else ''}{abs(wh) // 1000}.{abs(wh) % 1000:03d}"


def _emit(fmt: str, title: str, columns: list[str | Col], rows: list[list[Any]], as_json: Any) -> None:
    if fmt == "json":
        emit_json(as_json)
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([c if isinstance(c, str) else c.header for c in columns])
        writer.writerows(rows)
        click.echo(buf.getvalue(), nl=False)
    else:
        emit_table(title, columns, rows)


# Report days: the ledger's era, bounded so period arithmetic stays inside ``date``'s range, and a
# span a report can list (a day report of centuries would print millions of rows).
FIRST_YEAR, LAST_YEAR = 1970, 2199
MAX_SPAN_DAYS = {"day": 3_660, "week": 36_600, "dekad": 36_600, "month": 36_600}


def _check_day(day: datetime | None, option: str) -> None:
    if day is not None and not FIRST_YEAR <= day.year <= LAST_YEAR:
        raise CliFailure(f"{option} {day.date().isoformat()} is outside the years {FIRST_YEAR}-{LAST_YEAR}", 2)


def _dates(tz: Any, period: Period, first: datetime | None, last: datetime | None) -> tuple[date, date]:
    _check_day(first, "--from")
    _check_day(last, "--to")
    to = last.date() if last else system_clock().astimezone(tz).date()
    frm = first.date() if first else (to.replace(month=1, day=1) if period == "month" else to.replace(day=1))
    if frm > to:
        raise CliFailure(f"--from {frm.isoformat()} is after --to {to.isoformat()}", 2)
    span = MAX_SPAN_DAYS.get(period, 3_660)
    if (to - frm).days >= span:
        raise CliFailure(f"a {period} report spans at most {span} days (ask for a longer --period)", 2)
    return frm, to


@click.group(invoke_without_command=True)
@config_option
@click.option("--period", type=click.Choice(PERIODS), default="day", show_default=True, help="Report period.")
@click.option(
    "--from", "first", type=click.DateTime(["%Y-%m-%d"]), help="First local day (default: month start)."
)
@click.option(
    "--to", "last", type=click.DateTime(["%Y-%m-%d"]), help="Last local day, inclusive (default: today)."
)
@click.option("--account", help="One account only.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--reverse", is_flag=True, help="Oldest period first (default: newest first).")
@json_option
@click.pass_context
def report(
    ctx: click.Context,
    config_path: Path,
    period: Period,
    first: datetime | None,
    last: datetime | None,
    account: str | None,
    fmt: str,
    reverse: bool,
    as_json: bool,
) -> None:
    """Energy, charges, payments and closing balance per account and period, in local time: newest
    period first, each period's accounts by id (--json wins over --format).

    Periods: day, week (ISO, Monday first), dekad (旬: days 1-10, 11-20, 21-end), month.
    """
    if ctx.invoked_subcommand is not None:
        return
    fmt = "json" if as_json else fmt
    with opened_store(config_path, readonly=True) as (cfg, store):
        frm, to = _dates(cfg.tz, period, first, last)
        if account is not None:
            require_id(store, "account", account)
        rows = usage_report(store.conn, cfg.tz, period, frm, to, account)
    rows = sorted(rows, key=lambda r: r.account_id)
    rows = sorted(rows, key=lambda r: r.start, reverse=not reverse)
    d = cfg.minor_digits
    csv_columns: list[str | Col] = [
        "account",
        "period",
        "from",
        "energy kWh",
        "charges",
        "standing",
        "payments",
        "other",
        "closing",
    ]
    csv_rows = [
        [
            r.account_id,
            r.period,
            r.start.isoformat(),
            _kwh(r.energy_wh),
            format_money(r.charges_minor, d),
            format_money(r.standing_minor, d),
            format_money(r.payments_minor, d),
            format_money(r.other_minor, d),
            format_money(r.closing_balance_minor, d),
        ]
        for r in rows
    ]
    # The table names the period once (its label) and keeps every figure whole at 80 columns.
    columns: list[str | Col] = [
        Col("period", fixed=True),
        Col("account", min_width=6),
        *(Col(h, fixed=True, right=True) for h in ("kWh", "charges", "standing", "payments", "other", "closing")),
    ]
    table = [[row[1], row[0], *row[3:]] for row in csv_rows]
    data = {
        "period": period,
        "from": frm.isoformat(),
        "to": to.isoformat(),
        "timezone": cfg.timezone,
        "currency": cfg.currency,
        "rows": [
            {
                **{k: v for k, v in asdict(r).items() if not k.endswith("_minor")},
                "start": r.start.isoformat(),
                "end": r.end.isoformat(),
                "charges": format_money(r.charges_minor, d),
                "standing": format_money(r.standing_minor, d),
                "payments": format_money(r.payments_minor, d),
                "other": format_money(r.other_minor, d),
                "closing_balance": format_money(r.closing_balance_minor, d),
            }
            for r in rows
        ],
    }
    title = f"{period} report {frm} – {to}, {cfg.currency}, local days in {cfg.timezone}"
    if fmt == "csv":
        _emit(fmt, title, csv_columns, csv_rows, data)
    else:
        _emit(fmt, title, columns, table, data)


@report.command("collection")
@config_option
@click.option(
    "--from", "first", type=click.DateTime(["%Y-%m-%d"]), help="First local day of payments/relays."
)
@click.option("--to", "last", type=click.DateTime(["%Y-%m-%d"]), help="Last local day, inclusive.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@json_option
def collection(config_path: Path, first: datetime | None, last: datetime | None, fmt: str, as_json: bool) -> None:
    """Accounts per warning level and risk grade, arrears, cuts, reconnections, payments, time to power
    (--json wins over --format)."""
    from datetime import timedelta

    fmt = "json" if as_json else fmt
    _check_day(first, "--from")
    _check_day(last, "--to")
    with opened_store(config_path, readonly=True) as (cfg, store):
        tz = cfg.tz
        since = first.replace(tzinfo=tz) if first else None
        until = (last.replace(tzinfo=tz) + timedelta(days=1)) if last else None
        c = collection_report(store.conn, since, until)
    d = cfg.minor_digits
    median = None if c.median_payment_to_power_s is None else str(c.median_payment_to_power_s)
    figures: list[tuple[str, Any]] = [
        ("accounts", c.accounts),
        *[(f"accounts {state}", n) for state, n in c.by_policy_state.items()],
        *[(f"accounts risk grade {g}", n) for g, n in c.by_risk_grade.items()],
        ("accounts in arrears", c.arrears_accounts),
        ("arrears", format_money(c.arrears_minor, d)),
        ("debt outstanding", format_money(c.debt_minor, d)),
        ("disconnections", c.disconnections),
        ("reconnections", c.reconnections),
        ("payments", c.payments),
        ("payments received", format_money(c.payments_minor, d)),
        ("median payment to power s", median),
        ("payment to power samples", c.payment_to_power_samples),
    ]
    data = {
        **asdict(c),
        "arrears": format_money(c.arrears_minor, d),
        "debt": format_money(c.debt_minor, d),
        "payments_received": format_money(c.payments_minor, d),
        "median_payment_to_power_s": median,
        "currency": cfg.currency,
    }
    _emit(
        fmt,
        f"collection ({cfg.currency})",
        [Col("figure"), Col("value", fixed=True, right=True)],
        [list(f) for f in figures],
        data,
    )
