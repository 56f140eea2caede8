"""What ``pmg run`` must not import (tests/unit/cli/test_lazy_commands.py, tests/integration/test_daemon_imports.py)."""

from __future__ import annotations

# What the daemon must not carry: the web console and its server, the head office (PostgreSQL), the
# simulators, the CLI's tables, sqlite-utils (the technician's commands), pymodbus without a Modbus bus,
# cryptography before a command has to be verified (gateway.core.keys.public_key_bytes).
FORBIDDEN = (
    "rich",
    "starlette",
    "jinja2",
    "uvicorn",
    "psycopg",
    "psycopg_pool",
    "simulators",
    "hq",
    "gateway.web",
    "gateway.cli.commands.hq",
    "gateway.cli.commands.sim",
    "sqlite_utils",
    "pymodbus",
    "cryptography",
)


def forbidden_in(modules: set[str]) -> list[str]:
    """The modules of ``modules`` that are, or are inside, a forbidden one."""
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
