"""Lawful enforcement through the database: random histories run through ``PolicyEngine`` on real SQLite.

Each example builds a real store (migrations, triggers), an account and its meter, then plays a
random sequence of readings (charged by the real ledger), payments, policy reviews, relay
executions and button presses across DST changes and public holidays, with random rule sets,
protection flags, keep-power and head-office holds.  After every step the *queued relay commands*
are checked against an oracle independent of ``gateway.policy`` (windows re-derived from the local
wall clock, notice taken from the audit log):

- no trip is queued for a protected or keep-power meter, inside a protected window or an active
  hold, before the notice period has run from the notice's *delivery* (the ``notice_delivered``
  audit event, or the ``policy_serve_notice`` event where the meter display is delivery), or after
  that notice went stale (``notice.valid_for``);
- a payment that restores enough credit leaves a close command pending when the relay reads open,
  and no pending trip when it reads closed;
- every relay command carries a non-empty rule trace.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_policy_properties import CALENDARS, instants, protected_now, rule_sets

from drivers.base import Quality, Reading, RelayAction, RelayState
from gateway.core.calendar import WorkCalendar
from gateway.core.timeutil import iso, parse_iso
from gateway.ledger.accounts import ensure_account, ensure_meter
from gateway.ledger.charging import AccountPosition, Priced, record_reading
from gateway.ledger.payments import apply_payment
from gateway.policy import notices
from gateway.policy.engine import MeterCaps, PolicyEngine
from gateway.policy.rules import Rules
from gateway.store.db import Store, open_store

PRICE_PER_WH = Decimal("0.0005")  # ¥0.50 / kWh, enough to run out of credit in a few steps
CATEGORIES = (None, "medical_equipment", "important_user", "age_75_plus")


@dataclass(frozen=True)
class Line:
    energy_wh: int
    amount: Decimal


def flat_pricer(
    _account: AccountPosition, _start: datetime, _end: datetime, wh: int, _split: object
) -> Priced:
    return Priced([Line(wh, Decimal(wh) * PRICE_PER_WH)])


@dataclass
class World:
    """The store plus a stand-in for the physical meter (the relay the enforcer would operate)."""

    store: Store
    engine: PolicyEngine
    rules: Rules
    cal: WorkCalendar
    now: datetime
    register_wh: int = 0
    relay: RelayState = RelayState.CLOSED
    permitted: bool = False  # a close-permitted (1B) command awaits the button
    payments: int = 0

    def read(self, wh: int) -> None:
        if self.relay is RelayState.CLOSED:
            self.register_wh += wh
        reading = Reading(
            "000000000001", self.now, Quality.OK, energy_import_wh=self.register_wh, relay=self.relay
        )
        with self.store.tx() as conn:
            out = record_reading(conn, "m1", reading, flat_pricer, max_power_w=10**9)
            if out.outcome in ("charged", "baseline"):
                self.engine.evaluate_meter(conn, "m1", self.now)

    def pay(self, amount: int) -> None:
        self.payments += 1
        with self.store.tx() as conn:
            apply_payment(conn, f"p{self.payments}", "a1", amount, self.now, source="test")
            self.engine.evaluate_account(conn, "a1", self.now, payment_id=f"p{self.payments}")

    def review(self) -> None:
        with self.store.tx() as conn:
            self.engine.evaluate_meter(conn, "m1", self.now)

    def execute(self) -> None:
        """What the enforcer does: operate, read back, record, re-decide."""
        for row in self.store.all(
            "SELECT id, action, trace_json FROM relay_commands WHERE status = 'pending'"
        ):
            action = RelayAction(row["action"])
            guarded = any(t["rule"] == "relay.only_if_open" for t in json.loads(row["trace_json"]))
            if guarded and self.relay is not RelayState.OPEN:
                status = "cancelled"
            else:
                status = "confirmed"
                if action is RelayAction.TRIP:
                    self.relay, self.permitted = RelayState.OPEN, False
                elif action is RelayAction.DIRECT_CLOSE:
                    self.relay = RelayState.CLOSED
                elif action is RelayAction.CLOSE_PERMITTED:
                    self.permitted = True
            with self.store.tx() as conn:
                conn.execute("UPDATE relay_commands SET status = ? WHERE id = ?", (status, row["id"]))
                conn.execute("UPDATE meters SET relay = ? WHERE id = 'm1'", (self.relay.value,))
                if action in (RelayAction.KEEP_POWER_ON, RelayAction.KEEP_POWER_OFF):
                    conn.execute(
                        "UPDATE meters SET keep_power_on_meter = ? WHERE id = 'm1'",
                        (int(action is RelayAction.KEEP_POWER_ON),),
                    )
                self.engine.evaluate_meter(conn, "m1", self.now)

    def deliver(self) -> None:
        """The head office confirms the outstanding notice as delivered now (its ``notice`` command)."""
        with self.store.tx() as conn:
            row = conn.execute("SELECT notice_served_at, notice_delivered_at FROM accounts WHERE id = 'a1'").fetchone()
            if row[0] is None or row[1] is not None:
                return
            nid = notices.notice_id("a1", parse_iso(row[0]))
            notices.confirm_delivery(conn, "a1", nid, "sms", self.now, self.now, actor="test:hq")
            self.engine.evaluate_account(conn, "a1", self.now)

    def press(self) -> None:
        if self.permitted:
            self.relay, self.permitted = RelayState.CLOSED, False
            self.read(0)


# Sampled, not ranged: hypothesis favours small integers, and small readings never exhaust credit.
reads = st.tuples(st.just("read"), st.sampled_from([0, 2_000, 6_000, 20_000]), st.sampled_from([5, 60, 240]))
steps = st.lists(
    st.one_of(
        reads,
        reads,
        st.tuples(st.just("review"), st.just(0), st.integers(1, 3 * 24 * 60)),
        st.tuples(st.just("pay"), st.sampled_from([1, 100, 400, 3_000]), st.integers(0, 60)),
        st.tuples(st.just("review"), st.just(0), st.integers(1, 3 * 24 * 60)),
        st.tuples(st.just("execute"), st.just(0), st.integers(0, 5)),
        st.tuples(st.just("press"), st.just(0), st.integers(0, 30)),
        st.tuples(st.just("deliver"), st.just(0), st.integers(0, 3 * 24 * 60)),
    ),
    min_size=5,
    max_size=30,
)


# Histories that run out of credit: an unprotected customer who only consumes and waits.
draining = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.sampled_from([2_000, 6_000]), st.sampled_from([5, 60, 240, 600])),
        st.tuples(st.just("review"), st.just(0), st.integers(1, 2 * 24 * 60)),
        st.tuples(st.just("execute"), st.just(0), st.integers(0, 5)),
        st.tuples(st.just("deliver"), st.just(0), st.integers(0, 24 * 60)),
    ),
    min_size=8,
    max_size=30,
)


@st.composite
def worlds(draw: st.DrawFn, *, drain: bool = False) -> dict[str, object]:
    rules = draw(rule_sets())
    if draw(st.booleans()):  # short notice, so that histories of a few days reach the cut often
        period = timedelta(minutes=draw(st.integers(0, 6 * 60)))
        rules = rules.model_copy(update={"notice": rules.notice.model_copy(update={"period": period})})
    return {
        "rules": rules,
        "cal": draw(st.sampled_from(CALENDARS)),
        "start": draw(instants),
        "protected": False if drain else draw(st.sampled_from([False, False, False, True])),
        "category": None if drain else draw(st.sampled_from([None, None, None, *CATEGORIES])),
        "keep_power": False if drain else draw(st.sampled_from([False, False, False, True])),
        "caps": MeterCaps(True, draw(st.booleans()), draw(st.booleans())),
        "opening": draw(st.sampled_from([0, 500, 2_000])),
        "emergency": draw(st.sampled_from([0, 0, 500])),  # lent where the rule set enables it (uk)
        "hold": draw(
            st.one_of(st.none(), st.tuples(st.integers(0, 5 * 24 * 60), st.integers(1, 3 * 24 * 60)))
        ),
        "steps": draw(draining if drain else steps),
    }


def build(tmp: Path, w: dict[str, object]) -> World:
    rules, cal, now = w["rules"], w["cal"], w["start"]
    assert isinstance(rules, Rules) and isinstance(cal, WorkCalendar) and isinstance(now, datetime)
    store = open_store(tmp / "pmg.db")
    with store.tx() as conn:
        ensure_account(
            conn,
            "a1",
            tariff_id="flat",
            currency="CNY",
            now=now,
            protected=bool(w["protected"]),
            protected_category=w["category"],
            emergency_credit_minor=int(w.get("emergency", 0)),  # type: ignore[call-overload]
        )  # type: ignore[arg-type]
        ensure_meter(
            conn,
            "m1",
            account_id="a1",
            bus_id="b1",
            protocol="dlt645",
            address="000000000001",
            keep_power=bool(w["keep_power"]),
            now=now,
        )
        if w["hold"] is not None:
            start_m, length_m = w["hold"]  # type: ignore[misc]
            conn.execute(
                "INSERT INTO holds(id, kind, reason, actor, starts_at, expires_at) VALUES ('h1', 'weather', "
                "'storm', 'head-office', ?, ?)",
                (iso(now + timedelta(minutes=start_m)), iso(now + timedelta(minutes=start_m + length_m))),
            )
    engine = PolicyEngine(rules, cal, {"m1": w["caps"]})  # type: ignore[dict-item]
    world = World(store, engine, rules, cal, now)
    if w["opening"]:
        world.pay(int(w["opening"]))  # type: ignore[call-overload]
    world.read(0)  # baseline
    return world


def hold_active(store: Store, at: datetime) -> bool:
    return any(
        parse_iso(r["starts_at"]) <= at < parse_iso(r["expires_at"])
        for r in store.all("SELECT starts_at, expires_at FROM holds WHERE cleared_at IS NULL")
    )


def check_new_commands(world: World, seen: set[int], w: dict[str, object]) -> None:
    store, rules = world.store, world.rules
    protected = bool(w["protected"]) or w["category"] in rules.protected.categories
    for row in store.all("SELECT * FROM relay_commands ORDER BY id"):
        if row["id"] in seen:
            continue
        seen.add(row["id"])
        trace = json.loads(row["trace_json"])
        assert trace, f"relay command {row['action']} without a rule trace"
        if row["action"] != RelayAction.TRIP.value:
            continue
        at = parse_iso(row["created_at"])
        assert not w["keep_power"], "trip queued for a keep-power meter"
        assert not protected, "trip queued for a protected customer"
        if any(t["rule"] == "relay.only_if_open" for t in trace):
            assert world.relay is RelayState.OPEN, "a withdrawal queued while the relay reads closed"
            continue
        assert not protected_now(at, world.cal, rules), f"trip queued inside a protected window at {iso(at)}"
        assert not hold_active(store, at), f"trip queued during a hold at {iso(at)}"
        if rules.notice.required:
            notice = store.scalar(
                "SELECT MAX(at) FROM events WHERE kind = 'policy_serve_notice' AND account_id = 'a1' AND at <= ?",
                iso(at),
            )
            assert notice is not None, "trip queued without any notice served"
            delivered = notice_delivered(store, notice, rules)
            assert delivered is not None, "trip queued on a notice that was never delivered"
            assert delivered + rules.notice.period <= at, "trip queued before the notice period ran"
            if rules.notice.valid_for is not None:
                assert at < delivered + rules.notice.valid_for, "trip queued on a stale notice"
            if rules.notice.reminder_before:
                reminder = store.scalar(
                    "SELECT MAX(at) FROM events WHERE kind = 'policy_send_reminder' AND account_id = 'a1' "
                    "AND at >= ? AND at <= ?",
                    notice,
                    iso(at),
                )
                assert reminder is not None, "trip queued without the reminder"
                assert parse_iso(reminder) + rules.notice.reminder_before <= at


def notice_delivered(store: Store, issued_at: str, rules: Rules) -> datetime | None:
    """When the notice issued at ``issued_at`` reached the customer, from the audit log alone."""
    if rules.notice.delivery == "meter_display":
        return parse_iso(issued_at)
    for (detail,) in store.all(
        "SELECT detail_json FROM events WHERE kind = 'notice_delivered' AND account_id = 'a1' ORDER BY id"
    ):
        d = json.loads(detail)
        if d["issued_at"] == issued_at:
            return parse_iso(d["delivered_at"])
    return None


def check_after_payment(world: World) -> None:
    balance = world.store.scalar("SELECT balance_minor FROM accounts WHERE id = 'a1'")
    if balance < world.rules.reconnect.threshold_minor:
        return
    relay = world.store.scalar("SELECT relay FROM meters WHERE id = 'm1'")
    open_cmds = {
        r[0]
        for r in world.store.all(
            "SELECT action FROM relay_commands WHERE meter_id = 'm1' AND status IN ('pending', 'sending')"
        )
    }
    if relay == RelayState.OPEN.value:
        assert open_cmds & {RelayAction.DIRECT_CLOSE.value, RelayAction.CLOSE_PERMITTED.value} or (
            world.permitted and RelayAction.TRIP.value not in open_cmds
        ), f"credit restored ({balance}) but no reconnect pending: {open_cmds}"
    elif relay == RelayState.CLOSED.value:
        assert RelayAction.TRIP.value not in open_cmds, "credit restored but a trip is still pending"


def run(w: dict[str, object]) -> int:
    """Play the history, checking after every step; returns the number of trips queued."""
    with tempfile.TemporaryDirectory() as tmp:
        world = build(Path(tmp), w)
        try:
            seen: set[int] = set()
            check_new_commands(world, seen, w)
            for op, arg, minutes in w["steps"]:  # type: ignore[attr-defined]
                world.now += timedelta(minutes=minutes)
                getattr(world, op)(*([arg] if op in ("read", "pay") else []))
                check_new_commands(world, seen, w)
                if op == "pay":
                    check_after_payment(world)
            return int(world.store.scalar("SELECT COUNT(*) FROM relay_commands WHERE action = 'trip'"))
        finally:
            world.store.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_random_histories_through_the_database_stay_lawful(w: dict[str, object]) -> None:
    event(f"trips queued: {min(run(w), 2)}")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(drain=True))
def test_histories_that_run_out_of_credit_cut_only_when_allowed(w: dict[str, object]) -> None:
    event(f"trips queued: {min(run(w), 2)}")


def test_history_that_reaches_a_cut_is_checked() -> None:
    """The oracle is not vacuous: a plain history under a no-window, no-notice rule set cuts and reconnects."""
    from gateway.policy.rules import load_preset

    rules = load_preset(
        "generic",
        {
            "notice": {"required": False, "period": "PT0S", "reminder_before": "PT0S"},
            "windows": {"hours": [], "weekends": False},
            "reconnect": {"mode": "direct_close"},
        },
    )
    w: dict[str, object] = {
        "rules": rules,
        "cal": CALENDARS[2],
        "start": datetime.fromisoformat("2026-06-02T02:00:00+00:00"),
        "protected": False,
        "category": None,
        "keep_power": False,
        "caps": MeterCaps(),
        "opening": 300,
        "hold": None,
        "steps": [("read", 10_000, 60), ("execute", 0, 1), ("pay", 500, 5)],
    }
    with tempfile.TemporaryDirectory() as tmp:
        world = build(Path(tmp), w)
        try:
            world.read(10_000)
            world.now += timedelta(minutes=1)
            world.execute()
            assert world.relay is RelayState.OPEN
            world.pay(500)
            check_after_payment(world)
            world.execute()
            assert world.relay is RelayState.CLOSED
            actions = [r[0] for r in world.store.all("SELECT action FROM relay_commands ORDER BY id")]
            assert actions == ["trip", "direct_close"]
        finally:
            world.store.close()


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(worlds(), worlds(drain=True)))
def test_many_histories(w: dict[str, object]) -> None:
    run(w)
