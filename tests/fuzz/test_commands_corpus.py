"""A corpus of bad commands: each is rejected with an ack that says why, and the ledger does not move.

"Does not move" is checked byte for byte: a dump of every money and power table before the corpus
equals the dump after it.  The commands go through the real MQTT path too (published to the broker,
received by the gateway's link), not only through the processor.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from support.broker import Mosquitto
from support.gateway_harness import subscriber
from support.signed_commands import (
    HQ_KEY,
    HQ_KEY_ID,
    OTHER_KEY,
    command,
    money_dump,
    running_gateway,
    signed,
)
from support.waiting import async_wait_for

from gateway.core.timeutil import iso, parse_iso
from gateway.policy import notices
from gateway.sync.commands.processor import MAX_COMMAND_BYTES, CommandProcessor
from gateway.sync.signing import sign_command

Case = tuple[str, str, bytes, str]  # name, topic type, payload, expected code


def _j(obj: Any) -> bytes:
    return json.dumps(obj).encode()


_fresh = itertools.count(1)


def _resign(cmd: dict[str, Any], *, fresh: bool = True, **changes: Any) -> bytes:
    """Re-sign ``cmd`` with ``changes``; a fresh id unless asked not to (each case stands alone)."""
    body = {**cmd, **changes}
    if fresh and "id" in body and "id" not in changes:
        body["id"] = f"corpus-{next(_fresh)}"
    return _j(sign_command(body, HQ_KEY, HQ_KEY_ID))


def corpus(now: datetime, applied: dict[str, Any], notice_id: str = "acc2:unknown") -> list[Case]:
    def topup(**fields: Any) -> dict[str, Any]:
        return signed("topup", now, **{"account_id": "acc1", "amount": "10.00", **fields})

    def notice(**fields: Any) -> dict[str, Any]:
        ok = {"account_id": "acc2", "notice_id": notice_id, "channel": "sms", "delivered_at": iso(now)}
        return signed("notice", now, **{**ok, **fields})

    good = topup()
    tampered = dict(good, amount="1000.00")  # signature no longer matches
    cases: list[Case] = [
        ("empty payload", "topup", b"", "malformed"),
        ("not json", "topup", b"topup acc1 50", "malformed"),
        ("truncated json", "topup", _j(good)[:-5], "malformed"),
        ("json array", "topup", b"[1,2,3]", "malformed"),
        ("json string", "topup", b'"topup"', "malformed"),
        ("json null", "topup", b"null", "malformed"),
        ("deeply nested", "topup", b"[" * 60000 + b"]" * 60000, "oversized"),
        ("nested just under the size limit", "topup", b"[" * 30000 + b"]" * 30000, "malformed"),
        ("NaN constant", "topup", _j(good).replace(b'"10.00"', b"NaN"), "malformed"),
        ("invalid utf-8", "topup", b'{"id": "\xff\xfe"}', "malformed"),
        ("oversized", "topup", _j({**good, "pad": "x" * MAX_COMMAND_BYTES}), "oversized"),
        ("unsigned", "topup", _j({k: v for k, v in good.items() if k != "sig"}), "unauthenticated"),
        ("empty sig", "topup", _j({**good, "sig": ""}), "malformed"),
        ("sig not base64", "topup", _j({**good, "sig": "!!!notbase64!!!"}), "unauthenticated"),
        (
            "sig wrong length",
            "topup",
            _j({**good, "sig": base64.b64encode(b"x" * 10).decode()}),
            "unauthenticated",
        ),
        (
            "sig all zero",
            "topup",
            _j({**good, "sig": base64.b64encode(bytes(64)).decode()}),
            "unauthenticated",
        ),
        ("tampered amount", "topup", _j(tampered), "unauthenticated"),
        ("tampered account", "topup", _j(dict(good, account_id="acc2")), "unauthenticated"),
        ("unknown key id", "topup", _j(dict(good, key_id="hq-unknown")), "unauthenticated"),
        (
            "signed by an unknown key",
            "topup",
            _j(sign_command(command("topup", now, account_id="acc1", amount="1.00"), OTHER_KEY, HQ_KEY_ID)),
            "unauthenticated",
        ),
        ("sig as number", "topup", _j({**good, "sig": 12345}), "malformed"),
        ("missing id", "topup", _resign({k: v for k, v in good.items() if k != "id"}), "malformed"),
        ("id too long", "topup", _resign(good, id="x" * 300), "malformed"),
        ("id with spaces", "topup", _resign(good, id="a b"), "malformed"),
        ("unknown type", "format", _resign(good, type="format"), "malformed"),
        (
            "missing expires_at",
            "topup",
            _resign({k: v for k, v in good.items() if k != "expires_at"}),
            "malformed",
        ),
        ("naive issued_at", "topup", _resign(good, issued_at="2026-01-01T00:00:00"), "malformed"),
        ("issued_at not a time", "topup", _resign(good, issued_at="yesterday"), "malformed"),
        ("topic/type mismatch", "hold", _resign(good), "malformed"),
        ("other gateway", "topup", _resign(good, gateway_id="gw-other"), "wrong_gateway"),
        ("expired", "topup", _resign(good, expires_at=iso(now - timedelta(seconds=1))), "expired"),
        (
            "issued in the future",
            "topup",
            _resign(good, issued_at=iso(now + timedelta(hours=1)), expires_at=iso(now + timedelta(hours=2))),
            "not_yet_valid",
        ),
        ("lifetime too long", "topup", _resign(good, expires_at=iso(now + timedelta(days=30))), "invalid"),
        ("replayed with other content", "topup", _resign(applied, fresh=False, amount="99.00"), "conflict"),
        (
            "amount as float",
            "topup",
            _j(dict(good, amount=10.5)),
            "unauthenticated",
        ),  # floats cannot be signed
        ("amount as int", "topup", _resign(good, amount=10), "invalid"),
        ("amount negative", "topup", _resign(good, amount="-10.00"), "invalid"),
        ("amount zero", "topup", _resign(good, amount="0.00"), "invalid"),
        ("amount absurd", "topup", _resign(good, amount="999999999999999"), "invalid"),
        ("amount exponent", "topup", _resign(good, amount="1e9"), "invalid"),
        ("amount too many decimals", "topup", _resign(good, amount="10.001"), "invalid"),
        ("amount with currency", "topup", _resign(good, amount="¥10"), "invalid"),
        ("amount empty", "topup", _resign(good, amount=""), "invalid"),
        ("amount null", "topup", _resign(good, amount=None), "invalid"),
        ("unknown account", "topup", _resign(good, account_id="nobody"), "invalid"),
        ("account id injection", "topup", _resign(good, account_id="acc1' OR '1'='1"), "invalid"),
        ("unknown field", "topup", _resign(good, bonus="100.00"), "invalid"),
        ("account as list", "topup", _resign(good, account_id=["acc1"]), "invalid"),
        ("tariff not an object", "tariff", _j(signed("tariff", now, tariff="flat")), "invalid"),
        ("tariff garbage", "tariff", _j(signed("tariff", now, tariff={"id": "x"})), "invalid"),
        (
            "tariff other currency",
            "tariff",
            _j(
                signed(
                    "tariff",
                    now,
                    tariff={
                        "id": "t-usd",
                        "currency": "USD",
                        "minor_digits": 2,
                        "versions": [
                            {
                                "version": 1,
                                "effective_from": iso(now + timedelta(days=1)),
                                "timezone": "UTC",
                                "price": "0.1",
                            }
                        ],
                    },
                )
            ),
            "invalid",
        ),
        (
            "account unknown tariff",
            "account",
            _j(signed("account", now, account_id="acc1", tariff_id="nope")),
            "invalid",
        ),
        (
            "account unknown meter",
            "account",
            _j(signed("account", now, account_id="acc1", meters=[{"meter_id": "m99"}])),
            "invalid",
        ),
        (
            "account negative emergency credit",
            "account",
            _j(signed("account", now, account_id="acc1", emergency_credit="-5.00")),
            "invalid",
        ),
        (
            "account protected as string",
            "account",
            _j(signed("account", now, account_id="acc1", protected="yes")),
            "invalid",
        ),
        (
            "hold without until",
            "hold",
            _j(signed("hold", now, op="set", hold_id="h1", kind="weather", reason="x")),
            "invalid",
        ),
        (
            "hold in the past",
            "hold",
            _j(
                signed(
                    "hold",
                    now,
                    op="set",
                    hold_id="h2",
                    kind="weather",
                    reason="x",
                    until=iso(now - timedelta(hours=1)),
                )
            ),
            "invalid",
        ),
        (
            "hold for a year",
            "hold",
            _j(
                signed(
                    "hold",
                    now,
                    op="set",
                    hold_id="h3",
                    kind="weather",
                    reason="x",
                    until=iso(now + timedelta(days=365)),
                )
            ),
            "invalid",
        ),
        (
            "hold unknown kind",
            "hold",
            _j(
                signed(
                    "hold",
                    now,
                    op="set",
                    hold_id="h4",
                    kind="party",
                    reason="x",
                    until=iso(now + timedelta(hours=1)),
                )
            ),
            "invalid",
        ),
        (
            "hold until null",
            "hold",
            _j(signed("hold", now, op="set", hold_id="h5", kind="weather", reason="x", until=None)),
            "invalid",
        ),
        ("clear unknown hold", "hold", _j(signed("hold", now, op="clear", hold_id="never-set")), "invalid"),
        (
            "relay unknown target",
            "relay",
            _j(
                signed(
                    "relay",
                    now,
                    op="set",
                    target="m99",
                    action="disconnect",
                    reason="x",
                    until=iso(now + timedelta(hours=1)),
                )
            ),
            "invalid",
        ),
        (
            "relay without reason",
            "relay",
            _j(
                signed(
                    "relay",
                    now,
                    op="set",
                    target="m1",
                    action="disconnect",
                    until=iso(now + timedelta(hours=1)),
                )
            ),
            "invalid",
        ),
        (
            "relay bad action",
            "relay",
            _j(
                signed(
                    "relay",
                    now,
                    op="set",
                    target="m1",
                    action="explode",
                    reason="x",
                    until=iso(now + timedelta(hours=1)),
                )
            ),
            "invalid",
        ),
        ("relay clear unknown", "relay", _j(signed("relay", now, op="clear", override_id=999)), "invalid"),
        (
            "relay override id beyond SQLite",
            "relay",
            _j(signed("relay", now, op="clear", override_id=2**70)),
            "invalid",
        ),
        ("read unknown meter", "read", _j(signed("read", now, meter_id="m99")), "invalid"),
        ("ping with extra field", "ping", _j(signed("ping", now, extra=1)), "invalid"),
        # notice: acc2 has no credit, so a notice is outstanding (see the test); acc1 was topped up.
        ("notice unsigned", "notice", _j({k: v for k, v in notice().items() if k != "sig"}), "unauthenticated"),
        ("notice expired", "notice", _resign(notice(), expires_at=iso(now - timedelta(seconds=1))), "expired"),
        ("notice unknown account", "notice", _resign(notice(), account_id="nobody"), "invalid"),
        ("notice not issued", "notice", _resign(notice(), notice_id="acc2:20200101T000000Z"), "invalid"),
        ("notice none outstanding", "notice", _resign(notice(), account_id="acc1"), "invalid"),
        ("notice delivered in the future", "notice",
         _resign(notice(), delivered_at=iso(now + timedelta(hours=1))), "invalid"),
        ("notice delivered before issue", "notice",
         _resign(notice(), delivered_at=iso(now - timedelta(days=30))), "invalid"),
        ("notice unknown channel", "notice", _resign(notice(), channel="carrier_pigeon"), "invalid"),
        ("notice naive delivered_at", "notice", _resign(notice(), delivered_at="2026-01-01T00:00:00"), "invalid"),
        ("notice missing delivered_at", "notice",
         _resign({k: v for k, v in notice().items() if k != "delivered_at"}), "invalid"),
    ]
    return cases


def test_every_bad_command_is_rejected_with_a_reason_and_changes_nothing(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async def main() -> None:
        # Under cn a notice is issued to acc2 (no credit) and waits for the head office's confirmation.
        async with running_gateway(tmp_path, mosquitto.port, policy='[policy]\npreset = "cn"\n') as run:
            proc = CommandProcessor(run.gateway)
            now = run.gateway.clock()
            applied = signed("topup", now, account_id="acc1", amount="20.00")
            assert (await proc.handle("topup", json.dumps(applied).encode()))["status"] == "applied"
            await run.gateway.review_policy()
            issued = run.store.scalar("SELECT notice_served_at FROM accounts WHERE id = 'acc2'")
            assert issued is not None
            cases = corpus(now, applied, notices.notice_id("acc2", parse_iso(issued)))
            assert len(cases) >= 50
            before = money_dump(run.store)
            outcomes = []
            for name, kind, payload, code in cases:
                ack = await proc.handle(kind, payload)
                outcomes.append((name, ack["status"], ack["code"], ack["reason"]))
                assert ack["status"] == "rejected", (name, ack)
                assert ack["code"] == code, (name, ack)
                assert ack["reason"] and "\n" not in ack["reason"] and len(ack["reason"]) < 400, (name, ack)
            assert money_dump(run.store) == before
            # The genuine command, replayed, still returns its original ack and applies nothing.
            again = await proc.handle("topup", json.dumps(applied).encode())
            assert again["replay"] is True and again["status"] == "applied"
            assert money_dump(run.store) == before

    asyncio.run(main())


def test_commands_over_mqtt_are_acked_on_the_acks_topic(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """The whole path: publish to <prefix>/<gw>/commands/<type>, receive the ack at the head office."""

    async def main(publish: Callable[[str, bytes], None], acks: Callable[[], list[dict[str, Any]]]) -> None:
        async with running_gateway(tmp_path, mosquitto.port) as run:
            link = run.gateway.mqtt
            assert link is not None
            await async_wait_for(lambda: link.stats.subscribed, what="gateway subscribed to its commands")
            now = run.gateway.clock()
            good = signed("topup", now, account_id="acc2", amount="7.50")
            publish("topup", json.dumps(good).encode())
            publish("topup", b"garbage")
            publish("topup", json.dumps(dict(good, amount="75.00")).encode())
            await async_wait_for(lambda: len(acks()) >= 3, what="three acks")
            by = {(a["command_id"], a["code"]) for a in acks()}
            assert (
                (good["id"], "applied") in by
                and (None, "malformed") in by
                and (good["id"], "unauthenticated") in by
            )
            assert run.store.scalar("SELECT balance_minor FROM accounts WHERE id = 'acc2'") == 750

    with subscriber(mosquitto.port, "pmg/gw-test/acks") as hq:
        assert hq.client is not None
        client = hq.client

        def publish(kind: str, payload: bytes) -> None:
            client.publish(f"pmg/gw-test/commands/{kind}", payload, qos=1)

        asyncio.run(main(publish, lambda: hq.of("/acks")))
