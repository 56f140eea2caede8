"""Unit tests: one package at a time, in-process (real SQLite files, ptys and sockets allowed; no daemon
subprocess, no broker).  Folder unit/<package>/ mirrors the package under test.  ``make quick`` runs this folder.

Every test collected under this folder carries the ``unit`` marker (pyproject.toml lists the markers).
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.unit)
