"""Fault campaigns and the stateful model: kill -9, broker restarts, bus faults, clock steps, and long
seeded walks with an oracle.  Excluded from a bare ``pytest``; ``make test`` (CI) runs them with small counts.

Every test collected under this folder carries the ``campaign`` marker (pyproject.toml lists the markers).
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.campaign)
