"""Enforcement in the field: ``pmg explain``, ``pmg relay`` and ``pmg audit export``.

``explain`` answers a call-centre question ("why is my power off — or not off yet?") from the
database, read-only, with the same ``decide`` the daemon runs.  ``relay`` is a technician's manual
order: it goes through the daemon's durable queue (an override so the policy does not undo it, and a
pending relay command the running daemon's enforcer picks up within half a second), with the lawful
checks and the audit trail every automatic action has.  ``audit export`` hands the evidence over.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click

from gateway.cli.common import (
    CliFailure,
    FiniteFloat,
    config_option,
    emit_json,
    json_option,
    opened_store,
    presenter,
    require_id,
    reverse_option,
    unknown_message,
)
from gateway.core.present import instant_json, json_ready
from gateway.core.timeutil import iso, parse_iso
from gateway.policy.orders import order_trace
from gateway.policy.orders import queue_order as _queue_order

AUDIT_COLUMNS = ("id", "at", "kind", "severity", "account_id", "meter_id", "actor", "rules", "detail")
MAX_ORDER_HOURS = 24 * 92  # the head office's override limit (gateway.sync.commands.handlers.MAX_OVERRIDE)
# Years a technician may name: far enough for any question, near enough that the policy's arithmetic
# around an instant (it looks days ahead) never leaves ``datetime``'s range (year 9999).
FIRST_YEAR, LAST_YEAR = 1970, 2199


def parse_instant(text: str, tz: str, option: str) -> datetime:
    """ISO 8601 date or date-time; without an offset it is the gateway's local time (``timezone``)."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not an ISO 8601 date or time", param_hint=option) from None
    if not FIRST_YEAR <= value.year <= LAST_YEAR:
        raise click.BadParameter(f"'{text}' is outside the years {FIRST_YEAR}-{LAST_YEAR}", param_hint=option)
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(tz))
    return value.astimezone(UTC)


# -- explain ----------------------------------------------------------------------------------------
@click.command("explain")
@click.argument("account")
@click.option(
    "--at", "at_text", help="Instant to decide at (ISO 8601; no offset = gateway local time). Default: now."
)
@config_option
@json_option
def explain_cmd(account: str, at_text: str | None, config_path: Path, as_json: bool) -> None:
    """Why ACCOUNT's power is (not) off: state, the rules that apply, what happens next and when.

    Read-only: decides exactly as the daemon would at --at, and changes nothing.  ACCOUNT may also
    be a meter id.
    """
    from gateway.policy.decide import decide
    from gateway.policy.explain import explain
    from gateway.runtime.components import build_components

    with opened_store(config_path, readonly=True) as (cfg, store):
        at = parse_instant(at_text, cfg.timezone, "--at") if at_text is not None else datetime.now(UTC)
        parts = build_components(cfg, config_path, store)
        meters = [r[0] for r in store.all("SELECT id FROM meters WHERE account_id = ? ORDER BY id", account)]
        if not meters and store.one("SELECT 1 FROM meters WHERE id = ?", account):
            meters = [account]
        if not meters:
            if store.one("SELECT 1 FROM accounts WHERE id = ?", account):
                raise CliFailure(f"account '{account}' has no meter", 2)
            known = [r[0] for r in store.all("SELECT id FROM accounts ORDER BY id")]
            raise CliFailure(unknown_message("account or meter", account, known, plural="accounts"), 2)
        out: list[dict[str, Any]] = []
        for meter_id in meters:
            acc, meter, holds, overrides = parts.policy.snapshot(store.conn, meter_id, at)
            d = decide(acc, meter, at, parts.calendar, parts.rules, holds=holds, overrides=overrides, money=parts.policy.money)
            text = explain(d, acc, meter, at, parts.calendar, parts.rules, presenter(cfg))
            out.append(
                {
                    "meter_id": meter_id,
                    "at": iso(at),
                    "state": acc.state.value,
                    "next_state": d.state.value,
                    "actions": [a.kind.value for a in d.actions],
                    "blocked": [
                        {
                            "kind": a.kind.value,
                            "not_before": iso(a.not_before) if a.not_before else None,
                            "rules": [c.rule for c in a.trace if not c.passed],
                        }
                        for a in d.blocked
                    ],
                    "earliest_cut_at": iso(d.earliest_cut_at) if d.earliest_cut_at else None,
                    "next_review_at": iso(d.next_review_at) if d.next_review_at else None,
                    "text": text,
                }
            )
    if as_json:
        emit_json(out)
        return
    click.echo("\n\n".join(o["text"] for o in out))


# -- relay ------------------------------------------------------------------------------------------
@click.command("relay")
@click.argument("meter_id", metavar="METER")
@click.argument("operation", type=click.Choice(["open", "close"]))
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@click.option("--actor", required=True, help="The technician's name or id (recorded as technician:ACTOR).")
@click.option(
    "--allow-protected",
    is_flag=True,
    help="Open even for a protected customer or a keep-power meter (recorded in the trace).",
)
@click.option(
    "--hours",
    type=FiniteFloat(0.1, MAX_ORDER_HOURS),
    default=24.0,
    show_default=True,
    help="How long the order overrides the automatic policy.",
)
@config_option
@json_option
def relay_cmd(
    meter_id: str,
    operation: str,
    reason: str,
    actor: str,
    allow_protected: bool,
    hours: float,
    config_path: Path,
    as_json: bool,
) -> None:
    """A technician's manual order to open (trip) or close METER's relay, through the daemon's queue.

    Writes an override (so the automatic policy does not undo the order while it lasts) and a pending
    relay command, both audited with their trace.  A running daemon executes it within a second and
    confirms by read-back; without one it runs at the next start.
    """
    from gateway.policy.rules import load_preset

    if not reason.strip() or not actor.strip():
        raise click.BadParameter("must not be empty", param_hint="--reason/--actor")
    with opened_store(config_path) as (cfg, store):
        require_id(store, "meter", meter_id)
        rules = load_preset(cfg.policy.preset, cfg.policy.overrides)
        now = datetime.now(UTC)
        who = f"technician:{actor.strip()}"
        with store.tx() as conn:
            m = conn.execute(
                "SELECT m.keep_power, a.id, a.protected, a.protected_category FROM meters m "
                "JOIN accounts a ON a.id = m.account_id WHERE m.id = ?",
                (meter_id,),
            ).fetchone()
            if m is None:
                raise LookupError(f"no meter '{meter_id}'")
            keep_power, account_id = bool(m[0]), m[1]
            protected = bool(m[2]) or m[3] in rules.protected.categories
            trace = order_trace(operation, reason, who, protected, m[3], keep_power, allow_protected)
            if operation == "open" and (protected or keep_power) and not allow_protected:
                why = (
                    "keep-power (保电) is set"
                    if keep_power
                    else f"the customer is protected ({m[3] or 'flagged'})"
                )
                raise CliFailure(
                    f"meter {meter_id}: refusing to open: {why}; nothing changed "
                    "(use --allow-protected if this is lawful and intended)"
                )
            result = _queue_order(
                conn,
                meter_id,
                account_id,
                operation,
                reason,
                who,
                allow_protected,
                now,
                now + timedelta(hours=hours),
                trace,
            )
        running = _daemon_running(Path(store.path))
    result["daemon_running"] = running
    if as_json:
        emit_json(result)
        return
    until = presenter(cfg).when(result["until"])
    click.echo(
        f"{operation} queued for meter {meter_id} (command {result['command_id'] or 'already pending'}, "
        f"override {result['override_id']} until {until}); "
        + (
            "the running daemon executes it within a second and confirms by read-back"
            if running
            else "no daemon runs on this database: it executes at the next start"
        )
    )


def _daemon_running(db: Path) -> bool:
    from gateway.runtime.service import AlreadyRunning, InstanceLock

    lock = InstanceLock(db)
    try:
        lock.acquire()
    except AlreadyRunning:
        return True
    lock.release()
    return False


# -- audit export -----------------------------------------------------------------------------------
@click.group()
def audit() -> None:
    """The audit log: every relay action, blocked action, notice, override and alarm."""


@audit.command("export")
@click.option("--from", "from_text", help="Start (inclusive; ISO 8601, no offset = gateway local time).")
@click.option("--to", "to_text", help="End (exclusive; same form).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option(
    "--kind", "kinds", multiple=True, help="Only these event kinds (repeatable; 'policy_*' matches a prefix)."
)
@click.option("--meter", "meter_id", help="Only this meter's events.")
@click.option("--account", "account_id", help="Only this account's events.")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout."
)
@reverse_option
@config_option
@json_option
def audit_export(
    from_text: str | None,
    to_text: str | None,
    fmt: str,
    kinds: tuple[str, ...],
    meter_id: str | None,
    account_id: str | None,
    output: Path | None,
    reverse: bool,
    config_path: Path,
    as_json: bool,
) -> None:
    """Export audit events in [--from, --to) with actor, timestamps (ISO 8601 UTC) and each action's
    rule trace, newest first (--reverse: oldest first; --json wins over --format)."""
    fmt = "json" if as_json else fmt
    with opened_store(config_path, readonly=True) as (cfg, store):
        if meter_id is not None:
            require_id(store, "meter", meter_id)
        if account_id is not None:
            require_id(store, "account", account_id)
        start = parse_instant(from_text, cfg.timezone, "--from") if from_text is not None else None
        end = parse_instant(to_text, cfg.timezone, "--to") if to_text is not None else None
        if start and end and end <= start:
            raise click.BadParameter(f"--to {to_text} is not after --from {from_text}", param_hint="--to")
        # Stored instants vary in precision ('…:00Z' sorts after '…:00.5Z'), so SQL narrows coarsely
        # by the second and the exact bounds are applied on parsed instants.
        lo = iso(start - timedelta(seconds=1)) if start else ""
        hi = iso(end + timedelta(seconds=1)) if end else "~"
        rows = store.all(
            "SELECT id, at, kind, severity, account_id, meter_id, actor, detail_json FROM events "
            f"WHERE at >= ? AND at <= ? ORDER BY id {'ASC' if reverse else 'DESC'}",
            lo,
            hi,
        )
    records = [
        audit_record(r)
        for r in rows
        if _in_range(parse_iso(r["at"]), start, end)
        and _kind_ok(r["kind"], kinds)
        and meter_id in (None, r["meter_id"])
        and account_id in (None, r["account_id"])
    ]
    text = _render(records, fmt)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"{len(records)} events written to {output}", err=True)


def _in_range(at: datetime, start: datetime | None, end: datetime | None) -> bool:
    return (start is None or at >= start) and (end is None or at < end)


def _kind_ok(kind: str, kinds: tuple[str, ...]) -> bool:
    return not kinds or any(kind.startswith(k[:-1]) if k.endswith("*") else kind == k for k in kinds)


def audit_record(row: Any) -> dict[str, Any]:
    detail = json.loads(row["detail_json"])
    trace = detail.get("trace") if isinstance(detail, dict) else None
    rules = (
        "; ".join(
            f"{t.get('rule')}={'ok' if t.get('passed') else 'NO'}" for t in trace if isinstance(t, dict)
        )
        if isinstance(trace, list)
        else ""
    )
    return {
        "id": row["id"],
        "at": instant_json(row["at"]),
        "kind": row["kind"],
        "severity": row["severity"],
        "account_id": row["account_id"],
        "meter_id": row["meter_id"],
        "actor": row["actor"],
        "rules": rules,
        "detail": detail,
    }


def _render(records: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(json_ready(records), indent=2, ensure_ascii=False) + "\n"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=AUDIT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({**rec, "detail": json.dumps(rec["detail"], ensure_ascii=False, sort_keys=True)})
    return buf.getvalue()
