"""Technician commands on a live bus: ``pmg read`` and ``pmg scan`` (no daemon needed)."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from drivers.base import Point, Quality
from drivers.factory import LinkSettings, make_link, make_meter
from gateway.cli.common import CliFailure, FiniteFloat, emit_json, emit_table, json_option

ALL_POINTS = frozenset(Point)


def register(cli: click.Group) -> None:
    cli.add_command(read)
    cli.add_command(scan)


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
    as_json: bool,
) -> None:
    """Read a meter live: energy (total, import, export, per tariff), V, I, P, clock, relay, status.

    An optional field the meter answers badly is shown as null (``--json``: with its error under
    ``errors``; text: one line per bad field); the read still succeeds when the energy is good.
    """
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
        link = make_link(LinkSettings(protocol, url, baud, parity, timeout_s, retries=1))
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
        emit_table(
            f"meter {meter_address}",
            ["field", "value"],
            [(k, v) for k, v in data.items() if k != "errors" and v not in (None, {}, [])],
        )
        # A read with energy stands even when optional fields were bad: each is named, one line each.
        for name, error in reading.errors.items():
            click.echo(f"{name}: error: {error}")
    if reading.quality is not Quality.OK:
        raise CliFailure(
            f"meter {meter_address}: {reading.quality.value}: {reading.error or 'no valid answer'}"
        )


def _parse_units(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise click.BadParameter(
                f"'{part}' is not a unit id or range like 1-247", param_hint="--units"
            ) from None
        if not (1 <= a <= b <= 247):
            raise click.BadParameter(f"'{part}' is outside 1-247", param_hint="--units")
        out.extend(range(a, b + 1))
    return out


@click.command()
@_link_options
@click.option("--units", default="1-247", show_default=True, help="Modbus unit ids to probe (1-10,20).")
@click.option("--profile", help="Modbus profile whose first register is probed.")
@click.option(
    "--addresses",
    help="DL/T 645: comma-separated addresses or a range A-B to probe "
    "(default: wildcard read-address, for a single meter on the line).",
)
@json_option
def scan(
    protocol: str,
    url: str,
    baud: int | None,
    parity: str | None,
    timeout_s: float,
    units: str,
    profile: str | None,
    addresses: str | None,
    as_json: bool,
) -> None:
    """Find the meters on a bus, with a progress bar."""
    from rich.progress import Progress

    # Arguments are checked before the bus is touched.
    if protocol == "dlms":
        raise click.UsageError("pmg scan does not probe DLMS (HDLC) addresses yet: use pmg read --address")
    dlt_todo = _dlt_addresses(addresses) if protocol == "dlt645" and addresses is not None else None
    unit_list = _parse_units(units) if protocol == "modbus" else []

    async def go(progress: Progress) -> list[str]:
        link = make_link(LinkSettings(protocol, url, baud, parity, min(timeout_s, 0.5), retries=0))
        await link.open()
        try:
            if protocol == "dlt645":
                from drivers.dlt645.meter import scan as dlt_scan

                todo = dlt_todo
                task = progress.add_task("probing", total=len(todo) if todo else 1)
                found = await dlt_scan(link, todo, lambda i, n: progress.update(task, completed=i))  # type: ignore[arg-type]
                return found
            from drivers.modbus import scan as mb_scan
            from drivers.modbus.profile import load_profile

            task = progress.add_task("probing", total=len(unit_list))
            prof = load_profile(profile) if profile else None
            done = 0

            def tick(*_: Any) -> None:
                nonlocal done
                done += 1
                progress.update(task, completed=done)

            return [str(u) for u in await mb_scan(link, unit_list, prof, tick)]  # type: ignore[arg-type]
        finally:
            await link.close()

    with Progress(transient=True, disable=as_json) as progress:
        found = asyncio.run(go(progress))
    if as_json:
        emit_json({"protocol": protocol, "port": url, "found": found})
    else:
        emit_table(f"{len(found)} meter(s) on {url}", ["address"], [(a,) for a in found])
    if not found:
        raise CliFailure("no meter answered")


def _dlt_addresses(text: str) -> list[str]:
    out: list[str] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise click.BadParameter(f"'{part}' is not an address or range", param_hint="--addresses")
        a, b = int(lo), int(hi or lo)
        if b < a or b - a > 10_000 or b >= 10**12:
            raise click.BadParameter(f"'{part}' is not a sensible address range", param_hint="--addresses")
        out.extend(f"{n:012d}" for n in range(a, b + 1))
    return out
