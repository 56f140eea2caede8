"""Modbus RTU / TCP meters: profiles (register maps as data), one link per bus, typed readings.

``drivers.modbus.scan`` finds which unit ids answer on a bus, for commissioning (``pmg scan``).  (A
function of the package's own once had the submodule's name: importing the submodule replaced it.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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

__all__ = ["LinkError", "ModbusLink", "ModbusMeter", "Profile", "list_profiles", "load_profile"]
