"""What each head-office command does, once it is authenticated, fresh and new.

A handler validates everything it can *before* the transaction (raising ``CommandRejected``) and
returns an ``Applied``: a ``write`` run inside the one transaction that also records the command and
queues its ack, and an ``after`` run once that transaction has committed (updating in-memory state
such as the tariff book, or re-deciding the policy).  Anything ``write`` raises rolls the whole
transaction back, so a rejected command changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from drivers.base import DriverError
from drivers.tomlsource import TomlError
from gateway.core.errors import UserError
from gateway.core.money import MoneyError, format_money, parse_money
from gateway.core.timeutil import iso, parse_iso
from gateway.ledger.accounts import ensure_account
from gateway.ledger.payments import PaymentError
from gateway.policy import notices
from gateway.policy.calendar_sources import CalendarSourceError, official_year, store_year
from gateway.policy.engine import outcome_json
from gateway.store import events, outbox
from gateway.store.db import dumps
from gateway.sync.commands.schema import (
    MAX_RESEND_SPAN,
    AccountCmd,
    CalendarCmd,
    Envelope,
    HoldCmd,
    NoticeCmd,
    Ping,
    ReadCmd,
    RelayCmd,
    ResendCmd,
    TariffCmd,
    Topup,
)
from gateway.tariffs.build import with_version
from gateway.tariffs.model import Tariff, tariff_from_dict, tariff_to_dict

if TYPE_CHECKING:
    from gateway.runtime.ports import CommandContext

MAX_HOLD = timedelta(days=92)
MAX_OVERRIDE = timedelta(days=92)
READ_TIMEOUT_S = 30.0
# Resent messages waiting in the link at once (a few MB of payloads): beyond, a resend is refused
# until those went out, so a head office repeating its requests cannot grow the gateway's memory.
MAX_RESENDS_WAITING = 50_000


class CommandRejected(UserError):
    """A command refused with a machine ``code`` and a one-line human ``reason``; nothing changed."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass
class Applied:
    result: dict[str, Any] = field(default_factory=dict)
    write: Callable[[sqlite3.Connection], dict[str, Any] | None] | None = None
    after: Callable[[], Awaitable[None] | None] | None = None
    status: str = "applied"  # or "failed": authenticated and recorded, but the work did not succeed


def _actor(cmd: Envelope) -> str:
    return f"hq:{cmd.key_id}"


def _money(text: str, digits: int, what: str) -> int:
    try:
        return parse_money(text, digits)
    except MoneyError as exc:
        raise CommandRejected("invalid", f"{what}: {exc}") from None


async def ping(gw: CommandContext, cmd: Ping, now: datetime) -> Applied:
    return Applied({"pong": True, "gateway_time": iso(now)})


async def topup(gw: CommandContext, cmd: Topup, now: datetime) -> Applied:
    digits = gw.cfg.minor_digits
    amount = _money(cmd.amount, digits, "amount")
    if amount <= 0:
        raise CommandRejected("invalid", f"amount must be positive (got {cmd.amount!r})")
    payment_id = cmd.payment_id or cmd.id

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        try:
            r = gw.apply_payment(payment_id, cmd.account_id, amount, source=_actor(cmd))
        except PaymentError as exc:
            raise CommandRejected("invalid", str(exc)) from None
        # Asked after the account was re-decided: whether supply is (being) restored, or why not.
        supply = gw.parts.policy.payment_outcome(conn, r.account_id, gw.clock())
        return {
            "payment_id": r.payment_id,
            "account_id": r.account_id,
            "amount": format_money(r.amount_minor, digits),
            "balance": format_money(r.balance_minor, digits),
            "payment_replayed": r.replayed,
            "supply": outcome_json(supply, digits),
        }

    return Applied(write=write)


def _merge_tariff(gw: CommandContext, cmd: TariffCmd, now: datetime) -> Tariff:
    try:
        new = tariff_from_dict(cmd.tariff, f"command {cmd.id}: tariff")
    except TomlError as exc:
        raise CommandRejected("invalid", str(exc)) from None
    if new.currency != gw.cfg.currency:
        raise CommandRejected(
            "invalid", f"tariff currency {new.currency} is not the gateway's {gw.cfg.currency}"
        )
    existing = gw.parts.book.tariffs.get(new.id)
    if existing is None:
        return new
    known = {v.version: v for v in existing.versions}
    for v in new.versions:
        if v.version in known and v != known[v.version]:
            raise CommandRejected(
                "invalid", f"tariff {new.id}: version {v.version} exists and differs (no rewriting)"
            )
    added = [v for v in new.versions if v.version not in known]
    if not added:
        raise CommandRejected(
            "invalid", f"tariff {new.id}: no version newer than v{existing.versions[-1].version}"
        )
    merged = existing
    try:
        for v in added:
            merged = with_version(merged, v, now)
    except ValueError as exc:
        raise CommandRejected("invalid", str(exc)) from None
    return merged


async def tariff(gw: CommandContext, cmd: TariffCmd, now: datetime) -> Applied:
    merged = _merge_tariff(gw, cmd, now)
    latest = merged.versions[-1]

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        conn.execute(
            "INSERT INTO tariffs(id, version, effective_from, body_json, source, added_at) VALUES (?, ?, ?, ?, ?, ?)",
            (
                merged.id,
                latest.version,
                iso(latest.effective_from),
                dumps(tariff_to_dict(merged)),
                f"command:{cmd.id}",
                iso(now),
            ),
        )
        events.record(
            conn,
            "tariff_published",
            now,
            actor=_actor(cmd),
            detail={
                "tariff_id": merged.id,
                "version": latest.version,
                "effective_from": iso(latest.effective_from),
            },
        )
        return {
            "tariff_id": merged.id,
            "version": latest.version,
            "effective_from": iso(latest.effective_from),
        }

    def after() -> None:
        gw.parts.book.tariffs[merged.id] = merged

    return Applied(write=write, after=after)


async def account(gw: CommandContext, cmd: AccountCmd, now: datetime) -> Applied:
    digits = gw.cfg.minor_digits
    credit = (
        None if cmd.emergency_credit is None else _money(cmd.emergency_credit, digits, "emergency_credit")
    )
    if credit is not None and credit < 0:
        raise CommandRejected("invalid", "emergency_credit must not be negative")
    if cmd.tariff_id is not None and cmd.tariff_id not in gw.parts.book.tariffs:
        raise CommandRejected("invalid", f"no tariff '{cmd.tariff_id}'")
    if cmd.protected_category is not None and cmd.protected is None:
        raise CommandRejected("invalid", "protected_category needs protected")
    if len({m.meter_id for m in cmd.meters}) != len(cmd.meters):
        raise CommandRejected("invalid", "a meter is listed twice")

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        row = conn.execute("SELECT tariff_id FROM accounts WHERE id = ?", (cmd.account_id,)).fetchone()
        if row is None and cmd.tariff_id is None:
            raise CommandRejected("invalid", f"new account '{cmd.account_id}' needs a tariff_id")
        previous: set[str] = set()
        for m in cmd.meters:
            mrow = conn.execute("SELECT account_id FROM meters WHERE id = ?", (m.meter_id,)).fetchone()
            if mrow is None:
                raise CommandRejected("invalid", f"no meter '{m.meter_id}' on this gateway")
            previous.add(mrow[0])
        ensure_account(
            conn,
            cmd.account_id,
            tariff_id=cmd.tariff_id or row[0],
            currency=gw.cfg.currency,
            now=now,
            name=cmd.name,
            protected=cmd.protected,
            protected_category=cmd.protected_category,
            emergency_credit_minor=credit,
        )
        for m in cmd.meters:
            sets = ["account_id = ?", "updated_at = ?"]
            params: list[object] = [cmd.account_id, iso(now)]
            if m.keep_power is not None:
                sets.append("keep_power = ?")
                params.append(int(m.keep_power))
            conn.execute(f"UPDATE meters SET {', '.join(sets)} WHERE id = ?", (*params, m.meter_id))
        events.record(
            conn,
            "account_updated",
            now,
            account_id=cmd.account_id,
            actor=_actor(cmd),
            detail=cmd.model_dump(exclude={"sig", "key_id", "issued_at", "expires_at", "type"}),
        )
        for acc in sorted(previous | {cmd.account_id}):
            gw.parts.policy.evaluate_account(conn, acc, now)
        return {
            "account_id": cmd.account_id,
            "created": row is None,
            "meters": [m.meter_id for m in cmd.meters],
        }

    return Applied(write=write)


def _until(text: str | None, now: datetime, limit: timedelta, what: str) -> datetime:
    if text is None:
        raise CommandRejected("invalid", f"{what} needs 'until'")
    until = parse_iso(text)
    if until <= now:
        raise CommandRejected("invalid", f"until {text} is not in the future")
    if until - now > limit:
        raise CommandRejected("invalid", f"until {text} is more than {limit.days} days ahead")
    return until


async def _review(gw: CommandContext) -> None:
    """A hold has no account: it is gateway-wide, so every account is re-decided."""
    await gw.review_policy()


def _meters_of(conn: sqlite3.Connection, target: str) -> list[str]:
    """The meters whose decision an override of ``target`` (a meter or an account) can change:
    every meter of the target's account."""
    rows = conn.execute(
        "SELECT id FROM meters WHERE account_id = ? "
        "OR account_id = (SELECT account_id FROM meters WHERE id = ?) OR id = ? ORDER BY id",
        (target, target, target),
    ).fetchall()
    return [r[0] for r in rows]


async def hold(gw: CommandContext, cmd: HoldCmd, now: datetime) -> Applied:
    """Set or clear a gateway-wide hold on automatic cuts.  A hold starts at the earlier of the gateway's
    time and the command's signed ``issued_at``: a gateway clock running ahead must not leave the
    hours between the head office's order and the gateway's wrong "now" unprotected."""
    if cmd.op == "set":
        until = _until(cmd.until, now, MAX_HOLD, "a hold")
        if cmd.kind is None or cmd.reason is None:
            raise CommandRejected("invalid", "setting a hold needs 'kind' and 'reason'")
        kind, reason = cmd.kind, cmd.reason

        def write(conn: sqlite3.Connection) -> dict[str, Any]:
            if conn.execute("SELECT 1 FROM holds WHERE id = ?", (cmd.hold_id,)).fetchone():
                raise CommandRejected("invalid", f"hold '{cmd.hold_id}' already exists (use a new id)")
            conn.execute(
                "INSERT INTO holds(id, kind, reason, actor, starts_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                (cmd.hold_id, kind, reason, _actor(cmd), iso(min(now, parse_iso(cmd.issued_at))), iso(until)),
            )
            events.record(
                conn,
                "hold_set",
                now,
                actor=_actor(cmd),
                detail={"hold_id": cmd.hold_id, "kind": kind, "reason": reason, "until": iso(until)},
            )
            return {"hold_id": cmd.hold_id, "until": iso(until)}
    else:

        def write(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute("SELECT cleared_at FROM holds WHERE id = ?", (cmd.hold_id,)).fetchone()
            if row is None or row[0] is not None:
                raise CommandRejected("invalid", f"no active hold '{cmd.hold_id}'")
            conn.execute("UPDATE holds SET cleared_at = ? WHERE id = ?", (iso(now), cmd.hold_id))
            events.record(conn, "hold_cleared", now, actor=_actor(cmd), detail={"hold_id": cmd.hold_id})
            return {"hold_id": cmd.hold_id, "cleared_at": iso(now)}

    return Applied(write=write, after=lambda: _review(gw))


async def relay(gw: CommandContext, cmd: RelayCmd, now: datetime) -> Applied:
    affected: list[str] = []  # filled in the transaction: the target's account's meters

    if cmd.op == "set":
        until = _until(cmd.until, now, MAX_OVERRIDE, "an override")
        if cmd.target is None or cmd.action is None or cmd.reason is None:
            raise CommandRejected("invalid", "setting an override needs 'target', 'action' and 'reason'")
        target, action, reason = cmd.target, cmd.action, cmd.reason

        def write(conn: sqlite3.Connection) -> dict[str, Any]:
            is_meter = conn.execute("SELECT 1 FROM meters WHERE id = ?", (target,)).fetchone()
            if not is_meter and not conn.execute("SELECT 1 FROM accounts WHERE id = ?", (target,)).fetchone():
                raise CommandRejected("invalid", f"no meter or account '{target}'")
            affected.extend(_meters_of(conn, target))
            cur = conn.execute(
                "INSERT INTO overrides(target, action, reason, actor, allow_protected, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (target, action, reason, _actor(cmd), int(cmd.allow_protected), iso(now), iso(until)),
            )
            events.record(
                conn,
                "override_set",
                now,
                actor=_actor(cmd),
                severity="warning",
                detail={
                    "override_id": cur.lastrowid,
                    "target": target,
                    "action": action,
                    "reason": reason,
                    "until": iso(until),
                    "allow_protected": cmd.allow_protected,
                },
            )
            return {"override_id": cur.lastrowid, "until": iso(until)}
    else:
        if cmd.override_id is None:
            raise CommandRejected("invalid", "clearing an override needs 'override_id'")
        oid = cmd.override_id

        def write(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute("SELECT cleared_at, target FROM overrides WHERE id = ?", (oid,)).fetchone()
            if row is None or row[0] is not None:
                raise CommandRejected("invalid", f"no active override {oid}")
            affected.extend(_meters_of(conn, row[1]))
            conn.execute("UPDATE overrides SET cleared_at = ? WHERE id = ?", (iso(now), oid))
            events.record(conn, "override_cleared", now, actor=_actor(cmd), detail={"override_id": oid})
            return {"override_id": oid, "cleared_at": iso(now)}

    return Applied(write=write, after=lambda: gw.review_meters(affected))


async def read(gw: CommandContext, cmd: ReadCmd, now: datetime) -> Applied:
    meter = next((m for m in gw.cfg.meters if m.id == cmd.meter_id), None)
    if meter is None:
        raise CommandRejected("invalid", f"no meter '{cmd.meter_id}' on this gateway")
    worker = gw.workers.get(meter.bus)
    if worker is None:
        return Applied(
            {"meter_id": cmd.meter_id, "error": f"bus {meter.bus} is not running"}, status="failed"
        )
    try:
        reading = await asyncio.wait_for(worker.read_now(cmd.meter_id), READ_TIMEOUT_S)
    except (DriverError, TimeoutError) as exc:
        return Applied({"meter_id": cmd.meter_id, "error": str(exc) or type(exc).__name__}, status="failed")
    body = json.loads(json.dumps(reading.to_json(), default=str))
    return Applied({"meter_id": cmd.meter_id, "reading": body})


async def calendar(gw: CommandContext, cmd: CalendarCmd, now: datetime) -> Applied:
    """Make a year official: its days stop being "unknown" and the policy cuts on working days again."""
    cal = gw.parts.calendar
    this_year = cal.local(now).year
    if not this_year - 1 <= cmd.year <= this_year + 1:
        raise CommandRejected("invalid", f"year {cmd.year} is out of range ({this_year - 1}-{this_year + 1})")
    try:
        year = official_year(
            cal,
            country=cmd.country,
            year=cmd.year,
            days_off=[date.fromisoformat(d) for d in cmd.days_off],
            workdays=[date.fromisoformat(d) for d in cmd.workdays],
            source=cmd.source,
            origin=f"command {cmd.id}",
        )
    except CalendarSourceError as exc:
        raise CommandRejected("invalid", str(exc)) from None

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        replaced = store_year(conn, year, cmd.id, _actor(cmd), now)
        detail = {
            "country": year.country,
            "year": year.year,
            "days_off": len(year.days_off),
            "workdays": len(year.workdays),
            "source": year.source,
            "replaced": replaced,
        }
        events.record(conn, "calendar_official", now, actor=_actor(cmd), detail=detail)
        return detail

    def after() -> Awaitable[None]:
        cal.add_official(year)
        return _review(gw)

    return Applied(write=write, after=after)


async def notice(gw: CommandContext, cmd: NoticeCmd, now: datetime) -> Applied:
    """Delivery confirmed: the notice period runs from ``delivered_at``; the account is re-decided."""

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        try:
            result = notices.confirm_delivery(
                conn, cmd.account_id, cmd.notice_id, cmd.channel, cmd.delivered, now, actor=_actor(cmd)
            )
        except notices.NoticeError as exc:
            raise CommandRejected("invalid", str(exc)) from None
        gw.parts.policy.evaluate_account(conn, cmd.account_id, now)
        return {"account_id": cmd.account_id, **result}

    return Applied(write=write)


async def resend(gw: CommandContext, cmd: ResendCmd, now: datetime) -> Applied:
    """Publish again the delivered outbox rows of ``epoch`` in [from_seq, to_seq] still kept, in order,
    with their own seq and epoch and ``"resent": true`` (docs/mqtt.md, "Gap repair").  Rows not yet
    delivered are left to the normal publisher and counted as resent; the rest is ``gone``."""
    first, last = cmd.from_seq, cmd.to_seq
    if first > last:
        raise CommandRejected("invalid", f"from_seq {first} is after to_seq {last}")
    if last - first >= MAX_RESEND_SPAN:
        raise CommandRejected(
            "invalid", f"{last - first + 1} seqs asked ({first}-{last}); at most {MAX_RESEND_SPAN} per resend"
        )
    link = gw.mqtt
    if link is None:
        raise CommandRejected("rejected", "this gateway has no MQTT link")
    if link.resends_waiting + (last - first + 1) > MAX_RESENDS_WAITING:
        raise CommandRejected(
            "rejected", f"{link.resends_waiting} resent messages are still waiting; ask again when they are out"
        )
    found = outbox.kept(gw.store, cmd.epoch, first, last)
    result = {"epoch": cmd.epoch, "from_seq": first, "to_seq": last, "resent": found.resent, "gone": found.gone}

    def after() -> None:
        link.resend(found.delivered)

    return Applied(result, after=after)


Handler = Callable[[Any, Any, datetime], Awaitable[Applied]]
HANDLERS: dict[str, Handler] = {
    "ping": ping,
    "topup": topup,
    "tariff": tariff,
    "account": account,
    "hold": hold,
    "relay": relay,
    "read": read,
    "calendar": calendar,
    "notice": notice,
    "resend": resend,
}
