"""``pmg meter``: one meter — its detail (``show``), a read by the running daemon (``read-now``) and the
technician's resolutions of a quarantined reading (``accept-reading``) or a replaced meter (``replace``).

The group is defined here; most commands live beside the code they share (the status views in
``ops``, the ledger's pricing in ``ledger``), so no registration order decides which exist.
``read-now`` is here: it only writes a request (``gateway.store.read_requests``) and waits for the
daemon, which owns the line, to finish it (``gateway.runtime.read_watch``).
"""

from __future__ import annotations

import getpass
import time
from pathlib import Path
from typing import Any

import click

from gateway.cli.commands.ledger import meter_accept, meter_replace
from gateway.cli.commands.ops import METER_ID, meter_show
from gateway.cli.common import (
    AuditText,
    CliFailure,
    FiniteFloat,
    config_option,
    emit_json,
    json_option,
    opened_store,
    presenter,
    unknown_message,
)
from gateway.core.timeutil import system_clock
from gateway.store import read_requests
from gateway.store.read_requests import ReadRequest

WAIT_POLL_S = 0.05  # how often the request's row is looked at while waiting (one indexed row)


@click.group()
def meter() -> None:
    """One meter: its detail, and resolving a quarantined reading or a replaced meter (audited)."""


def _actor(given: str | None) -> str:
    if given:
        return given
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return "technician"


def _shown(req: ReadRequest, reading: dict[str, Any] | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "request_id": req.id,
        "meter_id": req.meter_id,
        "status": req.status,
        "requested_at": req.requested_at,
        "requested_by": req.requested_by,
        "finished_at": req.finished_at,
        "result": req.result,
        "reading_id": req.reading_id,
    }
    if reading is not None:
        data["reading"] = reading
    return data


@click.command("read-now")
@click.argument("meter_id")
@config_option
@click.option(
    "--wait",
    "wait_s",
    type=FiniteFloat(0.5, 300),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the daemon's outcome.",
)
@click.option("--actor", type=AuditText(max_length=100), default=None, help="Who asks (audited; default: your login).")
@json_option
def meter_read_now(meter_id: str, config_path: Path, wait_s: float, actor: str | None, as_json: bool) -> None:
    """Have the running daemon read METER now (ahead of routine polls) and show the reading.

    The daemon owns the line: this writes a request and waits for its outcome.  Exit 0 when read,
    1 when the meter did not answer, the request expired or no outcome came within --wait (is the
    daemon running? the request stays pending and expires 60 s after it was made), 2 for an unknown
    meter."""
    if not METER_ID.match(meter_id):
        raise CliFailure(f"'{meter_id}' is not a meter id (letters, digits, '_', '.', '-')", 2)
    with opened_store(config_path) as (cfg, store):
        polled = sorted(m.id for m in cfg.meters)
        if meter_id not in polled:
            raise CliFailure(unknown_message("meter", meter_id, polled), 2)
        with store.tx() as conn:
            request_id = read_requests.put(conn, meter_id, f"cli:{_actor(actor)}", system_clock())
        deadline = time.monotonic() + wait_s
        while True:
            req = read_requests.get(store.conn, request_id)
            assert req is not None
            if not req.pending or time.monotonic() >= deadline:
                break
            time.sleep(WAIT_POLL_S)
        reading = None
        if req.reading_id is not None:
            row = store.one(
                "SELECT id, taken_at, quality, register_wh, outcome, delta_wh, relay FROM readings WHERE id = ?",
                req.reading_id,
            )
            reading = None if row is None else dict(row)
    data = _shown(req, reading)
    if as_json:
        emit_json(data)
    else:
        p = presenter(cfg)
        if req.status == "done" and reading is not None:
            kwh = "-" if reading["register_wh"] is None else f"{reading['register_wh'] / 1000:.3f} kWh"
            click.echo(
                f"meter {meter_id} read at {p.when(reading['taken_at'])}: {kwh}, relay {reading['relay'] or '-'}, "
                f"{reading['outcome']} (delta {reading['delta_wh'] or 0} Wh; reading {reading['id']}, request {req.id})"
            )
        elif req.pending:
            click.echo(
                f"no outcome within {wait_s:g} s (request {req.id} stays pending; is the daemon running? "
                "pmg status)",
                err=True,
            )
        else:
            click.echo(f"meter {meter_id} not read: {req.status}: {req.result} (request {req.id})", err=True)
    if req.status != "done":
        raise SystemExit(1)


for command in (meter_show, meter_read_now, meter_accept, meter_replace):
    meter.add_command(command)

