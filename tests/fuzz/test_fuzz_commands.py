"""Fuzzing ``gateway.sync.commands.processor``: any payload on any command topic is an ack, never a crash.

Two populations, both through the real ``CommandProcessor`` of a running in-process gateway:
- arbitrary bytes and arbitrary JSON (unsigned, or signed by a key the gateway does not know): always
  rejected with a code and a one-line reason, and what a command could change does not change by one byte;
- correctly *signed* commands whose fields hypothesis mutates (wrong types, missing or extra keys,
  odd amounts and instants): each is applied or rejected with a reason; a rejected one changes nothing,
  and whatever happened, ``verify`` finds the ledger consistent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.broker import Mosquitto
from support.signed_commands import (
    HQ_KEY,
    HQ_KEY_ID,
    OTHER_KEY,
    Running,
    command,
    command_state,
    running_gateway,
    settled,
)

from gateway.ledger.verify import verify
from gateway.sync.commands.processor import CommandProcessor
from gateway.sync.signing import sign_command

KINDS = ["topup", "tariff", "account", "hold", "relay", "ping", "notice"]  # "read" waits on the bus: not fuzzed
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
odd_strings = st.sampled_from(
    ["", "0", "-1", "1e3", "0.001", "10.00", "99999999999999.99", "acc1", "m1", "set", "clear", "connect",
     "disconnect", "weather", "2026-01-01T00:00:00Z", "yesterday", "\u0000", "x" * 300, "NaN", "Infinity"]
)


class Harness:
    def __init__(self, loop: asyncio.AbstractEventLoop, running: Running) -> None:
        self.loop = loop
        self.running = running
        self.processor = CommandProcessor(running.gateway)

    def handle(self, kind: str, payload: bytes) -> dict[str, Any]:
        return self.loop.run_until_complete(self.processor.handle(kind, payload))


@pytest.fixture
def harness(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Harness]:
    loop = asyncio.new_event_loop()
    manager = running_gateway(tmp_path, mosquitto.port)
    running = loop.run_until_complete(manager.__aenter__())
    try:
        loop.run_until_complete(settled(running))
        yield Harness(loop, running)
    finally:
        loop.run_until_complete(manager.__aexit__(None, None, None))
        loop.close()


def assert_rejected(ack: dict[str, Any]) -> None:
    assert ack["status"] == "rejected", ack
    assert ack["code"] and ack["reason"] and "\n" not in str(ack["reason"]), ack


@pytest.mark.slow
def test_arbitrary_payloads_are_rejected_and_change_nothing(harness: Harness) -> None:
    store = harness.running.store
    before = command_state(store)

    @FUZZ
    @given(
        kind=st.sampled_from(KINDS) | st.text(max_size=12),
        payload=st.binary(max_size=200)
        | json_values.map(lambda v: json.dumps(v).encode())
        | st.dictionaries(st.sampled_from(["id", "type", "sig", "key_id", "amount"]), json_values).map(
            lambda v: json.dumps(v).encode()
        ),
    )
    def check(kind: str, payload: bytes) -> None:
        assert_rejected(harness.handle(kind, payload))

    check()
    assert command_state(store) == before


@pytest.mark.slow
def test_signed_commands_with_mutated_fields_are_applied_or_rejected_cleanly(harness: Harness) -> None:
    store = harness.running.store
    now = datetime.now(UTC)
    seen: dict[str, int] = {"applied": 0, "rejected": 0}

    @FUZZ
    @given(
        kind=st.sampled_from(KINDS),
        field=st.sampled_from(
            ["account_id", "amount", "payment_id", "tariff", "op", "hold_id", "kind", "reason", "until",
             "target", "action", "meters", "protected", "emergency_credit", "issued_at", "expires_at", "id",
             "gateway_id", "extra", "notice_id", "channel", "delivered_at"]
        ),
        value=odd_strings | json_values,
        drop=st.booleans(),
        foreign_key=st.booleans(),
    )
    def check(kind: str, field: str, value: Any, drop: bool, foreign_key: bool) -> None:
        body = command(kind, now, account_id="acc1", amount="1.00", op="set", hold_id="h1", kind="weather",
                       reason="fuzz", target="m1", action="connect", tariff={}, meter_id="m1",
                       notice_id="acc1:20260101T000000Z", channel="sms", delivered_at="2026-01-01T00:00:00Z")
        if drop:
            body.pop(field, None)
        else:
            body[field] = value
        key = OTHER_KEY if foreign_key else HQ_KEY
        try:
            payload = json.dumps(sign_command(body, key, HQ_KEY_ID)).encode()
        except (ValueError, TypeError):
            return  # the head office's own signer refuses it (floats, say): it never reaches a gateway
        before = command_state(store)
        ack = harness.handle(kind, payload)
        assert ack["status"] in ("applied", "rejected"), ack
        seen[ack["status"]] += 1
        if ack["status"] == "rejected":
            assert_rejected(ack)
            assert command_state(store) == before, f"a rejected command changed the ledger: {ack}"
        if foreign_key:  # an unknown key never gets past authentication (a bad envelope fails earlier)
            assert ack["status"] == "rejected" and ack["code"] in ("unauthenticated", "malformed"), ack
        assert verify(store) == []

    check()
    assert seen["rejected"] > 0
