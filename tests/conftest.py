"""Shared fixtures: a private Mosquitto per test that needs one, and leak checks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.broker import Mosquitto, mosquitto_binary


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A plain (anonymous, no TLS) broker on a free port, stopped after the test."""
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed; run .ci/run or apt-get install mosquitto")
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        yield broker
    finally:
        broker.stop()
