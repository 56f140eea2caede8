"""Tests start their own PostgreSQL: see ``simulators.postgres``."""

from simulators.postgres import PostgresServer, free_port, postgres_bindir

__all__ = ["PostgresServer", "free_port", "postgres_bindir"]
