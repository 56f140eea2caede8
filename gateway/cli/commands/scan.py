"""``pmg scan``: find the meters on a bus and say what they are, without knowing their addresses.

DL/T 645: a collision-aware search over the address's digit pairs (``drivers.dlt645.search``); each
meter found is identified by its meter number, asset number, model and meter type.  Modbus: every unit
probed at a short timeout, the ones that answered confirmed at ``--timeout`` and named by the profile
whose identifying registers answer (``drivers.modbus.scan``).  DLMS: one association attempt per HDLC
physical address (``drivers.dlms.probe``) at the probe timeout, optionally after the IEC 62056-21 mode E
opening; a meter that refuses the public client answered and is listed as such.  ``--write-config`` prints the ``[[buses]]``
and ``[[meters]]`` entries to paste into the gateway's configuration.  Progress goes to stderr, so that
stdout carries only the table, the JSON or the TOML.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import click

from drivers.factory import LinkSettings, make_link
from gateway.cli.common import CliFailure, FiniteFloat, emit_json, emit_table, json_option

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")  # the configuration's id pattern
DEFAULT_TARIFF = "flat-cn"  # a shipped example tariff (gateway/tariffs/examples/)


def parse_units(text: str) -> list[int]:
    """``"1-10,20"`` → unit ids, each 1..247."""
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
    return list(dict.fromkeys(out))


DLMS_DEFAULT_ADDRESSES = "16-125"  # one-byte HDLC server addresses from 0x10; 0x7E and 0x7F are reserved
DLMS_PROBE_TIMEOUT_S = 0.3


def _station(n: int) -> bool:
    """A server's own lower HDLC address (IEC 62056-46, "Address field"): one byte 0x10-0x7D, two
    bytes up to 0x3FFD.  0x00-0x0F are "no station" and reserved; 0x7E/0x3FFE call, 0x7F/0x3FFF are
    every station at once, so a probe there would have every meter on the line answer together."""
    return 0x10 <= n <= 0x7D or 0x80 <= n <= 0x3FFD


def parse_hdlc_addresses(text: str) -> list[int]:
    """``"16-125,300"`` → HDLC physical addresses of single stations (16-125, or 128-16381)."""
    out: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()) or not lo.isascii() or not hi.isascii():
            raise click.BadParameter(f"'{part}' is not an HDLC address or range like 16-125", param_hint="--addresses")
        a, b = int(lo), int(hi or lo)
        if not (a <= b <= 0x3FFF) or not (_station(a) and _station(b)):
            raise click.BadParameter(
                f"'{part}' is not within 16-125 or 128-16381 (a single station's HDLC address)",
                param_hint="--addresses",
            )
        out.extend(n for n in range(a, b + 1) if _station(n))
    return list(dict.fromkeys(out))


def parse_addresses(text: str) -> list[str]:
    """``"1-4,000000000161"`` → 12-digit DL/T 645 addresses (a range spans at most 10,000)."""
    out: list[str] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or not lo.isascii() or not hi.isascii():
            raise click.BadParameter(f"'{part}' is not an address or range", param_hint="--addresses")
        a, b = int(lo), int(hi or lo)
        if b < a or b - a > 10_000 or b >= 10**12:
            raise click.BadParameter(f"'{part}' is not a sensible address range", param_hint="--addresses")
        out.extend(f"{n:012d}" for n in range(a, b + 1))
    return list(dict.fromkeys(out))


@click.command()
@click.option("--protocol", type=click.Choice(["dlt645", "modbus", "dlms"]), required=True, help="Meter protocol.")
@click.option(
    "--port",
    "url",
    required=True,
    help="Serial device or pyserial URL (socket://host:port, rfc2217://…); tcp://host:port for Modbus TCP.",
)
@click.option(
    "--baud", type=click.IntRange(300, 921600), help="Baud rate (default 2400 for DL/T 645, 9600 for Modbus)."
)
@click.option(
    "--parity", type=click.Choice(["N", "E", "O"]), help="Parity (default E for DL/T 645, N for Modbus)."
)
@click.option(
    "--timeout",
    "timeout_s",
    type=FiniteFloat(0.05, 30),
    default=1.0,
    show_default=True,
    help="Response timeout for confirming and identifying what answered (the bus's timeout_s).",
)
@click.option(
    "--probe-timeout",
    "probe_timeout_s",
    type=FiniteFloat(0.01, 30),
    help="How long each probe waits: DL/T 645 listening window (default 0.3 s; the standard lets a meter "
    "take 500 ms), Modbus first pass (default 0.15 s), DLMS each address (default 0.3 s).",
)
@click.option(
    "--addresses",
    help="DL/T 645: ask only these addresses (comma-separated, or ranges A-B) instead of searching; "
    f"DLMS: the HDLC physical addresses to probe (default {DLMS_DEFAULT_ADDRESSES}).",
)
@click.option(
    "--opening",
    type=click.Choice(["none", "iec62056-21"]),
    default="none",
    show_default=True,
    help="DLMS: open each conversation with the IEC 62056-21 mode E sign-on (optical ports).",
)
@click.option("--units", help="Modbus unit ids to probe, e.g. 1-10,20 (default 1-247).")
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    help="Modbus: a profile to recognise (repeatable; default: every shipped profile and those of --profile-dir).",
)
@click.option(
    "--profile-dir",
    "profile_dirs",
    multiple=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Modbus: a directory of a site's own profiles (repeatable), as profile_dirs in the configuration.",
)
@click.option(
    "--write-config", is_flag=True, help="Print [[buses]] and [[meters]] entries for the configuration."
)
@click.option("--bus-id", default="bus-1", show_default=True, help="Bus id used by --write-config.")
@click.option(
    "--tariff",
    default=DEFAULT_TARIFF,
    show_default=True,
    help="Tariff written into each [[meters]] entry by --write-config.",
)
@json_option
def scan(
    protocol: str,
    url: str,
    baud: int | None,
    parity: str | None,
    timeout_s: float,
    probe_timeout_s: float | None,
    addresses: str | None,
    opening: str,
    units: str | None,
    profiles: tuple[str, ...],
    profile_dirs: tuple[Path, ...],
    write_config: bool,
    bus_id: str,
    tariff: str,
    as_json: bool,
) -> None:
    """Find the meters on a bus and identify them, with progress and the count found so far.

    DL/T 645 needs no addresses: meters sharing the line are told apart by a search over their address
    digits (their answers to a partly wildcarded address collide until one is left).  Modbus probes
    unit ids 1-247 quickly, then confirms and names each one by its profile.  Exit 1 when nothing
    answered or the bus cannot be opened.
    """
    # Every argument is checked before the bus is touched.
    if write_config and as_json:
        raise click.UsageError("--write-config and --json are exclusive")
    for value, what in ((bus_id, "--bus-id"), (tariff, "--tariff")):
        if not _ID.fullmatch(value):
            raise click.BadParameter(f"'{value}' is not an id (letters, digits, _ . -)", param_hint=what)
    if opening != "none" and protocol != "dlms":
        raise click.UsageError("--opening applies to DLMS only")
    if protocol == "dlms":
        misplaced = [
            n for n, v in (("--units", units), ("--profile", profiles), ("--profile-dir", profile_dirs)) if v
        ]
        if misplaced:
            raise click.UsageError(f"{', '.join(misplaced)} apply to Modbus only")
        if url.startswith("tcp://"):
            raise click.UsageError(
                "a DLMS scan probes HDLC addresses on a serial line (or socket://): the TCP wrapper has one "
                "meter per connection (pmg read --address N asks one logical device)"
            )
        hdlc = parse_hdlc_addresses(DLMS_DEFAULT_ADDRESSES if addresses is None else addresses)
        report = asyncio.run(_dlms(url, baud, parity, probe_timeout_s, hdlc, opening, as_json))
    elif protocol == "dlt645":
        misplaced = [
            n for n, v in (("--units", units), ("--profile", profiles), ("--profile-dir", profile_dirs)) if v
        ]
        if misplaced:
            raise click.UsageError(f"{', '.join(misplaced)} apply to Modbus only")
        todo = parse_addresses(addresses) if addresses is not None else None
        report = asyncio.run(_dlt645(url, baud, parity, timeout_s, probe_timeout_s, todo, as_json))
    else:
        if addresses is not None:
            raise click.UsageError("--addresses applies to DL/T 645 and DLMS only")
        unit_list = parse_units("1-247" if units is None else units)
        loaded = _profiles(profiles, profile_dirs)
        report = asyncio.run(
            _modbus(url, baud, parity, timeout_s, probe_timeout_s, unit_list, loaded, as_json)
        )
    link = {"protocol": protocol, "port": url, "baud": report["baud"], "parity": report["parity"]}
    if protocol == "dlms":
        link["opening"] = opening
    if as_json:
        emit_json({**link, **{k: v for k, v in report.items() if k not in ("baud", "parity", "hint")}})
    elif write_config:
        click.echo(config_entries(protocol, url, report, bus_id, tariff, opening), nl=False)
    else:
        _print_table(protocol, url, report)
    if not report["found"]:
        raise CliFailure(report["hint"])


def _profiles(names: tuple[str, ...], dirs: tuple[Path, ...]) -> list[Any]:
    from drivers.modbus.profile import list_profiles, load_profile

    extra = [str(d) for d in dirs]
    return [load_profile(n, extra) for n in (names or tuple(list_profiles(extra)))]


def _progress(quiet: bool) -> Any:
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=quiet,
    )


async def _dlt645(
    url: str,
    baud: int | None,
    parity: str | None,
    timeout_s: float,
    window_s: float | None,
    todo: list[str] | None,
    quiet: bool,
) -> dict[str, Any]:
    from drivers.dlt645.link import Dlt645Link
    from drivers.dlt645.meter import scan as ask_addresses
    from drivers.dlt645.search import DEFAULT_WINDOW_S, identify, search

    link = make_link(LinkSettings("dlt645", url, baud, parity, timeout_s, retries=1))
    assert isinstance(link, Dlt645Link)
    await link.open()
    try:
        with _progress(quiet) as progress:
            task = progress.add_task("searching", total=None)
            if todo is None:

                def tick(found: int, probes: int, asked: str) -> None:
                    progress.update(task, description=f"{found} found, {probes} probes (asking {asked})")

                result = await search(link, window_s=window_s or DEFAULT_WINDOW_S, progress=tick)
                meters, suspects, probes = result.meters, result.suspects, result.stats.probes
            else:
                progress.update(task, total=len(todo))
                answered = await ask_addresses(
                    link, todo, lambda i, n: progress.update(task, completed=i, description=f"asked {i}/{n}")
                )
                meters = [await identify(link, a) for a in answered]
                suspects, probes = [], len(todo)
    finally:
        await link.close()
    hint = (
        f"no meter answered on {url} after {probes} probes at {link.baud} baud 8{link.parity}1"
        " (check the wiring, the baud rate and the parity)"
    )
    return {
        "baud": link.baud,
        "parity": link.parity,
        "found": [m.address for m in meters],
        "meters": [m.to_json() for m in meters],
        "suspects": suspects,
        "probes": probes,
        "hint": hint,
    }


async def _modbus(
    url: str,
    baud: int | None,
    parity: str | None,
    timeout_s: float,
    probe_timeout_s: float | None,
    units: list[int],
    profiles: list[Any],
    quiet: bool,
) -> dict[str, Any]:
    from drivers.modbus.link import ModbusLink
    from drivers.modbus.scan import DEFAULT_PROBE_TIMEOUT_S, scan_units

    link = make_link(LinkSettings("modbus", url, baud, parity, timeout_s, retries=1))
    assert isinstance(link, ModbusLink)
    await link.open()
    try:
        with _progress(quiet) as progress:
            task = progress.add_task("probing", total=len(units))

            def tick(unit: int, found: int, probed: int) -> None:
                progress.update(task, completed=probed, description=f"unit {unit}: {found} found")

            result = await scan_units(
                link,
                units,
                profiles,
                probe_timeout_s=probe_timeout_s or DEFAULT_PROBE_TIMEOUT_S,
                progress=tick,
            )
    finally:
        await link.close()
    return {
        "baud": None if link.tcp else link.baud,
        "parity": None if link.tcp else link.parity,
        "found": [str(u.unit) for u in result.units],
        "units": [u.to_json() for u in result.units],
        "probes": result.stats.probed,
        "hint": f"no Modbus unit answered on {url} ({len(units)} probed; check the wiring, baud rate and parity)",
    }


async def _dlms(
    url: str,
    baud: int | None,
    parity: str | None,
    probe_timeout_s: float | None,
    addresses: list[int],
    opening: str,
    quiet: bool,
) -> dict[str, Any]:
    from drivers.base import DriverError
    from drivers.dlms import scan_answers
    from drivers.dlms.link import DlmsLink

    timeout_s = probe_timeout_s or DLMS_PROBE_TIMEOUT_S
    link = make_link(LinkSettings("dlms", url, baud, parity, timeout_s, retries=0, inter_frame_gap_s=0, opening=opening))
    assert isinstance(link, DlmsLink)
    await link.open()
    try:
        with _progress(quiet) as progress:
            task = progress.add_task("probing", total=len(addresses))
            def tick(i: int, n: int) -> None:
                progress.update(task, completed=i, description=f"address {addresses[i - 1]}")

            try:
                answers = await scan_answers(link, addresses, progress=tick)
            except DriverError as exc:
                raise CliFailure(str(exc)) from None
    finally:
        await link.close()
    meters = [{"address": a, "association": answer} for a, answer in answers.items() if answer]
    return {
        "baud": link.baud,
        "parity": link.parity,
        "found": [str(m["address"]) for m in meters],
        "meters": meters,
        "probes": len(addresses),
        "hint": f"no DLMS meter answered on {url} ({len(addresses)} HDLC addresses probed at {link.baud} baud "
        f"8{link.parity}1; check the wiring, the baud rate and the addresses)",
    }


def _print_table(protocol: str, url: str, report: dict[str, Any]) -> None:
    title = f"{len(report['found'])} meter(s) on {url}"
    if protocol == "dlt645":
        rows = [
            (m["address"], m["meter_number"], m["asset_number"], m["model"], m["meter_type"])
            for m in report["meters"]
        ]
        emit_table(title, ["address", "meter number", "asset number", "model", "type"], rows)
        for m in report["meters"]:
            for note in m["notes"]:
                click.echo(f"{m['address']}: {note}")
        for address in report["suspects"]:
            click.echo(f"{address}: replies kept colliding: two meters with this address, or a noisy line")
    elif protocol == "dlms":
        said = {"accepted": "accepted (public client)", "refused": "refused: needs another client, a password or a key"}
        emit_table(title, ["HDLC address", "association"], [(m["address"], said[m["association"]]) for m in report["meters"]])
    else:
        unit_rows: list[tuple[Any, ...]] = [
            (u["unit"], u["profile"] or ("ambiguous" if u["matches"] else "unknown"), ", ".join(u["matches"]))
            for u in report["units"]
        ]
        emit_table(title, ["unit", "profile", "matches"], unit_rows)


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_entries(
    protocol: str, url: str, report: dict[str, Any], bus_id: str, tariff: str, opening: str = "none"
) -> str:
    """``[[buses]]`` and ``[[meters]]`` entries for what the scan found (``pmg run --check`` accepts them
    in a configuration whose ``tariff_dir`` holds ``tariff``).  Accounts are placeholders named after the
    meter: give each the customer's account before the gateway bills."""
    lines = ["# written by pmg scan: set each meter's account (and tariff) before billing", ""]
    lines += ["[[buses]]", f"id = {_toml_str(bus_id)}", f'protocol = "{protocol}"', f"url = {_toml_str(url)}"]
    if report["baud"] is not None:
        lines += [f"baud = {report['baud']}", f'parity = "{report["parity"]}"']
    if opening != "none":
        lines.append(f'opening = "{opening}"')
    entries: list[tuple[str, str, str | None, str]] = []  # id, address, profile, comment
    if protocol == "dlt645":
        for m in report["meters"]:
            said = [
                f"{k.replace('_', ' ')} {m[k]}"
                for k in ("meter_number", "asset_number", "model", "meter_type")
                if m[k]
            ]
            entries.append((f"M-{m['address']}", m["address"], None, "; ".join(said)))
    elif protocol == "dlms":
        for m in report["meters"]:
            note = "" if m["association"] == "accepted" else (
                "refused the public client: set [meters.dlms] client, auth and key_file"
            )
            entries.append((f"{bus_id}-D{m['address']}", str(m["address"]), None, note))
    else:
        for u in report["units"]:
            entries.append((f"{bus_id}-U{u['unit']}", str(u["unit"]), u["profile"], ", ".join(u["matches"])))
    skipped: list[str] = []
    for meter_id, address, profile, comment in entries:
        if protocol == "modbus" and profile is None:
            why = f"matches {comment}: choose one" if comment else "matches no known profile: add its profile"
            skipped.append(f"# unit {address} answered but {why}")
            continue
        lines += ["", "[[meters]]"]
        if comment:
            lines.append(f"# {comment}")
        lines += [
            f"id = {_toml_str(meter_id)}",
            f"bus = {_toml_str(bus_id)}",
            f"address = {_toml_str(address)}",
            f"account = {_toml_str('A-' + meter_id.removeprefix('M-'))}",
            f"tariff = {_toml_str(tariff)}",
        ]
        if profile is not None:
            lines.append(f"profile = {_toml_str(profile)}")
    if skipped:
        lines += ["", *skipped]
    return "\n".join(lines) + "\n"
