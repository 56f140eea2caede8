"""Simulated Modbus meters (RTU on a pseudo-terminal, Modbus TCP) driven by the shared meter model."""

from simulators.modbus.bus import SimulatedModbusBus

__all__ = ["SimulatedModbusBus"]
