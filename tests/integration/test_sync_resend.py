"""Gap repair: a head office that missed messages the broker had acknowledged gets them again.

The gateway's guarantee ends at the broker's PUBACK (docs/mqtt.md).  Here a real gateway publishes to
a private Mosquitto while the head office's consumer is away with a clean session, so the broker
acknowledges messages nobody receives; the consumer comes back, sees the gap, and sends a signed
``resend``: the missing range arrives in order, with its original epoch and seqs and
``"resent": true``.  A range the gateway no longer keeps (trimmed past ``outbox_delivered_days``) is
answered ``gone``, and a bad range is refused with a reason, nothing sent.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from support.broker import Mosquitto
from support.gateway_harness import Subscriber
from support.signed_commands import Running, running_gateway, signed
from support.waiting import async_wait_for

from gateway.core.timeutil import iso
from gateway.store import outbox


def _put(run: Running, n: int, tag: str) -> list[int]:
    seqs = []
    with run.store.tx() as conn:
        for i in range(n):
            seqs.append(outbox.put(conn, "events", {"schema": "test/1", "tag": tag, "i": i}, datetime.now(UTC)))
    assert run.gateway.mqtt is not None
    run.gateway.mqtt.notify()
    return seqs


def _delivered(run: Running, last: int) -> bool:
    return run.store.scalar("SELECT COUNT(*) FROM outbox WHERE seq <= ? AND delivered_at IS NULL", last) == 0


def _send(port: int, cmd: dict[str, Any]) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-hq-cmd", protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        info = client.publish(f"pmg/gw-test/commands/{cmd['type']}", json.dumps(cmd), qos=1)
        info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def _tagged(hq: Subscriber, tag: str) -> list[dict[str, Any]]:
    return [b for b in hq.of("/events") if b.get("tag") == tag]


def _all(hq: Subscriber) -> list[dict[str, Any]]:
    with hq.lock:
        return [body for _topic, body in hq.messages]


def _ack(hq: Subscriber, cmd_id: str) -> dict[str, Any] | None:
    return next((a for a in hq.of("/acks") if a.get("command_id") == cmd_id), None)


def test_a_range_missed_after_the_brokers_puback_is_sent_again_with_its_seqs(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async def scenario() -> None:
        async with running_gateway(tmp_path, mosquitto.port, meters=1) as run:
            link = run.gateway.mqtt
            assert link is not None
            await async_wait_for(lambda: link.stats.subscribed, what="link subscribed")
            hq = Subscriber(mosquitto.port, "pmg/gw-test/#").start()
            try:
                before = _put(run, 5, "before")
                await async_wait_for(lambda: len(_tagged(hq, "before")) == 5, what="the first five")
            finally:
                hq.stop()  # a clean session: what the broker takes now, nobody will receive
            missed = _put(run, 40, "missed")
            await async_wait_for(lambda: _delivered(run, missed[-1]), what="the broker acknowledged them")
            hq = Subscriber(mosquitto.port, "pmg/gw-test/#").start()
            try:
                after = _put(run, 3, "after")
                await async_wait_for(lambda: len(_tagged(hq, "after")) == 3, what="the last three")
                assert not _tagged(hq, "missed")
                seen = [b["seq"] for b in hq.of("/events")]
                epoch = hq.of("/events")[0]["epoch"]
                assert len(epoch) == 32 and all(b["epoch"] == epoch for b in hq.of("/events"))
                gap = (before[-1] + 1, after[0] - 1)
                assert gap[0] not in seen and gap[1] not in seen
                # rows past the retention: the first two delivered long ago and trimmed by housekeeping
                with run.store.tx() as conn:
                    conn.execute(
                        "UPDATE outbox SET delivered_at = ? WHERE seq <= ?",
                        (iso(datetime.now(UTC) - timedelta(days=30)), before[1]),
                    )
                assert outbox.trim_delivered(run.store, datetime.now(UTC) - timedelta(days=7), keep_last=0) >= 2

                now = run.gateway.clock()
                bad = signed("resend", now, epoch=epoch, from_seq=gap[1], to_seq=gap[0])
                _send(mosquitto.port, bad)
                await async_wait_for(lambda: _ack(hq, bad["id"]), what="the bad range's ack")
                refused = _ack(hq, bad["id"])
                assert refused is not None and refused["status"] == "rejected" and refused["code"] == "invalid"
                assert "after to_seq" in refused["reason"]

                cmd = signed("resend", now, epoch=epoch, from_seq=before[0], to_seq=gap[1])
                _send(mosquitto.port, cmd)
                await async_wait_for(lambda: _ack(hq, cmd["id"]), what="the resend's ack")
                await async_wait_for(lambda: len(_tagged(hq, "missed")) == 40, what="the missed range resent")
                ack = _ack(hq, cmd["id"])
                assert ack is not None and ack["status"] == "applied", ack
                assert ack["result"]["gone"] == [[before[0], before[1]]]
                assert ack["result"]["resent"] == [[before[2], gap[1]]]
                resent = [b for b in _all(hq) if b.get("resent")]
                missed_bodies = _tagged(hq, "missed")
                assert [b["seq"] for b in missed_bodies] == missed  # in order, with the original seqs
                assert all(b["epoch"] == epoch and b["resent"] is True for b in missed_bodies)
                # every row of the range still kept, whatever its topic, once, in order: only what was asked
                assert [b["seq"] for b in resent] == list(range(before[2], gap[1] + 1))

                other = signed("resend", now, epoch="0" * 32, from_seq=1, to_seq=3)
                _send(mosquitto.port, other)
                await async_wait_for(lambda: _ack(hq, other["id"]), what="the other epoch's ack")
                other_ack = _ack(hq, other["id"])
                assert other_ack is not None and other_ack["result"]["gone"] == [[1, 3]]
                assert other_ack["result"]["resent"] == []
                assert len([b for b in _all(hq) if b.get("resent")]) == len(resent)  # nothing more
            finally:
                hq.stop()

    asyncio.run(scenario())
