"""The fleet simulator: strict fleet files, the fault schedule, real drivers against served buses, and
``pmg sim fleet`` as a separate process driving a real in-process gateway through its written config."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.waiting import async_wait_for, wait_for

from drivers.base import Point, Quality
from drivers.dlt645 import Dlt645Link, Dlt645Meter
from drivers.tomlsource import TomlError
from gateway.config import load_config
from gateway.ledger.verify import verify
from gateway.runtime.daemon import Gateway
from simulators.fleet import Fleet, FleetFault, active_faults, gateway_toml, load_fleet
from simulators.model import Fault

REPO = Path(__file__).resolve().parents[2]

SMALL = """
speed = 600.0
[gateway]
gateway_id = "gw-fleet-test"
[[buses]]
id = "d1"
protocol = "dlt645"
baud = 9600
response_delay_ms = 5
meters = 3
poll_interval_s = 0.3
timeout_s = 0.3
retries = 0
[[buses]]
id = "m1"
protocol = "modbus"
profile = "dds238"
meters = 2
poll_interval_s = 0.3
timeout_s = 0.3
retries = 0
[[faults]]
at_s = 0
bus = "d1"
meter = "000000000002"
fault = "no_answer"
duration_s = 3600
"""


def write(tmp_path: Path, text: str, name: str = "fleet.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- the file ----------------------------------------------------------------------------------------
def test_example_fleet_file_loads_and_its_gateway_config_is_valid(tmp_path: Path) -> None:
    cfg = load_fleet(REPO / "config" / "fleet.example.toml")
    endpoints = {b.id: f"socket://127.0.0.1:{7000 + i}" for i, b in enumerate(cfg.buses)}
    out = write(tmp_path, gateway_toml(cfg, endpoints, base_dir=tmp_path), "gw.toml")
    gw = load_config(out)
    assert len(gw.meters) == cfg.meter_count == 80
    assert {m.address for m in gw.meters_on("dlms-1")} == {"17", "18", "19", "20", "21"}
    assert gw.bus("dlms-1").protocol == "dlms" and gw.bus("dlms-1").line_parity == "N"
    assert {m.address for m in gw.meters_on("dlt-2")} == {f"{a:012d}" for a in range(1001, 1021)}
    assert {m.profile for m in gw.meters_on("mb-rtu-1")} == {"dds238"}
    assert gw.bus("dlt-1").baud == 9600 and gw.bus("dlt-2").baud == 2400


@pytest.mark.parametrize(
    ("body", "line", "reason"),
    [
        ('[[buses]]\nid = "b"\nprotocol = "dlt645"\nmeters = 2\nbaud_rate = 9600\n', 5, "unknown key 'baud_rate'"),
        ('[[buses]]\nid = "b"\nprotocol = "modbus"\nmeters = 2\n', 1, "needs a profile"),
        ('[[buses]]\nid = "b"\nprotocol = "modbus"\nprofile = "sdm120"\nstart_address = 240\nmeters = 9\n', 1, "exceed 247"),
        (
            '[[buses]]\nid = "b"\nprotocol = "dlt645"\nmeters = 2\n'
            '[[faults]]\nat_s = 1\nbus = "b"\nmeter = "000000000009"\nfault = "no_answer"\nduration_s = 1\n',
            8,
            "no meter '000000000009' on bus 'b'",
        ),
        (
            '[[buses]]\nid = "b"\nprotocol = "dlt645"\nmeters = 2\n'
            '[[faults]]\nat_s = 1\nbus = "b"\nmeter = "000000000001"\nfault = "on_fire"\nduration_s = 1\n',
            9,
            "fault",
        ),
        ('[[buses]]\nid = "b"\nprotocol = "dlt645"\nmeters = 2\nload_w = [1, 2]\n', 5, "1 value or 24"),
    ],
)
def test_bad_fleet_files_are_one_line_errors_with_the_line(tmp_path: Path, body: str, line: int, reason: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(TomlError) as err:
        load_fleet(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:{line}:"), message
    assert reason in message


# -- the schedule ------------------------------------------------------------------------------------
def test_fault_schedule_is_on_from_start_until_start_plus_duration() -> None:
    schedule = [
        FleetFault(at_s=10, bus="b", meter="1", fault=Fault.NO_ANSWER, duration_s=5),
        FleetFault(at_s=12, bus="b", meter="2", fault=Fault.GARBAGE, duration_s=1),
    ]
    assert active_faults(schedule, 9.99) == set()
    assert active_faults(schedule, 10) == {("b", "1", Fault.NO_ANSWER)}
    assert active_faults(schedule, 12.5) == {("b", "1", Fault.NO_ANSWER), ("b", "2", Fault.GARBAGE)}
    assert active_faults(schedule, 15) == set()


def test_apply_faults_switches_the_models_and_leaves_hand_set_faults_alone(tmp_path: Path) -> None:
    cfg = load_fleet(write(tmp_path, SMALL.replace("at_s = 0", "at_s = 5")))
    fleet = Fleet(cfg)  # not started: the schedule is applied by hand with chosen instants
    other = fleet.model("d1", "000000000003")
    other.faults.add(Fault.STUCK_RELAY)
    target = fleet.model("d1", "000000000002")
    assert fleet.apply_faults(4.9) == []
    assert fleet.apply_faults(5.0) == ["+no_answer d1/000000000002"]
    assert target.has(Fault.NO_ANSWER)
    assert fleet.apply_faults(5.0 + 3600) == ["-no_answer d1/000000000002"]
    assert not target.faults
    assert other.faults == {Fault.STUCK_RELAY}


# -- served buses, read by the real drivers ----------------------------------------------------------
@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with Fleet(load_fleet(write(tmp_path, SMALL))) as f:
        f.start()
        yield f


def test_served_dlt645_bus_answers_the_real_driver_and_the_scheduled_fault_shows(fleet: Fleet) -> None:
    async def read(address: str) -> Quality:
        async with Dlt645Link(fleet.endpoints["d1"], baud=9600, timeout_s=0.3, retries=0) as link:
            reading = await Dlt645Meter(link, address).read([Point.ENERGY_IMPORT])
            return reading.quality

    wait_for(lambda: fleet.model("d1", "000000000002").has(Fault.NO_ANSWER), what="scheduled fault")
    assert asyncio.run(read("000000000001")) is Quality.OK
    assert asyncio.run(read("000000000002")) is Quality.TIMEOUT
    assert fleet.endpoints["m1"].startswith("tcp://127.0.0.1:")


# -- the separate process, and a real gateway pointed at it -------------------------------------------
@pytest.fixture
def fleet_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    out = tmp_path / "gw.toml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli.main", "sim", "fleet", "--config", str(write(tmp_path, SMALL)),
         "--write-gateway-config", str(out), "--database", str(tmp_path / "gw.db")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_pmg_sim_fleet_process_serves_a_real_gateway_and_stops_on_sigterm(
    fleet_process: tuple[subprocess.Popen[str], Path],
) -> None:
    proc, out = fleet_process
    assert proc.stdout is not None
    lines = []
    while not (lines and lines[-1].startswith("ready")):
        line = proc.stdout.readline()
        assert line, f"fleet exited early: {proc.stderr.read() if proc.stderr else ''}"
        lines.append(line)
    assert lines[-1].startswith("ready: 5 meters on 2 buses")
    assert out.exists()
    cfg = load_config(out)

    async def scenario() -> None:
        gateway = Gateway(out, cfg)
        await gateway.start()
        try:
            def polled(meter: str) -> bool:
                return bool(gateway.store.scalar("SELECT last_register_wh IS NOT NULL FROM meters WHERE id = ?", meter))

            for meter in ("d1-0001", "d1-0003", "m1-0001", "m1-0002"):
                await async_wait_for(lambda m=meter: polled(m), timeout=15, what=f"{meter} polled")  # type: ignore[misc]
            await async_wait_for(
                lambda: gateway.store.scalar(
                    "SELECT COUNT(*) FROM readings WHERE meter_id = 'd1-0002' AND quality = 'timeout'"
                ),
                what="the dead meter's timeouts recorded",
            )
            assert not polled("d1-0002"), "a meter that never answered has a register"
            assert verify(gateway.store) == []
        finally:
            await gateway.stop()

    asyncio.run(scenario())
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(10) == 0
