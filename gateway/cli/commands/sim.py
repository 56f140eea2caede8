"""``pmg sim …``: simulated meters on pseudo-terminals and TCP, for tests, labs and the demo.

Each simulator's command is defined once, beside the simulator (``simulators/*/__main__.py``,
``simulators/modbus/cli.py``, ``simulators/dlms_cli.py``, their shared options in ``simulators/command.py``), so that
``python -m simulators.dlt645`` and ``pmg sim dlt645`` are the same command; here they join the
``pmg`` tree, whose group turns a usage error into one line and exit status 2.  They load when run
(``gateway.cli.lazy``): the DLMS meter is built on Gurux, an optional extra, and ``pmg sim dlt645``
must not need it.
"""

from __future__ import annotations

import click

from gateway.cli.lazy import LazyCommand, LazyGroup

_S = "simulators."
SIMULATORS = {
    "dlt645": LazyCommand(
        _S + "dlt645.__main__:command",
        "Serve simulated DL/T 645-2007 meters on a pseudo-terminal or TCP until Ctrl-C or SIGTERM.",
    ),
    "modbus": LazyCommand(
        _S + "modbus.cli:command",
        "Serve simulated Modbus meters (RTU on a pseudo-terminal, or TCP) until Ctrl-C or SIGTERM.",
    ),
    "dlms": LazyCommand(
        _S + "dlms_cli:command",
        "Serve simulated DLMS meters (HDLC on a pseudo-terminal or TCP, or the TCP wrapper) until Ctrl-C or"
        " SIGTERM.",
    ),
    "fleet": LazyCommand(
        _S + "fleet.__main__:command",
        "Serve a fleet of simulated meters (many buses of both protocols, scheduled faults) until Ctrl-C.",
    ),
}


@click.group(cls=LazyGroup, lazy_commands=SIMULATORS)
def sim() -> None:
    """Serve simulated meters that speak the real protocols (with faults)."""
