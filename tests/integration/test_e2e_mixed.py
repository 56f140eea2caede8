"""Acceptance: a DL/T 645 bus, a Modbus RTU bus and a Modbus TCP meter, polled by one daemon and billed
the same way (each meter's charges equal its register delta × price, to the minor unit)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

from support.gateway_harness import base_config, write_config
from support.waiting import async_wait_for

from drivers.modbus.profile import load_profile
from gateway.config import load_config
from gateway.core.money import to_minor
from gateway.core.timeutil import ScaledClock
from gateway.ledger.verify import verify
from gateway.runtime.daemon import Gateway
from simulators.dlt645 import SimulatedDlt645Bus
from simulators.modbus import SimulatedModbusBus
from simulators.model import FastClock, LoadProfile, MeterModel

SPEED = 600.0
PRICE = Decimal("0.5283")


def test_three_kinds_of_meter_are_billed_alike(tmp_path: Path) -> None:
    clock = ScaledClock(SPEED)
    sim_clock = FastClock(SPEED, start=clock.epoch())
    dlt_model = MeterModel("000000000001", clock=sim_clock, profile=LoadProfile((1200,)))
    rtu_model = MeterModel("1", clock=sim_clock, profile=LoadProfile((800,)))
    tcp_model = MeterModel("5", clock=sim_clock, profile=LoadProfile((2000,)))
    dlt = SimulatedDlt645Bus([dlt_model], baud=9600, response_delay_s=0.005)
    rtu = SimulatedModbusBus({1: (rtu_model, load_profile("dds238"))})
    tcp = SimulatedModbusBus({5: (tcp_model, load_profile("sdm120"))})
    try:
        dlt_port, rtu_port, tcp_port = dlt.start_pty(), rtu.start_pty(), tcp.start_tcp()
        body = (
            base_config(tmp_path / "pmg.db")
            + f"""
[[buses]]
id = "dlt"
protocol = "dlt645"
url = "{dlt_port}"
baud = 9600
poll_interval_s = 0.3

[[buses]]
id = "rtu"
protocol = "modbus"
url = "{rtu_port}"
baud = 9600
parity = "N"
poll_interval_s = 0.3

[[buses]]
id = "lan"
protocol = "modbus"
url = "tcp://127.0.0.1:{tcp_port}"
poll_interval_s = 0.3

[[meters]]
id = "m-dlt"
bus = "dlt"
address = "000000000001"
account = "a1"
tariff = "flat-cn"

[[meters]]
id = "m-rtu"
bus = "rtu"
address = "1"
profile = "dds238"
account = "a2"
tariff = "flat-cn"

[[meters]]
id = "m-tcp"
bus = "lan"
address = "5"
profile = "sdm120"
account = "a3"
tariff = "flat-cn"
"""
        )
        cfg_path = write_config(tmp_path / "gw.toml", body)

        async def scenario() -> None:
            gateway = Gateway(cfg_path, load_config(cfg_path), clock=clock)
            await gateway.start()
            try:
                for account in ("a1", "a2", "a3"):
                    gateway.apply_payment(f"p-{account}", account, 100_000, source="test")
                store = gateway.store
                await async_wait_for(
                    lambda: (
                        store.scalar(
                            "SELECT COUNT(DISTINCT meter_id) FROM readings WHERE outcome = 'charged' AND delta_wh > 0"
                        )
                        == 3
                    ),
                    timeout=30,
                    what="every meter charged at least once",
                )
            finally:
                await gateway.stop()

        asyncio.run(scenario())
    finally:
        dlt.stop()
        rtu.stop()
        tcp.stop()

    from gateway.store import open_store

    store = open_store(tmp_path / "pmg.db")
    try:
        assert verify(store) == []
        for meter in ("m-dlt", "m-rtu", "m-tcp"):
            first = store.scalar(
                "SELECT register_wh FROM readings WHERE meter_id = ? AND outcome = 'baseline'", meter
            )
            last = store.scalar("SELECT last_register_wh FROM meters WHERE id = ?", meter)
            charged_wh = store.scalar(
                "SELECT SUM(energy_wh) FROM entries WHERE meter_id = ? AND kind = 'charge'", meter
            )
            charged = -store.scalar(
                "SELECT SUM(amount_minor) FROM entries WHERE meter_id = ? AND kind = 'charge'", meter
            )
            assert charged_wh == last - first > 0, meter
            assert charged == to_minor(Decimal(last - first) * PRICE / 1000), meter
            relay = store.scalar("SELECT relay FROM meters WHERE id = ?", meter)
            assert relay == ("closed" if meter != "m-tcp" else None), f"{meter} relay read-back {relay}"
    finally:
        store.close()
