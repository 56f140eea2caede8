"""Acceptance: one simulated meter on a pty, end to end through the real daemon.

simulated DL/T 645 meter on a pty → daemon → ledger balance falls by exactly energy × price → trip
command reaches the simulator, whose relay opens and whose energy stops growing → usage messages
arrive at a real Mosquitto subscriber.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

from support.broker import Mosquitto
from support.gateway_harness import base_config, subscriber, write_config
from support.waiting import async_wait_for

from gateway.config import load_config
from gateway.core.money import to_minor
from gateway.core.timeutil import ScaledClock
from gateway.ledger.accounts import seed_from_config
from gateway.ledger.payments import apply_payment
from gateway.ledger.verify import verify
from gateway.runtime.daemon import Gateway
from gateway.store import open_store
from simulators.dlt645 import SimulatedDlt645Bus
from simulators.model import FastClock, LoadProfile, MeterModel

SPEED = 3600.0  # one real second is one simulated hour
PRICE = Decimal("0.5283")  # gateway/tariffs/examples/flat-cn.toml


def test_credit_runs_out_trip_reaches_meter_and_usage_reaches_broker(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    gw_clock = ScaledClock(SPEED)
    model = MeterModel(
        "000000000001", clock=FastClock(SPEED, start=gw_clock.epoch()), profile=LoadProfile((1000,))
    )
    sim = SimulatedDlt645Bus([model], baud=9600, response_delay_s=0.005)
    port = sim.start_pty()
    cfg_path = write_config(
        tmp_path / "gw.toml",
        base_config(tmp_path / "pmg.db", mqtt_port=mosquitto.port)
        + f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "{port}"\nbaud = 9600\npoll_interval_s = 0.25\n'
        + '\n[[meters]]\nid = "m1"\nbus = "b1"\naddress = "000000000001"\naccount = "acc1"\ntariff = "flat-cn"\n',
    )
    cfg = load_config(cfg_path)
    # The customer paid before the meter is first polled (a zero-credit account would be cut at once).
    store = open_store(tmp_path / "pmg.db")
    seed_from_config(store, cfg, gw_clock())
    with store.tx() as conn:
        apply_payment(conn, "pay-1", "acc1", 300, gw_clock(), source="test")  # ¥3.00 ≈ 5.7 kWh
    store.close()

    async def scenario() -> None:
        gateway = Gateway(cfg_path, cfg, clock=gw_clock)
        await gateway.start()
        try:
            db = gateway.store
            await async_wait_for(
                lambda: not model.relay_closed, timeout=30, what="relay opened by the gateway"
            )
            await async_wait_for(
                lambda: db.scalar("SELECT COUNT(*) FROM relay_commands WHERE status = 'confirmed'"),
                what="trip confirmed by read-back",
            )
            frozen = model.energy_import_wh
            polls = db.scalar("SELECT COUNT(*) FROM readings")
            await async_wait_for(
                lambda: db.scalar("SELECT COUNT(*) FROM readings") >= polls + 4,
                what="more polls after the trip",
            )
            assert model.energy_import_wh == frozen, "energy kept growing with the relay open"

            baseline = db.scalar("SELECT register_wh FROM readings WHERE outcome = 'baseline'")
            last = db.scalar("SELECT last_register_wh FROM meters WHERE id = 'm1'")
            assert last - baseline > 5000, "credit for about 5.7 kWh was used"
            charged_wh = db.scalar("SELECT SUM(energy_wh) FROM entries WHERE kind = 'charge'")
            assert charged_wh == last - baseline
            expected_charge = to_minor(Decimal(last - baseline) * PRICE / 1000)
            balance = db.scalar("SELECT balance_minor FROM accounts WHERE id = 'acc1'")
            assert balance == 300 - expected_charge
            assert balance <= 0
            assert verify(db) == []
            trace = db.scalar("SELECT trace_json FROM relay_commands WHERE action = 'trip'")
            assert trace and trace != "[]", "a relay action without its rule trace"
        finally:
            await gateway.stop()

    with subscriber(mosquitto.port) as hq:
        try:
            asyncio.run(scenario())
        finally:
            sim.stop()
        usage = hq.of("/meters/m1/usage")
        assert usage, "no usage message reached the broker"
        seqs = [m["seq"] for m in usage]
        assert seqs == sorted(seqs)
        assert sum(m["energy_wh"] for m in usage) == usage[-1]["register_wh"] - usage[0]["register_wh"]
        assert all(m["schema"] == "pmg.usage/1" and m["gateway_id"] == "gw-test" for m in usage)
        status = hq.of("/status")
        assert status and status[-1]["state"] == "offline"
