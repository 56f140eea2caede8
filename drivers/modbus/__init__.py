"""Modbus RTU / TCP meters: profiles (register maps as data), one link per bus, typed readings.

``scan`` finds which unit ids answer on a bus, for commissioning (``pmg scan``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from drivers.base import BadFrame, MeterRefused, MeterTimeout
from drivers.modbus.profile import Profile, list_profiles, load_profile

if TYPE_CHECKING:
    from drivers.modbus.link import LinkError, ModbusLink
    from drivers.modbus.meter import ModbusMeter

# The link and the meter import pymodbus (about 10 MB resident): they load on first use, so that a
# gateway that only reads a configuration's Modbus profiles (every gateway does, to check the file)
# or polls DL/T 645 meters does not carry it.
_LAZY = {"LinkError": "drivers.modbus.link", "ModbusLink": "drivers.modbus.link", "ModbusMeter": "drivers.modbus.meter"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

__all__ = ["LinkError", "ModbusLink", "ModbusMeter", "Profile", "list_profiles", "load_profile", "scan"]

Progress = Callable[[int, bool], None]


async def scan(
    link: ModbusLink, units: Iterable[int], profile: Profile | None = None, progress: Progress | None = None
) -> list[int]:
    """Unit ids that answer, in the order probed.

    A unit is present when it replies at all, even with an exception (it heard us and answered).
    With a profile the probe reads the profile's first register (import energy when offered), so
    a found unit is likely that model; without one it reads holding register 0.  A dead unit costs
    the link's full timeout budget, so give the link a short timeout for scanning.
    ``progress(unit, found)`` is called after each probe.
    """
    function, address = 3, 0
    if profile is not None:
        offered = [spec for p in profile.offered() if (spec := profile.point(p)) is not None]
        if offered:
            function, address = offered[0].function, offered[0].address
        elif profile.relay is not None and profile.relay.state.function in (3, 4):
            function, address = profile.relay.state.function, profile.relay.state.address
    from drivers.modbus.link import LinkError

    found: list[int] = []
    for unit in units:
        try:
            await link.read_registers(unit, function, address, 1)
            present = True
        except MeterRefused:
            present = True
        except (MeterTimeout, BadFrame):
            present = False
        except LinkError:
            raise
        if present:
            found.append(unit)
        if progress is not None:
            progress(unit, present)
    return found
