"""The simulated DL/T 645 bus: model behaviour seen through the wire, timing, faults, many meters, cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal

import pytest
from support.dlt645_fixtures import ManualClock, run_async, sim_bus  # noqa: F401  (fixture)

from drivers.base import BadFrame, Point, Quality
from drivers.dlt645 import Dlt645Link, Dlt645Meter, read_address
from drivers.dlt645 import di as dis
from drivers.dlt645.frame import Frame, Function
from simulators.dlt645 import SimulatedDlt645Bus, make_models
from simulators.dlt645.responder import respond
from simulators.model import Fault

CST_OFFSET_S = 8 * 3600


def fast_link(url: str, **kw: object) -> Dlt645Link:
    opts: dict[str, object] = {"timeout_s": 0.3, "retries": 1, "backoff_s": 0.0, "inter_frame_gap_s": 0.0}
    opts.update(kw)
    return Dlt645Link(url, **opts)  # type: ignore[arg-type]


def test_make_models_addresses_and_duplicates() -> None:
    models = make_models(3, start_address=161, power_w=750)
    assert [m.address for m in models] == ["000000000161", "000000000162", "000000000163"]
    assert models[0].profile.power_w(0) == 750
    with pytest.raises(ValueError, match="duplicate"):
        SimulatedDlt645Bus(models + make_models(1, start_address=161))


@run_async
async def test_per_tariff_registers_follow_local_time_of_day(sim_bus) -> None:  # noqa: F811
    clock = ManualClock()  # 20:00 UTC = 04:00 local (UTC+8): tariff T3 (valley)
    models = make_models(1, clock=clock, power_w=1000)
    models[0].energy_import_wh  # noqa: B018
    clock.advance(3600)  # 04:00-05:00 local: T3
    clock.t += (9 - 5) * 3600  # jump to 09:00 local with the meter clock running (energy accrues in T3/T2)
    async with fast_link(sim_bus(models).start_pty()) as link:
        r1 = await Dlt645Meter(link, models[0].address).read(
            [Point.ENERGY_IMPORT_TARIFFS, Point.ENERGY_IMPORT]
        )
        clock.advance(3600)  # 09:00-10:00 local: T1 (peak)
        r2 = await Dlt645Meter(link, models[0].address).read(
            [Point.ENERGY_IMPORT_TARIFFS, Point.ENERGY_IMPORT]
        )
    assert r1.energy_import_tariffs_wh == (0, 1000, 4000, 0)  # 08:00-09:00 is T2 in the default layout
    assert r2.energy_import_tariffs_wh == (1000, 1000, 4000, 0)
    assert r2.energy_import_wh == 6000


@run_async
async def test_register_rolls_over_at_999999_99_kwh_and_can_be_reset(sim_bus) -> None:  # noqa: F811
    clock = ManualClock()
    models = make_models(1, clock=clock, power_w=1000)
    models[0].rollover_to(999_999_500)
    async with fast_link(sim_bus(models).start_pty()) as link:
        m = Dlt645Meter(link, models[0].address)
        assert (await m.read()).energy_import_wh == 999_999_500
        clock.advance(3600)
        assert (await m.read()).energy_import_wh == 500  # 999,999.50 + 1 kWh wraps to 0.50
        models[0].rollover_to(0)
        assert (await m.read()).energy_import_wh == 0


@run_async
async def test_clock_drift_shows_in_meter_time(sim_bus) -> None:  # noqa: F811
    clock = ManualClock()
    models = make_models(1, clock=clock)
    models[0].clock_drift_s = 125
    async with fast_link(sim_bus(models).start_pty()) as link:
        r = await Dlt645Meter(link, models[0].address).read([Point.METER_TIME])
    assert r.meter_time is not None
    expected = time.gmtime(clock() + CST_OFFSET_S + 125)
    assert (r.meter_time.hour, r.meter_time.minute, r.meter_time.second) == expected[3:6]


@pytest.mark.parametrize("baud", [2400, 9600])
@run_async
async def test_byte_timing_is_emulated(sim_bus, baud: int) -> None:  # noqa: F811
    bus = sim_bus(make_models(1), baud=baud, emulate_timing=True, response_delay_s=0.02)
    async with fast_link(bus.start_pty(), baud=baud, timeout_s=1.0) as link:
        m = Dlt645Meter(link, "000000000001")
        await m.read([Point.ENERGY_IMPORT])
        t0 = time.monotonic()
        for _ in range(3):
            await m.read([Point.ENERGY_IMPORT])
        per_read = (time.monotonic() - t0) / 3
    wire = (20 + 20) * 11 / baud + 0.02  # 4 FE + 16-byte request, 20-byte reply, 8E1
    assert wire * 0.97 <= per_read <= wire + 0.03


@run_async
async def test_twenty_meters_three_faulty_healthy_read_every_cycle(sim_bus) -> None:  # noqa: F811
    models = make_models(20)
    faulty = {
        models[3].address: Fault.NO_ANSWER,
        models[9].address: Fault.BAD_CHECKSUM,
        models[15].address: Fault.ABNORMAL_REPLY,
    }
    for m in models:
        if m.address in faulty:
            m.faults.add(faulty[m.address])
    expected = {
        Fault.NO_ANSWER: Quality.TIMEOUT,
        Fault.BAD_CHECKSUM: Quality.BAD_FRAME,
        Fault.ABNORMAL_REPLY: Quality.REFUSED,
    }
    bus = sim_bus(models, baud=9600, response_delay_s=0.002)
    async with fast_link(f"socket://127.0.0.1:{bus.start_tcp()}", timeout_s=0.1, retries=1) as link:
        meters = [Dlt645Meter(link, m.address) for m in models]
        for _cycle in range(3):
            readings = [await m.read() for m in meters]
            healthy = [r for r in readings if r.address not in faulty]
            assert len(healthy) == 17 and all(r.quality is Quality.OK for r in healthy)
            for r in readings:
                if r.address in faulty:
                    assert r.quality is expected[faulty[r.address]] and r.energy_import_wh is None
        models[3].faults.clear()  # faults switch at run time: the meter recovers
        assert (await meters[3].read()).quality is Quality.OK


@run_async
async def test_wildcard_read_address_collides_on_a_shared_bus(sim_bus) -> None:  # noqa: F811
    bus = sim_bus(make_models(2))
    async with fast_link(bus.start_pty(), timeout_s=0.1, retries=0) as link:
        with pytest.raises(BadFrame):
            await read_address(link)


def test_responder_answers_unknown_di_and_function_with_abnormal_replies() -> None:
    model = make_models(1)[0]
    nothing = respond(model, Frame(model.address, Function.READ, (0x12345678).to_bytes(4, "little")))
    assert nothing[0].is_abnormal and nothing[0].data == b"\x02"
    unsupported = respond(model, Frame(model.address, Function.CHANGE_BAUD, b"\x08"))
    assert unsupported[0].is_abnormal and unsupported[0].data == b"\x01"
    short = respond(model, Frame(model.address, Function.READ, b"\x00"))
    assert short[0].is_abnormal
    reply = respond(model, Frame(model.address, Function.READ, dis.di_bytes(dis.VOLTAGE_A)))[0]
    assert dis.lookup(dis.VOLTAGE_A).decode(reply.data[4:]) == Decimal("220.0")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@run_async
async def test_stop_leaves_no_threads_or_fds() -> None:
    fds = _open_fds()
    bus = SimulatedDlt645Bus(make_models(2), emulate_timing=False, response_delay_s=0)
    path = bus.start_pty()
    port = bus.start_tcp()
    for url in (path, f"socket://127.0.0.1:{port}"):
        async with fast_link(url) as link:
            assert (await Dlt645Meter(link, "000000000002").read()).quality is Quality.OK
    bus.stop()
    bus.stop()
    assert not [t for t in threading.enumerate() if t.name == "dlt645-sim-bus"]
    assert _open_fds() == fds


def test_cli_serves_on_tcp_until_sigint() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.dlt645", "--meters", "3", "--tcp", "0", "--no-timing"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        second = proc.stdout.readline()
        assert first.startswith("serving 3 DL/T 645 meters on socket://127.0.0.1:")
        assert second.split() == ["addresses:", "000000000001", "000000000002", "000000000003"]
        url = first.split()[-1]

        async def read() -> Quality:
            async with fast_link(url) as link:
                return (await Dlt645Meter(link, "000000000003").read()).quality

        import asyncio

        assert asyncio.run(read()) is Quality.OK
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
