"""``pmg doctor``: check an installation the way a field technician would, one finding per line.

Each check returns a ``Check`` with a status (ok, warn, fail, skip) and a sentence that says what to
do.  The checks are independent: one failing (no broker) never hides another (a full disk).  A live
bus test would fight a running daemon for the serial line (a half-duplex bus has one owner), so when
the daemon holds the instance lock the bus check reads its status snapshot instead.
"""

from __future__ import annotations

import asyncio
import grp
import os
import shutil
import socket
import sqlite3
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from drivers.base import BILLING_POINTS, Quality
from gateway.config import BusConfig, GatewayConfig, MqttConfig, resolve

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
NETWORK_SCHEMES = ("socket://", "tcp://", "rfc2217://", "udp://")
DISK_FAIL_BYTES = 100 * 1024 * 1024
DISK_WARN_BYTES = 1024 * 1024 * 1024
TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def serial_devices(cfg: GatewayConfig) -> list[Check]:
    """Each serial bus's device exists and this user may read and write it (group dialout)."""
    out = []
    for bus in cfg.buses:
        if bus.url.startswith(NETWORK_SCHEMES):
            continue
        name = f"serial {bus.id}"
        path = Path(bus.url)
        if not path.exists():
            out.append(
                Check(name, FAIL, f"{path} does not exist (adapter unplugged, or a different ttyUSB number?)")
            )
        elif not os.access(path, os.R_OK | os.W_OK):
            try:
                group = grp.getgrgid(path.stat().st_gid).gr_name
            except KeyError:
                group = str(path.stat().st_gid)
            out.append(
                Check(name, FAIL, f"{path}: no read/write permission; add the user to group '{group}'")
            )
        else:
            out.append(Check(name, OK, f"{path} readable and writable"))
    return out


async def _probe_bus(bus: BusConfig, cfg: GatewayConfig) -> Check:
    from drivers.factory import LinkSettings, make_link, make_meter

    name = f"bus {bus.id}"
    meters = cfg.meters_on(bus.id)
    if not meters:
        return Check(name, SKIP, "no meters configured on this bus")
    link = make_link(
        LinkSettings(
            bus.protocol, bus.url, bus.line_baud, bus.line_parity, bus.timeout_s, bus.retries, bus.frame_gap_s, bus.opening
        )
    )
    try:
        await link.open()
    except Exception as exc:
        return Check(name, FAIL, f"cannot open {bus.url}: {exc}")
    try:
        answered: list[str] = []
        silent: list[str] = []
        for m in meters:
            meter = make_meter(bus.protocol, link, m.address, cfg.profile_file(m), tz=cfg.tz, options=cfg.meter_options(m))
            reading = await meter.read(BILLING_POINTS)
            (answered if reading.quality is Quality.OK else silent).append(m.id)
    finally:
        await link.close()
    if not answered:
        return Check(name, FAIL, f"no meter answered ({len(silent)} tried: check wiring, baud, parity)")
    if silent:  # an unreachable meter is neither billed nor enforced: a failure, not a warning
        return Check(name, FAIL, f"{len(answered)}/{len(meters)} answered; silent: {', '.join(silent[:10])}")
    return Check(name, OK, f"all {len(answered)} meters answered")


def buses(cfg: GatewayConfig, live: dict[str, Any] | None) -> list[Check]:
    """Each bus answers: from the running daemon's snapshot, or by reading its meters now."""
    if live is not None:
        out = []
        for bus in cfg.buses:
            b = live.get("buses", {}).get(bus.id)
            if b is None:
                out.append(Check(f"bus {bus.id}", WARN, "the running daemon reports nothing for this bus"))
            elif b.get("healthy") is False:
                why = f"; link: {b['last_link_error']}" if b.get("last_link_error") else ""
                out.append(
                    Check(
                        f"bus {bus.id}",
                        FAIL,
                        f"daemon: UNHEALTHY, no meter answered for {b.get('silent_s')} s "
                        f"(limit {b.get('unhealthy_after_s')} s){why}",
                    )
                )
            elif b["polls_ok"] == 0 and b["polls_failed"] > 0:
                kinds = ", ".join(f"{n} {kind}" for kind, n in (b.get("failed_by_kind") or {}).items())
                out.append(Check(f"bus {bus.id}", FAIL, f"daemon: every poll failed ({kinds or 'no detail'})"))
            else:
                rate = b.get("error_rate") or 0.0
                out.append(
                    Check(
                        f"bus {bus.id}", WARN if rate > 0.2 else OK, f"daemon: error rate {rate:.0%} of polls"
                    )
                )
        return out
    return [asyncio.run(_probe_bus(bus, cfg)) for bus in cfg.buses]


def broker(cfg: GatewayConfig, config_path: Path) -> list[Check]:
    """The broker accepts a TCP connection and, with TLS, a verified handshake."""
    if cfg.mqtt is None:
        return [Check("broker", SKIP, "no [mqtt] configured (usage stays in the outbox)")]
    m: MqttConfig = cfg.mqtt
    try:
        raw = socket.create_connection((m.host, m.port), timeout=TIMEOUT_S)
    except OSError as exc:
        return [Check("broker", FAIL, f"cannot reach {m.host}:{m.port}: {exc.strerror or exc}")]
    with raw:
        if not m.tls:
            return [Check("broker", WARN, f"{m.host}:{m.port} reachable, but WITHOUT TLS (allow_plaintext)")]
        ctx = ssl.create_default_context(cafile=str(resolve(config_path, m.ca_file)) if m.ca_file else None)
        if m.client_cert and m.client_key:
            ctx.load_cert_chain(resolve(config_path, m.client_cert), resolve(config_path, m.client_key))
        try:
            with ctx.wrap_socket(raw, server_hostname=m.host) as tls:
                version = tls.version()
        except (ssl.SSLError, OSError) as exc:
            return [Check("broker", FAIL, f"TLS handshake with {m.host}:{m.port} failed: {exc}")]
    return [Check("broker", OK, f"{m.host}:{m.port} reachable, {version}, certificate verified")]


def clock_synchronised(run: Callable[[list[str]], str | None] | None = None) -> list[Check]:
    """NTP synchronisation as systemd-timesyncd/chrony report it through ``timedatectl``."""
    run = run or _run
    value = run(["timedatectl", "show", "--property=NTPSynchronized", "--value"])
    if value is None:
        if Path("/run/systemd/timesync/synchronized").exists():
            return [Check("clock", OK, "systemd-timesyncd reports synchronised")]
        return [Check("clock", WARN, "cannot tell whether the clock is synchronised (no timedatectl)")]
    if value.strip() == "yes":
        return [Check("clock", OK, "system clock synchronised (NTP)")]
    return [Check("clock", FAIL, "system clock NOT synchronised: tariffs and protected windows depend on it")]


def _run(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def disk_space(database: Path) -> list[Check]:
    where = database.parent if database.parent.exists() else Path("/")
    usage = shutil.disk_usage(where)
    free_mb = usage.free // (1024 * 1024)
    if usage.free < DISK_FAIL_BYTES:
        return [Check("disk", FAIL, f"only {free_mb} MB free on {where}: the ledger cannot commit when full")]
    if usage.free < DISK_WARN_BYTES:
        return [Check("disk", WARN, f"{free_mb} MB free on {where}")]
    return [Check("disk", OK, f"{free_mb} MB free on {where}")]


def database_integrity(database: Path) -> list[Check]:
    if not database.exists():
        return [Check("database", WARN, f"no database at {database} yet (created on first start)")]
    try:
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return [Check("database", FAIL, f"{database}: {exc}")]
    if rows == ["ok"]:
        return [Check("database", OK, f"{database}: integrity_check ok")]
    return [Check("database", FAIL, f"{database}: {'; '.join(rows[:3])}")]


def unreachable_meters(database: Path) -> list[Check]:
    """Meters the running daemon could not read at its last poll (``meters.last_comms_error``): each
    one is neither billed nor enforced, so the check fails (docs/operations.md, "Health")."""
    if not database.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute(
                "SELECT id, last_comms_error FROM meters WHERE last_comms_error IS NOT NULL ORDER BY id"
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return []  # the integrity check says what is wrong with the file
    if not rows:
        return [Check("meters", OK, "every meter answered its last poll")]
    shown = "; ".join(f"{m}: {err}" for m, err in rows[:5]) + (f"; … {len(rows) - 5} more" if len(rows) > 5 else "")
    return [Check("meters", FAIL, f"{len(rows)} unreachable: {shown}")]


def table_counts(database: Path) -> list[dict[str, Any]]:
    """Each table of the database with its row count (sqlite-utils' inspection), for ``pmg doctor``:
    a technician sees at a glance a ledger that stopped growing or an outbox that does not drain."""
    import sqlite_utils

    if not database.exists():
        return []
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        db = sqlite_utils.Database(conn)
        return [{"table": t.name, "rows": t.count} for t in db.tables if not t.name.startswith("sqlite_")]
    except sqlite3.DatabaseError:
        return []
    finally:
        conn.close()


def run_checks(cfg: GatewayConfig, config_path: Path, live: dict[str, Any] | None) -> Iterator[Check]:
    """Every check in order; a generator so the CLI can show progress as they complete.

    ``live`` is the running daemon's status snapshot (``gateway.runtime.status``), or None when none runs.
    """
    database = resolve(config_path, cfg.database)
    yield from database_integrity(database)
    yield from disk_space(database)
    yield from clock_synchronised()
    yield from serial_devices(cfg)
    yield from buses(cfg, live)
    if live is not None:  # the daemon's own view of each meter; without it the bus probe read them
        yield from unreachable_meters(database)
    yield from broker(cfg, config_path)


def exit_status(checks: list[Check]) -> int:
    """0 when nothing failed (warnings allowed), 1 otherwise."""
    return 1 if any(c.status == FAIL for c in checks) else 0
