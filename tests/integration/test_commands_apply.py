"""Each command type does what it says, once: top-up, tariff, account, hold, relay, read, ping, notice."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from support.broker import Mosquitto
from support.signed_commands import Running, money_digest, running_gateway, signed

from gateway.core.timeutil import iso
from gateway.ledger.verify import verify


def _run(tmp_path: Path, mosquitto: Mosquitto, body: Any, **kw: Any) -> None:
    async def main() -> None:
        async with running_gateway(tmp_path, mosquitto.port, **kw) as run:
            await body(run)

    asyncio.run(main())


async def _handle(run: Running, cmd: dict[str, Any]) -> dict[str, Any]:
    from gateway.sync.commands.processor import CommandProcessor

    proc = getattr(run, "_proc", None) or CommandProcessor(run.gateway)
    run._proc = proc  # type: ignore[attr-defined]
    return await proc.handle(cmd["type"], json.dumps(cmd).encode())


def _queued_acks(run: Running) -> list[dict[str, Any]]:
    return [
        json.loads(r["payload"])
        for r in run.store.all("SELECT payload FROM outbox WHERE topic = 'acks' ORDER BY seq")
    ]


def test_topup_applies_once_and_a_replay_returns_the_original_ack(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async def body(run: Running) -> None:
        now = run.gateway.clock()
        cmd = signed("topup", now, account_id="acc1", amount="50.00")
        ack = await _handle(run, cmd)
        assert ack["status"] == "applied", ack
        assert ack["result"]["balance"] == "50.00" and ack["result"]["payment_id"] == cmd["id"]
        supply = ack["result"]["supply"]  # the payment outcome (docs/mqtt.md)
        assert supply["on"] is True and supply["reason"] in ("already_on", "restored"), supply
        assert supply["shortfall"] == "0.00" and supply["meter_id"] == "m1"
        before = money_digest(run.store)
        again = await _handle(run, cmd)
        assert again["replay"] is True and again["result"] == ack["result"] and again["status"] == "applied"
        assert money_digest(run.store) == before
        assert run.store.scalar("SELECT balance_minor FROM accounts WHERE id = 'acc1'") == 5000
        other = dict(cmd, amount="60.00")
        from support.signed_commands import HQ_KEY, HQ_KEY_ID

        from gateway.sync.signing import sign_command

        conflict = await _handle(run, sign_command(other, HQ_KEY, HQ_KEY_ID))
        assert (conflict["status"], conflict["code"]) == ("rejected", "conflict")
        assert money_digest(run.store) == before
        acks = _queued_acks(run)
        assert [a["command_id"] for a in acks] == [cmd["id"]] * 3
        assert verify(run.store) == []

    _run(tmp_path, mosquitto, body)


def test_tariff_version_is_stored_and_used_and_backdating_is_refused(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async def body(run: Running) -> None:
        now = run.gateway.clock()
        book = run.gateway.parts.book
        base = json.loads(json.dumps(_tariff_dict(book.get("flat-cn"))))
        future = iso(now + timedelta(days=2))
        new = dict(
            base,
            versions=[
                *base["versions"],
                {**base["versions"][-1], "version": 2, "effective_from": future, "price": "0.6000"},
            ],
        )
        ack = await _handle(run, signed("tariff", now, tariff=new))
        assert ack["status"] == "applied", ack
        assert book.get("flat-cn").versions[-1].version == 2
        assert run.store.scalar("SELECT COUNT(*) FROM tariffs WHERE id = 'flat-cn' AND version = 2") == 1
        past = dict(
            base,
            versions=[
                *base["versions"],
                {**base["versions"][-1], "version": 3, "effective_from": iso(now - timedelta(days=1))},
            ],
        )
        refused = await _handle(run, signed("tariff", now, tariff=past))
        assert refused["status"] == "rejected" and "backdat" in refused["reason"], refused
        rewrite = dict(
            base,
            versions=[
                {**base["versions"][0], "price": "0.1"},
                new["versions"][1],
                {**new["versions"][1], "version": 3, "effective_from": iso(now + timedelta(days=3))},
            ],
        )
        refused = await _handle(run, signed("tariff", now, tariff=rewrite))
        assert refused["status"] == "rejected" and "differs" in refused["reason"], refused
        assert book.get("flat-cn").versions[-1].version == 2

    _run(tmp_path, mosquitto, body)


def _tariff_dict(tariff: Any) -> dict[str, Any]:
    from gateway.tariffs.model import tariff_to_dict

    return tariff_to_dict(tariff)


def test_account_create_assign_meter_and_flags(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def body(run: Running) -> None:
        now = run.gateway.clock()
        ack = await _handle(
            run,
            signed(
                "account",
                now,
                account_id="acc9",
                tariff_id="flat-cn",
                name="Clinic",
                protected=True,
                protected_category="medical",
                emergency_credit="5.00",
                meters=[{"meter_id": "m2", "keep_power": True}],
            ),
        )
        assert ack["status"] == "applied" and ack["result"]["created"] is True, ack
        row = run.store.one("SELECT * FROM accounts WHERE id = 'acc9'")
        assert row is not None and row["protected"] == 1 and row["emergency_credit_minor"] == 500
        meter = run.store.one("SELECT account_id, keep_power FROM meters WHERE id = 'm2'")
        assert meter is not None and (meter["account_id"], meter["keep_power"]) == ("acc9", 1)
        missing = await _handle(run, signed("account", now, account_id="acc10"))
        assert missing["status"] == "rejected" and "tariff_id" in missing["reason"]
        assert run.store.one("SELECT 1 FROM accounts WHERE id = 'acc10'") is None

    _run(tmp_path, mosquitto, body)


def test_hold_and_relay_override_set_and_clear(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def body(run: Running) -> None:
        now = run.gateway.clock()
        until = iso(now + timedelta(hours=6))
        ack = await _handle(
            run,
            signed("hold", now, op="set", hold_id="storm-1", kind="weather", reason="typhoon", until=until),
        )
        assert ack["status"] == "applied", ack
        assert run.store.scalar("SELECT COUNT(*) FROM holds WHERE id = 'storm-1' AND cleared_at IS NULL") == 1
        ack = await _handle(run, signed("hold", now, op="clear", hold_id="storm-1"))
        assert ack["status"] == "applied"
        assert run.store.scalar("SELECT cleared_at FROM holds WHERE id = 'storm-1'") is not None
        ack = await _handle(
            run,
            signed("relay", now, op="set", target="m1", action="disconnect", reason="tamper", until=until),
        )
        assert ack["status"] == "applied", ack
        oid = ack["result"]["override_id"]
        await asyncio.sleep(0)
        assert (
            run.store.scalar("SELECT COUNT(*) FROM relay_commands WHERE meter_id = 'm1' AND action = 'trip'")
            >= 1
        )
        ack = await _handle(run, signed("relay", now, op="clear", override_id=oid))
        assert ack["status"] == "applied"
        nope = await _handle(run, signed("relay", now, op="clear", override_id=oid))
        assert nope["status"] == "rejected" and "no active override" in nope["reason"]

    _run(tmp_path, mosquitto, body)


def test_topup_ack_says_why_supply_is_not_restored(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A top-up under a manual disconnect order, and one too small to reconnect, say so and by how much."""

    async def body(run: Running) -> None:
        now = run.gateway.clock()
        until = iso(now + timedelta(hours=2))
        order = signed("relay", now, op="set", target="m1", action="disconnect", reason="tamper", until=until)
        assert (await _handle(run, order))["status"] == "applied"
        ack = await _handle(run, signed("topup", now, account_id="acc1", amount="20.00"))
        assert ack["status"] == "applied", ack
        assert ack["result"]["supply"] == {
            "on": False, "reason": "manual_disconnect_order", "shortfall": "0.00", "meter_id": "m1"
        }
        # acc2 with a negative balance, cut: 0.50 leaves it short of the reconnect threshold.
        with run.store.tx() as conn:
            from gateway.ledger.credit import post_adjustment

            post_adjustment(conn, "used", "acc2", -300, now, reason="consumption", actor="test")
            conn.execute("UPDATE accounts SET policy_state = 'disconnected' WHERE id = 'acc2'")
            conn.execute("UPDATE meters SET relay = 'open' WHERE id = 'm2'")
        ack = await _handle(run, signed("topup", now, account_id="acc2", amount="0.50"))
        threshold = run.gateway.parts.rules.reconnect.threshold_minor
        short = threshold - (-300 + 50)
        assert ack["result"]["supply"] == {
            "on": False, "reason": "below_reconnect_threshold",
            "shortfall": f"{short // 100}.{short % 100:02d}", "meter_id": "m2",
        }  # fmt: skip

    _run(tmp_path, mosquitto, body)


def test_read_and_ping(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def body(run: Running) -> None:
        now = run.gateway.clock()
        ack = await _handle(run, signed("read", now, meter_id="m1"))
        assert ack["status"] == "applied", ack
        assert ack["result"]["reading"]["quality"] == "ok"
        assert isinstance(ack["result"]["reading"]["energy_import_wh"], int)
        pong = await _handle(run, signed("ping", now))
        assert pong["status"] == "applied" and pong["result"]["pong"] is True

    _run(tmp_path, mosquitto, body)


def test_a_reload_that_rotates_keys_takes_effect_without_restart(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    from support.signed_commands import HQ_KEY, HQ_KEY_ID, command

    from gateway.sync.signing import generate_key, key_id_for, public_key_b64, sign_command

    async def body(run: Running) -> None:
        now = run.gateway.clock()
        assert (await _handle(run, signed("ping", now)))["status"] == "applied"
        new = generate_key()
        new_id = key_id_for(new.public_key())
        cfg = run.gateway.cfg
        assert cfg.mqtt is not None
        mqtt = cfg.mqtt.model_copy(update={"command_keys": {new_id: public_key_b64(new.public_key())}})
        run.gateway.cfg = cfg.model_copy(update={"mqtt": mqtt})
        old = await _handle(run, sign_command(command("ping", now), HQ_KEY, HQ_KEY_ID))
        assert (old["status"], old["code"]) == ("rejected", "unauthenticated")
        fresh = await _handle(run, sign_command(command("ping", now), new, new_id))
        assert fresh["status"] == "applied"

    _run(tmp_path, mosquitto, body)


CN_POLICY = '[policy]\npreset = "cn"\n'  # notices are delivered by the head office


def _notice_row(run: Running) -> tuple[Any, ...]:
    row = run.store.one(
        "SELECT notice_served_at, notice_delivered_at, notice_channel, policy_state, earliest_cut_at "
        "FROM accounts WHERE id = 'acc1'"
    )
    assert row is not None
    return tuple(row)


def test_notice_delivery_is_confirmed_by_a_signed_command_and_bad_ones_change_nothing(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    from support.signed_commands import command

    from gateway.core.timeutil import parse_iso
    from gateway.policy import notices

    async def body(run: Running) -> None:
        await run.gateway.review_policy()  # acc1 has no credit: the notice is issued
        issued_text = _notice_row(run)[0]
        assert issued_text is not None, "credit is exhausted: a notice is issued"
        issued = parse_iso(issued_text)
        nid = notices.notice_id("acc1", issued)
        (event,) = [
            json.loads(r[0])
            for r in run.store.all("SELECT detail_json FROM events WHERE kind = 'policy_serve_notice' AND account_id = 'acc1'")
        ]
        assert event["notice_id"] == nid and event["delivery"] == "head_office"
        assert _notice_row(run)[1] is None and _notice_row(run)[4] is None  # undelivered: no cut in sight
        now = run.gateway.clock()
        ok = {"account_id": "acc1", "notice_id": nid, "channel": "sms", "delivered_at": iso(now)}
        before = _notice_row(run)
        bad = [
            ("unsigned", {k: v for k, v in signed("notice", now, **ok).items() if k != "sig"}, "unauthenticated"),
            ("expired", signed("notice", now - timedelta(hours=2), **ok), "expired"),
            ("unknown account", signed("notice", now, **{**ok, "account_id": "nobody"}), "invalid"),
            ("not issued", signed("notice", now, **{**ok, "notice_id": "acc1:20200101T000000Z"}), "invalid"),
            ("other account's notice", signed("notice", now, **{**ok, "account_id": "acc2"}), "invalid"),
            ("in the future", signed("notice", now, **{**ok, "delivered_at": iso(now + timedelta(hours=1))}),
             "invalid"),
            ("before issue", signed("notice", now, **{**ok, "delivered_at": iso(issued - timedelta(minutes=1))}),
             "invalid"),
            ("unknown channel", signed("notice", now, **{**ok, "channel": "pigeon"}), "invalid"),
            ("naive time", signed("notice", now, **{**ok, "delivered_at": "2026-01-01T00:00:00"}), "invalid"),
        ]
        reasons = {}
        for name, cmd, code in bad:
            ack = await _handle(run, cmd)
            assert (ack["status"], ack["code"]) == ("rejected", code), (name, ack)
            assert ack["reason"] and "\n" not in ack["reason"], (name, ack)
            reasons[name] = ack["reason"]
            assert _notice_row(run) == before, f"{name} changed the account"
        assert "no account 'nobody'" in reasons["unknown account"]
        assert "was not issued" in reasons["not issued"]
        assert "in the future" in reasons["in the future"]
        assert "before the notice was issued" in reasons["before issue"]
        assert run.store.scalar("SELECT COUNT(*) FROM events WHERE kind = 'notice_delivered'") == 0

        good = signed("notice", now, **ok)
        ack = await _handle(run, good)
        assert ack["status"] == "applied", ack
        assert ack["result"]["notice_id"] == nid and ack["result"]["channel"] == "sms"
        served, delivered, channel, state, earliest = _notice_row(run)
        assert (served, delivered, channel, state) == (issued_text, iso(now), "sms", "notice_served")
        assert earliest is not None and parse_iso(earliest) >= now + timedelta(days=3)  # from delivery
        again = await _handle(run, good)
        assert again["replay"] is True and again["result"] == ack["result"]
        twice = await _handle(run, sign_command_fresh(command("notice", now, **ok)))
        assert twice["status"] == "rejected" and "already delivered" in twice["reason"], twice
        assert run.store.scalar("SELECT COUNT(*) FROM events WHERE kind = 'notice_delivered'") == 1

    _run(tmp_path, mosquitto, body, policy=CN_POLICY)


def sign_command_fresh(cmd: dict[str, Any]) -> dict[str, Any]:
    from support.signed_commands import HQ_KEY, HQ_KEY_ID

    from gateway.sync.signing import sign_command

    return sign_command(cmd, HQ_KEY, HQ_KEY_ID)
