"""Operations: ``pmg meters``, ``pmg meter show``, ``pmg events``, ``pmg status``, ``pmg doctor``.

All of these only read the database (opened read-only, so a technician cannot disturb the running
daemon); live numbers come from the daemon's status snapshot (``gateway.runtime.status``).  Exit statuses:
0 fine, 1 something is wrong (``status``: daemon not running or meters unreachable; ``doctor``: a
check failed), 2 bad input.
"""

from __future__ import annotations

import json
import re
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import click

from gateway.cli.common import (
    CliFailure,
    Col,
    ago,
    config_option,
    emit_json,
    emit_table,
    emit_wrapped,
    json_option,
    opened_store,
    presenter,
    require_id,
    reverse_option,
)
from gateway.core.money import format_money
from gateway.core.present import Presenter, scalar_text
from gateway.core.timeutil import system_clock
from gateway.store.db import Store, StoreError

METER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
FOLLOW_INTERVAL_S = 0.5


def _comms(ok: int, failed: int, error: str | None) -> str:
    total = ok + failed
    health = f"{ok * 100 // total}% ok" if total else "never polled"
    return f"UNREACHABLE ({health})" if error else health


def _comms_short(ok: int, failed: int, error: str | None) -> str:
    """The comms column of ``pmg meters``: ``ok 100%``, ``DOWN 75%`` (the reason follows the table)."""
    total = ok + failed
    if not total:
        return "DOWN" if error else "never"
    return f"{'DOWN' if error else 'ok'} {ok * 100 // total}%"


def shown_state(policy_state: str, relay: str | None, last_cut: str | None) -> str:
    """The account's state as the meter actually is.

    The policy moves an account to ``disconnected`` when it orders the cut; a meter that refused the
    trip (or has not executed it yet) still supplies power, and showing ``disconnected`` beside
    ``relay closed`` would send a technician to the wrong house.  ``last_cut`` is the status of the
    meter's latest trip command.
    """
    if policy_state == "disconnected" and relay == "closed":
        if last_cut in ("failed", "cancelled"):
            return "cut failed"
        return "cut pending"
    return policy_state


_LAST_CUT = (
    "(SELECT status FROM relay_commands c WHERE c.meter_id = m.id AND c.action = 'trip' "
    "ORDER BY c.id DESC LIMIT 1) AS last_cut"
)


@click.command()
@config_option
@json_option
def meters(config_path: Path, as_json: bool) -> None:
    """Table of meters (by id): account, balance, state, relay, last reading, comms health."""
    with opened_store(config_path, readonly=True) as (cfg, store):
        rows = store.all(
            "SELECT m.id, m.bus_id, m.account_id, a.balance_minor, a.policy_state, m.relay, m.last_register_wh, "
            "m.last_reading_at, m.comms_ok, m.comms_failed, m.last_comms_error, m.quarantined_reading_id, "
            f"q.detail AS quarantine_detail, {_LAST_CUT} "
            "FROM meters m JOIN accounts a ON a.id = m.account_id "
            "LEFT JOIN readings q ON q.id = m.quarantined_reading_id ORDER BY m.id"
        )
    data = [
        {
            **{k: v for k, v in dict(r).items() if k != "last_cut"},
            "state": shown_state(r["policy_state"], r["relay"], r["last_cut"]),
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
    p = presenter(cfg)
    # Seven short columns fit 80 (the balance's header is the currency); a problem's text, which
    # can be long, follows the table, one wrapped line per meter.
    emit_table(
        None,
        [
            Col("meter", fixed=True),
            Col("account", fixed=True),
            Col(cfg.currency, fixed=True, right=True),
            Col("state", min_width=8),
            Col("relay", fixed=True),
            Col("last reading", fixed=True),
            Col("comms", fixed=True),
        ],
        [
            (
                d["id"],
                d["account_id"],
                d["balance"],
                d["state"],
                d["relay"],
                p.when(d["last_reading_at"]),
                _comms_short(d["comms_ok"], d["comms_failed"], d["last_comms_error"]),
            )
            for d in data
        ],
        compact=True,
    )
    for d in data:
        if d["quarantined_reading_id"]:
            emit_wrapped(f"{d['id']}: QUARANTINED: {d['quarantine_detail']} (not billed until resolved)")
        elif d["last_comms_error"]:
            emit_wrapped(f"{d['id']}: UNREACHABLE: {d['last_comms_error']}")


def _event_json(r: Any) -> dict[str, Any]:
    """An audit event for a script: its detail as a JSON object, not JSON text inside JSON."""
    out = {k: v for k, v in dict(r).items() if k != "detail_json"}
    out["detail"] = json.loads(r["detail_json"] or "{}")
    return out


@click.command("show")
@click.argument("meter_id")
@config_option
@click.option(
    "--readings", type=click.IntRange(0, 1000), default=5, show_default=True, help="Recent readings."
)
@reverse_option
@json_option
def meter_show(meter_id: str, config_path: Path, readings: int, reverse: bool, as_json: bool) -> None:
    """A meter's account, balance, relay, comms, recent readings, open relay commands and events
    (newest first)."""
    if not METER_ID.match(meter_id):
        raise CliFailure(f"'{meter_id}' is not a meter id (letters, digits, '_', '.', '-')", 2)
    order = "ASC" if reverse else "DESC"
    with opened_store(config_path, readonly=True) as (cfg, store):
        require_id(store, "meter", meter_id)
        row = store.one(
            f"SELECT m.*, a.balance_minor, a.policy_state, a.protected, {_LAST_CUT} FROM meters m "
            "JOIN accounts a ON a.id = m.account_id WHERE m.id = ?",
            meter_id,
        )
        assert row is not None
        data: dict[str, Any] = {k: v for k, v in dict(row).items() if k != "last_cut"}
        data["state"] = shown_state(row["policy_state"], row["relay"], row["last_cut"])
        data["balance"] = format_money(row["balance_minor"], cfg.minor_digits)
        data["comms"] = _comms(row["comms_ok"], row["comms_failed"], row["last_comms_error"])
        # The newest N, shown in the order asked for.
        newest = store.all(
            "SELECT id, taken_at, quality, register_wh, outcome, delta_wh, detail FROM readings "
            "WHERE meter_id = ? ORDER BY id DESC LIMIT ?",
            meter_id,
            readings,
        )
        data["readings"] = [dict(r) for r in (reversed(newest) if reverse else newest)]
        data["relay_commands_open"] = [
            dict(r)
            for r in store.all(
                "SELECT id, action, status, attempts, reason, created_at FROM relay_commands "
                f"WHERE meter_id = ? AND status IN ('pending', 'sending') ORDER BY id {order}",
                meter_id,
            )
        ]
        recent = store.all(
            "SELECT id, at, kind, severity, actor, detail_json FROM events WHERE meter_id = ? "
            "ORDER BY id DESC LIMIT 10",
            meter_id,
        )
        data["events"] = [_event_json(r) for r in (reversed(recent) if reverse else recent)]
    if as_json:
        emit_json(data)
        return
    p = presenter(cfg)
    skip = {"readings", "relay_commands_open", "events", "balance_minor", "id"}
    flags = {"keep_power", "keep_power_on_meter", "protected"}
    fields = [
        (
            k,
            p.when(v)
            if k.endswith("_at")
            else p.money(row["balance_minor"])
            if k == "balance"
            else (None if v is None else bool(v))
            if k in flags
            else v,
        )
        for k, v in data.items()
        if k not in skip
    ]
    emit_table(f"meter {meter_id}", [Col("field", fixed=True), Col("value")], fields)
    emit_table(
        "recent readings",
        [
            Col("id", fixed=True, right=True),
            Col("taken at", fixed=True),
            Col("quality", fixed=True),
            Col("register Wh", fixed=True, right=True),
            Col("outcome", fixed=True),
            Col("delta Wh", fixed=True, right=True),
            Col("detail", min_width=6),
        ],
        [
            (r["id"], p.when(r["taken_at"]), r["quality"], r["register_wh"], r["outcome"], r["delta_wh"], r["detail"])
            for r in data["readings"]
        ],
    )
    if data["relay_commands_open"]:
        emit_table(
            "open relay commands",
            [Col("id", fixed=True, right=True), "action", "status", "attempts", "reason", Col("created", fixed=True)],
            [
                (c["id"], c["action"], c["status"], c["attempts"], c["reason"], p.when(c["created_at"]))
                for c in data["relay_commands_open"]
            ],
        )
    emit_table(
        "recent events",
        [Col("id", fixed=True, right=True), Col("at", fixed=True), Col("kind"), Col("detail", min_width=10)],
        [(e["id"], p.when(e["at"]), e["kind"], detail_text(e["detail"])) for e in data["events"]],
    )


def detail_text(detail: Any) -> str:
    """An event's detail for a person: ``key=value`` pairs (a nested value as compact JSON)."""
    if not isinstance(detail, dict):
        return scalar_text(detail)
    parts = []
    for k, v in detail.items():
        text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, separators=(",", ":"))
        parts.append(f"{k}={text}")
    return " ".join(parts)


def _event_rows(
    store: Store, after_id: int, limit: int, meter_id: str | None, kind: str | None, *, newest_first: bool
) -> list[Any]:
    where, params = ["id > ?"], [after_id]
    if meter_id:
        where.append("meter_id = ?")
        params.append(meter_id)  # type: ignore[arg-type]
    if kind:
        where.append("kind = ?")
        params.append(kind)  # type: ignore[arg-type]
    return store.all(
        "SELECT * FROM (SELECT id, at, kind, severity, account_id, meter_id, actor, detail_json FROM events "
        f"WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?) ORDER BY id {'DESC' if newest_first else 'ASC'}",
        *params,
        limit,
    )


def _print_event(r: Any, as_json: bool, p: Presenter) -> None:
    if as_json:
        from gateway.core.present import json_ready

        click.echo(json.dumps(json_ready(_event_json(r)), ensure_ascii=False))
        return
    who = " ".join(
        f"{name}={r[col]}" for name, col in (("account", "account_id"), ("meter", "meter_id"), ("actor", "actor")) if r[col]
    )
    # One event, one block: the instant, severity, kind, who and detail, wrapped at the terminal's
    # width with the continuation lines indented.
    detail = detail_text(json.loads(r["detail_json"] or "{}"))
    emit_wrapped(f"{p.when(r['at'])} {r['severity']} {r['kind']} {who} {detail}".rstrip(), indent=4)


@click.command("events")
@config_option
@click.option("--limit", type=click.IntRange(1, 100000), default=30, show_default=True)
@click.option("--meter", "meter_id", help="Only this meter's events.")
@click.option("--account", "account_id", help="Only this account's events.")
@click.option("--kind", help="Only events of this kind (e.g. relay_confirmed).")
@click.option(
    "-f", "--follow", is_flag=True, help="Then keep printing new events as they happen, oldest first (Ctrl-C stops)."
)
@reverse_option
@json_option
def events_cmd(
    config_path: Path,
    limit: int,
    meter_id: str | None,
    account_id: str | None,
    kind: str | None,
    follow: bool,
    reverse: bool,
    as_json: bool,
) -> None:
    """The audit log, newest first (--reverse: oldest first; --json: an array).

    With --follow the latest events are printed oldest first and new ones appended as they happen,
    as ``tail -f`` does (--json: one object per line).
    """
    if meter_id is not None and not METER_ID.match(meter_id):
        raise CliFailure(f"--meter: '{meter_id}' is not a meter id", 2)
    with opened_store(config_path, readonly=True) as (cfg, store):
        if meter_id is not None:
            require_id(store, "meter", meter_id)
        if account_id is not None:
            require_id(store, "account", account_id)
        p = presenter(cfg)
        rows = _event_rows(store, 0, limit, meter_id, kind, newest_first=not (reverse or follow))
        if account_id is not None:
            rows = [r for r in rows if r["account_id"] == account_id]
        if as_json and not follow:
            emit_json([_event_json(r) for r in rows])
            return
        for r in rows:
            _print_event(r, as_json, p)
        if not follow:
            return
        last = max((r["id"] for r in rows), default=int(store.scalar("SELECT COALESCE(MAX(id), 0) FROM events")))
        try:
            while True:
                sys.stdout.flush()
                time.sleep(FOLLOW_INTERVAL_S)
                for r in _event_rows(store, last, 10000, meter_id, kind, newest_first=False):
                    last = r["id"]
                    if account_id is None or r["account_id"] == account_id:
                        _print_event(r, as_json, p)
        except KeyboardInterrupt:
            return


@click.command("status")
@config_option
@json_option
def status_cmd(config_path: Path, as_json: bool) -> None:
    """Gateway health at a glance: daemon, buses, unreachable meters, outbox, broker, settlement.

    Exit status 1 when the daemon is not running, a meter is unreachable or quarantined (its readings
    are not billed until it is resolved), a bus is unhealthy or the gateway's clock is untrusted — for
    monitoring scripts.  A daemon that stopped (cleanly or killed: nobody holds its instance lock) is
    said to be stopped; its last snapshot of the broker and the buses is not shown as live.
    """
    from gateway.runtime.status import collect, daemon_lock_held

    with opened_store(config_path, readonly=True) as (cfg, store):
        data = collect(store, system_clock(), lock_held=daemon_lock_held(store.path))
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
        _print_status(data, presenter(cfg))
    if bad:
        sys.exit(1)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g} s"


def _print_status(d: dict[str, Any], p: Presenter) -> None:
    live = d["live"]
    if live is not None:
        click.echo(f"daemon: running (pid {live.get('pid', '?')}, snapshot {ago(live.get('age_s'))} old)")
    elif d["snapshot_at"] is not None:
        click.echo(f"daemon: {d['daemon'].upper()} (last seen {p.when(d['snapshot_at'])})")
    else:
        click.echo(f"daemon: {d['daemon'].upper()}")
    t = d["time"]
    if t["trusted"]:
        click.echo("time: trusted")
    else:
        emit_wrapped(f"time: UNTRUSTED since {p.when(t['since'], none='unknown')}: " + "; ".join(t["reasons"].values()))
    broker = (live or {}).get("broker")
    if broker is not None:
        error = f" (last error: {broker['last_error']})" if broker.get("last_error") else ""
        click.echo(f"broker: {'connected' if broker['connected'] else 'DISCONNECTED'}{error}")
    elif live is not None:
        click.echo("broker: none configured (usage stays in the outbox)")
    ob = d["outbox"]
    oldest = f", oldest {p.when(ob['oldest_created_at'])} ({ago(ob['oldest_age_s'])} ago)" if ob["messages"] else ""
    emit_wrapped(f"outbox: {ob['messages']} waiting ({ob['billing_messages']} billing){oldest}")
    click.echo(f"last settlement: {p.when(d['last_settlement'])}; last backup: {p.when(d['last_backup_at'])}")
    click.echo("accounts: " + (", ".join(f"{k} {v}" for k, v in d["accounts_by_state"].items()) or "none"))
    chain = d.get("chain")
    if chain is not None:
        click.echo(f"ledger chain: {chain['length']} links, head:\n  {chain['head']}")
    buses = (live or {}).get("buses", {})
    if d.get("buses_unhealthy"):
        emit_wrapped("UNHEALTHY buses (no meter answered within unhealthy_after_s): " + ", ".join(d["buses_unhealthy"]))
    if buses:
        emit_table(
            "buses",
            [
                Col("bus", fixed=True),
                Col("health", fixed=True),
                Col("meters", right=True),
                Col("polls ok", right=True),
                Col("failed", right=True),
                Col("errors", right=True),
                Col("latency", right=True),
                Col("heartbeat", right=True),
            ],
            [
                (
                    b,
                    "ok" if v.get("healthy", True) else "UNHEALTHY",
                    v["meters"],
                    v["polls_ok"],
                    v["polls_failed"],
                    "-" if v.get("error_rate") is None else f"{v['error_rate']:.0%}",
                    f"{v['last_latency_ms']:g} ms",
                    _seconds(v["heartbeat_age_s"]),
                )
                for b, v in buses.items()
            ],
        )
    if d["meters_unreachable"]:
        emit_table(
            f"unreachable meters ({len(d['meters_unreachable'])} of {d['meters']})",
            [Col("meter", fixed=True), Col("bus", fixed=True), Col("last ok", fixed=True), Col("error")],
            [(m["meter"], m["bus"], p.when(m["last_ok"]), m["error"]) for m in d["meters_unreachable"]],
        )
    if d["meters_quarantined"]:
        emit_table(
            f"quarantined meters ({len(d['meters_quarantined'])} of {d['meters']}): not billed until resolved",
            [Col("meter", fixed=True), Col("reading", right=True), Col("since", fixed=True), Col("why")],
            [(m["meter"], m["reading_id"], p.when(m["since"]), m["detail"]) for m in d["meters_quarantined"]],
        )
    if d["relay_commands_pending"]:
        emit_table(
            "pending relay commands (newest first)",
            [
                Col("id", fixed=True, right=True),
                Col("meter", fixed=True),
                Col("action"),
                Col("status"),
                Col("attempts", right=True),
                Col("created", fixed=True),
            ],
            [
                (c["id"], c["meter_id"], c["action"], c["status"], c["attempts"], p.when(c["created_at"]))
                for c in reversed(d["relay_commands_pending"])
            ],
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
    from gateway.doctor import exit_status, run_checks, table_counts
    from gateway.runtime.status import collect, daemon_lock_held

    cfg = load(config_path)
    live = None
    db = resolve(config_path, cfg.database)
    if db.exists():
        try:  # a damaged database must not stop the other checks; the integrity check reports it
            with opened_store(config_path, readonly=True) as (_cfg, store):
                seen = collect(store, system_clock(), lock_held=daemon_lock_held(store.path))
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
    failed = exit_status(checks)
    tables = table_counts(db) if not any(c.name == "database" and c.status == "fail" for c in checks) else []
    if as_json:
        emit_json({"ok": failed == 0, "checks": [c.to_json() for c in checks], "tables": tables})
    else:
        marks = {"ok": "OK  ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}
        for c in checks:
            emit_wrapped(f"{marks[c.status]} {c.name:18} {c.detail}", indent=24)
        if tables:
            emit_table(
                f"database tables ({db.name})",
                [Col("table", fixed=True), Col("rows", fixed=True, right=True)],
                [(t["table"], t["rows"]) for t in tables],
            )
    sys.exit(failed)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
