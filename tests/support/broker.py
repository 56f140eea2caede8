"""Tests start their own broker: see ``simulators.mosquitto``."""

from simulators.mosquitto import UNCAPPED_OFFLINE_QUEUE, Mosquitto, free_port, mosquitto_binary

__all__ = ["UNCAPPED_OFFLINE_QUEUE", "Mosquitto", "free_port", "mosquitto_binary"]
