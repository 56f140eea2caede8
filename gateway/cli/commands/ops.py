"""Operations: ``pmg meters``, ``pmg meter show``, ``pmg events``, ``pmg status``, ``pmg doctor``.

All of these only read the database (opened read-only, so a technician cannot disturb the running
daemon); live numbers come from the daemon's status snapshot (``gateway.runtime.status``).  Exit statuses:
0 fine, 1 something is wrong (``status``: daemon not running or meters unreachable; ``doctor``: a
check failed), 2 bad input.
"""

from __future__ import annotations

import re
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import click

from gateway.cli.common import CliFailure, config_option, emit_json, emit_table, json_option, opened_store
from gateway.core.money import format_money
from gateway.core.timeutil import system_clock
from gateway.store.db import Store, StoreError

METER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
FOLLOW_INTERVAL_S = 0.5


def register(cli: click.Group) -> None:
    cli.add_command(meters)
    cli.add_command(events_cmd)
    cli.add_command(status_cmd)
    cli.add_command(doctor_cmd)


def _comms(ok: int, failed: int, error: str | None) -> str:
    total = ok + failed
    health = f"{ok * 100 // total}% ok" if total else "never polled"
    return f"UNREACHABLE ({health})" if error else health


@click.command()
@config_option
@json_option
def meters(config_path: Path, as_json: bool) -> None:
    """Table of meters: account, balance, warning level, relay, last reading, comms health."""
    with opened_store(config_path, readonly=True) as (cfg, store):
        rows = store.all(
            "SELECT m.id, m.bus_id, m.account_id, a.balance_minor, a.policy_state, m.relay, m.last_register_wh, "
            "m.last_reading_at, m.comms_ok, m.comms_failed, m.last_comms_error, m.quarantined_reading_id, "
            "q.detail AS quarantine_detail "
            "FROM meters m JOIN accounts a ON a.id = m.account_id "
            "LEFT JOIN readings q ON q.id = m.quarantined_reading_id ORDER BY m.id"
        )
    data = [
        {
            **dict(r),
            "balance": format_money(r["balance_minor"], cfg.minor_digits),
            "reachable": r["last_comms_error"] is None,
            # A meter that answers but whose readings are held (doubtful or unpriceable) bills nothing:
            # it is not healthy, whatever its comms say.
            "healthy": r["last_comms_error"] is None and r["quarantined_reading_id"] is None,
            "comms": _comms(r["comms_ok"], r["comms_failed"], r["last_comms_error"]),
        }
        for r in rows
    ]
    if as_json:
        emit_json(data)
        return
    emit_table(
        None,
        [
            "meter",
            "bus",
            "account",
            "balance",
            "state",
            "relay",
            "register Wh",
            "last reading",
            "comms",
            "problem",
        ],
        [
            (
                d["id"],
                d["bus_id"],
                d["account_id"],
                d["balance"],
                d["policy_state"],
                d["relay"],
                d["last_register_wh"],
                d["last_reading_at"],
                d["comms"],
                f"QUARANTINED: {d['quarantine_detail']}" if d["quarantined_reading_id"] else d["last_comms_error"],
            )
            for d in data
        ],
    )


@click.command("show")
@click.argument("meter_id")
@config_option
@click.option(
    "--readings", type=click.IntRange(0, 1000), default=5, show_default=True, help="Recent readings."
)
@json_option
def meter_show(meter_id: str, config_path: Path, readings: int, as_json: bool) -> None:
    """A meter's account, balance, relay, comms, recent readings, open relay commands and events."""
    if not METER_ID.match(meter_id):
        raise CliFailure(f"'{meter_id}' is not a meter id (letters, digits, '_', '.', '-')", 2)
    with opened_store(config_path, readonly=True) as (cfg, store):
        row = store.one(
            "SELECT m.*, a.balance_minor, a.policy_state, a.protected FROM meters m "
            "JOIN accounts a ON a.id = m.account_id WHERE m.id = ?",
            meter_id,
        )
        if row is None:
            known = ", ".join(r[0] for r in store.all("SELECT id FROM meters ORDER BY id LIMIT 10"))
            raise CliFailure(f"no meter '{meter_id}' (meters: {known or 'none'})", 2)
        data: dict[str, Any] = dict(row)
        data["balance"] = format_money(row["balance_minor"], cfg.minor_digits)
        data["comms"] = _comms(row["comms_ok"], row["comms_failed"], row["last_comms_error"])
        data["readings"] = [
            dict(r)
            for r in store.all(
                "SELECT id, taken_at, quality, register_wh, outcome, delta_wh, detail FROM readings "
                "WHERE meter_id = ? ORDER BY id DESC LIMIT ?",
                meter_id,
                readings,
            )
        ]
        data["relay_commands_open"] = [
            dict(r)
            for r in store.all(
                "SELECT id, action, status, attempts, reason, created_at FROM relay_commands "
                "WHERE meter_id = ? AND status IN ('pending', 'sending') ORDER BY id",
                meter_id,
            )
        ]
        data["events"] = [
            dict(r)
            for r in store.all(
                "SELECT id, at, kind, severity, detail_json FROM events WHERE meter_id = ? ORDER BY id DESC LIMIT 10",
                meter_id,
            )
        ]
    if as_json:
        emit_json(data)
        return
    skip = {"readings", "relay_commands_open", "events", "balance_minor"}
    emit_table(f"meter {meter_id}", ["field", "value"], [(k, v) for k, v in data.items() if k not in skip])
    emit_table(
        "recent readings",
        ["id", "taken at", "quality", "register Wh", "outcome", "delta Wh", "detail"],
        [tuple(r.values()) for r in data["readings"]],
    )
    if data["relay_commands_open"]:
        emit_table(
            "open relay commands",
            ["id", "action", "status", "attempts", "reason", "created"],
            [tuple(r.values()) for r in data["relay_commands_open"]],
        )
    emit_table(
        "recent events",
        ["id", "at", "kind", "severity", "detail"],
        [tuple(r.values()) for r in data["events"]],
    )


def _event_rows(store: Store, after_id: int, limit: int, meter_id: str | None, kind: str | None) -> list[Any]:
    where, params = ["id > ?"], [after_id]
    if meter_id:
        where.append("meter_id = ?")
        params.append(meter_id)  # type: ignore[arg-type]
    if kind:
        where.append("kind = ?")
        params.append(kind)  # type: ignore[arg-type]
    return store.all(
        "SELECT * FROM (SELECT id, at, kind, severity, account_id, meter_id, actor, detail_json FROM events "
        f"WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?) ORDER BY id",
        *params,
        limit,
    )


def _print_event(r: Any, as_json: bool) -> None:
    if as_json:
        import json

        click.echo(json.dumps(dict(r), ensure_ascii=False))
        return
    click.echo(
        f"{r['at']} {r['severity']:7} {r['kind']:24} account={r['account_id']} meter={r['meter_id']} "
        f"actor={r['actor']} {r['detail_json']}"
    )


@click.command("events")
@config_option
@click.option("--limit", type=click.IntRange(1, 100000), default=30, show_default=True)
@click.option("--meter", "meter_id", help="Only this meter's events.")
@click.option("--kind", help="Only events of this kind (e.g. relay_confirmed).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events as they happen (Ctrl-C stops).")
@json_option
def events_cmd(
    config_path: Path, limit: int, meter_id: str | None, kind: str | None, follow: bool, as_json: bool
) -> None:
    """The audit log, newest last (--json: an array; with --follow one JSON object per line)."""
    if meter_id is not None and not METER_ID.match(meter_id):
        raise CliFailure(f"--meter: '{meter_id}' is not a meter id", 2)
    with opened_store(config_path, readonly=True) as (_cfg, store):
        rows = _event_rows(store, 0, limit, meter_id, kind)
        if as_json and not follow:
            emit_json([dict(r) for r in rows])
            return
        for r in rows:
            _print_event(r, as_json)
        if not follow:
            return
        last = rows[-1]["id"] if rows else int(store.scalar("SELECT COALESCE(MAX(id), 0) FROM events"))
        try:
            while True:
                sys.stdout.flush()
                time.sleep(FOLLOW_INTERVAL_S)
                for r in _event_rows(store, last, 10000, meter_id, kind):
                    _print_event(r, as_json)
                    last = r["id"]
        except KeyboardInterrupt:
            return


@click.command("status")
@config_option
@json_option
def status_cmd(config_path: Path, as_json: bool) -> None:
    """Gateway health at a glance: daemon, buses, unreachable meters, outbox, broker, settlement.

    Exit status 1 when the daemon is not running, a meter is unreachable or quarantined (its readings
    are not billed until it is resolved), a bus is unhealthy or the gateway's clock is untrusted — for
    monitoring scripts.
    """
    from gateway.runtime.status import collect

    with opened_store(config_path, readonly=True) as (_cfg, store):
        data = collect(store, system_clock())
    bad = (
        data["daemon"] != "running"
        or bool(data["meters_unreachable"])
        or bool(data["meters_quarantined"])
        or bool(data.get("buses_unhealthy"))
        or not data["time"]["trusted"]
    )
    if as_json:
        emit_json(data)
    else:
        _print_status(data)
    if bad:
        sys.exit(1)


def _print_status(d: dict[str, Any]) -> None:
    live = d["live"] or {}
    age = f" (snapshot {live.get('age_s')} s old)" if live else ""
    click.echo(f"daemon: {d['daemon']}{age}")
    t = d["time"]
    if t["trusted"]:
        click.echo("time: trusted")
    else:
        click.echo(f"time: UNTRUSTED since {t['since']}: " + "; ".join(t["reasons"].values()))
    broker = live.get("broker")
    if broker is not None:
        click.echo(
            f"broker: {'connected' if broker['connected'] else 'DISCONNECTED'} (last error: {broker['last_error']})"
        )
    ob = d["outbox"]
    click.echo(
        f"outbox: {ob['messages']} waiting ({ob['billing_messages']} billing), oldest {ob['oldest_age_s']} s"
    )
    click.echo(
        f"last settlement: {d['last_settlement'] or 'never'}; last backup: {d['last_backup_at'] or 'never'}"
    )
    click.echo("accounts: " + (", ".join(f"{k} {v}" for k, v in d["accounts_by_state"].items()) or "none"))
    chain = d.get("chain")
    if chain is not None:
        click.echo(f"ledger chain: head {chain['head']}, {chain['length']} links")
    buses = live.get("buses", {})
    if d.get("buses_unhealthy"):
        click.echo("UNHEALTHY buses (no meter answered within unhealthy_after_s): " + ", ".join(d["buses_unhealthy"]))
    if buses:
        emit_table(
            "buses",
            ["bus", "meters", "ok", "failed", "error rate", "last latency ms", "heartbeat age s"],
            [
                (
                    b,
                    v["meters"],
                    v["polls_ok"],
                    v["polls_failed"],
                    v["error_rate"],
                    v["last_latency_ms"],
                    v["heartbeat_age_s"],
                )
                for b, v in buses.items()
            ],
        )
    if d["meters_unreachable"]:
        emit_table(
            f"unreachable meters ({len(d['meters_unreachable'])} of {d['meters']})",
            ["meter", "bus", "error", "last ok"],
            [tuple(m.values()) for m in d["meters_unreachable"]],
        )
    if d["meters_quarantined"]:
        emit_table(
            f"quarantined meters ({len(d['meters_quarantined'])} of {d['meters']}): not billed until resolved",
            ["meter", "reading", "since", "why"],
            [tuple(m.values()) for m in d["meters_quarantined"]],
        )
    if d["relay_commands_pending"]:
        emit_table(
            "pending relay commands",
            ["id", "meter", "action", "status", "attempts", "created"],
            [tuple(c.values()) for c in d["relay_commands_pending"]],
        )


@click.command("doctor")
@config_option
@json_option
def doctor_cmd(config_path: Path, as_json: bool) -> None:
    """Check the installation: database integrity, disk, clock sync, serial permissions, buses, broker.

    Exit status 1 if any check failed (warnings do not fail).
    """
    from gateway.cli.common import load
    from gateway.config import resolve
    from gateway.doctor import exit_status, run_checks
    from gateway.runtime.status import collect

    cfg = load(config_path)
    live = None
    db = resolve(config_path, cfg.database)
    if db.exists():
        try:  # a damaged database must not stop the other checks; the integrity check reports it
            with opened_store(config_path, readonly=True) as (_cfg, store):
                seen = collect(store, system_clock())
            live = seen["live"] if seen["daemon"] == "running" else None
        except (sqlite3.DatabaseError, StoreError, KeyError, ValueError):
            live = None
    checks = []
    show_progress = not as_json and sys.stderr.isatty()
    with click.progressbar(length=1, label="checking", file=sys.stderr) if show_progress else _null() as bar:
        for check in run_checks(cfg, config_path, live):
            checks.append(check)
            if bar is not None:
                bar.label = f"checked {check.name}"
    if as_json:
        emit_json([c.to_json() for c in checks])
    else:
        marks = {"ok": "OK  ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}
        for c in checks:
            click.echo(f"{marks[c.status]} {c.name:18} {c.detail}")
    sys.exit(exit_status(checks))


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
