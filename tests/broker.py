"""Tests start their own broker: see ``simulators.mosquitto``."""

from simulators.mosquitto import Mosquitto, free_port, mosquitto_binary

__all__ = ["Mosquitto", "free_port", "mosquitto_binary"]
