"""The daemon's clock check on a DLMS bus: a meter whose clock is off is SET (class 8, attribute 2),
read again and audited, only while the gateway's time is trusted; a second check finds nothing."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from support.gateway_harness import base_config, write_config

from gateway.config import load_config
from gateway.runtime import clocksync
from gateway.runtime.daemon import Gateway
from simulators.dlms_meter import DlmsMeterModel, DlmsTcpServer

DRIFT_S = 300.0


def test_a_drifted_dlms_clock_is_set(tmp_path: Path) -> None:
    model = DlmsMeterModel(power_w=Decimal(500), clock_offset=timedelta(seconds=DRIFT_S))
    server = DlmsTcpServer(model).start()
    try:
        body = base_config(tmp_path / "pmg.db") + f"""
[[buses]]
id = "d1"
protocol = "dlms"
url = "{server.url}"
poll_interval_s = 3600

[[meters]]
id = "m1"
bus = "d1"
address = "1"
account = "a1"
tariff = "flat-cn"
"""
        cfg = write_config(tmp_path / "gw.toml", body)

        async def scenario() -> None:
            gw = Gateway(cfg, load_config(cfg))
            await gw.start()
            try:
                (result,) = await clocksync.run(gw)
                assert result.broadcast and abs(result.drift_s["m1"] - DRIFT_S) < 5
                assert abs(result.after_s["m1"]) < 5, "the clock set did not correct the meter"
                assert abs(model.clock_offset.total_seconds()) < 5
                kinds = [r[0] for r in gw.store.all("SELECT kind FROM events WHERE kind IN ('meter_clock_drift', 'time_broadcast')")]
                assert kinds == ["meter_clock_drift", "time_broadcast"]
                (again,) = await clocksync.run(gw)
                assert not again.broadcast
            finally:
                await gw.stop()

        asyncio.run(scenario())
    finally:
        server.stop()
