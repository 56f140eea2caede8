"""One simulated Modbus meter as a pymodbus ``SimDevice`` whose registers are computed when read.

The register layout comes from the profile (its points, relay and identifying registers); only the
registers the profile names exist (anything else is an "illegal data address" exception, as on the
real meters).  A read fills the requested
registers from the ``MeterModel`` at that instant, so energy keeps growing; a write to the relay
command register operates the model's relay.  ``ABNORMAL_REPLY`` turns every request into a
"device failure" exception; the faults that concern the frame (no answer, wrong unit) are applied
by the bus, which sees the bytes.
"""

from __future__ import annotations

from functools import partial

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.profile import Profile
from simulators.modbus.registers import point_registers, relay_register
from simulators.model import Fault, MeterModel

_TABLE = {1: "c", 5: "c", 15: "c", 2: "d", 3: "h", 6: "h", 16: "h", 4: "i"}
_PLACEHOLDER = 0xFF00  # pymodbus needs one entry per table; an out-of-the-way one for unused tables


def _runs(addresses: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a in sorted(addresses):
        if out and out[-1][0] + out[-1][1] == a:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((a, 1))
    return out


def layout(profile: Profile) -> dict[str, set[int]]:
    """Addresses per table ("c" coils, "d" discrete inputs, "h" holding, "i" input registers)."""
    tables: dict[str, set[int]] = {"c": set(), "d": set(), "h": set(), "i": set()}
    for p in profile.offered():
        spec = profile.point(p)
        if spec is not None:
            tables[_TABLE[spec.function]].update(range(spec.address, spec.end))
    for probe in profile.identifying().present:  # the real meter has them: pmg scan asks for them
        tables[_TABLE[probe.function]].update(range(probe.address, probe.address + probe.count))
    if profile.relay is not None:
        tables[_TABLE[profile.relay.state.function]].add(profile.relay.state.address)
        tables[_TABLE[profile.relay.command.function]].add(profile.relay.command.address)
    return tables


def build_device(unit: int, model: MeterModel, profile: Profile) -> SimDevice:
    tables = layout(profile)
    blocks: list[list[SimData]] = []
    for name in ("c", "d", "h", "i"):
        if name in ("c", "d"):
            data = [SimData(a, values=[False] * n, datatype=DataType.BITS) for a, n in _runs(tables[name])]
            blocks.append(data or [SimData(_PLACEHOLDER, values=[False] * 16, datatype=DataType.BITS)])
        else:
            data = [SimData(a, count=n, values=0, datatype=DataType.REGISTERS) for a, n in _runs(tables[name])]
            blocks.append(data or [SimData(_PLACEHOLDER, datatype=DataType.INVALID)])
    simdata = (blocks[0], blocks[1], blocks[2], blocks[3])
    return SimDevice(unit, simdata=simdata, action=partial(_action, model, profile))


async def _action(
    model: MeterModel,
    profile: Profile,
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    registers: list[int],
    set_values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    """pymodbus calls this for every access, before it answers from ``registers``."""
    if model.has(Fault.ABNORMAL_REPLY):
        return ExcCodes.DEVICE_FAILURE
    if set_values is not None and function_code in (5, 6, 15, 16):
        return _write(model, profile, function_code, address, count, set_values)
    table = _TABLE.get(function_code, "")
    if table in ("h", "i"):
        _fill_registers(model, profile, table, start_address, address, count, registers)
    elif table in ("c", "d"):
        _fill_bits(model, profile, table, start_address, registers)
    return None


def _fill_registers(
    model: MeterModel, profile: Profile, table: str, start: int, address: int, count: int, registers: list[int]
) -> None:
    end = address + count
    for p in profile.offered():
        spec = profile.point(p)
        if spec is None or _TABLE[spec.function] != table or spec.end <= address or spec.address >= end:
            continue
        for i, reg in enumerate(point_registers(model, p, spec)):
            registers[spec.address + i - start] = reg
    relay = profile.relay
    if relay is not None and _TABLE[relay.state.function] == table and address <= relay.state.address < end:
        registers[relay.state.address - start] = relay_register(model, profile)


def _fill_bits(model: MeterModel, profile: Profile, table: str, start: int, registers: list[int]) -> None:
    relay = profile.relay
    if relay is None or _TABLE[relay.state.function] != table:
        return
    bit = relay.state.address
    idx = bit // 16 - start
    if 0 <= idx < len(registers):
        mask = 1 << (bit % 16)
        on = relay_register(model, profile) == 1
        registers[idx] = (registers[idx] | mask) if on else (registers[idx] & ~mask)


def _write(
    model: MeterModel,
    profile: Profile,
    function_code: int,
    address: int,
    count: int,
    values: list[int] | list[bool],
) -> ExcCodes | None:
    cmd = profile.relay.command if profile.relay is not None else None
    if cmd is None or address != cmd.address or count != 1:
        return ExcCodes.ILLEGAL_ADDRESS
    if function_code != cmd.function:
        return ExcCodes.ILLEGAL_FUNCTION  # e.g. the DDS238 refuses FC06 on its relay register
    value = int(values[0])
    if value == cmd.trip:
        return None if model.trip() else ExcCodes.DEVICE_FAILURE  # refused under keep-power
    if value == cmd.close:
        model.close(direct=True)
        return None
    return ExcCodes.ILLEGAL_VALUE

