"""Technician commands on a live bus: ``pmg read`` here, ``pmg scan`` in its own module (no daemon needed)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import click

from drivers.base import Point, Quality
from drivers.factory import LinkSettings, make_link, make_meter
from gateway.cli.common import CliFailure, Col, FiniteFloat, emit_json, emit_table, json_option, wants_utc

ALL_POINTS = frozenset(Point)


def _link_options(f: Any) -> Any:
    f = click.option(
        "--protocol", type=click.Choice(["dlt645", "modbus", "dlms"]), required=True, help="Meter protocol."
    )(f)
    f = click.option(
        "--port",
        "url",
        required=True,
        help="Serial device or pyserial URL (socket://host:port, rfc2217://…); tcp://host:port "
        "for Modbus TCP.",
    )(f)
    f = click.option(
        "--baud",
        type=click.IntRange(300, 921600),
        default=None,
        help="Baud rate (default 2400 for DL/T 645, 9600 for Modbus).",
    )(f)
    f = click.option(
        "--parity",
        type=click.Choice(["N", "E", "O"]),
        default=None,
        help="Parity (default E for DL/T 645, N for Modbus).",
    )(f)
    f = click.option(
        "--timeout",
        "timeout_s",
        type=FiniteFloat(0.05, 30),
        default=1.0,
        show_default=True,
        help="Response timeout in seconds.",
    )(f)
    return f


@click.command()
@_link_options
@click.option("--address", help="DL/T 645 meter address (12 digits).")
@click.option("--unit", type=click.IntRange(1, 247), help="Modbus unit id.")
@click.option("--profile", help="Modbus meter profile (e.g. sdm120, dds238).")
@click.option(
    "--opening",
    type=click.Choice(["none", "iec62056-21"]),
    default="none",
    show_default=True,
    help="DLMS: start with the IEC 62056-21 mode E sign-on (an optical probe).",
)
@json_option
def read(
    protocol: str,
    url: str,
    baud: int | None,
    parity: str | None,
    timeout_s: float,
    address: str | None,
    unit: int | None,
    profile: str | None,
    opening: str,
    as_json: bool,
) -> None:
    """Read a meter live: energy (total, import, export, per tariff), V, I, P, clock, relay, status.

    An optional field the meter answers badly is shown as null (``--json``: with its error under
    ``errors``; text: one line per bad field); the read still succeeds when the energy is good.
    """
    if opening != "none" and (protocol != "dlms" or url.startswith("tcp://")):
        raise click.UsageError("--opening applies to DLMS on a serial line (HDLC)")
    if protocol == "dlt645":
        if not address:
            raise click.UsageError("--address is required for DL/T 645")
        meter_address = address
    elif protocol == "dlms":  # the public client; --address: HDLC physical address (TCP wrapper: logical device)
        if not address or not address.isdigit():
            raise click.UsageError("--address is required for DLMS (HDLC physical address, or the logical device on tcp://)")
        meter_address = address
    else:
        if unit is None or not profile:
            raise click.UsageError("--unit and --profile are required for Modbus")
        meter_address = str(unit)

    async def go() -> Any:
        link = make_link(LinkSettings(protocol, url, baud, parity, timeout_s, retries=1, opening=opening))
        meter = make_meter(protocol, link, meter_address, profile)
        await link.open()
        try:
            return await meter.read(ALL_POINTS)
        finally:
            await meter.close()
            await link.close()

    reading = asyncio.run(go())
    data = reading.to_json()
    if as_json:
        emit_json(data)
    else:
        # No configuration here: instants in this machine's zone with its offset (or UTC, --utc).
        from gateway.core.present import instant_text, is_instant_text

        here = datetime.now().astimezone().tzinfo or UTC
        emit_table(
            f"meter {meter_address}",
            [Col("field", fixed=True), Col("value")],
            [
                (k, instant_text(v, here, utc=wants_utc()) if isinstance(v, str) and is_instant_text(v) else v)
                for k, v in data.items()
                if k != "errors" and v not in (None, {}, [])
            ],
        )
        # A read with energy stands even when optional fields were bad: each is named, one line each.
        for name, error in reading.errors.items():
            click.echo(f"{name}: error: {error}")
    if reading.quality is not Quality.OK:
        raise CliFailure(
            f"meter {meter_address}: {reading.quality.value}: {reading.error or 'no valid answer'}"
        )
