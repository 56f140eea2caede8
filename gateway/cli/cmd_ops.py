"""Operations: ``pmg meters``, ``pmg events``."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.cli.common import config_option, emit_json, emit_table, json_option, opened_store
from gateway.money import format_money


def register(cli: click.Group) -> None:
    cli.add_command(meters)
    cli.add_command(events_cmd)


@click.command()
@config_option
@json_option
def meters(config_path: Path, as_json: bool) -> None:
    """Table of meters: account, balance, warning level, relay, last reading, comms health."""
    with opened_store(config_path, readonly=True) as (cfg, store):
        rows = store.all(
            "SELECT m.id, m.account_id, a.balance_minor, a.policy_state, m.relay, m.last_register_wh, "
            "m.last_reading_at, m.comms_ok, m.comms_failed, m.last_comms_error, m.quarantined_reading_id "
            "FROM meters m JOIN accounts a ON a.id = m.account_id ORDER BY m.id"
        )
    data = [{**dict(r), "balance": format_money(r["balance_minor"], cfg.minor_digits)} for r in rows]
    if as_json:
        emit_json(data)
        return
    emit_table(
        None,
        [
            "meter",
            "account",
            "balance",
            "state",
            "relay",
            "register Wh",
            "last reading",
            "ok/failed",
            "problem",
        ],
        [
            (
                r["id"],
                r["account_id"],
                d["balance"],
                r["policy_state"],
                r["relay"],
                r["last_register_wh"],
                r["last_reading_at"],
                f"{r['comms_ok']}/{r['comms_failed']}",
                "QUARANTINED" if r["quarantined_reading_id"] else r["last_comms_error"],
            )
            for r, d in zip(rows, data, strict=True)
        ],
    )


@click.command("events")
@config_option
@click.option("--limit", type=click.IntRange(1, 100000), default=30, show_default=True)
@json_option
def events_cmd(config_path: Path, limit: int, as_json: bool) -> None:
    """The audit log, newest last."""
    with opened_store(config_path, readonly=True) as (_cfg, store):
        rows = store.all(
            "SELECT * FROM (SELECT id, at, kind, severity, account_id, meter_id, actor, detail_json "
            "FROM events ORDER BY id DESC LIMIT ?) ORDER BY id",
            limit,
        )
    if as_json:
        emit_json([dict(r) for r in rows])
        return
    for r in rows:
        click.echo(
            f"{r['at']} {r['severity']:7} {r['kind']:24} account={r['account_id']} meter={r['meter_id']} "
            f"actor={r['actor']} {r['detail_json']}"
        )
