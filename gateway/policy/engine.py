"""From the ledger to the policy and back: build the snapshot, decide, persist what was decided.

``gateway.policy.decide`` is pure; this module is its only caller in the daemon.  It reads an
account, its meter, the holds and the overrides inside the caller's transaction, calls ``decide``,
and in that same transaction stores the new state, queues relay commands (``relay_queue.request``) and
writes every action — and every *change* in what is blocked — to the audit log with its rule trace.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from drivers.base import RelayAction, RelayState
from gateway.core.calendar import WorkCalendar
from gateway.core.money import format_money
from gateway.core.timeutil import iso, parse_iso
from gateway.ledger import forecast
from gateway.ledger.tariff_book import TariffBook
from gateway.policy import notices
from gateway.policy.credit import emergency_credit_granted
from gateway.policy.decide import decide
from gateway.policy.inputs import AccountView, Hold, MeterView, Override
from gateway.policy.outcome import PaymentOutcome, payment_outcome, summarise
from gateway.policy.rules import Rules
from gateway.policy.state import Action, ActionKind, Decision, EnforcementState, RuleCheck
from gateway.policy.texts import MoneyFormat
from gateway.policy.time_hold import META_KEY as TIME_TRUST_KEY
from gateway.policy.time_hold import time_holds, time_holds_from
from gateway.store import events, relay_queue
from gateway.store.db import dumps

FAILED_COMMAND_BACKOFF = timedelta(hours=1)  # before the policy asks a meter that failed again
NOTICE_CHANNEL_DISPLAY = "meter_display"  # how a notice the policy itself delivered reached the customer
_NOTHING_BLOCKED = hashlib.sha256(dumps([]).encode()).hexdigest()[:16]  # the usual signature, once


@dataclass(frozen=True)
class MeterCaps:
    """What the meter's driver can do, for the policy (a meter it cannot control is alarmed, not cut)."""

    controllable: bool = True
    supports_load_limit: bool = False
    supports_keep_power: bool = False


def _trace_json(trace: tuple[RuleCheck, ...]) -> list[dict[str, object]]:
    return [{"rule": t.rule, "passed": t.passed, "detail": t.detail} for t in trace]


def _action_json(a: Action) -> dict[str, object]:
    return {
        "kind": a.kind.value,
        "relay_action": a.relay_action.value if a.relay_action else None,
        "level": a.level,
        "message": a.message,
        "not_before": iso(a.not_before) if a.not_before else None,
        "trace": _trace_json(a.trace),
    }


def outcome_json(outcome: PaymentOutcome, minor_digits: int) -> dict[str, object]:
    """The ``supply`` object of a top-up ack and of ``pmg payment add --json`` (docs/mqtt.md)."""
    return {
        "on": outcome.on,
        "reason": outcome.reason,
        "shortfall": format_money(outcome.shortfall_minor, minor_digits),
        "meter_id": outcome.meter_id,
    }


def active_holds(conn: sqlite3.Connection, now: datetime) -> list[Hold]:
    # While the clock is doubted, a gateway-wide hold: no new automatic cut (docs/enforcement.md).
    return _hold_rows(conn, now) + time_holds(conn)


def _hold_rows(conn: sqlite3.Connection, now: datetime) -> list[Hold]:
    rows = conn.execute(
        "SELECT kind, reason, actor, starts_at, expires_at FROM holds WHERE cleared_at IS NULL AND expires_at > ?",
        (iso(now),),
    ).fetchall()
    return [Hold(r[0], r[1], r[2], parse_iso(r[3]), parse_iso(r[4])) for r in rows]


# Everything a decision reads about one meter, in one statement: its row and its account's, the relay
# command it waits for, its last close command, whether any hold or override is in force (their rows
# are read only then: nearly always there are none) and the time guard's verdict.  Six statements
# before: at capacity each reading's re-decision paid for six executions and their Python rows.
_DECISION_INPUTS = (
    "SELECT m.relay, m.keep_power, m.keep_power_on_meter, a.id, a.balance_minor, "
    "a.emergency_credit_minor, a.protected, a.protected_category, a.policy_state, "
    "a.policy_state_since, a.notice_served_at, a.reminder_sent_at, a.warnings_json, a.alerts_json, "
    "a.created_at, a.earliest_cut_at, a.next_review_at, a.notice_delivered_at, "
    # A command that failed recently counts as still pending: a stuck relay has been alarmed; asking
    # again on every reading would only flood the bus and the audit log.  It is retried hourly.
    "(SELECT action FROM relay_commands WHERE meter_id = m.id AND (status IN ('pending', 'sending') "
    "OR (status = 'failed' AND actor = 'policy' AND updated_at > :failed_since)) ORDER BY id DESC LIMIT 1) "
    "AS pending_action, "
    "(SELECT status FROM relay_commands WHERE meter_id = m.id AND action IN (:close1, :close2) "
    "ORDER BY id DESC LIMIT 1) AS close_status, "
    "(SELECT updated_at FROM relay_commands WHERE meter_id = m.id AND action IN (:close1, :close2) "
    "ORDER BY id DESC LIMIT 1) AS close_updated_at, "
    "EXISTS (SELECT 1 FROM holds WHERE cleared_at IS NULL AND expires_at > :now) AS any_hold, "
    "EXISTS (SELECT 1 FROM overrides WHERE cleared_at IS NULL AND expires_at > :now "
    "AND target IN (m.id, a.id)) AS any_override, "
    "(SELECT value FROM meta WHERE key = :time_key) AS time_trust "
    "FROM meters m JOIN accounts a ON a.id = m.account_id WHERE m.id = :meter"
)


def active_overrides(conn: sqlite3.Connection, targets: tuple[str, ...], now: datetime) -> list[Override]:
    marks = ",".join("?" for _ in targets)
    rows = conn.execute(
        f"SELECT target, action, reason, actor, expires_at, allow_protected FROM overrides "
        f"WHERE cleared_at IS NULL AND expires_at > ? AND target IN ({marks}) ORDER BY id",
        (iso(now), *targets),
    ).fetchall()
    return [Override(r[0], r[1], r[2], r[3], parse_iso(r[4]), bool(r[5])) for r in rows]


class PolicyEngine:
    """Evaluates accounts against one rule set and calendar."""

    def __init__(
        self,
        rules: Rules,
        calendar: WorkCalendar,
        caps: Mapping[str, MeterCaps],
        *,
        book: TariffBook | None = None,
        minor_digits: int = 2,
        currency: str | None = None,
    ) -> None:
        """``currency`` and ``minor_digits``: the gateway's configured money, for the figures in the
        customer texts (without a currency, the preset's default)."""
        self.rules = rules
        self.calendar = calendar
        self.caps = dict(caps)
        self.book = (
            book  # with it, days of credit follow the tariff (blocks, time of use), not last week's bill
        )
        self.minor_digits = minor_digits
        self.money = MoneyFormat(currency or rules.currency, minor_digits)
        self._daily_cost = forecast.DailyCostCache()

    def _days_left(
        self, conn: sqlite3.Connection, account_id: str, available_minor: int, now: datetime
    ) -> Decimal | None:
        if self.book is None:
            return None  # no tariff to price consumption with: warnings go by money only
        return self._daily_cost.days_left(
            conn, self.book, account_id, available_minor, now, minor_digits=self.minor_digits
        )

    def snapshot(
        self, conn: sqlite3.Connection, meter_id: str, now: datetime
    ) -> tuple[AccountView, MeterView, list[Hold], list[Override]]:
        account, meter, holds, overrides, _stored = self._read(conn, meter_id, now)
        return account, meter, holds, overrides

    def _read(
        self, conn: sqlite3.Connection, meter_id: str, now: datetime
    ) -> tuple[AccountView, MeterView, list[Hold], list[Override], tuple[object, ...]]:
        """The policy's inputs, and the decision fields as stored (to skip rewriting them unchanged)."""
        now_text = iso(now)
        a = conn.execute(
            _DECISION_INPUTS,
            {
                "meter": meter_id,
                "now": now_text,
                "failed_since": iso(now - FAILED_COMMAND_BACKOFF),
                "close1": RelayAction.DIRECT_CLOSE.value,
                "close2": RelayAction.CLOSE_PERMITTED.value,
                "time_key": TIME_TRUST_KEY,
            },
        ).fetchone()
        if a is None:
            raise LookupError(f"no meter '{meter_id}'")
        alerts = {k: parse_iso(v) for k, v in json.loads(a["alerts_json"]).items()}
        emergency = int(a["emergency_credit_minor"])
        emergency_active = emergency_credit_granted(emergency, self.rules.emergency_credit.enabled, alerts)
        available = int(a["balance_minor"]) + (emergency if emergency_active else 0)
        account = AccountView(
            account_id=a["id"],
            balance_minor=int(a["balance_minor"]),
            emergency_credit_minor=emergency,
            emergency_credit_active=emergency_active,
            days_of_credit_left=self._days_left(conn, a["id"], available, now),
            protected=bool(a["protected"]),
            protected_category=a["protected_category"],
            state=EnforcementState(a["policy_state"]),
            state_since=parse_iso(a["policy_state_since"] or a["created_at"]),
            notice_served_at=parse_iso(a["notice_served_at"]) if a["notice_served_at"] else None,
            reminder_sent_at=parse_iso(a["reminder_sent_at"]) if a["reminder_sent_at"] else None,
            warnings_sent={int(k): parse_iso(v) for k, v in json.loads(a["warnings_json"]).items()},
            alerts_sent=alerts,
            notice_delivered_at=parse_iso(a["notice_delivered_at"]) if a["notice_delivered_at"] else None,
        )
        caps = self.caps.get(meter_id, MeterCaps())
        meter = MeterView(
            meter_id=meter_id,
            relay=RelayState(a["relay"]) if a["relay"] else None,
            controllable=caps.controllable,
            supports_load_limit=caps.supports_load_limit,
            supports_keep_power=caps.supports_keep_power,
            keep_power=bool(a["keep_power"]),
            keep_power_on_meter=None if a["keep_power_on_meter"] is None else bool(a["keep_power_on_meter"]),
            pending_relay_action=RelayAction(a["pending_action"]) if a["pending_action"] else None,
            close_failed=a["close_status"] == "failed"
            and parse_iso(a["close_updated_at"]) <= now - FAILED_COMMAND_BACKOFF,
        )
        stored = (
            a["policy_state"],
            a["policy_state_since"],
            a["notice_served_at"],
            a["reminder_sent_at"],
            account.warnings_sent,
            account.alerts_sent,
            a["earliest_cut_at"],
            a["next_review_at"],
            a["notice_delivered_at"],
        )
        holds = (_hold_rows(conn, now) if a["any_hold"] else []) + time_holds_from(a["time_trust"])
        overrides = active_overrides(conn, (meter_id, a["id"]), now) if a["any_override"] else []
        return account, meter, holds, overrides, stored

    def decide_for(self, conn: sqlite3.Connection, meter_id: str, now: datetime) -> Decision:
        """The decision without applying it (``pmg explain``)."""
        account, meter, holds, overrides = self.snapshot(conn, meter_id, now)
        return decide(account, meter, now, self.calendar, self.rules, holds=holds, overrides=overrides,
                      money=self.money)

    def evaluate_meter(
        self, conn: sqlite3.Connection, meter_id: str, now: datetime, *, payment_id: str | None = None
    ) -> Decision:
        """Decide for one meter and persist the outcome, inside the caller's transaction."""
        account, meter, holds, overrides, stored = self._read(conn, meter_id, now)
        d = decide(account, meter, now, self.calendar, self.rules, holds=holds, overrides=overrides,
                   money=self.money)
        aid = account.account_id
        decided = (
            d.state.value,
            iso(d.state_since),
            iso(d.notice_served_at) if d.notice_served_at else None,
            iso(d.reminder_sent_at) if d.reminder_sent_at else None,
            d.warnings_sent,
            d.alerts_sent,
            iso(d.earliest_cut_at) if d.earliest_cut_at else None,
            iso(d.next_review_at) if d.next_review_at else None,
            iso(d.notice_delivered_at) if d.notice_delivered_at else None,
        )
        if decided != stored:  # most re-decisions change nothing: no page to write then
            conn.execute(
                "UPDATE accounts SET policy_state = ?, policy_state_since = ?, notice_served_at = ?, "
                "reminder_sent_at = ?, warnings_json = ?, alerts_json = ?, earliest_cut_at = ?, "
                "next_review_at = ?, notice_delivered_at = ?, "
                # The policy only ever delivers by the meter display; a withdrawn notice has no channel.
                "notice_channel = CASE WHEN ? IS NULL THEN NULL ELSE COALESCE(notice_channel, ?) END "
                "WHERE id = ?",
                (
                    *decided[:4],
                    dumps({str(k): iso(v) for k, v in d.warnings_sent.items()}),
                    dumps({k: iso(v) for k, v in d.alerts_sent.items()}),
                    *decided[6:],
                    decided[8],
                    NOTICE_CHANNEL_DISPLAY,
                    aid,
                ),
            )
        if d.state is not account.state:
            events.record(
                conn,
                "policy_state",
                now,
                account_id=aid,
                meter_id=meter_id,
                detail={"from": account.state.value, "to": d.state.value},
            )
        for action in d.actions:
            self._apply(conn, action, aid, meter_id, now, payment_id)
        self._withdraw_stale_trip(conn, d, meter, meter_id, now)
        self._record_blocked(conn, d, aid, meter_id, now)
        return d

    @staticmethod
    def _withdraw_stale_trip(
        conn: sqlite3.Connection, d: Decision, meter: MeterView, meter_id: str, now: datetime
    ) -> None:
        """A policy trip still waiting to be sent is cancelled once the rules block a cut again.

        A trip queued at 17:59 and retried with backoff, a hold set by head office after the trip
        was queued, a restart into a protected window: the re-decision blocks the cut, so the
        queued frame must not go out.  Only ``pending`` rows are cancelled — one already on the wire
        (``sending``) completes and is confirmed by read-back; a technician's order is left alone.
        """
        if meter.pending_relay_action is not RelayAction.TRIP:
            return
        if any(a.relay_action is RelayAction.TRIP for a in d.actions):
            return
        blocked = [a for a in d.blocked if a.relay_action is RelayAction.TRIP]
        if not blocked:
            return
        why = "; ".join(dict.fromkeys(f"{c.rule}: {c.detail}" for c in blocked[0].trace if not c.passed))
        relay_queue.cancel(
            conn,
            meter_id,
            (RelayAction.TRIP,),
            now,
            reason=f"cut no longer allowed: {why or 'blocked by the rules'}",
            actor="policy",
            statuses=("pending",),
            only_actor="policy",
        )

    def _apply(
        self,
        conn: sqlite3.Connection,
        action: Action,
        account_id: str,
        meter_id: str,
        now: datetime,
        payment_id: str | None,
    ) -> None:
        detail = _action_json(action)
        if action.kind is ActionKind.RECONNECT:
            relay_queue.cancel(
                conn, meter_id, (RelayAction.TRIP,), now, reason="credit restored", actor="policy"
            )
        if action.relay_action is not None:
            relay_queue.request(
                conn,
                meter_id,
                action.relay_action,
                now,
                reason=action.message or action.kind.value,
                actor="policy",
                trace=_trace_json(action.trace),
                payment_id=payment_id if action.kind is ActionKind.RECONNECT else None,
            )
        if action.kind is ActionKind.SERVE_NOTICE:
            # The head office confirms delivery of *this* notice by its id (``notice`` command).
            detail["notice_id"] = notices.notice_id(account_id, now)
            detail["delivery"] = self.rules.notice.delivery
        severity = (
            "alarm"
            if action.kind in (ActionKind.ALARM, ActionKind.ESCALATE, ActionKind.NOTICE_UNDELIVERED)
            else (
                "warning"
                if action.kind
                in (ActionKind.DISCONNECT, ActionKind.SERVE_NOTICE, ActionKind.LOAD_LIMIT, ActionKind.NOTICE_LAPSED)
                else "info"
            )
        )
        events.record(
            conn,
            f"policy_{action.kind.value}",
            now,
            severity=severity,
            account_id=account_id,
            meter_id=meter_id,
            actor="policy",
            detail=detail,
        )

    def _record_blocked(
        self, conn: sqlite3.Connection, d: Decision, account_id: str, meter_id: str, now: datetime
    ) -> None:
        """Audit what the rules held back — once per change, not on every re-evaluation."""
        sig_src = [
            (
                a.kind.value,
                [t.rule for t in a.trace if not t.passed],
                iso(a.not_before) if a.not_before else None,
            )
            for a in d.blocked
        ]
        sig = _NOTHING_BLOCKED if not sig_src else hashlib.sha256(dumps(sig_src).encode()).hexdigest()[:16]
        key = f"blocked:{meter_id}"
        prev = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if prev is not None and prev[0] == sig:
            return
        conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, sig),
        )
        for action in d.blocked:
            events.record(
                conn,
                "policy_blocked",
                now,
                severity="info",
                account_id=account_id,
                meter_id=meter_id,
                actor="policy",
                detail=_action_json(action),
            )

    def payment_outcome(self, conn: sqlite3.Connection, account_id: str, now: datetime) -> PaymentOutcome:
        """What a payment just posted means for the account's supply (``gateway.policy.outcome``)."""
        meters = [r[0] for r in conn.execute("SELECT id FROM meters WHERE account_id = ? ORDER BY id", (account_id,))]
        outcomes = []
        for meter_id in meters:
            account, meter, _holds, overrides = self.snapshot(conn, meter_id, now)
            outcomes.append(payment_outcome(account, meter, now, self.rules, overrides=overrides))
        return summarise(outcomes)

    def evaluate_account(
        self, conn: sqlite3.Connection, account_id: str, now: datetime, *, payment_id: str | None = None
    ) -> list[Decision]:
        meters = [
            r[0]
            for r in conn.execute("SELECT id FROM meters WHERE account_id = ? ORDER BY id", (account_id,))
        ]
        return [self.evaluate_meter(conn, m, now, payment_id=payment_id) for m in meters]
