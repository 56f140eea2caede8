"""``pmg meter``: one meter — its detail (``show``) and the technician's resolutions of a quarantined
reading (``accept-reading``) or a replaced meter (``replace``).

The group is defined here only; the commands live beside the code they share (the status views in
``ops``, the ledger's pricing in ``ledger``), so no registration order decides which exist.
"""

from __future__ import annotations

import click

from gateway.cli.commands.ledger import meter_accept, meter_replace
from gateway.cli.commands.ops import meter_show


@click.group()
def meter() -> None:
    """One meter: its detail, and resolving a quarantined reading or a replaced meter (audited)."""


for command in (meter_show, meter_accept, meter_replace):
    meter.add_command(command)


def register(cli: click.Group) -> None:
    cli.add_command(meter)
