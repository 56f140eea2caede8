"""Serve a fleet: every bus of the fleet file on TCP or a pty, and the fault schedule on time.

The fleet is meant to run in its own process (``pmg sim fleet``), apart from the gateway under test,
so a benchmark can count the gateway's CPU alone.  Each DL/T 645 bus has its own serving thread and
every Modbus bus its own asyncio loop thread (see the two simulators).  Faults are applied by one
thread from the schedule, as a pure function of the seconds elapsed since ``start()``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from drivers.modbus.profile import load_profile
from simulators.dlt645.bus import SimulatedDlt645Bus
from simulators.fleet.config import DLMS_FAULTS, FleetBus, FleetConfig, FleetFault
from simulators.modbus.bus import SimulatedModbusBus
from simulators.model import FastClock, Fault, LoadProfile, MeterModel

if TYPE_CHECKING:  # the DLMS meter is built on Gurux (the dlms extra): loaded only for a DLMS bus
    from simulators.dlms_line import DlmsLine
    from simulators.dlms_meter import DlmsMeterModel

FAULT_TICK_S = 0.05


def active_faults(schedule: list[FleetFault], elapsed_s: float) -> set[tuple[str, str, Fault]]:
    """(bus, meter, fault) triples the schedule switches on at ``elapsed_s`` (start inclusive, end not)."""
    return {(f.bus, f.meter, f.fault) for f in schedule if f.at_s <= elapsed_s < f.at_s + f.duration_s}


def _load(bus: FleetBus, index: int) -> LoadProfile:
    if not bus.vary_load:
        return LoadProfile(tuple(bus.load_w))
    pct = 80 + (index * 37) % 41  # a fixed spread of 80..120 %, the same every run
    return LoadProfile(tuple(w * pct // 100 for w in bus.load_w))


@dataclass
class Fleet:
    """``start()`` returns bus id → URL for the gateway; ``stop()`` closes everything (idempotent)."""

    cfg: FleetConfig
    clock: Callable[[], float] | None = None
    monotonic: Callable[[], float] = time.monotonic
    models: dict[str, dict[str, MeterModel]] = field(default_factory=dict)
    dlms_models: dict[str, dict[str, DlmsMeterModel]] = field(default_factory=dict)
    """DLMS buses' meters (the Gurux peer's model), by bus and address; ``models`` holds the others."""
    endpoints: dict[str, str] = field(default_factory=dict)
    _dlt: list[SimulatedDlt645Bus] = field(default_factory=list)
    _modbus: list[SimulatedModbusBus] = field(default_factory=list)
    _dlms: list[DlmsLine] = field(default_factory=list)
    _t0: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _applied: set[tuple[str, str, Fault]] = field(default_factory=set)

    def __post_init__(self) -> None:
        clock = self.clock or FastClock(self.cfg.speed)
        for bus in self.cfg.buses:
            if bus.protocol == "dlms":
                from simulators.dlms_meter import DlmsMeterModel

                self.dlms_models[bus.id] = {
                    address: DlmsMeterModel(
                        power_w=Decimal(_load(bus, i).watts_by_hour[0]),
                        now=lambda: datetime.fromtimestamp(clock(), UTC),
                    )
                    for i, address in enumerate(bus.addresses())
                }
                continue
            self.models[bus.id] = {
                address: MeterModel(address, clock=clock, profile=_load(bus, i))
                for i, address in enumerate(bus.addresses())
            }

    def model(self, bus_id: str, address: str) -> MeterModel:
        return self.models[bus_id][address]

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, *, schedule: bool = True) -> dict[str, str]:
        """Serve every bus; with ``schedule`` a thread applies the fault schedule from now on."""
        try:
            for bus in self.cfg.buses:
                self.endpoints[bus.id] = self._serve(bus)
        except BaseException:
            self.stop()
            raise
        self._t0 = self.monotonic()
        if schedule and self.cfg.faults:
            self._thread = threading.Thread(target=self._fault_loop, name="fleet-faults", daemon=True)
            self._thread.start()
        return dict(self.endpoints)

    def _serve(self, bus: FleetBus) -> str:
        host = self.cfg.host
        if bus.protocol == "dlms":
            from simulators.dlms_line import DlmsLine

            line = DlmsLine(
                {int(a): m for a, m in self.dlms_models[bus.id].items()},
                baud=bus.baud,
                emulate_timing=bus.emulate_timing,
            )
            self._dlms.append(line)
            return line.start_pty() if bus.serve == "pty" else f"socket://{host}:{line.start_tcp(host, bus.port)}"
        models = self.models[bus.id]
        if bus.protocol == "dlt645":
            sim = SimulatedDlt645Bus(
                list(models.values()),
                baud=bus.baud,
                parity=bus.parity,
                response_delay_s=bus.response_delay_ms / 1000,
                emulate_timing=bus.emulate_timing,
            )
            self._dlt.append(sim)
            return sim.start_pty() if bus.serve == "pty" else f"socket://{host}:{sim.start_tcp(host, bus.port)}"
        profile = load_profile(bus.profile or "")
        mb = SimulatedModbusBus({int(a): (m, profile) for a, m in models.items()})
        self._modbus.append(mb)
        if bus.serve == "pty":
            return mb.start_pty(baud=bus.baud if bus.emulate_timing else None)
        return f"tcp://{host}:{mb.start_tcp(host, bus.port)}"

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for sim in self._dlt:
            sim.stop()
        for mb in self._modbus:
            mb.stop()
        for line in self._dlms:
            line.stop()
        self._dlms.clear()
        self._dlt.clear()
        self._modbus.clear()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults --------------------------------------------------------------------------------------
    def apply_faults(self, elapsed_s: float) -> list[str]:
        """Switch scheduled faults on and off for ``elapsed_s``; returns what changed, for the log.

        Only faults the schedule names are touched, so one set by hand (a test) is left alone.
        """
        want = active_faults(self.cfg.faults, elapsed_s)
        changes = []
        for bus, meter, fault in sorted(want - self._applied):
            if bus in self.dlms_models:
                self.dlms_models[bus][meter].fault = DLMS_FAULTS[fault.value]
            else:
                self.models[bus][meter].faults.add(fault)
            changes.append(f"+{fault.value} {bus}/{meter}")
        for bus, meter, fault in sorted(self._applied - want):
            if bus in self.dlms_models:
                self.dlms_models[bus][meter].fault = None
            else:
                self.models[bus][meter].faults.discard(fault)
            changes.append(f"-{fault.value} {bus}/{meter}")
        self._applied = want
        return changes

    def elapsed(self) -> float:
        return 0.0 if self._t0 is None else self.monotonic() - self._t0

    def _fault_loop(self) -> None:
        while not self._stop.wait(FAULT_TICK_S):
            for change in self.apply_faults(self.elapsed()):
                print(f"t={self.elapsed():.1f}s fault {change}", flush=True)

    # -- figures -------------------------------------------------------------------------------------
    def dlt645_requests(self) -> int:
        """Requests the DL/T 645 buses have answered or ignored so far (a load figure)."""
        return sum(sim.stats.requests for sim in self._dlt)
