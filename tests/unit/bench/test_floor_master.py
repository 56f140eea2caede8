"""The capacity benchmark's floor master must do a gateway poll's wire work, whole, and no less.

A floor that sent fewer frames than a poll, or stopped reading a reply half-way, would look cheaper
than any gateway can be and make the gateway's multiple of it look worse than it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import serial

from bench.floor_master import POLL_DIS, WAKEUP, exchange, poll_wires, read_reply
from drivers.dlt645.frame import scan
from drivers.dlt645.link import Dlt645Link
from drivers.dlt645.meter import Dlt645Meter
from gateway.runtime.bus import POLL_POINTS
from simulators.dlt645.bus import SimulatedDlt645Bus, make_models

ADDRESS = "000000000001"


@pytest.fixture(params=[0, WAKEUP], ids=["no-preamble", "preamble"])
def bus(request: pytest.FixtureRequest) -> Iterator[SimulatedDlt645Bus]:
    """A meter that answers with or without the FE wake-up bytes before its reply."""
    sim = SimulatedDlt645Bus(make_models(1), baud=9600, response_delay_s=0.002, reply_wakeup=request.param)
    try:
        yield sim
    finally:
        sim.stop()


def test_a_floor_poll_sends_as_many_frames_as_a_gateway_poll(bus: SimulatedDlt645Bus) -> None:
    port = bus.start_tcp()

    async def gateway_poll() -> None:
        async with Dlt645Link(f"socket://127.0.0.1:{port}", baud=9600, timeout_s=1.0) as link:
            reading = await Dlt645Meter(link, ADDRESS).read(POLL_POINTS)
            assert reading.quality.value == "ok", reading

    asyncio.run(gateway_poll())
    gateway_frames = bus.stats.requests
    assert gateway_frames == len(POLL_DIS) == len(poll_wires(ADDRESS))


def test_every_floor_reply_is_a_whole_valid_reply(bus: SimulatedDlt645Bus) -> None:
    port = bus.start_tcp()
    ser = serial.serial_for_url(f"socket://127.0.0.1:{port}", baudrate=9600, parity="E", timeout=1.0)
    try:
        for wire in poll_wires(ADDRESS):
            reply = exchange(ser, wire)
            found = scan(reply)
            assert found.frame is not None and found.frame.is_reply and not found.frame.is_abnormal
            assert found.end == len(reply)  # nothing of the reply left unread, nothing read beyond it
    finally:
        ser.close()


def test_a_reply_cut_short_is_not_counted_as_one() -> None:
    ser = serial.serial_for_url("loop://", timeout=0.05)
    try:
        ser.write(bytes.fromhex("fefefefe 68 010000000000 68 91 18 33 32 34 33"))  # L = 24, four data bytes
        with pytest.raises(RuntimeError):
            read_reply(ser)
    finally:
        ser.close()
