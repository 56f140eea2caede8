"""A wall clock that lies, through the real daemon and ledger (docs/enforcement.md, "Untrusted time").

Each gateway gets an injected wall clock and monotonic clock the test moves by hand; its bus cannot
open (``offline_config``), so only the readings and reviews the test hands over reach the ledger
and the policy.  The defects these reproduce:
- a wall clock one day fast cut a household long before its notice expired;
- a clock an hour slow made every reading fail with a traceback (the interval ran backwards);
- a standing charge was posted for a day that had not ended.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.gateway_harness import TARIFFS, base_config, write_config
from support.ledger_books import TEST_TARIFFS
from support.signed_commands import keys_toml, signed
from support.waiting import async_wait_for

from drivers.base import Quality, Reading, RelayState
from gateway.cli.main import cli
from gateway.config import load_config
from gateway.core.timeutil import parse_iso
from gateway.ledger import settlement
from gateway.ledger.verify import verify
from gateway.runtime import clocksync
from gateway.runtime.daemon import Gateway
from gateway.runtime.status import collect
from gateway.sync.commands.processor import CommandProcessor
from simulators.dlt645 import SimulatedDlt645Bus
from simulators.model import LoadProfile, MeterModel

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai
NOTICE_POLICY = """
[policy]
preset = "generic"
[policy.overrides.notice]
required = true
period = "PT24H"
reminder_before = "PT0S"
delivery = "meter_display"  # served as the meter shows it: no head office in these tests
[policy.overrides.windows]
hours = []
weekends = false
public_holidays = false
"""


class HandClocks:
    """The gateway's wall clock and the monotonic clock beside it, moved by the test."""

    def __init__(self, start: datetime) -> None:
        self.wall_at = start
        self.mono_s = 1000.0

    def wall(self) -> datetime:
        return self.wall_at

    def mono(self) -> float:
        return self.mono_s

    def elapse(self, delta: timedelta) -> None:
        """Real time passes: both clocks move."""
        self.wall_at += delta
        self.mono_s += delta.total_seconds()

    def step(self, delta: timedelta) -> None:
        """Someone sets the wall clock: only it moves."""
        self.wall_at += delta


def _gateway(tmp_path: Path, clocks: HandClocks, *, tariff: str = "flat-cn") -> Gateway:
    tariffs = tmp_path / "tariffs"  # the shipped tariffs and the ledger tests' standing-charge one
    tariffs.mkdir()
    for f in TARIFFS.glob("*.toml"):
        shutil.copy(f, tariffs / f.name)
    for name, text in TEST_TARIFFS.items():
        (tariffs / f"{name}.toml").write_text(text)
    body = (
        f'gateway_id = "gw-test"\ntimezone = "Asia/Shanghai"\ndatabase = "{tmp_path / "pmg.db"}"\n'
        f'currency = "CNY"\ntariff_dir = "{tariffs}"\n{NOTICE_POLICY}\n'
        f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "{tmp_path / "no-such-port"}"\n'
        f'\n[[meters]]\nid = "m0"\nbus = "b1"\naddress = "000000000001"\naccount = "a0"\ntariff = "{tariff}"\n'
    )
    cfg_path = write_config(tmp_path / "gw.toml", body)
    gateway = Gateway(cfg_path, load_config(cfg_path), clock=clocks.wall)
    gateway.time_monotonic = clocks.mono
    return gateway


def _read(gateway: Gateway, clocks: HandClocks, register_wh: int) -> None:
    """One reading of m0 at the gateway's wall time, charged as the daemon charges a batch."""
    reading = Reading(
        "000000000001", clocks.wall(), Quality.OK, energy_import_wh=register_wh, relay=RelayState.CLOSED
    )
    gateway._on_reading("m0", reading, 0.01)
    gateway._flush_readings()


def _kinds(gateway: Gateway, kind: str) -> int:
    return int(gateway.store.scalar("SELECT COUNT(*) FROM events WHERE kind = ?", kind))


def test_a_clock_a_day_fast_cuts_no_one_before_the_notice_expires(tmp_path: Path) -> None:
    clocks = HandClocks(T0)
    gateway = _gateway(tmp_path, clocks)

    async def scenario() -> None:
        await gateway.start()
        store = gateway.store
        try:
            _read(gateway, clocks, 1000)  # baseline; no credit: notice served now, cut not before T0 + 24 h
            assert store.scalar("SELECT notice_served_at FROM accounts WHERE id = 'a0'") is not None
            clocks.elapse(timedelta(hours=5))
            await gateway.review_policy()
            clocks.step(timedelta(days=1))  # the wall clock says T0 + 29 h: the notice "expired"
            await gateway.review_policy()
            _read(gateway, clocks, 1010)
            trips = store.all("SELECT status, created_at FROM relay_commands WHERE action = 'trip'")
            assert [dict(t) for t in trips] == [], "a trip 19 h before the notice lawfully expired"
            blocked = [
                json.loads(r[0])
                for r in store.all("SELECT detail_json FROM events WHERE kind = 'policy_blocked' ORDER BY id")
            ]
            failed_rules = {c["rule"] for b in blocked for c in b["trace"] if not c["passed"]}
            assert "hold.time_untrusted" in failed_rules
            assert _kinds(gateway, "time_untrusted") == 1
            ro = collect(store, clocks.wall())
            assert ro["time"]["trusted"] is False and "step" in ro["time"]["reasons"]
            shown = CliRunner().invoke(cli, ["status", "-c", str(gateway.config_path)], prog_name="pmg")
            assert shown.exit_code == 1 and "time: UNTRUSTED since" in shown.output, shown.output

            clocks.elapse(timedelta(minutes=31))
            clocks.step(-timedelta(days=1))  # corrected after 31 minutes
            await gateway.review_policy()
            assert _kinds(gateway, "time_trusted") == 1
            assert _kinds(gateway, "time_untrusted") == 1, "one alarm per episode"
            assert store.scalar("SELECT COUNT(*) FROM relay_commands WHERE action = 'trip'") == 0
            assert collect(store, clocks.wall())["time"]["trusted"] is True

            # The notice runs its true course: at T0 + 24 h the cut is lawful and goes the ordinary way.
            clocks.elapse(timedelta(hours=19))
            await gateway.review_policy()
            trip_at = store.scalar("SELECT created_at FROM relay_commands WHERE action = 'trip'")
            assert trip_at is not None and trip_at >= "2026-03-03T02:00:00"
        finally:
            await gateway.stop()

    asyncio.run(scenario())


def test_a_trip_queued_on_a_stepped_clock_is_withdrawn_when_the_episode_starts(tmp_path: Path) -> None:
    clocks = HandClocks(T0)
    gateway = _gateway(tmp_path, clocks)

    async def scenario() -> None:
        await gateway.start()
        assert gateway.enforcer is not None
        gateway.enforcer.stop()  # the queued frame stays queued: the test watches what becomes of it
        store = gateway.store
        try:
            _read(gateway, clocks, 1000)
            clocks.step(timedelta(days=1))
            # A decision made before anything looked at the clocks (a relay outcome, a command):
            with store.tx() as conn:
                gateway.parts.policy.evaluate_meter(conn, "m0", clocks.wall())
            assert store.scalar("SELECT status FROM relay_commands WHERE action = 'trip'") == "pending"
            await async_wait_for(
                lambda: (
                    store.scalar("SELECT status FROM relay_commands WHERE action = 'trip'") == "cancelled"
                ),
                timeout=10,
                what="the stepped trip withdrawn",
            )
            assert _kinds(gateway, "time_untrusted") == 1
        finally:
            await gateway.stop()

    asyncio.run(scenario())


def test_a_clock_an_hour_slow_charges_every_kwh_once_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clocks = HandClocks(T0)
    gateway = _gateway(tmp_path, clocks)

    async def scenario() -> None:
        await gateway.start()
        store = gateway.store
        try:
            gateway.apply_payment("p1", "a0", 100_000, source="test")
            _read(gateway, clocks, 1000)
            clocks.elapse(timedelta(minutes=10))
            _read(gateway, clocks, 1100)
            clocks.step(-timedelta(hours=1))
            for wh in (1200, 1300, 1450):
                clocks.elapse(timedelta(minutes=1))
                _read(gateway, clocks, wh)
            clocks.step(timedelta(hours=1))  # corrected
            clocks.elapse(timedelta(minutes=1))
            _read(gateway, clocks, 1500)
            outcomes = [r[0] for r in store.all("SELECT outcome FROM readings ORDER BY id")]
            assert outcomes == ["baseline"] + ["charged"] * 5
            charged = store.scalar("SELECT SUM(energy_wh) FROM entries WHERE kind = 'charge'")
            assert charged == 500, "every Wh of the register's movement charged once"
            periods = [
                (parse_iso(r[0]), parse_iso(r[1]))
                for r in store.all(
                    "SELECT period_start, period_end FROM entries WHERE kind = 'charge' ORDER BY id"
                )
            ]
            for prev, cur in pairwise(periods):
                assert prev[1] <= cur[0], f"intervals overlap: {prev} then {cur}"
            assert all(p[0] < p[1] for p in periods), "an interval ran backwards"
            taken = [parse_iso(r[0]) for r in store.all("SELECT taken_at FROM readings ORDER BY id")]
            assert taken == sorted(taken)
            assert verify(store) == []
        finally:
            await gateway.stop()

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    assert not [r for r in caplog.records if "could not be recorded" in r.getMessage()]


def test_no_standing_charge_for_a_day_the_monotonic_clock_says_has_not_ended(tmp_path: Path) -> None:
    clocks = HandClocks(T0)
    gateway = _gateway(tmp_path, clocks, tariff="standing-cn")

    async def scenario() -> None:
        await gateway.start()
        store = gateway.store

        def standing() -> list[str]:
            rows = store.all("SELECT external_id FROM entries WHERE kind = 'standing_charge' ORDER BY id")
            return [r[0] for r in rows]

        try:
            await settlement.run(gateway)
            assert standing() == []
            clocks.step(timedelta(days=1))  # the wall clock says Tuesday 10:00: Monday "ended"
            await settlement.run(gateway)
            assert standing() == [], "a standing charge for Monday, which had not ended"
            clocks.elapse(timedelta(hours=15))  # true time: Tuesday 01:00 local; Monday has ended
            await settlement.run(gateway)
            assert standing() == ["a0/2026-03-02"]
        finally:
            await gateway.stop()

    asyncio.run(scenario())


class OffsetClock:
    """The system clock plus an offset the test sets (the meters keep true time)."""

    def __init__(self, offset: timedelta) -> None:
        self.offset = offset

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def test_a_gateway_a_day_fast_broadcasts_no_time_to_meters_that_agree_with_each_other(tmp_path: Path) -> None:
    models = [MeterModel(f"00000000000{i}", profile=LoadProfile((500,))) for i in (1, 2, 3)]
    sim = SimulatedDlt645Bus(models, baud=9600, response_delay_s=0.002, emulate_timing=False)
    port = sim.start_pty()
    clock = OffsetClock(timedelta(days=1))  # wrong from the start: no step to see, only the meters
    body = base_config(tmp_path / "pmg.db") + (
        "\n[housekeeping]\nclock_max_drift_s = 30\n"
        f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "{port}"\nbaud = 9600\npoll_interval_s = 3600\n'
        + "".join(
            f'\n[[meters]]\nid = "m{i}"\nbus = "b1"\naddress = "00000000000{i}"\naccount = "a{i}"\n'
            'tariff = "flat-cn"\n'
            for i in (1, 2, 3)
        )
    )
    cfg_path = write_config(tmp_path / "gw.toml", body)

    async def scenario() -> None:
        gw = Gateway(cfg_path, load_config(cfg_path), clock=clock)
        gw.time_monotonic = time.monotonic
        await gw.start()
        try:
            store = gw.store
            results = await clocksync.run(gw)
            assert len(results) == 1 and not results[0].broadcast, "the gateway's wrong time was broadcast"
            assert all(abs(d + 86400) < 5 for d in results[0].drift_s.values())
            assert all(abs(m.clock_drift_s) < 5 for m in models), "the meters' clocks were set wrong"
            assert _kinds(gw, "time_untrusted") == 1 and _kinds(gw, "time_broadcast") == 0
            assert _kinds(gw, "time_broadcast_withheld") == 1
            assert "meters" in collect(store, clock())["time"]["reasons"]

            clock.offset = timedelta()  # corrected: a step the monotonic clock cannot vouch for ...
            assert not gw.timetrust or not gw.timetrust.trusted
            again = await clocksync.run(gw)  # ... but the meters, agreeing with the new time, do
            assert not again[0].broadcast and all(abs(d) < 5 for d in again[0].drift_s.values())
            assert _kinds(gw, "time_trusted") == 1
            assert collect(store, clock())["time"]["trusted"] is True
        finally:
            await gw.stop()

    try:
        asyncio.run(scenario())
    finally:
        sim.stop()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_signed_command_issued_in_our_future_makes_time_untrusted(tmp_path: Path) -> None:
    clocks = HandClocks(T0)
    body = (
        base_config(tmp_path / "pmg.db", mqtt_port=_closed_port())
        + keys_toml()
        + f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "{tmp_path / "no-such-port"}"\n'
        + '\n[[meters]]\nid = "m0"\nbus = "b1"\naddress = "000000000001"\naccount = "a0"\ntariff = "flat-cn"\n'
    )
    cfg_path = write_config(tmp_path / "gw.toml", body)
    gateway = Gateway(cfg_path, load_config(cfg_path), clock=clocks.wall)
    gateway.time_monotonic = clocks.mono

    async def scenario() -> None:
        await gateway.start()
        try:
            processor = CommandProcessor(gateway)
            # Head office signs at true time, which is a day after what our (slow) clock says.
            ack = await processor.handle("ping", json.dumps(signed("ping", T0 + timedelta(days=1))).encode())
            assert ack["code"] == "not_yet_valid"
            assert _kinds(gateway, "time_untrusted") == 1
            reasons = collect(gateway.store, clocks.wall())["time"]["reasons"]
            assert "commands" in reasons
            # A command signed a minute ago by our clock's reckoning vouches for it again.
            ack = await processor.handle(
                "ping", json.dumps(signed("ping", T0 - timedelta(minutes=1))).encode()
            )
            assert ack["status"] != "rejected"
            assert _kinds(gateway, "time_trusted") == 1
        finally:
            await gateway.stop()

    asyncio.run(scenario())


def test_a_notice_served_on_a_slow_clock_counts_from_when_the_clock_is_right(tmp_path: Path) -> None:
    clocks = HandClocks(T0)
    gateway = _gateway(tmp_path, clocks)

    async def scenario() -> None:
        await gateway.start()
        store = gateway.store
        try:
            gateway.apply_payment("p1", "a0", 10, source="test")  # ¥0.10: runs out below
            _read(gateway, clocks, 1000)
            clocks.elapse(timedelta(minutes=10))
            clocks.step(-timedelta(days=1))  # the clock falls a day behind ...
            await gateway.review_policy()
            clocks.elapse(timedelta(minutes=10))
            _read(gateway, clocks, 1300)  # ... and the credit runs out: notice "served" a day early
            served = store.scalar("SELECT notice_served_at FROM accounts WHERE id = 'a0'")
            assert served is not None and parse_iso(served) < T0
            clocks.elapse(timedelta(minutes=10))
            clocks.step(timedelta(days=1))  # corrected: on main, the notice looked a day old
            await gateway.review_policy()
            _read(gateway, clocks, 1310)
            assert store.scalar("SELECT COUNT(*) FROM relay_commands WHERE action = 'trip'") == 0, (
                "cut at once: the notice's day was counted on the slow clock"
            )
            assert (
                parse_iso(store.scalar("SELECT notice_served_at FROM accounts WHERE id = 'a0'"))
                >= clocks.wall()
            )
            restarted = json.loads(store.scalar("SELECT detail_json FROM events WHERE kind = 'time_trusted'"))
            assert restarted["notices_restarted"] == ["a0"]
            clocks.elapse(timedelta(hours=24))
            await gateway.review_policy()
            assert store.scalar("SELECT COUNT(*) FROM relay_commands WHERE action = 'trip'") == 1
        finally:
            await gateway.stop()

    asyncio.run(scenario())
