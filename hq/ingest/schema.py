"""What a gateway may publish, checked before anything is stored (docs/mqtt.md, gateway/contract/).

A message that fails is not an error of the ingest: it goes to the quarantine table with the reason
(:class:`Rejected`), and the stream goes on.  The checks are written out by hand rather than run
through a JSON Schema engine: they are on the hot path of every message, and they check what the
head office relies on (types, money as decimal strings, the ids in the topic and in the body agreeing,
``epoch`` beside every ``seq``), while tolerating fields a newer gateway adds.

Commands seen on the command topics are the head office's own, or someone else's: one without a
valid signature by a key the ingest knows is quarantined as ``unsigned`` (nobody should be able to
publish there; seeing one means the broker's ACL let it through).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeGuard

from gateway.core.keys import SigningError
from gateway.sync.signing import Verifier

EPOCH = re.compile(r"^[0-9a-f]{32}$")
DECIMAL = re.compile(r"^-?\d{1,15}(\.\d{1,6})?$")
INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_SEQ = 2**63 - 1

SCHEMAS = {
    "usage": "pmg.usage/1",
    "state": "pmg.state/1",
    "event": "pmg.event/1",
    "ack": "pmg.ack/1",
    "report": "pmg.report/1",
    "status": "pmg.status/1",
}


class Invalid(ValueError):
    """The reason a message is quarantined (one line)."""


@dataclass(frozen=True)
class Message:
    """A gateway message that passed the checks."""

    gateway_id: str
    topic: str  # relative to <prefix>/<gateway_id>/
    kind: str  # usage, state, event, ack, report, status
    epoch: str | None
    seq: int | None
    body: dict[str, Any]
    counted: bool  # False for snapshots and retained deliveries: never evidence of a gap
    resent: bool


@dataclass(frozen=True)
class Rejected:
    topic: str
    gateway_id: str | None
    reason: str
    payload: bytes


@dataclass(frozen=True)
class Command:
    """A signed command seen on a command topic (ours, e.g. a ``resend``): not stored."""

    gateway_id: str
    body: dict[str, Any]


def split_topic(topic: str, prefix: str) -> tuple[str, str] | None:
    """(gateway_id, relative topic) or None when the topic is not under ``<prefix>/<gw>/``."""
    head = prefix.rstrip("/") + "/"
    if not topic.startswith(head):
        return None
    gw, sep, rest = topic[len(head) :].partition("/")
    if not gw or not sep or not rest:
        return None
    return gw, rest


def kind_of(rel: str) -> str | None:
    if rel in ("status", "events", "acks", "reports"):
        return {"status": "status", "events": "event", "acks": "ack", "reports": "report"}[rel]
    parts = rel.split("/")
    if len(parts) == 3 and parts[0] == "meters" and parts[2] in ("usage", "state"):
        return parts[2]
    if len(parts) == 2 and parts[0] == "commands":
        return "command"
    return None


def parse(
    topic: str, payload: bytes, *, prefix: str, retained: bool = False, verifier: Verifier | None = None
) -> Message | Rejected | Command:
    """Check one delivery; never raises for anything a publisher can send."""
    where = split_topic(topic, prefix)
    gateway_id = where[0] if where else None
    try:
        if where is None:
            raise Invalid("not a gateway topic")
        gw, rel = where
        kind = kind_of(rel)
        if kind is None:
            raise Invalid(f"unknown topic {rel[:80]!r}")
        try:
            body = json.loads(payload)
        except (ValueError, RecursionError):
            raise Invalid("not JSON") from None
        if not isinstance(body, dict):
            raise Invalid("not a JSON object")
        if kind == "command":
            return _command(gw, rel, body, verifier)
        return _message(gw, rel, kind, body, retained)
    except Invalid as exc:
        return Rejected(topic, gateway_id, str(exc), bytes(payload))


def _command(gw: str, rel: str, body: dict[str, Any], verifier: Verifier | None) -> Command:
    if verifier is None:
        return Command(gw, body)
    try:
        verifier.verify(body)
    except SigningError as exc:
        raise Invalid(f"unsigned command: {exc}") from None
    if body.get("gateway_id") != gw or body.get("type") != rel.split("/")[1]:
        raise Invalid("command's gateway_id or type disagrees with its topic")
    return Command(gw, body)


def _message(gw: str, rel: str, kind: str, body: dict[str, Any], retained: bool) -> Message:
    if body.get("schema") != SCHEMAS[kind]:
        raise Invalid(f"schema: expected {SCHEMAS[kind]!r} on {kind}, got {str(body.get('schema'))[:40]!r}")
    if body.get("gateway_id") != gw:
        raise Invalid("gateway_id: does not match the topic's gateway")
    seq, epoch = body.get("seq"), body.get("epoch")
    if seq is not None and (not _int(seq) or not 1 <= seq <= MAX_SEQ):
        raise Invalid("seq: not a positive integer")
    if epoch is not None and (not isinstance(epoch, str) or not EPOCH.match(epoch)):
        raise Invalid("epoch: not 32 lowercase hex digits")
    if seq is not None and epoch is None:
        raise Invalid("epoch: missing beside seq")
    if seq is None and kind not in ("status", "ack"):
        raise Invalid(f"seq: missing on {kind}")
    CHECKS[kind](body, rel)
    snapshot = body.get("snapshot") is True
    return Message(gw, rel, kind, epoch, seq, body, counted=not (snapshot or retained), resent=body.get("resent") is True)


def _int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _str(body: dict[str, Any], key: str, *, nullable: bool = False, max_len: int = 128) -> None:
    v = body.get(key)
    if v is None and nullable and key in body:
        return
    if not isinstance(v, str) or not 1 <= len(v) <= max_len:
        raise Invalid(f"{key}: not a string of 1-{max_len} characters")


def _instant(body: dict[str, Any], key: str, *, nullable: bool = False) -> None:
    v = body.get(key)
    if v is None and nullable and key in body:
        return
    if not isinstance(v, str) or not INSTANT.match(v):
        raise Invalid(f"{key}: not an RFC 3339 instant with offset")
    try:
        datetime.fromisoformat(v)
    except ValueError:
        raise Invalid(f"{key}: not a valid instant") from None


def _money(body: dict[str, Any], key: str) -> None:
    v = body.get(key)
    if not isinstance(v, str) or not DECIMAL.match(v):
        raise Invalid(f"{key}: not a decimal string (money is never a number)")


def _whole(body: dict[str, Any], key: str, *, nullable: bool = False) -> None:
    v = body.get(key)
    if v is None and nullable and key in body:
        return
    if not _int(v) or abs(v) > MAX_SEQ:
        raise Invalid(f"{key}: not an integer")


def _meter_in_topic(body: dict[str, Any], rel: str) -> None:
    _str(body, "meter_id")
    if rel.split("/")[1] != body["meter_id"]:
        raise Invalid("meter_id: does not match the topic's meter")


def _usage(body: dict[str, Any], rel: str) -> None:
    _meter_in_topic(body, rel)
    _str(body, "account_id")
    _instant(body, "interval_start", nullable=True)
    _instant(body, "interval_end")
    _whole(body, "register_wh")
    _whole(body, "energy_wh")
    _money(body, "charge")
    _money(body, "balance")


def _state(body: dict[str, Any], rel: str) -> None:
    _meter_in_topic(body, rel)
    _str(body, "account_id")
    _money(body, "balance")
    _instant(body, "at")
    _whole(body, "register_wh", nullable=True)


def _event(body: dict[str, Any], _rel: str) -> None:
    _whole(body, "event_id")
    _instant(body, "at")
    _str(body, "kind", max_len=64)
    if body.get("severity") not in ("info", "warning", "alarm"):
        raise Invalid("severity: not info, warning or alarm")
    detail = body.get("detail")
    if not isinstance(detail, dict):
        raise Invalid("detail: not an object")
    if body["kind"] == "payment_applied":
        _str(body, "account_id")
        _str(detail, "payment_id")
        _money(detail, "amount")
        _money(detail, "balance")


def _ack(body: dict[str, Any], _rel: str) -> None:
    if body.get("status") not in ("applied", "rejected", "failed"):
        raise Invalid("status: not applied, rejected or failed")
    _str(body, "command_id", nullable=True)


def _report(body: dict[str, Any], _rel: str) -> None:
    _str(body, "period", max_len=16)
    _instant(body, "period_start")
    _instant(body, "period_end")
    accounts = body.get("accounts")
    if not isinstance(accounts, list):
        raise Invalid("accounts: not a list")
    for i, acc in enumerate(accounts):
        try:
            if not isinstance(acc, dict):
                raise Invalid("not an object")
            _str(acc, "account_id")
            _whole(acc, "energy_wh")
            for key in ("charges", "payments", "closing_balance"):
                _money(acc, key)
        except Invalid as exc:
            raise Invalid(f"accounts[{i}].{exc}") from None


def _status(body: dict[str, Any], _rel: str) -> None:
    if body.get("state") not in ("online", "offline"):
        raise Invalid("state: not online or offline")
    _instant(body, "at")
    head = body.get("chain_head")
    if not isinstance(head, str) or not HEX64.match(head):
        raise Invalid("chain_head: not 64 lowercase hex digits")
    _whole(body, "chain_length")


CHECKS = {
    "usage": _usage,
    "state": _state,
    "event": _event,
    "ack": _ack,
    "report": _report,
    "status": _status,
}


def money(text: str) -> Decimal:
    """A checked decimal string as an exact Decimal (PostgreSQL numeric): never a float."""
    return Decimal(text)
