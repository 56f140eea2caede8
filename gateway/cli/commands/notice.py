"""``pmg notice``: a technician records that a disconnection notice reached the customer.

Where the rules say ``notice.delivery = "head_office"`` a notice counts as served only once its
delivery is confirmed (docs/enforcement.md, "Notice delivery").  The head office confirms with a
signed ``notice`` command; a technician who handed the notice over in person, or a site without a
head-office link, records it here.  Same checks, same event (``notice_delivered``), same effect: the
notice period runs from the delivery time.  The running daemon re-decides the account within a
second (the ``policy_inbox`` mark it watches); a stopped one does so at its start.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from gateway.cli.commands.field import parse_instant
from gateway.cli.common import (
    CliFailure,
    config_option,
    emit_json,
    json_option,
    opened_store,
    presenter,
    require_id,
)
from gateway.policy.notices import CHANNELS


@click.group("notice")
def notice() -> None:
    """Disconnection notices: record their delivery to the customer."""


@notice.command("deliver")
@click.argument("account")
@click.option(
    "--channel",
    type=click.Choice(CHANNELS),
    default="in_person",
    show_default=True,
    help="How the notice reached the customer.",
)
@click.option("--at", "at_text", help="When it was delivered (ISO 8601; no offset = gateway local time). Default: now.")
@click.option("--notice", "notice_ref", help="The notice id (from `pmg events`); default: the account's outstanding notice.")
@click.option("--actor", required=True, help="Who delivered it (recorded in the audit log).")
@config_option
@json_option
def deliver(
    account: str, channel: str, at_text: str | None, notice_ref: str | None, actor: str, config_path: Path, as_json: bool
) -> None:
    """Record that ACCOUNT's outstanding disconnection notice was delivered; its period starts then."""
    from gateway.core.timeutil import iso, parse_iso
    from gateway.policy.notices import NoticeError, confirm_delivery, notice_id

    if not actor.strip():
        raise click.BadParameter("must not be empty", param_hint="--actor")
    with opened_store(config_path) as (cfg, store):
        require_id(store, "account", account)
        now = datetime.now(UTC)
        at = parse_instant(at_text, cfg.timezone, "--at") if at_text else now
        with store.tx() as conn:
            row = conn.execute("SELECT notice_served_at FROM accounts WHERE id = ?", (account,)).fetchone()
            if row is None:  # removed since the check above: the same answer
                raise CliFailure(f"no account '{account}'", 2)
            outstanding = notice_id(account, parse_iso(row[0])) if row[0] else None
            try:
                detail = confirm_delivery(conn, account, notice_ref or outstanding or "(none)", channel, at, now,
                                          actor=f"technician:{actor}")
            except NoticeError as exc:
                raise CliFailure(str(exc), 2) from None  # a confirmation that does not fit: bad input
            # The running daemon re-decides marked accounts within a second (gateway.runtime.payment_watch).
            conn.execute(
                "INSERT OR IGNORE INTO policy_inbox(account_id, marked_at) VALUES (?, ?)", (account, iso(now))
            )
    if as_json:
        emit_json({"account": account, **detail})
    else:
        click.echo(
            f"notice {detail['notice_id']} delivered {presenter(cfg).when(detail['delivered_at'])} ({channel}); "
            "its period runs from then"
        )

