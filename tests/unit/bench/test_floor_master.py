"""The capacity benchmark's floor master must do a gateway poll's wire work, whole, and no less.

A floor that sent fewer frames than a poll, or stopped reading a reply half-way, would look cheaper
than any gateway can be and make the gateway's multiple of it look worse than it is.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.floor_master import WAKEUP, BusPoller, main, poll_wires, read_reply
from drivers.dlt645.frame import scan
from drivers.dlt645.link import Dlt645Link
from drivers.dlt645.meter import Dlt645Meter
from gateway.config import BusConfig
from gateway.runtime.bus import POLL_POINTS
from simulators.dlt645.bus import SimulatedDlt645Bus, make_models

ADDRESS = "000000000001"


@pytest.fixture(params=[0, WAKEUP], ids=["no-preamble", "preamble"])
def bus(request: pytest.FixtureRequest) -> Iterator[SimulatedDlt645Bus]:
    """A meter at 9600 baud with line timing, answering with or without FE wake-up bytes."""
    sim = SimulatedDlt645Bus(make_models(1), baud=9600, response_delay_s=0.002, reply_wakeup=request.param)
    try:
        yield sim
    finally:
        sim.stop()


def _floor_poll(port: int, polls: int = 1) -> list[list[bytes]]:
    cfg = BusConfig(id="b1", protocol="dlt645", url=f"socket://127.0.0.1:{port}", baud=9600, timeout_s=1.0)
    poller = BusPoller(cfg)
    try:
        return [poller.poll(poll_wires(ADDRESS)) for _ in range(polls)]
    finally:
        poller.close()


def test_a_floor_poll_sends_the_frames_a_gateway_poll_sends(bus: SimulatedDlt645Bus) -> None:
    port = bus.start_tcp()

    async def gateway_poll() -> None:
        async with Dlt645Link(f"socket://127.0.0.1:{port}", baud=9600, timeout_s=1.0) as link:
            reading = await Dlt645Meter(link, ADDRESS).read(POLL_POINTS)
            assert reading.quality.value == "ok", reading

    asyncio.run(gateway_poll())
    gateway_frames = bus.stats.requests
    _floor_poll(port)
    assert bus.stats.requests - gateway_frames == gateway_frames


def test_every_floor_reply_is_a_whole_valid_reply(bus: SimulatedDlt645Bus) -> None:
    """Three polls: the first learns each reply's length, the others sleep through it before reading."""
    port = bus.start_tcp()
    for replies in _floor_poll(port, polls=3):
        for reply in replies:
            found = scan(reply)
            assert found.frame is not None and found.frame.is_reply and not found.frame.is_abnormal
            assert found.end == len(reply)  # nothing of the reply left unread, nothing read beyond it


def test_a_reply_cut_short_is_not_counted_as_one() -> None:
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        theirs.sendall(bytes.fromhex("fefefefe 68 010000000000 68 91 18 33 32 34 33"))  # L = 24, four data bytes
        with pytest.raises(RuntimeError, match="cut short"):
            read_reply(ours.fileno(), expected=0, byte_time_s=11 / 9600, timeout_s=0.05)
    finally:
        ours.close()
        theirs.close()


def test_a_configuration_it_cannot_read_is_one_line_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "floor.db"
    assert main(["-c", str(tmp_path / "missing.toml"), "--database", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("floor master: ") and "missing.toml" in err and err.count("\n") == 1
    assert not db.exists()
