"""The daemon with a meter whose energy cannot be priced: recorded and quarantined with one alarm, no
traceback per poll; after a tariff fix (SIGHUP reload) the next reading charges the whole interval."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from support.gateway_harness import base_config, write_config
from support.waiting import async_wait_for

from gateway.config import load_config
from gateway.ledger.verify import verify
from gateway.runtime.daemon import Gateway
from gateway.store.db import open_store
from simulators.dlt645 import SimulatedDlt645Bus, make_models
from simulators.model import FastClock

TARIFF = """id = "home"
currency = "CNY"
minor_digits = 2
[[versions]]
version = 1
effective_from = {start}
timezone = "Asia/Shanghai"
price = "0.5000"
"""


def test_an_unpriceable_meter_is_quarantined_once_and_charged_once_after_the_tariff_is_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tariffs = tmp_path / "tariffs"
    tariffs.mkdir()
    (tariffs / "home.toml").write_text(TARIFF.format(start="2099-01-01T00:00:00+08:00"))  # not yet in force
    models = make_models(1, clock=FastClock(36.0), power_w=500)  # 5 Wh a real second: 18 kW, plausible
    sim = SimulatedDlt645Bus(models, baud=115200, response_delay_s=0.002)
    try:
        url = f"socket://127.0.0.1:{sim.start_tcp()}"
        body = base_config(tmp_path / "pmg.db").replace('tariff_dir = "', f'tariff_dir = "{tariffs}"\n#', 1)
        body += (
            f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "{url}"\nbaud = 115200\n'
            "timeout_s = 0.2\nretries = 0\npoll_interval_s = 0.1\n"
            f'\n[[meters]]\nid = "m0"\nbus = "b1"\naddress = "{models[0].address}"\naccount = "a0"\ntariff = "home"\nkeep_power = true\n'
        )
        cfg_path = write_config(tmp_path / "gw.toml", body)

        async def scenario() -> None:
            gateway = Gateway(cfg_path, load_config(cfg_path))
            await gateway.start()
            store = gateway.store

            def count(sql: str) -> int:
                return int(store.scalar(sql))

            try:
                await async_wait_for(
                    lambda: count("SELECT COUNT(*) FROM readings WHERE outcome = 'ignored'") >= 3,
                    timeout=30,
                    what="readings held for a price",
                )
                assert count("SELECT COUNT(*) FROM readings WHERE outcome = 'quarantined'") == 1
                assert count("SELECT COUNT(*) FROM events WHERE kind = 'reading_quarantined'") == 1
                assert count("SELECT COUNT(*) FROM entries WHERE kind = 'charge'") == 0
                assert store.scalar("SELECT quarantined_reading_id FROM meters") is not None

                (tariffs / "home.toml").write_text(TARIFF.format(start="2020-01-01T00:00:00+08:00"))
                assert await gateway.reload()
                await async_wait_for(
                    lambda: count("SELECT COUNT(*) FROM entries WHERE kind = 'charge' AND energy_wh > 0") >= 2,
                    timeout=30,
                    what="charges after the fix",
                )
                await gateway.stop()
                store = open_store(tmp_path / "pmg.db")  # the stopped daemon's final state
                baseline = count("SELECT register_wh FROM readings WHERE outcome = 'baseline'")
                last = count("SELECT last_register_wh FROM meters")
                charged = count("SELECT SUM(energy_wh) FROM entries WHERE kind = 'charge'")
                assert charged == last - baseline > 0  # every Wh since the baseline, once
                assert store.scalar("SELECT quarantined_reading_id FROM meters") is None
                assert count("SELECT COUNT(*) FROM events WHERE kind = 'reading_quarantine_cleared'") == 1
                assert verify(store) == []
                store.close()
            finally:
                if not gateway.stopping:
                    await gateway.stop()

        with caplog.at_level(logging.WARNING):
            asyncio.run(scenario())
    finally:
        sim.stop()
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a reading that cannot be priced"
    quarantined = [r for r in caplog.records if "reading quarantined" in r.getMessage()]
    assert len(quarantined) == 1 and "no version in force" in quarantined[0].getMessage()
