"""Acceptance: DL/T 645, Modbus and DLMS meters on their own buses, polled by one daemon, billed alike
by the same ledger (charges = register delta × price, to the minor unit), cut by the same policy when
credit runs out and restored by the same policy when it is paid (relay commands confirmed by read-back
on every protocol).  The DLMS meter is the Gurux peer on the TCP wrapper; the others are the project's
simulators on ptys."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
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
from gateway.store import open_store
from simulators.dlms_meter import CONNECTED, DISCONNECTED, DlmsMeterModel, DlmsTcpServer
from simulators.dlt645 import SimulatedDlt645Bus
from simulators.modbus import SimulatedModbusBus
from simulators.model import FastClock, LoadProfile, MeterModel

SPEED = 600.0
PRICE = Decimal("0.5283")
METERS = ("m-dlt", "m-mb", "m-dlms")


def test_three_protocols_billed_cut_and_restored_alike(tmp_path: Path) -> None:
    clock = ScaledClock(SPEED)
    sim_clock = FastClock(SPEED, start=clock.epoch())
    dlt_model = MeterModel("000000000001", clock=sim_clock, profile=LoadProfile((6000,)))
    mb_model = MeterModel("1", clock=sim_clock, profile=LoadProfile((6000,)))
    dlms_model = DlmsMeterModel(power_w=Decimal(6000), now=lambda: datetime.fromtimestamp(sim_clock(), UTC))
    dlt = SimulatedDlt645Bus([dlt_model], baud=9600, response_delay_s=0.005)
    mb = SimulatedModbusBus({1: (mb_model, load_profile("dds238"))})
    dlms = DlmsTcpServer(dlms_model).start()
    try:
        dlt_port, mb_port = dlt.start_pty(), mb.start_pty()
        body = base_config(tmp_path / "pmg.db") + f"""
[[buses]]
id = "dlt"
protocol = "dlt645"
url = "{dlt_port}"
baud = 9600
poll_interval_s = 0.3

[[buses]]
id = "mb"
protocol = "modbus"
url = "{mb_port}"
baud = 9600
poll_interval_s = 0.3

[[buses]]
id = "dlms"
protocol = "dlms"
url = "{dlms.url}"
poll_interval_s = 0.3

[[meters]]
id = "m-dlt"
bus = "dlt"
address = "000000000001"
account = "a1"
tariff = "flat-cn"

[[meters]]
id = "m-mb"
bus = "mb"
address = "1"
profile = "dds238"
account = "a2"
tariff = "flat-cn"

[[meters]]
id = "m-dlms"
bus = "dlms"
address = "1"
account = "a3"
tariff = "flat-cn"
"""
        cfg_path = write_config(tmp_path / "gw.toml", body)

        def confirmed(store: object, action: str) -> int:
            return int(
                store.scalar(  # type: ignore[attr-defined]
                    "SELECT COUNT(DISTINCT meter_id) FROM relay_commands WHERE action = ? AND status = 'confirmed'",
                    action,
                )
            )

        async def scenario() -> None:
            gateway = Gateway(cfg_path, load_config(cfg_path), clock=clock)
            await gateway.start()
            try:
                store = gateway.store
                for account in ("a1", "a2", "a3"):
                    gateway.apply_payment(f"p1-{account}", account, 100, source="test")  # 1.00: ~1.9 kWh
                await async_wait_for(lambda: confirmed(store, "trip") == 3, timeout=60, what="all three cut")
                assert not dlt_model.relay_closed and dlms_model.control_state == DISCONNECTED
                for account in ("a1", "a2", "a3"):
                    gateway.apply_payment(f"p2-{account}", account, 100_000, source="test")
                await async_wait_for(
                    lambda: confirmed(store, "direct_close") == 3, timeout=60, what="all three restored"
                )
                assert dlt_model.relay_closed and dlms_model.control_state == CONNECTED
                await async_wait_for(
                    lambda: store.scalar(
                        "SELECT COUNT(DISTINCT meter_id) FROM readings WHERE outcome = 'charged' AND delta_wh > 0"
                    ) == 3,
                    timeout=30,
                    what="every meter charged",
                )
                # A reading taken while the close was queued can be committed after the read-back; its
                # older relay state must not undo the read-back (gateway.ledger.charging, STALE_RELAY_S).
                await async_wait_for(
                    lambda: store.scalar("SELECT COUNT(*) FROM meters WHERE relay = 'closed'") == 3,
                    timeout=30,
                    what="every meter stored as closed",
                )
            finally:
                await gateway.stop()

        asyncio.run(scenario())
    finally:
        dlt.stop()
        mb.stop()
        dlms.stop()

    store = open_store(tmp_path / "pmg.db")
    try:
        assert verify(store) == []
        for meter in METERS:
            first = store.scalar("SELECT register_wh FROM readings WHERE meter_id = ? AND outcome = 'baseline'", meter)
            last = store.scalar("SELECT last_register_wh FROM meters WHERE id = ?", meter)
            charged_wh = store.scalar("SELECT SUM(energy_wh) FROM entries WHERE meter_id = ? AND kind = 'charge'", meter)
            charged = -store.scalar("SELECT SUM(amount_minor) FROM entries WHERE meter_id = ? AND kind = 'charge'", meter)
            assert charged_wh == last - first > 0, meter
            assert charged == to_minor(Decimal(last - first) * PRICE / 1000), meter
            assert store.scalar("SELECT relay FROM meters WHERE id = ?", meter) == "closed", meter
    finally:
        store.close()
