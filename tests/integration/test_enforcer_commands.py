"""Durable relay commands: execution through a real bus worker, read-back, retries, alarms, crash resume.

The meter is a simulated DL/T 645 meter on a pty; the database is real SQLite; the enforcer's clock is
a hand-driven clock so backoff can be walked through without sleeping.  The simulator's ``trip`` is
wrapped to count the trip frames that reached the meter (instrumenting the simulator, not the code
under test).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.waiting import async_wait_for

from drivers.base import RelayAction
from drivers.factory import LinkSettings, make_link, make_meter
from gateway.core.calendar import WorkCalendar
from gateway.core.timeutil import iso, parse_iso
from gateway.ledger.accounts import ensure_account, ensure_meter, post_entry
from gateway.ledger.payments import apply_payment
from gateway.policy.engine import MeterCaps, PolicyEngine
from gateway.policy.rules import load_preset
from gateway.runtime.bus import BusWorker, PolledMeter
from gateway.runtime.relay import Enforcer
from gateway.store import relay_queue
from gateway.store.db import Store, open_store
from simulators.dlt645 import SimulatedDlt645Bus
from simulators.model import Fault, MeterModel

T0 = datetime(2026, 6, 2, 2, 0, tzinfo=UTC)  # Tuesday 10:00 in Shanghai, a working day
NO_WAIT = {
    "notice": {"required": False, "period": "PT0S", "reminder_before": "PT0S"},
    "windows": {"hours": [], "weekends": False, "public_holidays": False},
    "reconnect": {"mode": "direct_close"},
}
SHANGHAI = WorkCalendar("Asia/Shanghai", "CN")


@dataclass
class HandClock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Rig:
    store: Store
    model: MeterModel
    clock: HandClock
    enforcer: Enforcer
    trips_sent: list[int] = field(default_factory=list)

    def command(self, cid: int) -> dict[str, object]:
        row = self.store.one("SELECT * FROM relay_commands WHERE id = ?", cid)
        assert row is not None
        return dict(row)


def seeded_store(path: Path) -> Store:
    store = open_store(path)
    with store.tx() as conn:
        ensure_account(conn, "a1", tariff_id="flat-cn", currency="CNY", now=T0)
        ensure_meter(
            conn,
            "m1",
            account_id="a1",
            bus_id="b1",
            protocol="dlt645",
            address="000000000001",
            keep_power=False,
            now=T0,
        )
    return store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = seeded_store(tmp_path / "pmg.db")
    try:
        yield s
    finally:
        s.close()


@asynccontextmanager
async def rig(tmp_path: Path, model: MeterModel) -> AsyncIterator[Rig]:
    sim = SimulatedDlt645Bus([model], baud=9600, response_delay_s=0.002)
    store = seeded_store(tmp_path / "pmg.db")
    tasks: list[asyncio.Task[None]] = []
    worker: BusWorker | None = None
    ex: Enforcer | None = None
    try:
        url = sim.start_pty()
        clock = HandClock()
        model.clock = lambda: clock().timestamp()  # the meter checks a command's validity deadline
        link = make_link(LinkSettings("dlt645", url, 9600, None, 0.3, 0, 0.0))
        worker = BusWorker(
            "b1",
            link,
            [PolledMeter("m1", make_meter("dlt645", link, "000000000001", tz=SHANGHAI.tz), 3600)],
            lambda *_: None,
            clock=clock,
        )
        ex = Enforcer(store, {"b1": worker}, {"m1": "b1"}, clock)
        r = Rig(store, model, clock, ex)
        real_trip = model.trip

        def counted_trip() -> bool:
            r.trips_sent.append(1)
            return real_trip()

        model.trip = counted_trip  # type: ignore[method-assign]
        tasks = [asyncio.create_task(worker.run()), asyncio.create_task(ex.run())]
        yield r
    finally:
        if ex is not None:
            ex.stop()
        if worker is not None:
            worker.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        store.close()
        sim.stop()


def queue(
    store: Store,
    action: RelayAction,
    *,
    status: str = "pending",
    attempts: int = 0,
    trace: list[dict[str, object]] | None = None,
) -> int:
    with store.tx() as conn:
        cid = relay_queue.request(
            conn,
            "m1",
            action,
            T0,
            reason="test",
            actor="policy",
            trace=trace or [{"rule": "test", "passed": True, "detail": "queued by the test"}],
        )
        assert cid is not None
        conn.execute(
            "UPDATE relay_commands SET status = ?, attempts = ? WHERE id = ?", (status, attempts, cid)
        )
    return cid


def test_a_meter_that_does_not_obey_is_retried_with_backoff_then_alarmed(tmp_path: Path) -> None:
    model = MeterModel("000000000001", faults={Fault.STUCK_RELAY})

    async def scenario() -> None:
        async with rig(tmp_path, model) as r:
            cid = queue(r.store, RelayAction.TRIP)
            r.enforcer.notify()
            delays = []
            for attempt in range(1, 5):
                await async_wait_for(
                    lambda a=attempt: (
                        r.command(cid)["attempts"] == a and r.command(cid)["status"] == "pending"
                    ),
                    what=f"attempt {attempt} recorded",
                )
                not_before = parse_iso(str(r.command(cid)["not_before"]))
                delays.append((not_before - r.clock.now).total_seconds())
                await asyncio.sleep(0.6)  # one enforcer poll: nothing is due before not_before
                assert r.command(cid)["attempts"] == attempt, "retried before its backoff"
                r.clock.now = not_before
                r.enforcer.notify()
            await async_wait_for(lambda: r.command(cid)["status"] == "failed", what="command failed")
            assert delays == [2.0, 4.0, 8.0, 16.0]
            assert r.command(cid)["attempts"] == relay_queue.MAX_ATTEMPTS
            alarms = r.store.all("SELECT severity, detail_json FROM events WHERE kind = 'relay_failed'")
            assert len(alarms) == 1 and alarms[0]["severity"] == "alarm"
            assert json.loads(alarms[0]["detail_json"])["attempts"] == relay_queue.MAX_ATTEMPTS
            assert (
                len(r.trips_sent) == relay_queue.MAX_ATTEMPTS
            )  # each retry read the relay first, found it closed
            assert model.relay_closed

    asyncio.run(scenario())


def test_after_a_crash_a_command_already_carried_out_is_confirmed_without_a_frame(tmp_path: Path) -> None:
    model = MeterModel("000000000001")

    async def scenario() -> None:
        async with rig(tmp_path, model) as r:
            model.trip()  # the frame reached the meter just before the crash
            r.trips_sent.clear()
            cid = queue(r.store, RelayAction.TRIP, status="sending", attempts=1)
            r.enforcer.notify()
            await async_wait_for(
                lambda: r.command(cid)["status"] == "confirmed", what="confirmed by read-back"
            )
            assert r.trips_sent == [], "re-sent blindly"
            assert r.store.scalar("SELECT relay FROM meters WHERE id = 'm1'") == "open"

    asyncio.run(scenario())


def test_after_a_crash_a_command_not_carried_out_is_sent_once(tmp_path: Path) -> None:
    model = MeterModel("000000000001")

    async def scenario() -> None:
        async with rig(tmp_path, model) as r:
            cid = queue(r.store, RelayAction.TRIP, status="sending", attempts=1)
            r.enforcer.notify()
            await async_wait_for(
                lambda: r.command(cid)["status"] == "confirmed", what="confirmed by read-back"
            )
            assert r.trips_sent == [1] and not model.relay_closed

    asyncio.run(scenario())


def test_a_withdrawal_is_not_sent_when_the_customer_already_reclosed(tmp_path: Path) -> None:
    model = MeterModel("000000000001")  # relay closed: the customer pressed the button in time
    guard = [{"rule": "relay.only_if_open", "passed": True, "detail": "relay reads open"}]

    async def scenario() -> None:
        async with rig(tmp_path, model) as r:
            cid = queue(r.store, RelayAction.TRIP, trace=guard)
            r.enforcer.notify()
            await async_wait_for(lambda: r.command(cid)["status"] == "cancelled", what="withdrawal cancelled")
            assert r.trips_sent == [] and model.relay_closed
            assert "relay reads closed just before sending" in str(r.command(cid)["outcome"])
            assert r.store.scalar("SELECT relay FROM meters WHERE id = 'm1'") == "closed"

            model.relay_closed = False  # the same guard with the relay open: sent and confirmed
            cid = queue(r.store, RelayAction.TRIP, trace=guard)
            r.enforcer.notify()
            await async_wait_for(lambda: r.command(cid)["status"] == "confirmed", what="withdrawal confirmed")
            assert r.trips_sent == [1]

    asyncio.run(scenario())


# -- the policy engine on the database --------------------------------------------------------------
def engine(preset: str = "generic", **overrides: object) -> PolicyEngine:
    return PolicyEngine(load_preset(preset, {**NO_WAIT, **overrides}), SHANGHAI, {"m1": MeterCaps()})


def open_commands(store: Store) -> list[tuple[str, str, str]]:
    return [
        tuple(r)
        for r in store.all(
            "SELECT action, status, actor FROM relay_commands WHERE status IN ('pending', 'sending') ORDER BY id"
        )
    ]


def test_a_payment_cancels_the_pending_cut(store: Store) -> None:
    pe = engine()
    with store.tx() as conn:
        conn.execute("UPDATE meters SET relay = 'closed'")
        pe.evaluate_meter(conn, "m1", T0)
        assert open_commands(store) == [("trip", "pending", "policy")]
        apply_payment(conn, "p1", "a1", 500, T0, source="test")
        pe.evaluate_account(conn, "a1", T0, payment_id="p1")
    assert open_commands(store) == []
    assert store.scalar("SELECT outcome FROM relay_commands WHERE action = 'trip'") == "credit restored"


def test_a_queued_trip_is_cancelled_when_a_hold_arrives_but_one_on_the_wire_is_not(store: Store) -> None:
    pe = engine()
    with store.tx() as conn:
        conn.execute("UPDATE meters SET relay = 'closed'")
        pe.evaluate_meter(conn, "m1", T0)
        conn.execute(
            "INSERT INTO holds(id, kind, reason, actor, starts_at, expires_at) VALUES "
            "('h1', 'weather', 'heatwave', 'head-office', ?, ?)",
            (iso(T0), iso(T0 + timedelta(days=1))),
        )
        pe.evaluate_meter(conn, "m1", T0 + timedelta(seconds=30))
    assert open_commands(store) == []
    outcome = store.scalar("SELECT outcome FROM relay_commands WHERE action = 'trip'")
    assert outcome.startswith("cut no longer allowed: hold.weather: heatwave")

    with store.tx() as conn:
        conn.execute("DELETE FROM holds")
        pe.evaluate_meter(conn, "m1", T0 + timedelta(minutes=1))
        conn.execute("UPDATE relay_commands SET status = 'sending' WHERE status = 'pending'")
        conn.execute(
            "INSERT INTO holds(id, kind, reason, actor, starts_at, expires_at) VALUES "
            "('h2', 'weather', 'heatwave', 'head-office', ?, ?)",
            (iso(T0), iso(T0 + timedelta(days=1))),
        )
        pe.evaluate_meter(conn, "m1", T0 + timedelta(minutes=2))
    assert open_commands(store) == [("trip", "sending", "policy")], "a frame on the wire completes"


def test_a_relay_open_in_good_standing_is_alarmed_once_and_reconnected(store: Store) -> None:
    pe = engine()
    with store.tx() as conn:
        apply_payment(conn, "p1", "a1", 5_000, T0, source="test")
        conn.execute("UPDATE meters SET relay = 'open'")  # tripped by the meter itself, or by hand
        pe.evaluate_meter(conn, "m1", T0)
        pe.evaluate_meter(conn, "m1", T0 + timedelta(minutes=1))
    alarms = store.all("SELECT severity, detail_json FROM events WHERE kind = 'policy_alarm'")
    assert len(alarms) == 1 and alarms[0]["severity"] == "alarm"
    assert "relay reads open while the account is in good standing" in alarms[0]["detail_json"]
    assert open_commands(store) == [("direct_close", "pending", "policy")]
    with store.tx() as conn:  # closed again; a later unexplained opening alarms again
        conn.execute("UPDATE relay_commands SET status = 'confirmed'")
        conn.execute("UPDATE meters SET relay = 'closed'")
        pe.evaluate_meter(conn, "m1", T0 + timedelta(minutes=2))
        conn.execute("UPDATE meters SET relay = 'open'")
        pe.evaluate_meter(conn, "m1", T0 + timedelta(minutes=3))
    assert store.scalar("SELECT COUNT(*) FROM events WHERE kind = 'policy_alarm'") == 2


@pytest.mark.parametrize("protected", [False, True])
def test_a_close_permission_is_withdrawn_when_credit_runs_out_before_the_button(
    store: Store, protected: bool
) -> None:
    pe = engine("generic", reconnect={"mode": "close_permitted"})
    with store.tx() as conn:
        conn.execute("UPDATE accounts SET protected = ?", (int(protected),))
        conn.execute("UPDATE meters SET relay = 'open'")
        conn.execute("UPDATE accounts SET policy_state = 'disconnected'")
        apply_payment(conn, "p1", "a1", 150, T0, source="test")
        pe.evaluate_account(conn, "a1", T0, payment_id="p1")
        assert open_commands(store) == [("close_permitted", "pending", "policy")]
        conn.execute("UPDATE relay_commands SET status = 'confirmed'")
        pe.evaluate_meter(conn, "m1", T0 + timedelta(minutes=1))  # the button not pressed yet
        post_entry(conn, "a1", "standing_charge", -200, T0 + timedelta(hours=5))
        pe.evaluate_meter(conn, "m1", T0 + timedelta(hours=5))
    state = store.scalar("SELECT policy_state FROM accounts")
    if protected:
        assert open_commands(store) == [] and state == "reconnection_pending"
        return
    assert open_commands(store) == [("trip", "pending", "policy")]
    assert state == "disconnected"
    trace = json.loads(store.scalar("SELECT trace_json FROM relay_commands WHERE action = 'trip'"))
    assert {k: trace[-1][k] for k in ("rule", "passed")} == {"rule": "relay.only_if_open", "passed": True}


def test_a_failed_cut_is_not_asked_again_on_every_reading_but_hourly(store: Store) -> None:
    """A stuck relay has been alarmed once; re-queueing the trip on every reading would keep the bus busy
    with retries and the audit log full of the same alarm."""
    pe = engine()
    with store.tx() as conn:
        conn.execute("UPDATE meters SET relay = 'closed'")
        pe.evaluate_meter(conn, "m1", T0)
        conn.execute(
            "UPDATE relay_commands SET status = 'failed', updated_at = ? WHERE action = 'trip'", (iso(T0),)
        )
        for minutes in (1, 10, 59):
            pe.evaluate_meter(conn, "m1", T0 + timedelta(minutes=minutes))
        assert open_commands(store) == []
        pe.evaluate_meter(conn, "m1", T0 + timedelta(minutes=61))
    assert open_commands(store) == [("trip", "pending", "policy")]
    assert store.scalar("SELECT COUNT(*) FROM events WHERE kind = 'policy_disconnect'") == 2
