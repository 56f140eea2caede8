"""Fuzzing and bad-input corpora: random and mutated frames, commands and operator input; every case ends
in one clear line or a rejection, never a traceback, and changes nothing.

Every test collected under this folder carries the ``fuzz`` marker (pyproject.toml lists the markers).
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.fuzz)
