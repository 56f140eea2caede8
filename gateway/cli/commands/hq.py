"""Head-office tools: ``pmg keys generate``, ``pmg command sign``, ``pmg hq tail``, ``pmg hq topup``.

They are what a head office (or a test) needs to talk to gateways: an Ed25519 key pair whose public
half goes into each gateway's ``[mqtt.command_keys]``, a signer for commands, a reference consumer
that checks sequence continuity and deduplicates, and an operator's top-up.  Every ``pmg hq`` command
reaches the broker through ``hq.connect`` (``broker_options``): it cannot connect or log in, it says
why in one line and exits 1.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from gateway.cli.common import CliFailure, FiniteFloat
from gateway.cli.params import ConnectionText, ShareName, TopicPrefix
from gateway.sync.signing import (
    generate_key,
    key_id_for,
    load_private_key,
    public_key_b64,
    sign_command,
    write_private_key,
)

if TYPE_CHECKING:
    from hq.connect import Broker

F = TypeVar("F", bound=Callable[..., Any])
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
    """The head office's side: a reference consumer and an operator's top-up."""


def broker_options(fn: F) -> F:
    """The options every ``pmg hq`` command takes to reach the broker (see ``broker_from``)."""
    options = [
        click.option("--host", required=True, type=ConnectionText(), help="The head office's MQTT broker."),
        click.option("--port", type=click.IntRange(1, 65535), default=8883, show_default=True),
        click.option("--plaintext", is_flag=True, help="Connect without TLS (must be asked for explicitly)."),
        click.option("--ca-file", type=click.Path(exists=True, dir_okay=False)),
        click.option("--cert", "cert_file", type=click.Path(exists=True, dir_okay=False)),
        click.option(
            "--key", "key_file", type=click.Path(exists=True, dir_okay=False), help="TLS client key."
        ),
        click.option("--username"),
        click.option("--password", envvar="PMG_HQ_PASSWORD"),
        click.option(
            "--protocol",
            type=click.Choice(["5", "3.1.1"]),
            default="5",
            show_default=True,
            help="MQTT protocol version (3.1.1 for brokers that speak only that).",
        ),
        click.option(
            "--connect-deadline",
            type=FiniteFloat(min=0.1, max=3600),
            default=10.0,
            show_default=True,
            help="Seconds to connect (and log in) before failing.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def broker_from(kw: dict[str, Any], client_id: str, *, persistent: bool) -> Broker:
    """The ``Broker`` that ``broker_options`` describe (the options are popped from ``kw``)."""
    from hq.connect import Broker, TlsOptions

    plaintext = kw.pop("plaintext")
    tls = TlsOptions(kw.pop("ca_file"), kw.pop("cert_file"), kw.pop("key_file"))
    return Broker(
        kw.pop("host"),
        kw.pop("port"),
        tls=None if plaintext else tls,
        username=kw.pop("username"),
        password=kw.pop("password"),
        client_id=client_id,
        protocol=kw.pop("protocol"),
        persistent=persistent,
    )


@hq.command("tail")
@broker_options
@click.option("--prefix", type=TopicPrefix(), default="pmg", show_default=True)
@click.option("--shared-group", type=ShareName(), help="Subscribe as $share/<group>/… to share the load with other consumers.")
@click.option(
    "--store", "store_path", type=click.Path(dir_okay=False, path_type=Path), help="Keep messages in SQLite."
)
@click.option(
    "--client-id", default="pmg-hq", show_default=True, help="Stable id: the broker keeps the session."
)
@click.option("--count", type=click.IntRange(1, 10**9), help="Exit after this many new messages.")
@click.option(
    "--idle-exit", type=FiniteFloat(min=0, max=10**7), help="Exit after this many seconds without a message."
)
@click.option("--quiet", is_flag=True, help="Do not print messages, only the summary.")
def hq_tail(
    prefix: str,
    shared_group: str | None,
    store_path: Path | None,
    client_id: str,
    count: int | None,
    idle_exit: float | None,
    quiet: bool,
    **kw: Any,
) -> None:
    """Subscribe to every gateway under PREFIX; print (or store) what arrives; report gaps at the end.

    Fails with one line (exit 1) if it cannot connect, log in or subscribe; exits 1 at the end if a
    gap remains in any (gateway, epoch)."""
    from hq.consumer import HqConsumer, MessageStore, Received

    deadline = kw.pop("connect_deadline")
    broker = broker_from(kw, client_id, persistent=True)
    state = {"new": 0, "last": time.monotonic()}
    done = threading.Event()

    def on_received(r: Received) -> None:
        state["last"] = time.monotonic()
        if not r.duplicate:
            state["new"] += 1
        if not quiet:
            line = {
                "gateway_id": r.gateway_id,
                "epoch": r.epoch,
                "topic": r.topic,
                "seq": r.seq,
                "duplicate": r.duplicate,
                "counted": r.counted,
                "body": r.body,
            }
            click.echo(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
        if count is not None and state["new"] >= count:
            done.set()

    store = MessageStore(store_path) if store_path else None
    consumer = HqConsumer(
        broker.host,
        broker.port,
        prefix=prefix,
        shared_group=shared_group,
        tls=broker.tls,
        username=broker.username,
        password=broker.password,
        client_id=client_id,
        store=store,
        on_received=on_received,
        protocol=broker.protocol,
    )
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        consumer.start(deadline)
        state["last"] = time.monotonic()
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
    tracker = consumer.tracker
    summary = [
        {
            "gateway_id": gw,
            "epoch": epoch,
            "highest_seq": tracker.highest(gw, epoch),
            "gaps": tracker.gaps(gw, epoch),
            "duplicates": tracker.duplicates_by_key.get((gw, epoch), 0),
        }
        for gw, epoch in tracker.streams()
    ]
    click.echo(json.dumps({"summary": summary, "new": state["new"]}), err=True)
    if any(row["gaps"] for row in summary):
        sys.exit(1)


@hq.command("topup")
@broker_options
@click.option("--gateway", "gateway_id", required=True, help="The gateway's id.")
@click.option("--account", "account_id", required=True)
@click.option("--amount", required=True, help='A positive decimal in the currency\'s units, e.g. "50.00".')
@click.option("--id", "command_id", help="The command's (and payment's) id; repeat it to repeat safely.")
@click.option(
    "--signing-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    envvar="PMG_HQ_SIGNING_KEY",
    help="The head office's Ed25519 key (as `pmg keys generate` made it).",
)
@click.option("--key-id", help="Defaults to the id derived from the key.")
@click.option(
    "--minor-digits",
    type=click.IntRange(0, 4),
    default=2,
    show_default=True,
    help="The currency's decimals (the gateway's minor_digits).",
)
@click.option("--prefix", type=TopicPrefix(), default="pmg", show_default=True)
@click.option(
    "--deadline",
    type=FiniteFloat(min=0.5, max=86400),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the ack (exit 4 without one).",
)
@click.option(
    "--wait-power", is_flag=True, help="If supply is being restored, wait for the relay's confirmation."
)
@click.option(
    "--power-deadline",
    type=FiniteFloat(min=0.5, max=86400),
    default=300.0,
    show_default=True,
    help="Seconds to wait for it after the ack.",
)
@click.option(
    "--valid-for",
    type=FiniteFloat(min=60, max=7 * 86400),
    default=86400.0,
    show_default=True,
    help="Seconds the signed command stays valid (at most 7 days).",
)
@click.option(
    "--journal",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Signed commands kept for repeats (default: $XDG_STATE_HOME/pmg/hq-commands.sqlite).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def hq_topup(
    gateway_id: str,
    account_id: str,
    amount: str,
    command_id: str | None,
    signing_key: Path,
    key_id: str | None,
    minor_digits: int,
    prefix: str,
    deadline: float,
    wait_power: bool,
    power_deadline: float,
    valid_for: float,
    journal: Path | None,
    as_json: bool,
    **kw: Any,
) -> None:
    """Top up ACCOUNT on GATEWAY: sign, publish, wait for the ack and the supply outcome.

    Exit 0 applied (a repeat of an applied id: the same ack, nothing applied twice), 1 rejected or
    failed, 2 bad input, 4 no answer within --deadline (safe to repeat with the same --id)."""
    from datetime import timedelta

    from hq.topup import Journal, NoAnswer, Topup, default_journal, send

    connect_deadline = kw.pop("connect_deadline")
    topup = Topup.parse(gateway_id, account_id, amount, command_id, minor_digits)
    if key_id is not None and not KEY_ID.match(key_id):
        raise CliFailure(f"--key-id {key_id!r} is not a key id (letters, digits, '_', '.', ':', '-')", 2)
    key = load_private_key(signing_key)
    broker = broker_from(kw, f"pmg-hq-topup-{topup.command_id}"[:64], persistent=False)
    book = Journal(journal or default_journal())
    try:
        cmd = book.signed(topup, key, key_id or key_id_for(key.public_key()), timedelta(seconds=valid_for))
    finally:
        book.close()
    try:
        outcome = send(
            broker,
            prefix,
            cmd,
            deadline_s=deadline,
            wait_power_s=power_deadline if wait_power else None,
            connect_deadline_s=connect_deadline,
        )
    except NoAnswer as exc:
        raise CliFailure(f"{exc}; safe to repeat with --id {topup.command_id}", 4) from None
    if as_json:
        out = {"command_id": topup.command_id, "ack": outcome.ack, "power": outcome.power}
        click.echo(json.dumps(out, ensure_ascii=False))
    else:
        for line in _topup_lines(topup.command_id, outcome.ack, outcome.power):
            click.echo(line)
    if not outcome.applied or (outcome.power is not None and outcome.power.get("kind") != "relay_confirmed"):
        sys.exit(1)


def _topup_lines(command_id: str, ack: dict[str, Any], power: dict[str, Any] | None) -> list[str]:
    """The operator's reading of an ack and a relay event."""
    result = ack.get("result") or {}
    status = ack.get("status")
    head = f"top-up {command_id}: {status}"
    if status == "applied":
        head += f" — {result.get('amount')} to {result.get('account_id')}, balance {result.get('balance')}"
        if ack.get("replay"):
            head += " (a repeat: the original ack; nothing applied twice)"
    else:
        head += f" ({ack.get('code')}: {ack.get('reason')})"
    lines = [head]
    supply = result.get("supply")
    if isinstance(supply, dict):
        on = "on" if supply.get("on") else "off"
        line = f"supply: {on} — {supply.get('reason')} (meter {supply.get('meter_id')})"
        if str(supply.get("shortfall") or "0").strip("0.") != "":
            line += f", {supply.get('shortfall')} more needed"
        lines.append(line)
    if power is not None:
        detail = power.get("detail") or {}
        line = f"power: {power.get('kind')} on meter {power.get('meter_id')} at {power.get('at')}"
        if "payment_to_power_s" in detail:
            line += f", {detail['payment_to_power_s']} s after the payment"
        if power.get("kind") != "relay_confirmed":
            line += f" ({detail.get('error')})"
        lines.append(line)
    return lines

