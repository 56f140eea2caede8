"""An operator's top-up: sign it, publish it, wait for the gateway's ack and, if asked, for power.

The top-up is a signed ``topup`` command (docs/mqtt.md, "Inbound: signed commands"); its ``id`` is the
idempotence key and, by default, the payment id.  The gateway refuses the same id with other content
(``conflict``), and a signed command has a fresh ``issued_at`` each time it is made — so a repeat is
only safe if it sends the *same bytes*.  The ``Journal`` keeps every signed top-up by id, written before
it is published: running the command again with the same ``--id`` re-sends the journalled command, and
the gateway answers an applied one with its original ack (``"replay": true``), applying nothing twice.
The same id with another gateway, account or amount is refused here, before anything is sent.

Power: the ack's ``result.supply`` says whether the payment restores supply.  When it does
(``reason = restored``), the gateway queues a relay command and reports it with a ``relay_confirmed``
(or ``relay_failed``) event; that event's ``detail.command_id`` is the top-up's id on gateways that
carry it (docs/mqtt.md) and its ``detail.payment_id`` is the payment's id on all of them — either
matches.
"""

from __future__ import annotations

import json
import os
import queue
import re
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.core.errors import OperationFailed, UserError
from gateway.core.money import MAX_PAYMENT_MINOR, MoneyError, format_money, parse_money
from gateway.core.timeutil import iso
from gateway.sync.signing import sign_command
from hq.connect import Broker, ConnectFailed, close, connect

_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")  # a command id (docs/mqtt.md)
_SHORT = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")  # gateway and account ids
_TOPIC_SAFE = re.compile(r"^[^+#/\x00]+$")
MAX_VALID_FOR = timedelta(days=7)  # the gateway refuses a longer command lifetime


class NoAnswer(OperationFailed):
    """Nothing came back within the deadline: exit status 4 (safe to repeat with the same id)."""

    exit_status = 4


@dataclass(frozen=True)
class Topup:
    """A validated top-up; ``amount`` is normalised to the currency's minor digits (``"50.00"``)."""

    gateway_id: str
    account_id: str
    amount: str
    command_id: str

    @staticmethod
    def parse(gateway_id: str, account_id: str, amount: str, command_id: str | None, digits: int) -> Topup:
        """Check the operator's input; ``UserError`` (exit 2) with one line for anything wrong."""
        for what, value, pattern in (("--gateway", gateway_id, _SHORT), ("--account", account_id, _SHORT)):
            if not pattern.match(value) or not _TOPIC_SAFE.match(value):
                raise UserError(f"{what} {value!r} is not an id (1-64 of A-Z a-z 0-9 _ . : -)")
        if command_id is not None and not _ID.match(command_id):
            raise UserError(f"--id {command_id!r} is not a command id (1-128 of A-Z a-z 0-9 _ . : -)")
        try:
            minor = parse_money(amount, digits)
        except MoneyError as exc:
            raise UserError(f"--amount: {exc} (a positive decimal with at most {digits} decimals)") from None
        if minor <= 0:
            raise UserError(f"--amount {amount!r} must be positive")
        if minor > MAX_PAYMENT_MINOR:  # the gateway would refuse it (gateway.ledger.payments)
            raise UserError(f"--amount {amount!r} is implausibly large (at most {format_money(MAX_PAYMENT_MINOR, digits)})")
        return Topup(gateway_id, account_id, format_money(minor, digits), command_id or new_id())

    def command(self, now: datetime, valid_for: timedelta) -> dict[str, Any]:
        """The unsigned command (the payment id is the command id)."""
        return {
            "id": self.command_id,
            "type": "topup",
            "gateway_id": self.gateway_id,
            "issued_at": iso(now),
            "expires_at": iso(now + valid_for),
            "account_id": self.account_id,
            "amount": self.amount,
        }


def new_id() -> str:
    return f"topup-{uuid.uuid4().hex[:20]}"


def default_journal() -> Path:
    """Where signed top-ups are kept when ``--journal`` is not given (the XDG state directory)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "pmg" / "hq-commands.sqlite"


class Journal:
    """Signed commands by id, kept so that a repeat sends the same bytes (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(path, isolation_level=None, timeout=30)
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS commands (id TEXT PRIMARY KEY, gateway_id TEXT NOT NULL, "
                "type TEXT NOT NULL, signed TEXT NOT NULL, created_at TEXT NOT NULL)"
            )
        except (OSError, sqlite3.Error) as exc:
            raise OperationFailed(f"journal {path}: {exc}") from None

    def signed(
        self, topup: Topup, key: Ed25519PrivateKey, key_id: str, valid_for: timedelta
    ) -> dict[str, Any]:
        """The journalled command of this id, or a new one signed and journalled now."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            row = self.conn.execute(
                "SELECT signed FROM commands WHERE id = ?", (topup.command_id,)
            ).fetchone()
            if row is not None:
                cmd: dict[str, Any] = json.loads(row[0])
                was = (cmd.get("gateway_id"), cmd.get("account_id"), cmd.get("amount"), cmd.get("type"))
                if was != (topup.gateway_id, topup.account_id, topup.amount, "topup"):
                    raise UserError(
                        f"--id {topup.command_id} was used for a top-up of {was[2]} to {was[1]} on {was[0]}: "
                        "a repeat must be the same top-up (or use a new id)"
                    )
                if cmd.get("key_id") != key_id:  # re-signing would change the command: a conflict
                    raise UserError(
                        f"--id {topup.command_id} was signed with key {cmd.get('key_id')}: repeat it with "
                        "that key (or use a new id)"
                    )
            else:
                now = datetime.now(UTC)
                cmd = sign_command(topup.command(now, valid_for), key, key_id)
                self.conn.execute(
                    "INSERT INTO commands(id, gateway_id, type, signed, created_at) VALUES (?, ?, 'topup', ?, ?)",
                    (topup.command_id, topup.gateway_id, json.dumps(cmd, ensure_ascii=False), iso(now)),
                )
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return cmd

    def close(self) -> None:
        self.conn.close()


@dataclass
class Outcome:
    ack: dict[str, Any]
    power: dict[str, Any] | None = None  # the relay_confirmed / relay_failed event, when waited for

    @property
    def applied(self) -> bool:
        return self.ack.get("status") == "applied"

    @property
    def duplicate(self) -> bool:
        return self.ack.get("replay") is True

    @property
    def restores_supply(self) -> bool:
        supply = (self.ack.get("result") or {}).get("supply")
        return isinstance(supply, dict) and supply.get("on") is True and supply.get("reason") == "restored"


def matches_power(event: dict[str, Any], cmd: dict[str, Any]) -> bool:
    """A relay event of this top-up: by ``detail.command_id`` where the gateway carries it, by the
    payment id otherwise."""
    if event.get("kind") not in ("relay_confirmed", "relay_failed"):
        return False
    detail = event.get("detail")
    if not isinstance(detail, dict):
        return False
    payment_id = cmd.get("payment_id") or cmd["id"]
    return detail.get("command_id") == cmd["id"] or detail.get("payment_id") == payment_id


def send(
    broker: Broker,
    prefix: str,
    cmd: dict[str, Any],
    *,
    deadline_s: float,
    wait_power_s: float | None = None,
    connect_deadline_s: float = 10.0,
) -> Outcome:
    """Publish ``cmd`` (signed) and wait for its ack — and, with ``wait_power_s``, for the relay event
    if the ack says supply is being restored.  ``NoAnswer`` when either does not come in time
    (the ack's wait counts from the start, the power's from the ack)."""
    started = time.monotonic()
    base = f"{prefix.rstrip('/')}/{cmd['gateway_id']}"
    inbox: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    subscribed: queue.Queue[bool] = queue.Queue()

    def prepare(client: paho.Client) -> None:
        def on_message(_c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
            try:
                body = json.loads(msg.payload)
            except (ValueError, RecursionError):
                return
            if isinstance(body, dict):
                inbox.put((msg.topic.rsplit("/", 1)[-1], body))

        def on_subscribe(_c: paho.Client, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
            subscribed.put(bool(reasons) and not any(r.is_failure for r in reasons))

        client.on_message = on_message
        client.on_subscribe = on_subscribe

    topics = [(f"{base}/acks", 1)] + ([(f"{base}/events", 1)] if wait_power_s is not None else [])

    def subscribe(client: paho.Client) -> None:
        client.subscribe(topics)

    client = connect(broker, deadline_s=connect_deadline_s, on_connected=subscribe, prepare=prepare)
    try:
        try:
            granted = subscribed.get(timeout=connect_deadline_s)
        except queue.Empty:
            raise ConnectFailed(
                f"no answer to SUBSCRIBE {base}/acks within {connect_deadline_s:g} s"
            ) from None
        if not granted:
            raise ConnectFailed(f"the broker refused the subscription to {base}/acks")
        info = client.publish(f"{base}/commands/{cmd['type']}", json.dumps(cmd, ensure_ascii=False), qos=1)
        remaining = max(0.1, deadline_s - (time.monotonic() - started))
        try:
            info.wait_for_publish(remaining)
        except (RuntimeError, ValueError) as exc:
            raise NoAnswer(f"the broker did not take the command within {deadline_s:g} s ({exc})") from None
        if not info.is_published():
            raise NoAnswer(f"the broker did not take the command within {deadline_s:g} s")
        events: list[dict[str, Any]] = []
        ack = _wait(
            inbox, started + deadline_s, lambda t, b: t == "acks" and b.get("command_id") == cmd["id"], events
        )
        if ack is None:
            raise NoAnswer(f"no ack from {cmd['gateway_id']} within {deadline_s:g} s")
        outcome = Outcome(ack)
        # A repeat's ack is the original one: its relay event was published after the first run and
        # will not come again, so there is nothing to wait for.
        if wait_power_s is not None and outcome.applied and outcome.restores_supply and not outcome.duplicate:
            power = next((e for e in events if matches_power(e, cmd)), None) or _wait(
                inbox,
                time.monotonic() + wait_power_s,
                lambda t, b: t == "events" and matches_power(b, cmd),
                [],
            )
            if power is None:
                raise NoAnswer(
                    f"applied, but no relay event from {cmd['gateway_id']} within {wait_power_s:g} s "
                    f"(ack: {json.dumps(ack, ensure_ascii=False)})"
                )
            outcome.power = power
        return outcome
    finally:
        close(client)


def _wait(
    inbox: queue.Queue[tuple[str, dict[str, Any]]],
    until: float,
    wanted: Callable[[str, dict[str, Any]], bool],
    seen_events: list[dict[str, Any]],
) -> dict[str, Any] | None:
    """The first message ``wanted(topic, body)`` before the monotonic instant ``until``; events seen
    meanwhile are kept in ``seen_events`` (a fast relay may report before its ack is read)."""
    while (left := until - time.monotonic()) > 0:
        try:
            topic, body = inbox.get(timeout=left)
        except queue.Empty:
            return None
        if wanted(topic, body):
            return body
        if topic == "events":
            seen_events.append(body)
    return None
