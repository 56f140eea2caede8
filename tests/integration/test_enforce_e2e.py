"""Lawful enforcement end to end: a real gateway in-process, a simulated DL/T 645 meter on a pty, a fast clock.

Credit runs out at a chosen local instant; the gateway must hold the cut for as long as the
jurisdiction's preset says (UK friendly-credit hours and weekend; China's written notice, the
30-minute reminder and working days), then cut, and a top-up must bring the power back.  Times are
read from the audit log and the relay command rows, which carry the gateway's (fast) clock.

Dates: Friday 27 November 2026 (no bank holiday in England until 25 December); Tuesday 2 June 2026
(a working day in China, no holiday before the Dragon Boat Festival on 19 June).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from support.gateway_harness import base_config, write_config
from support.waiting import async_wait_for

from gateway.config import load_config
from gateway.core.calendar import WorkCalendar
from gateway.core.timeutil import iso, parse_iso
from gateway.policy import notices
from gateway.policy.engine import PolicyEngine
from gateway.runtime.daemon import Gateway
from gateway.store.db import Store
from simulators.dlt645 import SimulatedDlt645Bus
from simulators.model import LoadProfile, MeterModel

LONDON = ZoneInfo("Europe/London")
SHANGHAI = ZoneInfo("Asia/Shanghai")


class WarpClock:
    """A fast clock whose speed the test can change without a jump (shared by gateway and meter).

    Policy reviews run on real time (every 30 s) and readings every few hundred real milliseconds,
    so at 20,000x two decisions are hours of simulated time apart — longer than China's 30-minute
    reminder.  The test runs fast through the notice period and slows down for the reminder.
    """

    def __init__(self, speed: float, start: datetime) -> None:
        self._lock = threading.RLock()
        self._base, self._mono0, self.speed = start, time.monotonic(), speed

    def __call__(self) -> datetime:
        with self._lock:
            return self._base + timedelta(seconds=(time.monotonic() - self._mono0) * self.speed)

    def set_speed(self, speed: float) -> None:
        with self._lock:
            self._base, self._mono0, self.speed = self(), time.monotonic(), speed

    def epoch(self) -> float:
        return self().timestamp()


@dataclass
class Rig:
    gateway: Gateway
    model: MeterModel
    clock: WarpClock

    @property
    def store(self) -> Store:
        return self.gateway.store

    def events(self, kind: str) -> list[datetime]:
        return [
            parse_iso(r[0]) for r in self.store.all("SELECT at FROM events WHERE kind = ? ORDER BY id", kind)
        ]

    def dump(self) -> None:
        for r in self.store.all(
            "SELECT at, kind, detail_json FROM events WHERE kind NOT LIKE 'comms%' ORDER BY id"
        ):
            print(r[0], r[1], r[2][:200])
        print([dict(r) for r in self.store.all("SELECT * FROM relay_commands")])


@contextmanager
def rig(
    tmp_path: Path, *, start: datetime, speed: float, tz: str, offset_h: int, policy: str
) -> Iterator[Rig]:
    clock = WarpClock(speed, start)
    model = MeterModel(
        "000000000001",
        clock=clock.epoch,
        profile=LoadProfile((1000,)),
        utc_offset_hours=offset_h,
    )
    sim = SimulatedDlt645Bus([model], baud=9600, response_delay_s=0.005)
    try:
        port = sim.start_pty()
        cfg_path = write_config(
            tmp_path / "gw.toml",
            base_config(tmp_path / "pmg.db", timezone=tz, policy=policy)
            + f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "{port}"\nbaud = 9600\npoll_interval_s = 0.1\n'
            + '\n[[meters]]\nid = "m1"\nbus = "b1"\naddress = "000000000001"\naccount = "acc1"\n'
            + 'tariff = "flat-cn"\nmax_power_w = 10000\n',
        )
        gateway = Gateway(cfg_path, load_config(cfg_path), clock=clock)
        yield Rig(gateway, model, clock)
    finally:
        sim.stop()


async def started(r: Rig, opening_minor: int) -> None:
    await r.gateway.start()
    r.gateway.apply_payment("opening", "acc1", opening_minor, source="test")
    await async_wait_for(
        lambda: r.store.scalar("SELECT last_register_wh FROM meters WHERE id = 'm1'") is not None,
        what="baseline reading",
    )


@pytest.mark.slow
def test_uk_credit_out_on_friday_evening_waits_for_monday_ten(tmp_path: Path) -> None:
    """UK preset: friendly-credit hours 18:00-10:00, weekends and bank holidays; direct close on top-up."""
    start = datetime(2026, 11, 27, 17, 0, tzinfo=UTC)  # Friday 17:00 GMT
    window_end = datetime(2026, 11, 30, 10, 0, tzinfo=LONDON)  # Monday 10:00
    speed = 20_000.0  # 65 simulated hours in about 12 s
    with rig(
        tmp_path, start=start, speed=speed, tz="Europe/London", offset_h=0, policy='[policy]\npreset = "uk"\n'
    ) as r:

        async def scenario() -> None:
            await started(r, 150)  # £1.50 at 1 kW and ¥0.5283/kWh: runs out before 18:00
            try:
                await async_wait_for(lambda: r.events("policy_blocked"), timeout=10, what="the cut held back")
                exhausted = r.store.scalar(
                    "SELECT MIN(at) FROM events WHERE kind = 'policy_warn' "
                    "AND detail_json LIKE '%\"level\":3%'"
                )
                assert exhausted is not None and parse_iso(exhausted) < window_end
                await async_wait_for(lambda: not r.model.relay_closed, timeout=40, what="the cut on Monday")
                trip_at = parse_iso(
                    r.store.scalar("SELECT created_at FROM relay_commands WHERE action = 'trip'")
                )
                assert trip_at >= window_end, f"cut at {trip_at} inside friendly-credit hours"
                assert trip_at - window_end < timedelta(hours=3), "the cut came long after the window ended"
                assert r.store.scalar("SELECT COUNT(*) FROM relay_commands WHERE action = 'trip'") == 1
                await async_wait_for(
                    lambda: (
                        r.store.scalar("SELECT status FROM relay_commands WHERE action = 'trip'")
                        == "confirmed"
                    ),
                    what="trip confirmed by read-back",
                )
                debt = -r.store.scalar("SELECT balance_minor FROM accounts WHERE id = 'acc1'")
                r.gateway.apply_payment("topup", "acc1", debt + 500, source="test")
                await async_wait_for(lambda: r.model.relay_closed, timeout=10, what="power back after top-up")
                await async_wait_for(
                    lambda: (
                        r.store.scalar(
                            "SELECT status FROM relay_commands WHERE action = 'direct_close' AND payment_id = 'topup'"
                        )
                        == "confirmed"
                    ),
                    what="close confirmed by read-back",
                )
                assert r.store.scalar("SELECT relay FROM meters WHERE id = 'm1'") == "closed"
            except AssertionError:
                r.dump()
                raise
            finally:
                await r.gateway.stop()

        asyncio.run(scenario())


@pytest.mark.slow
def test_cn_notice_reminder_then_cut_on_a_working_day_and_topup_restores(tmp_path: Path) -> None:
    """CN preset: written notice, served only once delivery is confirmed (an undelivered one is alarmed and
    never cut on), 3 days from delivery, a reminder 30 minutes before, cut in working hours of a working day."""
    start = datetime(2026, 6, 2, 1, 0, tzinfo=UTC)  # Tuesday 09:00 Asia/Shanghai
    speed = 20_000.0
    cal = WorkCalendar("Asia/Shanghai", "CN")
    with rig(
        tmp_path, start=start, speed=speed, tz="Asia/Shanghai", offset_h=8, policy='[policy]\npreset = "cn"\n'
    ) as r:

        async def scenario() -> None:
            await started(r, 150)
            try:
                await async_wait_for(lambda: r.events("policy_serve_notice"), timeout=10, what="the notice")
                (issued,) = r.events("policy_serve_notice")
                # Nobody confirms delivery (the head office is unreachable): an alarm, and no cut at all.
                await async_wait_for(
                    lambda: r.events("policy_notice_undelivered"), timeout=30, what="the undelivered alarm"
                )
                assert r.events("policy_notice_undelivered")[0] >= issued + timedelta(days=1)
                await async_wait_for(
                    lambda: r.clock() >= issued + timedelta(days=4), timeout=30, what="past the period"
                )
                assert r.model.relay_closed and not r.events("policy_send_reminder"), "cut on an undelivered notice"
                # The head office confirms delivery (as its signed ``notice`` command would): served now.
                notice = r.clock()
                with r.store.tx() as conn:
                    nid = notices.notice_id("acc1", issued)
                    notices.confirm_delivery(conn, "acc1", nid, "letter", notice, notice, actor="test:hq")
                    r.gateway.parts.policy.evaluate_account(conn, "acc1", notice)
                # Slow down well before the reminder: under load the wait below may see the clock late, and
                # at 20,000x one real second is 5.5 simulated hours.
                slow_from = notice + timedelta(days=3) - timedelta(hours=6)
                await async_wait_for(lambda: r.clock() >= slow_from, timeout=30, what="the notice period")
                assert r.model.relay_closed, "cut during the notice period"
                r.clock.set_speed(1_200.0)  # a decision every few simulated minutes
                await async_wait_for(lambda: not r.model.relay_closed, timeout=90, what="the cut")
                (reminder,) = r.events("policy_send_reminder")
                trip_at = parse_iso(
                    r.store.scalar("SELECT created_at FROM relay_commands WHERE action = 'trip'")
                )
                assert reminder >= notice + timedelta(days=3) - timedelta(minutes=30)
                assert trip_at >= notice + timedelta(days=3), "cut before the 3-day notice ran"
                assert trip_at >= reminder + timedelta(minutes=30), (
                    "cut less than 30 minutes after the reminder"
                )
                assert cal.day_type(trip_at.astimezone(SHANGHAI).date()) == "workday"
                assert 8 <= trip_at.astimezone(SHANGHAI).hour < 17, f"cut at {trip_at} outside working hours"
                assert trip_at < notice + timedelta(days=7), "cut on a stale notice"
                await async_wait_for(
                    lambda: (
                        r.store.scalar("SELECT status FROM relay_commands WHERE action = 'trip'")
                        == "confirmed"
                    ),
                    what="trip confirmed by read-back",
                )
                debt = -r.store.scalar("SELECT balance_minor FROM accounts WHERE id = 'acc1'")
                r.gateway.apply_payment("topup", "acc1", debt + 500, source="test")
                await async_wait_for(
                    lambda: (
                        r.store.scalar(
                            "SELECT status FROM relay_commands WHERE action = 'close_permitted' AND payment_id = 'topup'"
                        )
                        == "confirmed"
                    ),
                    what="close permitted (1B) delivered",
                )
                assert not r.model.relay_closed, "1B only permits: the customer closes the relay"
                r.model.press_button()
                await async_wait_for(
                    lambda: r.store.scalar("SELECT relay FROM meters WHERE id = 'm1'") == "closed",
                    what="relay read back closed after the button",
                )
                await async_wait_for(
                    lambda: (
                        r.store.scalar("SELECT policy_state FROM accounts WHERE id = 'acc1'")
                        != "reconnection_pending"
                    ),
                    what="reconnection complete",
                )
            except AssertionError:
                r.dump()
                raise
            finally:
                await r.gateway.stop()

        asyncio.run(scenario())


def _engine_on_disk(db: Path, preset_overrides: dict[str, object]) -> tuple[Store, PolicyEngine]:
    from gateway.ledger.accounts import ensure_account, ensure_meter
    from gateway.policy.engine import MeterCaps
    from gateway.policy.rules import load_preset
    from gateway.store.db import open_store

    store = open_store(db)
    with store.tx() as conn:
        if conn.execute("SELECT 1 FROM accounts WHERE id = 'a1'").fetchone() is None:
            t0 = datetime(2026, 11, 1, tzinfo=UTC)
            ensure_account(conn, "a1", tariff_id="flat", currency="CNY", now=t0)
            ensure_meter(conn, "m1", account_id="a1", bus_id="b1", protocol="dlt645", address="1",
                         keep_power=False, now=t0)
    rules = load_preset("cn", preset_overrides)
    return store, PolicyEngine(rules, WorkCalendar("Asia/Shanghai", "CN"), {"m1": MeterCaps()})


def test_notice_delivery_state_survives_a_restart_and_drives_the_cut(tmp_path: Path) -> None:
    """Issued, alarmed while undelivered, confirmed, reopened: the period runs from delivery; stale lapses."""
    from gateway.store.migrations import MIGRATIONS

    db = tmp_path / "pmg.db"
    issued = datetime(2026, 11, 16, 2, 0, tzinfo=UTC)  # Mon 10:00 CST, balance 0: a notice
    store, engine = _engine_on_disk(db, {})
    assert store.scalar("PRAGMA user_version") == len(MIGRATIONS)
    with store.tx() as conn:
        d = engine.evaluate_meter(conn, "m1", issued)
    assert d.notice_served_at == issued and d.notice_delivered_at is None and d.earliest_cut_at is None
    with store.tx() as conn:
        engine.evaluate_meter(conn, "m1", issued + timedelta(days=1, minutes=1))
        engine.evaluate_meter(conn, "m1", issued + timedelta(days=5))  # the old period is long over
    alarms = store.all("SELECT severity FROM events WHERE kind = 'policy_notice_undelivered'")
    assert [r[0] for r in alarms] == ["alarm"]
    assert store.scalar("SELECT COUNT(*) FROM relay_commands") == 0, "cut on an undelivered notice"
    delivered = issued + timedelta(days=5, hours=1)  # Sat 21 Nov 11:00 CST
    with store.tx() as conn:
        notices.confirm_delivery(conn, "a1", notices.notice_id("a1", issued), "letter", delivered, delivered,
                                 actor="test:hq")
        engine.evaluate_account(conn, "a1", delivered)
    store.close()

    store, engine = _engine_on_disk(db, {})  # a restart: everything comes from the database
    row = store.one("SELECT notice_served_at, notice_delivered_at, notice_channel, earliest_cut_at FROM accounts")
    assert row is not None
    assert (parse_iso(row[0]), parse_iso(row[1]), row[2]) == (issued, delivered, "letter")
    assert parse_iso(row[3]) == datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Tue 11:00 CST, 3 days on
    with store.tx() as conn:
        early = engine.evaluate_meter(conn, "m1", datetime(2026, 11, 24, 2, 0, tzinfo=UTC))
    assert early.kinds() == ()
    with store.tx() as conn:
        engine.evaluate_meter(conn, "m1", datetime(2026, 11, 24, 2, 30, tzinfo=UTC))  # the reminder
        cut = engine.evaluate_meter(conn, "m1", datetime(2026, 11, 24, 3, 0, tzinfo=UTC))
    assert [a.kind.value for a in cut.actions] == ["disconnect"]
    store.close()


def test_meter_display_delivery_and_stale_notice_through_the_store(tmp_path: Path) -> None:
    store, engine = _engine_on_disk(tmp_path / "pmg.db", {"notice": {"delivery": "meter_display"}})
    issued = datetime(2026, 11, 18, 2, 0, tzinfo=UTC)  # Wed 10:00 CST
    storm = issued + timedelta(days=11)
    with store.tx() as conn:
        conn.execute(
            "INSERT INTO holds(id, kind, reason, actor, starts_at, expires_at) VALUES "
            "('h1', 'weather', 'storm', 'ho', ?, ?)",
            (iso(issued), iso(storm)),
        )
        engine.evaluate_meter(conn, "m1", issued)
    row = store.one("SELECT notice_delivered_at, notice_channel FROM accounts")
    assert row is not None and (parse_iso(row[0]), row[1]) == (issued, "meter_display")
    lapse = issued + timedelta(days=7)
    with store.tx() as conn:
        d = engine.evaluate_meter(conn, "m1", lapse)
    assert [a.kind.value for a in d.actions] == ["notice_lapsed", "serve_notice"]
    row = store.one("SELECT notice_served_at, notice_delivered_at, notice_channel FROM accounts")
    assert row is not None and parse_iso(row[0]) == lapse and parse_iso(row[1]) == lapse
    assert store.scalar("SELECT severity FROM events WHERE kind = 'policy_notice_lapsed'") == "warning"
    assert store.scalar("SELECT COUNT(*) FROM relay_commands") == 0
    store.close()
