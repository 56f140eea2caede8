"""A meter that stops answering is reported once, as an alarm, and its return is reported too."""

from __future__ import annotations

import asyncio
from pathlib import Path

from support.gateway_harness import base_config, write_config
from support.waiting import async_wait_for

from gateway.config import load_config
from gateway.runtime.daemon import UNREACHABLE_AFTER, Gateway
from simulators.dlt645 import SimulatedDlt645Bus, make_models
from simulators.model import Fault


def test_unreachable_meter_alarms_once_and_recovery_is_reported(tmp_path: Path) -> None:
    models = make_models(2)
    sim = SimulatedDlt645Bus(models, baud=115200, response_delay_s=0.002)
    try:
        url = f"socket://127.0.0.1:{sim.start_tcp()}"
        body = base_config(tmp_path / "pmg.db")
        body += (
            f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "{url}"\nbaud = 115200\n'
            "timeout_s = 0.05\nretries = 0\npoll_interval_s = 0.05\n"
        )
        for i, m in enumerate(models):
            body += f'\n[[meters]]\nid = "m{i}"\nbus = "b1"\naddress = "{m.address}"\naccount = "a{i}"\ntariff = "flat-cn"\n'
        cfg_path = write_config(tmp_path / "gw.toml", body)

        async def scenario() -> None:
            gateway = Gateway(cfg_path, load_config(cfg_path))
            await gateway.start()
            store = gateway.store

            def events(kind: str) -> list[str]:
                return [r[0] for r in store.all("SELECT meter_id FROM events WHERE kind = ?", kind)]

            try:
                await async_wait_for(
                    lambda: store.scalar("SELECT COUNT(*) FROM readings") >= 4, what="polling"
                )
                models[1].faults.add(Fault.NO_ANSWER)
                await async_wait_for(lambda: events("meter_unreachable"), timeout=20, what="the alarm")
                failed = store.scalar(
                    "SELECT COUNT(*) FROM readings WHERE meter_id = 'm1' AND outcome = 'failed'"
                )
                await async_wait_for(
                    lambda: (
                        store.scalar(
                            "SELECT COUNT(*) FROM readings WHERE meter_id = 'm1' AND outcome = 'failed'"
                        )
                        >= failed + 2
                    ),
                    timeout=20,
                    what="more failed polls",
                )
                assert events("meter_unreachable") == ["m1"], "one alarm, not one per failed poll"
                assert store.scalar("SELECT severity FROM events WHERE kind = 'meter_unreachable'") == "alarm"
                models[1].faults.discard(Fault.NO_ANSWER)
                await async_wait_for(lambda: events("comms_restored"), timeout=30, what="recovery reported")
                assert events("comms_restored") == ["m1"]
                assert not [m for m in events("meter_unreachable") if m == "m0"]
            finally:
                await gateway.stop()

        asyncio.run(scenario())
    finally:
        sim.stop()
    assert UNREACHABLE_AFTER >= 2
