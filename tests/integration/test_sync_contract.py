"""The contract: what a running gateway publishes validates against gateway/contract/*.json.

A real gateway (simulated meters on a pty, a fast clock, a private Mosquitto) runs until it has
published usage, state snapshots, events, acks and its status; every message a head-office
subscriber received is validated against the schema its topic names.  The AsyncAPI document must
refer to every schema, and every schema must be a valid JSON Schema.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest
from support.broker import Mosquitto
from support.gateway_harness import subscriber
from support.signed_commands import running_gateway, signed
from support.waiting import async_wait_for

from gateway.core.timeutil import iso
from gateway.sync.commands.processor import CommandProcessor
from gateway.sync.contract import CONTRACT_DIR, load_schema, schema_name_for

REPO = Path(__file__).resolve().parents[2]
ASYNCAPI = REPO / "docs" / "asyncapi.yaml"


def test_every_schema_is_valid_and_referenced_by_the_asyncapi_document() -> None:
    text = ASYNCAPI.read_text()
    assert text.startswith("#") and "asyncapi: 3.0.0" in text
    refs = set(re.findall(r"\$ref: '\.\./gateway/contract/([a-z]+)\.json'", text))
    files = {p.stem for p in CONTRACT_DIR.glob("*.json")}
    assert refs == files, f"asyncapi refs {sorted(refs)} vs contract files {sorted(files)}"
    for name in files:
        jsonschema.Draft202012Validator.check_schema(load_schema(name))
    for channel in ("status", "usage", "state", "events", "acks", "reports", "commands"):
        assert re.search(rf"^  {channel}:\n    address: ", text, re.M), channel


def test_signed_commands_match_the_command_schema_and_floats_do_not() -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    validator = jsonschema.Draft202012Validator(load_schema("command"))
    until = iso(now + timedelta(hours=1))
    good = [
        signed("ping", now),
        signed("topup", now, account_id="acc1", amount="50.00"),
        signed("hold", now, op="set", hold_id="h1", kind="weather", reason="storm", until=until),
        signed("relay", now, op="set", target="m1", action="connect", reason="medical", until=until),
        signed("read", now, meter_id="m1"),
        signed("account", now, account_id="a", tariff_id="flat-cn", meters=[{"meter_id": "m1"}]),
        signed("notice", now, account_id="a", notice_id="a:20261204T120000Z", channel="letter",
               delivered_at=iso(now)),
    ]
    for cmd in good:
        validator.validate(cmd)
    bad = dict(good[1], amount=50.0)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(bad)
    for wrong in ({"channel": "pigeon"}, {"delivered_at": "tomorrow"}, {"notice_id": None}):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate({**good[-1], **wrong})


def test_what_the_gateway_publishes_validates_against_the_contract(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async def scenario() -> None:
        async with running_gateway(tmp_path, mosquitto.port, poll_s=0.25, speed=3600.0) as run:
            link = run.gateway.mqtt
            assert link is not None
            await async_wait_for(lambda: link.stats.subscribed, what="link subscribed")
            proc = CommandProcessor(run.gateway)
            now = run.gateway.clock()
            await proc.handle(
                "topup", json.dumps(signed("topup", now, account_id="acc1", amount="1.00")).encode()
            )
            await proc.handle("ping", b"{not json")  # a best-effort, unsequenced rejection
            await proc.handle("read", json.dumps(signed("read", now, meter_id="m2")).encode())
            await async_wait_for(
                lambda: run.store.scalar("SELECT COUNT(*) FROM outbox WHERE topic LIKE '%/usage'") >= 4,
                timeout=20,
                what="usage messages",
            )
            await async_wait_for(
                lambda: link.stats.acknowledged >= run.store.scalar("SELECT COUNT(*) FROM outbox"),
                what="drained",
            )

    with subscriber(mosquitto.port, "pmg/#") as hq:
        asyncio.run(scenario())
        with hq.lock:
            messages = list(hq.messages)
    validators = {}
    seen: dict[str, int] = {}
    for topic, body in messages:
        rel = topic.split("/", 2)[2]
        name = schema_name_for(rel)
        assert name is not None, f"a topic outside the contract: {topic}"
        if name not in validators:
            validators[name] = jsonschema.Draft202012Validator(load_schema(name))
        errors = sorted(validators[name].iter_errors(body), key=str)
        assert not errors, f"{topic}: {errors[0].message} in {body}"
        seen[name] = seen.get(name, 0) + 1
    for name in ("status", "usage", "state", "event", "ack"):
        assert seen.get(name), f"no {name} message was published ({seen})"
    # one epoch for everything, the status included; retained state marked as a snapshot
    assert len({body["epoch"] for _t, body in messages if "epoch" in body}) == 1
    assert all(body["snapshot"] is True for topic, body in messages if topic.endswith("/state"))
    assert all("epoch" in body for _t, body in messages if "seq" in body)
    acks = [body for topic, body in messages if topic.endswith("/acks")]
    assert any("seq" not in a and a["code"] == "malformed" for a in acks)
    assert any(a["type"] == "read" and a["status"] == "applied" for a in acks)
    (topup,) = [a for a in acks if a["type"] == "topup"]
    assert topup["result"]["supply"]["reason"] in ("already_on", "restored"), topup  # validated above


def test_contract_pins_the_payment_outcome_of_a_topup_ack() -> None:
    """``result.supply``: a known reason and a decimal-string shortfall, nothing else."""
    ack = {
        "schema": "pmg.ack/1", "command_id": "c1", "type": "topup", "status": "applied", "code": "applied",
        "reason": None, "at": "2026-12-02T11:00:00Z", "replay": False, "gateway_id": "gw",
        "result": {"payment_id": "c1", "balance": "-2.12",
                   "supply": {"on": False, "reason": "below_reconnect_threshold", "shortfall": "3.12",
                              "meter_id": "m1"}},
    }  # fmt: skip
    validator = jsonschema.Draft202012Validator(load_schema("ack"))
    assert not list(validator.iter_errors(ack))
    for bad in ({"shortfall": 3.12}, {"reason": "because"}, {"on": "no"}, {"extra": 1}):
        wrong = {**ack, "result": {**ack["result"], "supply": {**ack["result"]["supply"], **bad}}}
        assert list(validator.iter_errors(wrong)), bad
    missing = {k: v for k, v in ack["result"]["supply"].items() if k != "shortfall"}
    assert list(validator.iter_errors({**ack, "result": {**ack["result"], "supply": missing}}))


def test_contract_rejects_a_float_amount_in_usage() -> None:
    """The contract is strict enough to catch the mistake it exists for."""
    usage = {
        "schema": "pmg.usage/1", "meter_id": "m1", "account_id": "a", "interval_start": None,
        "interval_end": "2026-01-01T00:00:00Z", "register_wh": 10, "energy_wh": 10, "charge": 0.53,
        "balance": "1.00", "gateway_id": "gw", "epoch": "0123456789abcdef0123456789abcdef", "seq": 1,
    }  # fmt: skip
    validator = jsonschema.Draft202012Validator(load_schema("usage"))
    assert [e.path[0] for e in validator.iter_errors(usage)] == ["charge"]
    assert not list(validator.iter_errors({**usage, "charge": "0.53"}))
