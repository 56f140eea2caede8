"""Integration tests: the parts together: the CLI in a subprocess, the daemon, a private Mosquitto,
simulators on ptys and TCP, an installed wheel.

Every test collected under this folder carries the ``integration`` marker (pyproject.toml lists the markers).
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)
