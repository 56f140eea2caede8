"""What a simulated Modbus meter's registers hold, computed from the shared meter model on demand.

The inverse of the driver's decoding, written against the same profile, so a profile is exercised
end to end: model value → registers (as the meter would round them) → driver → ``Reading``.
Energy registers floor (a meter shows only what has fully accumulated) and integer registers
roll over at their width, like the real ones.
"""

from __future__ import annotations

from decimal import Decimal

from drivers.base import Point
from drivers.modbus.codec import DataType, from_value
from drivers.modbus.profile import PointSpec, Profile
from simulators.model import MeterModel

_UNSIGNED = {DataType.U16: 16, DataType.U32: 32}


def point_value(model: MeterModel, point: Point) -> Decimal:
    """The model's value of a point in the Reading's unit (Wh, V, A, W, Hz, ratio)."""
    if point is Point.ENERGY_IMPORT:
        return Decimal(model.energy_import_wh)
    if point is Point.ENERGY_EXPORT:
        return Decimal(model.energy_export_wh)
    if point is Point.VOLTAGE:
        return model.voltage_v
    if point is Point.CURRENT:
        return Decimal(model.current_ma()) / 1000
    if point is Point.POWER:
        return Decimal(model.power_w())
    if point is Point.FREQUENCY:
        return Decimal(model.frequency_chz) / 100
    if point is Point.POWER_FACTOR:
        return Decimal(1)
    raise ValueError(f"{point.value} has no register value")


def point_registers(model: MeterModel, point: Point, spec: PointSpec) -> list[int]:
    """Registers (wire order) a meter of this profile would answer for ``point`` right now."""
    value = point_value(model, point) / Profile.factor(point, spec.unit)
    energy = point in (Point.ENERGY_IMPORT, Point.ENERGY_EXPORT)
    bits = _UNSIGNED.get(spec.type)
    if bits is not None and energy:
        value = Decimal(int(value / spec.scale) % (1 << bits)) * spec.scale  # register rollover
    return from_value(value, spec.type, spec.word_order, spec.scale, floor=energy)


def relay_register(model: MeterModel, profile: Profile) -> int:
    """The relay state value the profile's state register holds."""
    assert profile.relay is not None
    st = profile.relay.state
    return st.closed if model.relay_closed else st.open
