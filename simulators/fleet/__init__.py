"""A whole concentrator's simulated meters from one file: many buses, both protocols, scheduled faults."""

from simulators.fleet.config import FleetBus, FleetConfig, FleetFault, gateway_toml, load_fleet, meter_id
from simulators.fleet.runtime import Fleet, active_faults

__all__ = [
    "Fleet",
    "FleetBus",
    "FleetConfig",
    "FleetFault",
    "active_faults",
    "gateway_toml",
    "load_fleet",
    "meter_id",
]
