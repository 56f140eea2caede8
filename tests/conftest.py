"""Shared fixtures: a private Mosquitto per test that needs one, and leak checks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.broker import Mosquitto, mosquitto_binary
from support.postgres import PostgresServer, postgres_bindir


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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL per test session (initdb on a free port), stopped at the end."""
    if postgres_bindir() is None:
        pytest.fail("PostgreSQL is not installed; run .ci/bootstrap or apt-get install postgresql")
    server = PostgresServer(settings={"fsync": "off", "synchronous_commit": "off"}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's private server."""
    return postgres_server.new_database()
