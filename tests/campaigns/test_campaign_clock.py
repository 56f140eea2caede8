"""Clock campaign: the gateway's wall clock jumps forward and back by hours while it polls and bills.

An in-process gateway gets an injected clock (a fast clock plus an offset the test moves: +3 h, −5 h,
+1 h, …) while its meters keep true time (a Modbus TCP bus of relay meters and a DL/T 645 bus from the
fleet simulator).  After each jump:
- polling goes on (bus intervals run on the monotonic clock);
- nothing is charged twice: per meter, charged energy == movement of the accepted register;
- the jumps make time untrusted (one ``time_untrusted`` alarm per episode, docs/enforcement.md), and the
  corrected clock is trusted again;
- once the clock is corrected, a payment still reconnects its meter (the enforcer's schedule recovers);
and at the end the ledger verifies.

``PMG_CAMPAIGN_N`` sets the number of jumps (CI default 3).
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from support.gateway_harness import FAST_POLICY, base_config, write_config
from support.waiting import async_wait_for

from gateway.config import load_config
from gateway.core.timeutil import ScaledClock
from gateway.ledger.verify import verify
from gateway.runtime.daemon import Gateway
from gateway.store.db import Store
from simulators.fleet import Fleet, gateway_toml, load_fleet
from simulators.model import FastClock

N = int(os.environ.get("PMG_CAMPAIGN_N", "3"))
SPEED = 60.0
JUMPS_H = [3, -5, 1, -2, 7, -9, 4, -1]

FLEET = """
speed = 60.0
[[buses]]
id = "mb"
protocol = "modbus"
profile = "dds238"
meters = 2
load_w = [900]
poll_interval_s = 0.3
timeout_s = 0.3
retries = 0
[[buses]]
id = "dl"
protocol = "dlt645"
baud = 115200
response_delay_ms = 2
meters = 2
load_w = [900]
poll_interval_s = 0.3
timeout_s = 0.3
retries = 0
"""


class JumpClock:
    """The gateway's wall clock: a fast clock plus an offset the campaign moves by hours."""

    def __init__(self, base: ScaledClock) -> None:
        self.base = base
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return self.base() + self.offset

    def monotonic(self) -> float:
        """The base clock's elapsed time: the offset's jumps are steps the gateway must notice."""
        return self.base.monotonic()


def register_movement(store: Store, meter: str) -> tuple[int, int]:
    first = store.scalar(
        "SELECT register_wh FROM readings WHERE meter_id = ? AND outcome = 'baseline' ORDER BY id LIMIT 1", meter
    )
    last = store.scalar("SELECT last_register_wh FROM meters WHERE id = ?", meter)
    charged = store.scalar(
        "SELECT COALESCE(SUM(energy_wh), 0) FROM entries WHERE kind = 'charge' AND meter_id = ?", meter
    )
    return charged, last - first


@pytest.mark.campaign
def test_wall_clock_jumps_charge_nothing_twice_and_schedules_recover(tmp_path: Path) -> None:
    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_text(FLEET)
    cfg = load_fleet(fleet_file)
    base = ScaledClock(SPEED)
    clock = JumpClock(base)
    meters = ["mb-0001", "mb-0002", "dl-0001", "dl-0002"]
    with Fleet(cfg, clock=FastClock(SPEED, start=base.epoch())) as fleet:
        endpoints = fleet.start()
        body = base_config(tmp_path / "pmg.db", policy=FAST_POLICY)
        body += gateway_toml(cfg, endpoints, base_dir=tmp_path, fragment=True)
        cfg_path = write_config(tmp_path / "gw.toml", body)
        relay_meter = fleet.model("mb", "1")

        async def scenario() -> None:
            gateway = Gateway(cfg_path, load_config(cfg_path), clock=clock)
            await gateway.start()
            store = gateway.store

            def readings(meter: str) -> int:
                return int(store.scalar("SELECT COUNT(*) FROM readings WHERE meter_id = ? AND quality = 'ok'", meter))

            try:
                await async_wait_for(lambda: not relay_meter.relay_closed, timeout=20, what="empty account tripped")
                for k in range(N):
                    clock.offset += timedelta(hours=JUMPS_H[k % len(JUMPS_H)])
                    before = {m: readings(m) for m in meters}
                    await async_wait_for(
                        lambda: all(readings(m) >= before[m] + 3 for m in meters),  # noqa: B023
                        timeout=20,
                        what=f"polling after jump {k + 1} ({clock.offset})",
                    )
                    for m in meters:
                        charged, moved = register_movement(store, m)
                        assert charged == moved, f"after jump {k + 1}: {m} charged {charged} Wh of {moved} Wh"
                # The clock is corrected (as NTP would) before the payment: the Modbus driver checks a relay
                # command's deadline against the system clock, not the gateway's injected one (see the report).
                clock.offset = timedelta()

                def episodes(kind: str) -> int:
                    return int(store.scalar("SELECT COUNT(*) FROM events WHERE kind = ?", kind))

                # The jumps were noticed (one alarm per episode), and the corrected clock is believed again.
                await async_wait_for(lambda: episodes("time_trusted") >= 1, timeout=10, what="time trusted again")
                assert 1 <= episodes("time_untrusted") == episodes("time_trusted")
                gateway.apply_payment("after-the-jumps", "A-mb-0001", 1_000_000, source="campaign")
                await async_wait_for(lambda: relay_meter.relay_closed, timeout=20, what="reconnected after jumps")
                assert verify(store) == []
            finally:
                await gateway.stop()

        asyncio.run(scenario())
