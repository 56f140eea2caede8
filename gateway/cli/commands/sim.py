"""``pmg sim …``: simulated meters on pseudo-terminals and TCP, for tests, labs and the demo.

Each simulator's command is defined once, beside the simulator (``simulators/*/__main__.py``,
``simulators/modbus/cli.py``, ``simulators/dlms_cli.py``, their shared options in ``simulators/command.py``), so that
``python -m simulators.dlt645`` and ``pmg sim dlt645`` are the same command; here they join the
``pmg`` tree, whose group turns a usage error into one line and exit status 2.
"""

from __future__ import annotations

import click

from simulators.dlms_cli import command as dlms_command
from simulators.dlt645.__main__ import command as dlt645_command
from simulators.fleet.__main__ import command as fleet_command
from simulators.modbus.cli import command as modbus_command


@click.group()
def sim() -> None:
    """Serve simulated meters that speak the real protocols (with faults)."""


sim.add_command(dlt645_command)
sim.add_command(modbus_command)
sim.add_command(dlms_command)
sim.add_command(fleet_command)
