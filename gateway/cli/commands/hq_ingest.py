"""The head office's PostgreSQL ingest: ``pmg hq ingest``, ``pmg hq gaps``, ``pmg hq reconcile``,
``pmg hq quarantine`` (docs/scaling.md).

Added to the ``pmg hq`` group.  The ``hq`` package and psycopg are imported inside the commands: a
gateway installed without the ``hq`` extra still starts ``pmg``, and only these commands say what is
missing.
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import signal
import socket
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from gateway.cli.common import CliFailure, FiniteFloat
from gateway.cli.params import ConnectionText, ShareName, TopicPrefix

DSN_HELP = "PostgreSQL connection string, e.g. postgresql://hq@db.example/hq (or PMG_HQ_DSN)."


def _need_psycopg() -> None:
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        raise CliFailure("the head office's ingest needs psycopg: pip install 'prepaid-meter-gateway[hq]'", 1) from None


def _connect(dsn: str) -> Any:
    _need_psycopg()
    import psycopg

    try:
        return psycopg.connect(dsn, connect_timeout=10, autocommit=True)
    except psycopg.Error as exc:
        raise CliFailure(f"cannot connect to PostgreSQL: {' '.join(str(exc).split())[:300]}", 1) from None


def _run_worker(config: Any, ready: Any, stop_after: float | None) -> None:
    """A worker process (``--workers N``): reports ``ok`` or its error line, then runs until SIGTERM."""
    from hq.ingest.worker import IngestError, IngestWorker

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    try:
        worker = IngestWorker(config).start()
    except IngestError as exc:
        ready.put(str(exc))
        sys.exit(1)
    ready.put("ok")
    done.wait(stop_after)
    worker.stop()
    print(json.dumps({"client_id": config.client_id, **worker.stats.as_dict()}), file=sys.stderr, flush=True)


def _run_here(config: Any, group: str, prefix: str, run_for: float | None) -> None:
    from hq.ingest.worker import IngestError, IngestWorker

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        worker = IngestWorker(config).start()
    except IngestError as exc:
        raise CliFailure(str(exc), 1) from None
    click.echo(f"pmg hq ingest: consuming $share/{group}/{prefix}/+/# as {config.client_id}", err=True)
    try:
        done.wait(run_for)
    except KeyboardInterrupt:
        pass
    finally:
        worker.stop()
    click.echo(json.dumps({"client_id": config.client_id, **worker.stats.as_dict()}), err=True)


@click.command("ingest")
@click.option("--dsn", envvar="PMG_HQ_DSN", required=True, type=ConnectionText(), help=DSN_HELP)
@click.option("--host", required=True, type=ConnectionText(), help="The broker (or the broker cluster's address).")
@click.option("--port", type=click.IntRange(1, 65535), default=8883, show_default=True)
@click.option("--plaintext", is_flag=True, help="Connect without TLS (must be asked for explicitly).")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False))
@click.option("--cert", "cert_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--username")
@click.option("--password", envvar="PMG_HQ_PASSWORD")
@click.option("--prefix", type=TopicPrefix(), default="pmg", show_default=True)
@click.option("--group", type=ShareName(), default="pmg-ingest", show_default=True, help="Shared subscription group ($share/<group>/…).")
@click.option("--client-id", help="Stable id prefix (worker i is <id>-i); default pmg-ingest-<host name>.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Worker processes.")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=500, show_default=True)
@click.option("--linger", type=FiniteFloat(min=0, max=10), default=0.05, show_default=True,
              help="Seconds a batch waits for more messages.")
@click.option("--signing-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Head-office private key (pmg keys generate): signs resend commands; without it gaps are only listed.")
@click.option("--key-id", help="Defaults to the id derived from the key.")
@click.option("--gap-delay", type=FiniteFloat(min=0, max=10**6), default=60.0, show_default=True,
              help="Seconds a gap stays open before a resend is asked for.")
@click.option("--resend-retry", type=FiniteFloat(min=1, max=10**6), default=300.0, show_default=True,
              help="Seconds before the same gap is asked for again.")
@click.option("--run-for", type=FiniteFloat(min=0, max=10**9), help="Stop after this many seconds (tests, benches).")
def hq_ingest(
    dsn: str, host: str, port: int, plaintext: bool, ca_file: str | None, cert_file: str | None,
    key_file: str | None, username: str | None, password: str | None, prefix: str, group: str,
    client_id: str | None, workers: int, batch_size: int, linger: float, signing_key: Path | None,
    key_id: str | None, gap_delay: float, resend_retry: float, run_for: float | None,
) -> None:
    """Consume every gateway's messages into PostgreSQL through a shared subscription; runs until stopped.

    Each message is acknowledged to the broker only after the transaction that stored it committed.
    Prints each worker's figures (JSON) on stderr when it stops.
    """
    _need_psycopg()
    from hq.ingest.worker import IngestConfig

    base = IngestConfig(
        dsn=dsn, host=host, port=port, tls=not plaintext, ca_file=ca_file, cert_file=cert_file,
        key_file=key_file, username=username, password=password, prefix=prefix, group=group,
        batch_size=batch_size, linger_s=linger, signing_key=signing_key, signing_key_id=key_id,
        gap_delay_s=gap_delay, resend_retry_s=resend_retry,
    )
    stem = client_id or f"pmg-ingest-{socket.gethostname()}"
    if workers == 1:  # in this process: a kill -9 of this pid is the worker's death
        _run_here(replace(base, client_id=f"{stem}-0"), group, prefix, run_for)
        return
    ctx = multiprocessing.get_context("spawn")
    ready: Any = ctx.Queue()
    procs = [
        ctx.Process(target=_run_worker, args=(replace(base, client_id=f"{stem}-{i}"), ready, run_for), daemon=False)
        for i in range(workers)
    ]
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    for p in procs:
        p.start()
    try:
        for _ in procs:
            try:
                answer = ready.get(timeout=60)
            except queue.Empty:
                answer = "a worker did not start within 60 s"
            if answer != "ok":
                raise CliFailure(answer, 1)
        click.echo(f"pmg hq ingest: {workers} worker(s) consuming $share/{group}/{prefix}/+/# into PostgreSQL", err=True)
        while not done.is_set() and any(p.is_alive() for p in procs):
            done.wait(0.5)
        failed = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
        if failed and not done.is_set():
            raise CliFailure(f"{len(failed)} worker(s) stopped with an error", 1)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(15)
            if p.is_alive():
                p.kill()
                p.join()


@click.command("gaps")
@click.option("--dsn", envvar="PMG_HQ_DSN", required=True, type=ConnectionText(), help=DSN_HELP)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.argument("gateway", required=False)
def hq_gaps(dsn: str, as_json: bool, gateway: str | None) -> None:
    """What is still missing per gateway and epoch (exit 1 if anything is): open gaps, and ranges lost for good."""
    from hq.ingest.gaps import lost, open_gaps

    with _connect(dsn) as conn:
        missing = open_gaps(conn, gateway)
        gone = lost(conn, gateway)
    if as_json:
        click.echo(json.dumps({
            "gaps": [{"gateway_id": g.gateway_id, "epoch": g.epoch, "from_seq": g.from_seq, "to_seq": g.to_seq,
                      "opened_at": g.opened_at.isoformat(), "resends": g.resends,
                      "resend_at": g.resend_at.isoformat() if g.resend_at else None} for g in missing],
            "lost": [{"gateway_id": gw, "epoch": ep, "from_seq": a, "to_seq": b} for gw, ep, a, b in gone],
        }))
    else:
        for g in missing:
            asked = f", resend asked {g.resends}x, last {g.resend_at:%Y-%m-%d %H:%M:%S}" if g.resend_at else ""
            click.echo(f"{g.gateway_id} epoch {g.epoch} seq {g.from_seq}-{g.to_seq} ({g.size}) "
                       f"missing since {g.opened_at:%Y-%m-%d %H:%M:%S}{asked}")
        for gw, ep, a, b in gone:
            click.echo(f"{gw} epoch {ep} seq {a}-{b} ({b - a + 1}) lost: the gateway no longer keeps them")
        if not missing and not gone:
            click.echo("nothing missing")
    if missing or gone:
        sys.exit(1)


@click.command("reconcile")
@click.option("--dsn", envvar="PMG_HQ_DSN", required=True, type=ConnectionText(), help=DSN_HELP)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.argument("gateway", required=False)
def hq_reconcile(dsn: str, as_json: bool, gateway: str | None) -> None:
    """Head-office balances, energy and payments against the gateways' reports and chain heads (exit 1 on a mismatch)."""
    from hq.ingest.reconcile import reconcile

    with _connect(dsn) as conn:
        mismatches, counts = reconcile(conn, gateway)
    if as_json:
        click.echo(json.dumps({"compared": counts, "mismatches": [m.__dict__ for m in mismatches]}))
    else:
        for m in mismatches:
            click.echo(m.line())
        click.echo(
            f"{len(mismatches)} mismatch(es); compared {counts['reports']} report(s), {counts['accounts']} "
            f"account figure(s), {counts['chain_heads']} chain head(s) of {counts['gateways']} gateway(s)"
        )
    if mismatches:
        sys.exit(1)


@click.command("quarantine")
@click.option("--dsn", envvar="PMG_HQ_DSN", required=True, type=ConnectionText(), help=DSN_HELP)
@click.option("--limit", type=click.IntRange(1, 10**6), default=50, show_default=True)
def hq_quarantine(dsn: str, limit: int) -> None:
    """The latest messages the ingest refused, with the reason (JSON lines)."""
    with _connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, received_at, topic, gateway_id, reason, payload FROM quarantine ORDER BY id DESC LIMIT %s",
            (limit,),
        ).fetchall()
    for qid, at, topic, gw, reason, payload in rows:
        click.echo(json.dumps({"id": qid, "received_at": at.isoformat(), "topic": topic, "gateway_id": gw,
                               "reason": reason, "payload": bytes(payload).decode("utf-8", "replace")[:2000]},
                              ensure_ascii=False))


def hq_group() -> click.Group:
    """``pmg hq`` with these commands added: the group lives in ``hq.py``, these beside it, and neither
    is imported until ``pmg hq`` runs (gateway.cli.lazy)."""
    from gateway.cli.commands.hq import hq

    for command in (hq_ingest, hq_gaps, hq_reconcile, hq_quarantine):
        hq.add_command(command)
    return hq
