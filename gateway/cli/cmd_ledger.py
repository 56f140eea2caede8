"""Ledger commands: ``pmg ledger verify``, ``pmg balance``, ``pmg payment add``."""

from __future__ import annotations

import uuid
from pathlib import Path

import click

from gateway.cli.common import CliFailure, config_option, emit_json, emit_table, json_option, opened_store
from gateway.ledger.accounts import balance_minor
from gateway.ledger.verify import verify
from gateway.money import format_money, parse_money


def register(cli: click.Group) -> None:
    cli.add_command(ledger)
    cli.add_command(balance)
    cli.add_command(payment)


@click.group()
def ledger() -> None:
    """Check the ledger."""


@ledger.command("verify")
@config_option
@json_option
def ledger_verify(config_path: Path, as_json: bool) -> None:
    """Recompute balances and charges from the append-only entries; exit 1 on any mismatch."""
    with opened_store(config_path, readonly=True) as (_cfg, store):
        problems = verify(store)
        counts = {
            "accounts": store.scalar("SELECT COUNT(*) FROM accounts"),
            "entries": store.scalar("SELECT COUNT(*) FROM entries"),
            "payments": store.scalar("SELECT COUNT(*) FROM payments"),
        }
    if as_json:
        emit_json({"ok": not problems, **counts, "mismatches": [str(p) for p in problems]})
    else:
        for p in problems:
            click.echo(f"MISMATCH {p}")
        click.echo(
            f"{'OK' if not problems else 'FAILED'}: {counts['accounts']} accounts, "
            f"{counts['entries']} entries, {counts['payments']} payments checked"
        )
    if problems:
        raise CliFailure(f"{len(problems)} ledger mismatch(es)")


@click.command()
@config_option
@click.argument("account")
@json_option
def balance(config_path: Path, account: str, as_json: bool) -> None:
    """Show an account's balance (derived from its entries) and its recent entries."""
    with opened_store(config_path, readonly=True) as (cfg, store):
        row = store.one(
            "SELECT id, balance_minor, policy_state, tariff_id FROM accounts WHERE id = ?", account
        )
        if row is None:
            raise CliFailure(f"no account '{account}'", 2)
        derived = balance_minor(store.conn, account)
        entries = store.all(
            "SELECT created_at, kind, amount_minor, energy_wh, meter_id, external_id FROM entries "
            "WHERE account_id = ? ORDER BY id DESC LIMIT 10",
            account,
        )
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
    click.echo(
        f"{account}: {format_money(derived, digits)} {cfg.currency} ({row['policy_state']}, "
        f"tariff {row['tariff_id']})"
    )
    emit_table(
        "recent entries",
        ["at", "kind", "amount", "energy Wh", "meter", "ref"],
        [
            (
                e["created_at"],
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
@click.argument("amount")
@click.option("--id", "payment_id", help="Payment id (idempotence key; default: a new UUID).")
@click.option("--actor", required=True, help="Who took the payment (recorded in the audit log).")
@json_option
def payment_add(
    config_path: Path, account: str, amount: str, payment_id: str | None, actor: str, as_json: bool
) -> None:
    """Apply a payment of AMOUNT (a decimal like 50.00) to ACCOUNT, exactly once per --id.

    The running daemon re-decides the account within its review interval and reconnects if the credit
    now allows it.
    """
    from gateway.ledger.payments import apply_payment
    from gateway.timeutil import system_clock

    with opened_store(config_path) as (cfg, store):
        minor = parse_money(amount, cfg.minor_digits)
        with store.tx() as conn:
            result = apply_payment(
                conn,
                payment_id or str(uuid.uuid4()),
                account,
                minor,
                system_clock(),
                source=f"cli:{actor}",
                minor_digits=cfg.minor_digits,
            )
    out = {
        "payment_id": result.payment_id,
        "account": account,
        "amount": format_money(minor, cfg.minor_digits),
        "balance": format_money(result.balance_minor, cfg.minor_digits),
        "replayed": result.replayed,
    }
    if as_json:
        emit_json(out)
    else:
        click.echo(
            f"{'already applied' if result.replayed else 'applied'}: {out['amount']} to {account}, "
            f"balance {out['balance']} (payment {result.payment_id})"
        )
