"""Fixtures for the Modbus tests: servers on real loopback sockets and ptys, always cleaned up.

Imported explicitly by the ``test_modbus_*`` modules (the shared conftest belongs to the lead).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus import ModbusLink
from drivers.modbus.profile import Profile, load_profile
from simulators.modbus import SimulatedModbusBus
from simulators.model import MeterModel

T = TypeVar("T")
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a fixed start for injected clocks


class ManualClock:
    """Seconds since the epoch that move only when the test says so."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def regs(address: int, *values: int) -> SimData:
    """Raw registers at ``address`` exactly as a datasheet or a capture lists them."""
    return SimData(address, values=list(values), datatype=DataType.REGISTERS)


def no_bits() -> list[SimData]:
    return [SimData(0xFF00, values=[False] * 16, datatype=DataType.BITS)]


def no_regs() -> list[SimData]:
    return [SimData(0xFF00, datatype=DataType.INVALID)]


def device(
    unit: int, *, holding: list[SimData] | None = None, inputs: list[SimData] | None = None,
    coils: list[SimData] | None = None,
) -> SimDevice:
    """A plain pymodbus device (no code of ours) with separate coil/input/holding tables."""
    return SimDevice(unit, simdata=(coils or no_bits(), no_bits(), holding or no_regs(), inputs or no_regs()))


class RawServer:
    """A plain pymodbus TCP server on its own loop thread, loaded with registers by the test."""

    def __init__(self, devices: list[SimDevice]) -> None:
        self.devices = devices
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="raw-modbus", daemon=True)
        self.server: ModbusTcpServer | None = None

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self) -> int:
        self.thread.start()

        async def serve() -> int:
            self.server = ModbusTcpServer(self.devices, address=("127.0.0.1", 0))
            await self.server.serve_forever(background=True)
            return int(self.server.transport.sockets[0].getsockname()[1])  # type: ignore[union-attr]

        return self._call(serve())

    def stop(self) -> None:
        if self.server is not None:
            self._call(self.server.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[list[SimDevice]], int]]:
    """``raw_server([device(...)])`` → port; every server started is stopped after the test."""
    started: list[RawServer] = []

    def start(devices: list[SimDevice]) -> int:
        server = RawServer(devices)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def sim_bus() -> Iterator[Callable[[dict[int, tuple[MeterModel, Profile]]], SimulatedModbusBus]]:
    """``sim_bus({unit: (model, profile)})`` → a started-on-demand bus, stopped after the test."""
    buses: list[SimulatedModbusBus] = []

    def make(meters: dict[int, tuple[MeterModel, Profile]]) -> SimulatedModbusBus:
        bus = SimulatedModbusBus(meters)
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        bus.stop()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one async scenario on a fresh loop (no pytest-asyncio in this project)."""
    return asyncio.run(coro)


async def with_link(url: str, body: Callable[[ModbusLink], Coroutine[Any, Any, T]], **kw: Any) -> T:
    """Open a link with test-friendly defaults, run ``body``, always close."""
    kw.setdefault("timeout_s", 0.3)
    kw.setdefault("retries", 0)
    link = ModbusLink(url, **kw)
    await link.open()
    try:
        return await body(link)
    finally:
        await link.close()


PROFILES = ["dds238", "ddsu666", "sdm120", "sdm630"]


def profile(name: str) -> Profile:
    return load_profile(name)
