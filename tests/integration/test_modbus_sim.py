"""The Modbus simulator against the driver, over real TCP sockets and real pseudo-terminals.

Each shipped profile is read from a simulated meter whose registers are computed from the shared
``MeterModel`` (driven by a manual clock, so energy is exact and nothing sleeps), and the faults the
gateway must survive are injected: no answer, exception replies, the wrong unit answering, a
stuck relay.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
from support.modbus_fixtures import PROFILES, ManualClock, profile, run, sim_bus, with_link

from drivers.base import (
    Meter,
    MeterRefused,
    MeterTimeout,
    NotControllable,
    Point,
    Quality,
    Reading,
    RelayAction,
    RelayNotConfirmed,
    RelayState,
)
from drivers.modbus import ModbusLink, ModbusMeter
from drivers.modbus.profile import builtin_dir, load_profile
from drivers.modbus.scan import scan_single_pass as scan
from simulators.model import Fault, LoadProfile, MeterModel

__all__ = ["sim_bus"]

ALL = list(Point)
RESOLUTION_WH = {"dds238": 10, "ddsu666": 1, "sdm120": 1, "sdm630": 1}


def model(clock: ManualClock, wh: int = 123_456, watts: int = 500) -> MeterModel:
    m = MeterModel("sim", clock=clock, profile=LoadProfile((watts,)), energy_import_mwh=wh * 1000)
    m.advance()  # start accumulating from the clock's now
    return m


@pytest.mark.parametrize("name", PROFILES)
def test_profile_against_simulator_energy_keeps_growing(sim_bus, name: str) -> None:
    clock = ManualClock()
    meter_model = model(clock)
    port = sim_bus({5: (meter_model, profile(name))}).start_tcp()

    async def body(link: ModbusLink) -> tuple[Reading, Reading]:
        meter = ModbusMeter(link, 5, profile(name))
        first = await meter.read(ALL)
        clock.advance(3600)  # one hour at 500 W
        return first, await meter.read(ALL)

    first, second = run(with_link(f"tcp://127.0.0.1:{port}", body))
    res = RESOLUTION_WH[name]
    for r in (first, second):
        assert r.quality is Quality.OK, r.error
        assert r.voltage_v is not None and r.voltage_v == 220
        assert r.power_w == 500
    assert first.energy_import_wh is not None and second.energy_import_wh is not None
    assert 0 <= 123_456 - first.energy_import_wh < res
    assert 0 <= 123_956 - second.energy_import_wh < res
    assert abs((second.energy_import_wh - first.energy_import_wh) - 500) <= res


def test_relay_trip_stops_consumption_and_close_restores_it(sim_bus) -> None:
    clock = ManualClock()
    m = model(clock, wh=1000)
    port = sim_bus({1: (m, profile("dds238"))}).start_tcp()

    async def body(link: ModbusLink) -> list[object]:
        meter = ModbusMeter(link, 1, profile("dds238"))
        out: list[object] = [await meter.relay(RelayAction.TRIP)]
        clock.advance(7200)
        out.append((await meter.read()).energy_import_wh)
        out.append(await meter.relay(RelayAction.CLOSE_PERMITTED))
        clock.advance(3600)
        out.append((await meter.read()).energy_import_wh)
        return out

    tripped, energy_while_open, closed, energy_after = run(with_link(f"tcp://127.0.0.1:{port}", body))
    assert tripped is RelayState.OPEN and closed is RelayState.CLOSED
    assert energy_while_open == 1000
    assert energy_after == 1500
    assert m.relay_closed


def test_meter_refuses_relay_write_with_fc06(sim_bus, tmp_path: Path) -> None:
    path = tmp_path / "dds238_fc06.toml"
    path.write_text((builtin_dir() / "dds238.toml").read_text().replace("function = 16", "function = 6"))
    wrong = load_profile(str(path))
    m = model(ManualClock())
    port = sim_bus({1: (m, profile("dds238"))}).start_tcp()  # the simulated meter takes FC16 only

    with pytest.raises(MeterRefused, match=r"FC06 @0x001a: exception 0x01 \(illegal function\)") as err:
        run(with_link(f"tcp://127.0.0.1:{port}", lambda link: ModbusMeter(link, 1, wrong).relay(RelayAction.TRIP)))
    assert err.value.code == 1 and m.relay_closed


def test_meter_without_relay_is_not_controllable(sim_bus) -> None:
    port = sim_bus({1: (model(ManualClock()), profile("sdm120"))}).start_tcp()

    async def body(link: ModbusLink) -> None:
        meter = ModbusMeter(link, 1, profile("sdm120"))
        assert not meter.controllable
        assert await meter.read_relay() is None
        await meter.relay(RelayAction.TRIP)

    with pytest.raises(NotControllable, match=r"unit 1 \(Eastron SDM120\): profile has no relay"):
        run(with_link(f"tcp://127.0.0.1:{port}", body))


def test_actions_modbus_cannot_do_are_not_controllable(sim_bus) -> None:
    port = sim_bus({1: (model(ManualClock()), profile("dds238"))}).start_tcp()
    with pytest.raises(NotControllable, match="keep_power_on is not available over Modbus"):
        run(with_link(f"tcp://127.0.0.1:{port}",
                      lambda link: ModbusMeter(link, 1, profile("dds238")).relay(RelayAction.KEEP_POWER_ON)))


@pytest.mark.parametrize(
    ("fault", "quality", "message"),
    [
        (Fault.NO_ANSWER, Quality.TIMEOUT, "unit 2: FC03 @0x0000: no answer after 1 tries"),
        (Fault.ABNORMAL_REPLY, Quality.REFUSED, "exception 0x04 (device failure)"),
        (Fault.WRONG_UNIT, Quality.BAD_FRAME, "unit 2: FC03 @0x0000: unit 3 answered instead"),
    ],
)
def test_faults_become_qualities_not_numbers(sim_bus, fault: Fault, quality: Quality, message: str) -> None:
    m = model(ManualClock())
    m.faults.add(fault)
    healthy = model(ManualClock(), wh=42)
    bus = sim_bus({2: (m, profile("dds238")), 4: (healthy, profile("dds238"))})
    port = bus.start_tcp()

    async def body(link: ModbusLink) -> tuple[Reading, Reading]:
        bad = await ModbusMeter(link, 2, profile("dds238")).read(ALL)
        return bad, await ModbusMeter(link, 4, profile("dds238")).read(ALL)

    bad, good = run(with_link(f"tcp://127.0.0.1:{port}", body, timeout_s=0.2))
    assert bad.quality is quality and not bad.chargeable
    assert bad.error is not None and message in bad.error
    assert bad.energy_import_wh is None and bad.voltage_v is None
    assert good.quality is Quality.OK and good.energy_import_wh == 40  # the next meter is unharmed


def test_stuck_relay_is_not_confirmed(sim_bus) -> None:
    m = model(ManualClock())
    m.faults.add(Fault.STUCK_RELAY)
    port = sim_bus({1: (m, profile("dds238"))}).start_tcp()
    with pytest.raises(RelayNotConfirmed, match="unit 1: relay reads closed after trip"):
        run(with_link(f"tcp://127.0.0.1:{port}",
                      lambda link: ModbusMeter(link, 1, profile("dds238")).relay(RelayAction.TRIP)))


def test_rtu_over_pty_reads_trips_and_scans(sim_bus) -> None:
    clock = ManualClock()
    meters = {u: (model(clock, wh=1000 * u), profile("dds238")) for u in (1, 2, 5)}
    meters[3] = (model(clock, wh=3000), profile("sdm120"))
    path = sim_bus(meters).start_pty()
    assert path.startswith("/dev/pts/")

    async def body(link: ModbusLink) -> tuple[list[Reading], RelayState | None, list[int], list[tuple[int, bool]]]:
        readings = [await ModbusMeter(link, u, meters[u][1]).read(ALL) for u in (1, 2, 3, 5)]
        tripped = await ModbusMeter(link, 5, profile("dds238")).relay(RelayAction.TRIP)
        seen: list[tuple[int, bool]] = []
        found = await scan(link, range(1, 7), profile("dds238"), lambda u, ok: seen.append((u, ok)))
        return readings, tripped, found, seen

    # 0.6 s, not the 0.2 s a real line needs: on a loaded two-core machine the simulator's thread may
    # not be scheduled within 0.2 s, and a present meter then looked absent (seen once under xdist).
    readings, tripped, found, seen = run(with_link(path, body, baud=9600, timeout_s=0.6))
    assert [r.quality for r in readings] == [Quality.OK] * 4
    assert [r.energy_import_wh for r in readings] == [1000, 2000, 3000, 5000]
    assert tripped is RelayState.OPEN and not meters[5][0].relay_closed
    assert found == [1, 2, 3, 5]  # unit 3 (an SDM120) answers with an exception: present all the same
    assert seen == [(1, True), (2, True), (3, True), (4, False), (5, True), (6, False)]


def test_one_request_in_flight_and_timeout_budget(sim_bus) -> None:
    clock = ManualClock()
    dead = model(clock)
    dead.faults.add(Fault.NO_ANSWER)
    meters = {u: (model(clock, wh=u), profile("ddsu666")) for u in range(1, 6)}
    meters[9] = (dead, profile("ddsu666"))
    port = sim_bus(meters).start_tcp()

    async def body(link: ModbusLink) -> tuple[list[Reading], float]:
        readings = await asyncio.gather(*(ModbusMeter(link, u, profile("ddsu666")).read(ALL) for u in range(1, 6)))
        t0 = time.monotonic()
        with pytest.raises(MeterTimeout):
            await link.read_registers(9, 4, 0x4000, 2)
        return list(readings), time.monotonic() - t0

    readings, dead_cost = run(with_link(f"tcp://127.0.0.1:{port}", body, timeout_s=0.15, retries=1))
    assert [r.energy_import_wh for r in readings] == [1, 2, 3, 4, 5]
    assert all(r.quality is Quality.OK for r in readings)
    assert 0.3 <= dead_cost < 1.0  # (retries + 1) x timeout, no more


def test_inter_frame_gap_and_unit_switch_delay_are_kept(sim_bus) -> None:
    clock = ManualClock()
    port = sim_bus({1: (model(clock), profile("dds238")), 2: (model(clock), profile("dds238"))}).start_tcp()

    async def timed(link: ModbusLink, units: list[int]) -> float:
        t0 = time.monotonic()
        for u in units:
            await link.read_registers(u, 3, 0, 2)
        return time.monotonic() - t0

    same = run(with_link(f"tcp://127.0.0.1:{port}", lambda link: timed(link, [1, 1, 1]), unit_switch_delay_s=0.2))
    switching = run(with_link(f"tcp://127.0.0.1:{port}", lambda link: timed(link, [1, 2, 1]), unit_switch_delay_s=0.2))
    gapped = run(with_link(f"tcp://127.0.0.1:{port}", lambda link: timed(link, [1, 1, 1]), inter_frame_gap_s=0.1))
    assert same < 0.2
    assert switching >= 0.4
    assert gapped >= 0.2


def test_bus_stops_cleanly(sim_bus) -> None:
    threads_before = threading.active_count()
    fds_before = len(os.listdir("/proc/self/fd"))
    bus = sim_bus({1: (model(ManualClock()), profile("sdm120"))})
    bus.start_tcp()
    bus.start_pty()
    assert threading.active_count() == threads_before + 1
    bus.stop()
    bus.stop()  # idempotent
    assert threading.active_count() == threads_before
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_link_errors_are_one_line(sim_bus) -> None:
    with pytest.raises(ValueError, match="parity must be N, E or O"):
        ModbusLink("/dev/null", parity="X")
    with pytest.raises(ValueError, match="has no host"):
        ModbusLink("tcp://:502")

    from drivers.modbus import LinkError

    async def closed_port() -> None:
        link = ModbusLink("tcp://127.0.0.1:1", timeout_s=0.2)
        await link.open()

    with pytest.raises(LinkError, match=r"tcp://127.0.0.1:1: cannot open the bus"):
        run(closed_port())


COIL_RELAY = """
[meter]
name = "test: relay on a coil"
[points.energy_import]
register = 0x0000
function = 3
type = "u32"
unit = "Wh"
[relay.state]
function = 1
register = 21
[relay.command]
function = 5
register = 21
"""


@pytest.mark.parametrize("url_kind", ["tcp", "pty"])
def test_relay_on_a_coil(sim_bus, tmp_path: Path, url_kind: str) -> None:
    (tmp_path / "coil.toml").write_text(COIL_RELAY)
    prof = load_profile(str(tmp_path / "coil.toml"))
    m = model(ManualClock(), wh=77)
    bus = sim_bus({1: (m, prof)})
    url = f"tcp://127.0.0.1:{bus.start_tcp()}" if url_kind == "tcp" else bus.start_pty()

    async def body(link: ModbusLink) -> list[object]:
        meter = ModbusMeter(link, 1, prof)
        out: list[object] = [(await meter.read(ALL)).relay, await meter.relay(RelayAction.TRIP), m.relay_closed]
        out += [await meter.read_relay(), await meter.relay(RelayAction.DIRECT_CLOSE), m.relay_closed]
        out.append((await meter.read()).energy_import_wh)
        return out

    assert run(with_link(url, body)) == [
        RelayState.CLOSED, RelayState.OPEN, False, RelayState.OPEN, RelayState.CLOSED, True, 77,
    ]


def test_many_dead_polls_in_a_row_do_not_cost_the_bus(sim_bus) -> None:
    """pymodbus drops a TCP connection after retries+3 unanswered requests; the next meter must still read."""
    dead = model(ManualClock())
    dead.faults.add(Fault.NO_ANSWER)
    port = sim_bus({1: (model(ManualClock(), wh=9), profile("dds238")), 9: (dead, profile("dds238"))}).start_tcp()

    async def body(link: ModbusLink) -> tuple[list[Quality], Reading]:
        dead_meter = ModbusMeter(link, 9, profile("dds238"))
        assert isinstance(dead_meter, Meter)
        qualities = [(await dead_meter.read()).quality for _ in range(6)]
        return qualities, await ModbusMeter(link, 1, profile("dds238")).read()

    qualities, healthy = run(with_link(f"tcp://127.0.0.1:{port}", body, timeout_s=0.05))
    assert qualities == [Quality.TIMEOUT] * 6
    assert healthy.quality is Quality.OK and healthy.energy_import_wh == 0  # 9 Wh shows as 0.00 kWh steps of 10


def test_link_reconnects_after_the_tcp_peer_restarts(sim_bus) -> None:
    first = sim_bus({1: (model(ManualClock(), wh=100), profile("dds238"))})
    port = first.start_tcp()

    async def body(link: ModbusLink) -> tuple[Reading, Reading]:
        meter = ModbusMeter(link, 1, profile("dds238"))
        before = await meter.read()
        first.stop()  # the gateway goes away...
        sim_bus({1: (model(ManualClock(), wh=200), profile("dds238"))}).start_tcp(port=port)  # ...and returns
        deadline = time.monotonic() + 5
        while True:  # poll until the link is back, as a bus worker's next cycle would
            after = await meter.read()
            if after.quality is Quality.OK or time.monotonic() > deadline:
                return before, after
            await asyncio.sleep(0.05)

    before, after = run(with_link(f"tcp://127.0.0.1:{port}", body))
    assert (before.energy_import_wh, after.quality, after.energy_import_wh) == (100, Quality.OK, 200)


def test_a_bad_optional_register_is_named_in_errors_and_the_energy_still_read(sim_bus) -> None:
    """A voltage register holding +inf (float32 overflow) is no number: the field is None and
    ``errors`` says why, while the energy stands (``pmg read --json`` shows both)."""
    m = model(ManualClock())
    m.voltage_dv = 10**45  # beyond float32: the register holds infinity
    port = sim_bus({3: (m, profile("sdm120"))}).start_tcp()
    r = run(with_link(f"tcp://127.0.0.1:{port}", lambda link: ModbusMeter(link, 3, profile("sdm120")).read(ALL)))
    assert r.quality is Quality.OK and r.chargeable and r.energy_import_wh == 123_456
    assert r.voltage_v is None
    assert list(r.errors) == ["voltage_v"], r.errors
    assert r.to_json()["errors"] == r.errors
