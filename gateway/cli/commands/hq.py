"""Head-office tools: ``pmg keys generate``, ``pmg command sign``, ``pmg hq tail``.

They are what a head office (or a test) needs to talk to gateways: an Ed25519 key pair whose public
half goes into each gateway's ``[mqtt.command_keys]``, a signer for commands, and a reference
consumer that checks sequence continuity and deduplicates.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from gateway.cli.common import CliFailure, FiniteFloat
from gateway.sync.signing import (
    generate_key,
    key_id_for,
    load_private_key,
    public_key_b64,
    sign_command,
    write_private_key,
)

KEY_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


@click.group()
def keys() -> None:
    """Head-office command signing keys."""


@keys.command("generate")
@click.option(
    "-o",
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Private key file to create (mode 0600; never overwritten).",
)
def keys_generate(out: Path) -> None:
    """Make an Ed25519 key pair; print the key_id and public key for the gateway config."""
    key = generate_key()
    try:
        write_private_key(out, key)
    except FileExistsError:
        raise CliFailure(f"{out} exists; refusing to overwrite a private key", 2) from None
    pub = key.public_key()
    click.echo(f"key_id = {key_id_for(pub)}")
    click.echo(f"public_key = {public_key_b64(pub)}")
    click.echo(f'# gateway config:\n[mqtt.command_keys]\n"{key_id_for(pub)}" = "{public_key_b64(pub)}"')


@click.group("command")
def command_group() -> None:
    """Head-office commands to gateways."""


@command_group.command("sign")
@click.option(
    "-k", "--key", "key_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True
)
@click.option("--key-id", help="Defaults to the id derived from the key (as `pmg keys generate` printed).")
@click.argument("source", type=click.File("r"), default="-")
def command_sign(key_file: Path, key_id: str | None, source: Any) -> None:
    """Sign a JSON command read from SOURCE (a file, or stdin) and print it."""
    try:
        body = json.loads(source.read())
    except ValueError as exc:
        raise CliFailure(f"{getattr(source, 'name', 'input')}: not JSON ({exc})", 2) from None
    except RecursionError:  # json.loads of 100,000 nested brackets
        raise CliFailure(f"{getattr(source, 'name', 'input')}: JSON nested too deeply", 2) from None
    if not isinstance(body, dict):
        raise CliFailure("a command is a JSON object", 2)
    if key_id is not None and not KEY_ID.match(key_id):
        raise CliFailure(f"--key-id {key_id!r} is not a key id (letters, digits, '_', '.', ':', '-')", 2)
    key = load_private_key(key_file)
    click.echo(
        json.dumps(sign_command(body, key, key_id or key_id_for(key.public_key())), ensure_ascii=False)
    )


@click.group()
def hq() -> None:
    """A reference head-office consumer."""


@hq.command("tail")
@click.option("--host", required=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8883, show_default=True)
@click.option("--plaintext", is_flag=True, help="Connect without TLS (must be asked for explicitly).")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False))
@click.option("--cert", "cert_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--username")
@click.option("--password", envvar="PMG_HQ_PASSWORD")
@click.option("--prefix", default="pmg", show_default=True)
@click.option("--shared-group", help="Subscribe as $share/<group>/… to share the load with other consumers.")
@click.option(
    "--store", "store_path", type=click.Path(dir_okay=False, path_type=Path), help="Keep messages in SQLite."
)
@click.option(
    "--client-id", default="pmg-hq", show_default=True, help="Stable id: the broker keeps the session."
)
@click.option("--count", type=click.IntRange(1, 10**9), help="Exit after this many new messages.")
@click.option("--idle-exit", type=FiniteFloat(min=0, max=10**7), help="Exit after this many seconds without a message.")
@click.option("--quiet", is_flag=True, help="Do not print messages, only the summary.")
def hq_tail(
    host: str,
    port: int,
    plaintext: bool,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    username: str | None,
    password: str | None,
    prefix: str,
    shared_group: str | None,
    store_path: Path | None,
    client_id: str,
    count: int | None,
    idle_exit: float | None,
    quiet: bool,
) -> None:
    """Subscribe to every gateway under PREFIX; print (or store) what arrives; report gaps at the end."""
    from hq.consumer import HqConsumer, MessageStore, Received, TlsOptions

    state = {"new": 0, "last": time.monotonic()}
    done = threading.Event()

    def on_received(r: Received) -> None:
        state["last"] = time.monotonic()
        if not r.duplicate:
            state["new"] += 1
        if not quiet:
            line = {
                "gateway_id": r.gateway_id,
                "topic": r.topic,
                "seq": r.seq,
                "duplicate": r.duplicate,
                "body": r.body,
            }
            click.echo(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
        if count is not None and state["new"] >= count:
            done.set()

    store = MessageStore(store_path) if store_path else None
    consumer = HqConsumer(
        host,
        port,
        prefix=prefix,
        shared_group=shared_group,
        tls=None if plaintext else TlsOptions(ca_file, cert_file, key_file),
        username=username,
        password=password,
        client_id=client_id,
        store=store,
        on_received=on_received,
    )
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    consumer.start()
    try:
        while not done.wait(0.2):
            if idle_exit is not None and time.monotonic() - state["last"] > idle_exit:
                break
            if consumer.last_error:
                raise CliFailure(consumer.last_error)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.stop()
        if store is not None:
            store.close()
    summary = {
        gw: {
            "highest_seq": consumer.tracker.highest(gw),
            "gaps": consumer.tracker.gaps(gw),
            "duplicates": consumer.tracker.duplicates.get(gw, 0),
        }
        for gw in consumer.tracker.gateways()
    }
    click.echo(json.dumps({"summary": summary, "new": state["new"]}), err=True)
    if any(v["gaps"] for v in summary.values()):
        sys.exit(1)


def register(cli: click.Group) -> None:
    cli.add_command(keys)
    cli.add_command(command_group)
    cli.add_command(hq)
