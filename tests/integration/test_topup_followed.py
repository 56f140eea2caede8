"""Following one top-up to power: the head office sends a signed top-up to a gateway whose account is
cut; its ack says supply is restored, and the ``relay_confirmed`` event of the close that follows names
the same command id (docs/mqtt.md, "Following a top-up to power").  Real daemon, a simulated DL/T 645
meter on a pty, a private Mosquitto; what is checked is what the head office receives."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from support.broker import Mosquitto
from support.gateway_harness import subscriber
from support.signed_commands import running_gateway, settled, signed
from support.waiting import async_wait_for


def _publish(port: int, cmd: dict[str, Any]) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-hq-topup", protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(f"pmg/gw-test/commands/{cmd['type']}", json.dumps(cmd), qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_topups_id_is_followed_to_the_confirmed_close(tmp_path: Path, mosquitto: Mosquitto) -> None:
    with subscriber(mosquitto.port, "pmg/gw-test/#") as hq:

        async def scenario() -> None:
            async with running_gateway(tmp_path, mosquitto.port, meters=1, poll_s=0.5) as run:
                await settled(run)  # the empty account was cut at start
                assert run.store.scalar("SELECT relay FROM meters WHERE id = 'm1'") == "open"
                trips = [e for e in hq.of("/events") if e["kind"] == "relay_confirmed"]
                assert trips and all(e["detail"]["command_id"] is None for e in trips)  # the gateway's own

                cmd = signed("topup", run.gateway.clock(), account_id="acc1", amount="50.00")
                _publish(mosquitto.port, cmd)
                await async_wait_for(
                    lambda: any(e["detail"].get("command_id") == cmd["id"] for e in hq.of("/events")
                                if e["kind"] == "relay_confirmed"),
                    timeout=20,
                    what="the close confirmed, naming the top-up",
                )  # fmt: skip
                (ack,) = [a for a in hq.of("/acks") if a["command_id"] == cmd["id"]]
                assert ack["status"] == "applied" and ack["result"]["supply"]["reason"] == "restored"
                (close,) = [e for e in hq.of("/events")
                            if e["kind"] == "relay_confirmed" and e["detail"]["command_id"] == cmd["id"]]  # fmt: skip
                assert close["detail"]["relay"] == "closed" and close["meter_id"] == "m1"
                assert close["detail"]["payment_id"] == cmd["id"]
                row = run.store.one(
                    "SELECT action, payment_id FROM relay_commands WHERE id = ?", close["detail"]["relay_command_id"]
                )
                assert row is not None and row["payment_id"] == cmd["id"]

        asyncio.run(scenario())
