"""Modbus links that drop come back on the link's own backoff: a Modbus TCP gateway that restarts
and an RTU adapter that is unplugged and plugged back (docs/operations.md, "Links that drop").

The simulated bus (pymodbus's server) is stopped and started again on the same port or, for RTU, on
a new pty that the device symlink is re-pointed to.  The backoff's clock is a manual one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from support.modbus_fixtures import ManualClock, profile, run, sim_bus  # noqa: F401  (fixture)

from drivers.base import Quality
from drivers.modbus import ModbusLink, ModbusMeter
from drivers.modbus.link import LinkError
from simulators.model import LoadProfile, MeterModel


class Mono:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def model(wh: int) -> MeterModel:
    return MeterModel("sim", clock=ManualClock(), profile=LoadProfile((500,)), energy_import_mwh=wh * 1000)


def test_tcp_link_backs_off_while_the_gateway_is_down_and_reopens_when_it_returns(sim_bus) -> None:  # noqa: F811
    first = sim_bus({1: (model(100), profile("dds238"))})
    port = first.start_tcp()
    mono = Mono()

    async def scenario() -> None:
        link = ModbusLink(f"tcp://127.0.0.1:{port}", timeout_s=0.3, retries=0, monotonic=mono, rng=random.Random(2))
        await link.open()
        try:
            meter = ModbusMeter(link, 1, profile("dds238"))
            assert (await meter.read()).energy_import_wh == 100
            first.stop()  # the TCP-to-RS-485 gateway restarts
            # The loss shows as a timeout or a refused send, depending on when pymodbus notices it;
            # either way the connection is dropped, reopened at once (it had worked) and, the
            # gateway being away, the backoff starts at its first step.
            for _ in range(3):
                assert (await meter.read()).quality is not Quality.OK
                if link.backoff.failures:
                    break
            assert link.down and link.backoff.failures == 1 and link.stats.link_errors == 2
            assert 0.5 <= link.backoff.wait_s() <= 1.0
            with pytest.raises(LinkError, match="next reopen in"):  # the step runs: no knocking
                await link.read_registers(1, 3, 0, 1)
            assert link.stats.link_errors == 2
            for _ in range(3):  # still away: each due attempt fails and the step doubles
                mono.t += link.backoff.wait_s()
                assert (await meter.read()).quality is not Quality.OK
            assert link.backoff.failures == 4 and link.stats.link_errors == 5
            assert 4.0 <= link.backoff.wait_s() <= 8.0

            sim_bus({1: (model(200), profile("dds238"))}).start_tcp(port=port)
            mono.t += link.backoff.wait_s()
            back = await meter.read()
            assert back.quality is Quality.OK and back.energy_import_wh == 200
            assert not link.down and link.stats.reopens == 1 and link.backoff.failures == 0
        finally:
            await link.close()

    run(scenario())


def test_rtu_link_reopens_when_the_adapter_comes_back(sim_bus, tmp_path: Path) -> None:  # noqa: F811
    first = sim_bus({3: (model(300), profile("dds238"))})
    device = tmp_path / "ttyModbus"
    os.symlink(first.start_pty(), device)
    mono = Mono()

    async def scenario() -> None:
        link = ModbusLink(str(device), timeout_s=0.3, retries=0, monotonic=mono, rng=random.Random(2))
        await link.open()
        try:
            meter = ModbusMeter(link, 3, profile("dds238"))
            assert (await meter.read()).energy_import_wh == 300
            first.stop()  # unplugged
            failed = await meter.read()
            assert failed.quality is not Quality.OK
            tmp = tmp_path / "ttyModbus.new"
            os.symlink(sim_bus({3: (model(400), profile("dds238"))}).start_pty(), tmp)
            os.replace(tmp, device)  # plugged back: udev points the by-id name at the new tty
            for _ in range(5):  # the hang-up may be noticed on this request or the next
                mono.t += 120.0
                back = await meter.read()
                if back.quality is Quality.OK:
                    break
            assert back.quality is Quality.OK and back.energy_import_wh == 400
            assert link.stats.reopens == 1 and link.stats.link_errors >= 1
        finally:
            await link.close()

    run(scenario())
