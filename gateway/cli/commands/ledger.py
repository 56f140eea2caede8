"""Ledger commands: ``pmg ledger verify|debt|adjust``, ``pmg balance``, ``pmg payment add``, and the
technician's resolution of quarantined meters, ``pmg meter replace|accept-reading``."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import click

from gateway.cli.common import (
    AuditText,
    CliFailure,
    Col,
    MoneyText,
    config_option,
    emit_json,
    emit_table,
    json_option,
    opened_store,
    presenter,
    require_id,
    reverse_option,
)
from gateway.core.money import format_money, parse_money
from gateway.ledger.accounts import balance_minor
from gateway.ledger.chain_check import BadHead, parse_head
from gateway.ledger.verify import verify
from gateway.store.chain import head


@click.group()
def ledger() -> None:
    """Check the ledger."""


@ledger.command("verify")
@config_option
@click.option(
    "--expect-head",
    "expect_head",
    metavar="HASH[:LENGTH]",
    help="A chain head the head office holds (from a status message): the chain's first LENGTH links "
    "must still hash to HASH.",
)
@json_option
def ledger_verify(config_path: Path, expect_head: str | None, as_json: bool) -> None:
    """Recompute balances and charges from the append-only entries and check the hash chain
    (docs/ledger.md, "Tamper evidence"); exit 1 on any mismatch."""
    try:
        expected = parse_head(expect_head) if expect_head is not None else None
    except BadHead as exc:
        raise CliFailure(str(exc), 2) from None
    with opened_store(config_path, readonly=True) as (cfg, store):
        problems = verify(store, cfg.minor_digits, expected)
        counts = {
            "accounts": store.scalar("SELECT COUNT(*) FROM accounts"),
            "entries": store.scalar("SELECT COUNT(*) FROM entries"),
            "payments": store.scalar("SELECT COUNT(*) FROM payments"),
        }
        chain_head = head(store.conn)
    if as_json:
        emit_json(
            {
                "ok": not problems,
                **counts,
                "chain_head": None if chain_head is None else chain_head.hash,
                "chain_length": None if chain_head is None else chain_head.length,
                "mismatches": [str(p) for p in problems],
            }
        )
    else:
        for p in problems:
            click.echo(f"MISMATCH {p}")
        click.echo(
            f"{'OK' if not problems else 'FAILED'}: {counts['accounts']} accounts, "
            f"{counts['entries']} entries, {counts['payments']} payments checked; "
            f"chain head {chain_head if chain_head is not None else 'none'}"
        )
    if problems:
        raise CliFailure(f"{len(problems)} ledger mismatch(es)")


@click.command()
@config_option
@click.argument("account")
@click.option("--limit", type=click.IntRange(1, 10000), default=10, show_default=True, help="Recent entries.")
@reverse_option
@json_option
def balance(config_path: Path, account: str, limit: int, reverse: bool, as_json: bool) -> None:
    """Show an account's balance (derived from its entries) and its recent entries, newest first."""
    with opened_store(config_path, readonly=True) as (cfg, store):
        require_id(store, "account", account)
        row = store.one(
            "SELECT id, balance_minor, policy_state, tariff_id FROM accounts WHERE id = ?", account
        )
        assert row is not None
        derived = balance_minor(store.conn, account)
        newest = store.all(
            "SELECT id, created_at, kind, amount_minor, energy_wh, meter_id, external_id FROM entries "
            "WHERE account_id = ? ORDER BY id DESC LIMIT ?",
            account,
            limit,
        )
    entries = list(reversed(newest)) if reverse else newest
    digits = cfg.minor_digits
    if as_json:
        emit_json(
            {
                "account": account,
                "balance": format_money(derived, digits),
                "currency": cfg.currency,
                "policy_state": row["policy_state"],
                "tariff": row["tariff_id"],
                "recent_entries": [
                    {**dict(e), "amount": format_money(e["amount_minor"], digits)} for e in entries
                ],
            }
        )
        return
    p = presenter(cfg)
    click.echo(f"{account}: {p.money(derived)} ({row['policy_state']}, tariff {row['tariff_id']})")
    emit_table(
        "recent entries",
        [
            Col("at", fixed=True),
            Col("kind"),
            Col(f"amount {cfg.currency}", fixed=True, right=True),
            Col("energy Wh", right=True),
            Col("meter"),
            Col("ref"),
        ],
        [
            (
                p.when(e["created_at"]),
                e["kind"],
                format_money(e["amount_minor"], digits),
                e["energy_wh"],
                e["meter_id"],
                e["external_id"],
            )
            for e in entries
        ],
    )


@click.group()
def payment() -> None:
    """Record payments taken locally (cash at a mini-grid office)."""


@payment.command("add")
@config_option
@click.argument("account")
@click.argument("amount", type=MoneyText())
@click.option("--id", "payment_id", type=AuditText(128), help="Payment id (idempotence key; default: a new UUID).")
@click.option("--actor", required=True, type=AuditText(), help="Who took the payment (recorded in the audit log).")
@json_option
def payment_add(
    config_path: Path, account: str, amount: str, payment_id: str | None, actor: str, as_json: bool
) -> None:
    """Apply a payment of AMOUNT (a decimal like 50.00) to ACCOUNT, exactly once per --id.

    The running daemon sees the payment within a fraction of a second (it watches the database) and
    re-decides the account; a stopped daemon does so at its start.  The output says whether supply
    returns (``supply``: reason and shortfall, docs/enforcement.md).
    """
    from gateway.core.timeutil import system_clock
    from gateway.ledger.payments import apply_payment
    from gateway.policy.engine import outcome_json
    from gateway.runtime.components import build_components

    with opened_store(config_path) as (cfg, store):
        require_id(store, "account", account)
        minor = parse_money(amount, cfg.minor_digits)
        parts = build_components(cfg, config_path, store)  # before any write: a bad config changes nothing
        now = system_clock()
        with store.tx() as conn:
            result = apply_payment(
                conn,
                payment_id or str(uuid.uuid4()),
                account,
                minor,
                now,
                source=f"cli:{actor}",
                minor_digits=cfg.minor_digits,
            )
            supply = parts.policy.payment_outcome(conn, account, now)
    out = {
        "payment_id": result.payment_id,
        "account": account,
        "amount": format_money(minor, cfg.minor_digits),
        "balance": format_money(result.balance_minor, cfg.minor_digits),
        "replayed": result.replayed,
        "emergency_repayment": format_money(result.emergency_repayment_minor, cfg.minor_digits),
        "arrears_repayment": format_money(result.arrears_repayment_minor, cfg.minor_digits),
        "debt_recovery": format_money(result.debt_recovery_minor, cfg.minor_digits),
        "credit": format_money(result.credit_minor, cfg.minor_digits),
        "debt_outstanding": format_money(result.debt_minor, cfg.minor_digits),
        "supply": outcome_json(supply, cfg.minor_digits),
    }
    if as_json:
        emit_json(out)
    else:
        click.echo(
            f"{'already applied' if result.replayed else 'applied'}: {out['amount']} to {account}, "
            f"balance {out['balance']} (payment {result.payment_id})"
        )
        click.echo(
            f"  split: emergency credit repaid {out['emergency_repayment']}, arrears repaid "
            f"{out['arrears_repayment']}, debt recovery {out['debt_recovery']}, credit {out['credit']}; "
            f"debt outstanding {out['debt_outstanding']}"
        )
        click.echo(f"  supply: {_SUPPLY_TEXT[supply.reason]}" + (
            f"; {format_money(supply.shortfall_minor, cfg.minor_digits)} more needed"
            if supply.shortfall_minor > 0 else ""
        ) + f" ({supply.reason})")


# One line per payment-outcome reason (gateway.policy.outcome.Reason), for the cashier's screen.
_SUPPLY_TEXT = {
    "restored": "will be restored (the running daemon closes the relay within a second)",
    "close_permitted": "may be restored: the customer presses the meter's button once the daemon permits it",
    "already_on": "on",
    "cut_still_due": "on for now, but credit is still too low to prevent a cut",
    "below_reconnect_threshold": "stays off: the balance is below the reconnect threshold",
    "manual_disconnect_order": "stays off: a manual disconnect order is in force",
    "meter_not_controllable": "stays off: the meter's relay cannot be closed remotely (a technician must)",
    "no_meter": "no meter on this account",
}


@ledger.command("debt")
@config_option
@click.argument("account")
@click.argument("amount", type=MoneyText())
@click.option("--id", "debt_id", type=AuditText(128), help="Debt id (idempotence key; default: a new UUID).")
@click.option("--share", help="Share of each later top-up recovered towards the debt, e.g. 0.25.")
@click.option("--reason", required=True, type=AuditText(), help="Why the customer owes this (audited).")
@click.option("--actor", required=True, type=AuditText(), help="Who records it (audited).")
@json_option
def ledger_debt(
    config_path: Path,
    account: str,
    amount: str,
    debt_id: str | None,
    share: str | None,
    reason: str,
    actor: str,
    as_json: bool,
) -> None:
    """Record a debt of AMOUNT owed by ACCOUNT outside its balance, recovered from its top-ups."""
    from gateway.core.timeutil import system_clock
    from gateway.ledger.credit import add_debt, parse_share

    with opened_store(config_path) as (cfg, store):
        require_id(store, "account", account)
        minor = parse_money(amount, cfg.minor_digits)
        debt_id = debt_id or str(uuid.uuid4())
        with store.tx() as conn:
            applied = add_debt(
                conn,
                debt_id,
                account,
                minor,
                system_clock(),
                reason=reason,
                actor=actor,
                share=parse_share(share) if share is not None else None,
                minor_digits=cfg.minor_digits,
            )
            total = conn.execute("SELECT debt_minor FROM accounts WHERE id = ?", (account,)).fetchone()[0]
    if as_json:
        emit_json(
            {
                "debt_id": debt_id,
                "account": account,
                "amount": format_money(minor, cfg.minor_digits),
                "applied": applied,
                "debt_outstanding": format_money(total, cfg.minor_digits),
                "currency": cfg.currency,
            }
        )
        return
    click.echo(
        f"{'recorded' if applied else 'already recorded'}: debt {format_money(minor, cfg.minor_digits)} on "
        f"{account}, outstanding {format_money(total, cfg.minor_digits)}"
    )


# A correction is negative ("-3.50"): click must take it as the AMOUNT, not as an unknown option.
@ledger.command("adjust", context_settings={"ignore_unknown_options": True})
@config_option
@click.argument("account")
@click.argument("amount", type=MoneyText())
@click.option("--id", "adjustment_id", type=AuditText(128), help="Adjustment id (idempotence key; default: a new UUID).")
@click.option("--reason", required=True, type=AuditText(), help="Why (audited).")
@click.option("--actor", required=True, type=AuditText(), help="Who (audited).")
@json_option
def ledger_adjust(
    config_path: Path, account: str, amount: str, adjustment_id: str | None, reason: str, actor: str, as_json: bool
) -> None:
    """Correct ACCOUNT's balance by a signed AMOUNT (refund "12.00", correction "-3.50").

    A negative AMOUNT is written as is: ``pmg ledger adjust A1 -3.50 --reason … --actor …``.
    """
    from gateway.core.timeutil import system_clock
    from gateway.ledger.credit import post_adjustment

    with opened_store(config_path) as (cfg, store):
        require_id(store, "account", account)
        minor = parse_money(amount, cfg.minor_digits)
        adjustment_id = adjustment_id or str(uuid.uuid4())
        with store.tx() as conn:
            applied = post_adjustment(
                conn,
                adjustment_id,
                account,
                minor,
                system_clock(),
                reason=reason,
                actor=actor,
                minor_digits=cfg.minor_digits,
            )
        bal = balance_minor(store.conn, account)
    if as_json:
        emit_json(
            {
                "adjustment_id": adjustment_id,
                "account": account,
                "amount": format_money(minor, cfg.minor_digits),
                "applied": applied,
                "balance": format_money(bal, cfg.minor_digits),
                "currency": cfg.currency,
            }
        )
        return
    click.echo(
        f"{'applied' if applied else 'already applied'}: {format_money(minor, cfg.minor_digits)} to {account}, "
        f"balance {format_money(bal, cfg.minor_digits)}"
    )


def _pricer_for(cfg: Any, config_path: Path, store: Any, meter_id: str) -> tuple[Any, int]:
    from gateway.runtime.components import build_components

    modulus = next((m.register_modulus_wh for m in cfg.meters if m.id == meter_id), 1_000_000_000)
    return build_components(cfg, config_path, store).book, modulus


@click.command("accept-reading")
@config_option
@click.argument("meter_id", metavar="METER")
@click.option("--charge", "mode", flag_value="charge", help="The reading was real: charge up to it.")
@click.option(
    "--rebaseline", "mode", flag_value="rebaseline", help="The register was reset: restart from it."
)
@click.option("--reason", required=True, type=AuditText(), help="What the technician found (audited).")
@click.option("--actor", required=True, type=AuditText(), help="Who decides (audited).")
@json_option
def meter_accept(
    config_path: Path, meter_id: str, mode: str | None, reason: str, actor: str, as_json: bool
) -> None:
    """Resolve METER's quarantined reading: --charge it or --rebaseline on it."""
    from gateway.core.timeutil import system_clock
    from gateway.ledger.quarantine import accept_reading

    if mode is None:
        raise click.UsageError("say --charge or --rebaseline")
    with opened_store(config_path) as (cfg, store):
        require_id(store, "meter", meter_id)
        book, modulus = _pricer_for(cfg, config_path, store, meter_id)
        with store.tx() as conn:
            res = accept_reading(
                conn,
                meter_id,
                "charge" if mode == "charge" else "rebaseline",
                book.pricer(conn),
                system_clock(),
                reason=reason,
                actor=actor,
                register_modulus_wh=modulus,
                minor_digits=cfg.minor_digits,
            )
    out = {
        "meter": meter_id,
        "action": res.action,
        "reading_id": res.reading_id,
        "charged_wh": res.delta_wh,
        "charge": format_money(res.charge_minor, cfg.minor_digits),
    }
    if as_json:
        emit_json(out)
    else:
        click.echo(
            f"{meter_id}: reading {res.reading_id} {'charged' if res.action == 'charge' else 'taken as new baseline'}"
            f" ({res.delta_wh} Wh, {out['charge']} {cfg.currency})"
        )


@click.command("replace")
@config_option
@click.argument("meter_id", metavar="METER")
@click.option(
    "--final-register",
    "final_wh",
    type=click.IntRange(min=0, max=2**63 - 1),  # SQLite's INTEGER; the meter's modulus is checked below
    required=True,
    help="The old meter's final import register in Wh (read off its display).",
)
@click.option("--new-address", required=True, help="The new meter's address.")
@click.option("--reason", required=True, type=AuditText(), help="Why it was replaced (audited).")
@click.option("--actor", required=True, type=AuditText(), help="Who replaced it (audited).")
@json_option
def meter_replace(
    config_path: Path, meter_id: str, final_wh: int, new_address: str, reason: str, actor: str, as_json: bool
) -> None:
    """Charge METER up to the old device's final register and point it at the new device.

    Also change the meter's address in the configuration file (then reload the daemon): the daemon
    polls the address the configuration names.
    """
    from gateway.core.timeutil import system_clock
    from gateway.ledger.quarantine import replace_meter

    with opened_store(config_path) as (cfg, store):
        require_id(store, "meter", meter_id)
        book, modulus = _pricer_for(cfg, config_path, store, meter_id)
        if final_wh >= modulus:  # a register counts modulo its modulus: no display shows more
            raise CliFailure(
                f"--final-register {final_wh} Wh is not below the register modulus of meter "
                f"'{meter_id}' ({modulus} Wh)",
                2,
            )
        with store.tx() as conn:
            res = replace_meter(
                conn,
                meter_id,
                final_wh,
                new_address,
                book.pricer(conn),
                system_clock(),
                reason=reason,
                actor=actor,
                minor_digits=cfg.minor_digits,
            )
    out = {
        "meter": meter_id,
        "new_address": new_address,
        "charged_wh": res.delta_wh,
        "charge": format_money(res.charge_minor, cfg.minor_digits),
    }
    if as_json:
        emit_json(out)
    else:
        click.echo(
            f"{meter_id}: final {res.delta_wh} Wh charged ({out['charge']} {cfg.currency}); now address "
            f"{new_address}, baseline at its first reading. Update the address in the configuration and reload."
        )


EXPORT_COLUMNS = (
    "id",
    "created_at",
    "account_id",
    "kind",
    "amount",
    "energy_wh",
    "meter_id",
    "reading_id",
    "external_id",
    "period_start",
    "period_end",
    "detail",
)


@ledger.command("export")
@config_option
@click.option("--csv", "fmt", flag_value="csv", default=True, help="CSV, one entry a row (the default).")
@click.option("--json", "fmt", flag_value="json", help="A JSON array of entries.")
@click.option("--account", help="Only this account's entries.")
@click.option("--from", "from_text", help="Start (inclusive; ISO 8601, no offset = gateway local time).")
@click.option("--to", "to_text", help="End (exclusive; same form).")
@reverse_option
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout."
)
def ledger_export(
    config_path: Path,
    fmt: str,
    account: str | None,
    from_text: str | None,
    to_text: str | None,
    reverse: bool,
    output: Path | None,
) -> None:
    """Export the ledger's entries (newest first; --reverse: oldest first), read-only.

    Amounts are exact decimals in the configured currency, instants ISO 8601 UTC, ``detail`` the
    entry's pricing detail (a JSON object; in CSV its JSON text).  Rows come through sqlite-utils'
    ``rows_where``, so the export is the table as stored, not a report's arithmetic.
    """
    import csv
    import io
    import json as jsonlib
    import sys

    import sqlite_utils

    from gateway.cli.commands.field import parse_instant
    from gateway.core.present import instant_json, json_ready

    with opened_store(config_path, readonly=True) as (cfg, store):
        if account is not None:
            require_id(store, "account", account)
        start = parse_instant(from_text, cfg.timezone, "--from") if from_text is not None else None
        end = parse_instant(to_text, cfg.timezone, "--to") if to_text is not None else None
        if start and end and end <= start:
            raise click.BadParameter(f"--to {to_text} is not after --from {from_text}", param_hint="--to")
        where, args = ["1 = 1"], []
        if account is not None:
            where.append("account_id = ?")
            args.append(account)
        rows = [
            r
            for r in sqlite_utils.Database(store.conn)["entries"].rows_where(
                " AND ".join(where), args, order_by=f"id {'ASC' if reverse else 'DESC'}"
            )
            # Stored instants differ in precision, so the bounds are applied on parsed instants.
            if (start is None or _instant(r["created_at"]) >= start) and (end is None or _instant(r["created_at"]) < end)
        ]
    records = [
        {
            "id": r["id"],
            "created_at": instant_json(r["created_at"]),
            "account_id": r["account_id"],
            "kind": r["kind"],
            "amount": format_money(r["amount_minor"], cfg.minor_digits),
            "energy_wh": r["energy_wh"],
            "meter_id": r["meter_id"],
            "reading_id": r["reading_id"],
            "external_id": r["external_id"],
            "period_start": instant_json(r["period_start"]) if r["period_start"] else None,
            "period_end": instant_json(r["period_end"]) if r["period_end"] else None,
            "detail": jsonlib.loads(r["detail_json"] or "{}"),
        }
        for r in rows
    ]
    if fmt == "json":
        text = jsonlib.dumps(json_ready(records), indent=2, ensure_ascii=False) + "\n"
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for rec in records:
            writer.writerow({**rec, "detail": jsonlib.dumps(rec["detail"], ensure_ascii=False, sort_keys=True)})
        text = buf.getvalue()
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"{len(records)} entries ({cfg.currency}) written to {output}", err=True)


def _instant(text: str) -> Any:
    from gateway.core.timeutil import parse_iso

    return parse_iso(text)
