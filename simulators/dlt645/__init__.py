"""Simulated DL/T 645-2007 meters on a pseudo-terminal or TCP, for tests, benchmarks and the demo."""

from simulators.dlt645.bus import SimulatedDlt645Bus, make_models

__all__ = ["SimulatedDlt645Bus", "make_models"]
