"""``[mqtt] protocol = "3.1.1"``: the gateway delivers its outbox and takes signed commands over MQTT 3.1.1,
keeping a persistent session (clean_session = false) so that a command sent while it is away arrives.

The broker's own log says which protocol each client spoke: Mosquitto logs ``(p2, c0, …)`` for a
3.1.1 client asking to keep its session (``c0``: clean session 0) — ``p`` is Mosquitto's own protocol
code (1: 3.1, 2: 3.1.1, 5: MQTT 5), not the CONNECT's protocol level.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from support.broker import Mosquitto
from support.signed_commands import running_gateway, signed
from support.waiting import async_wait_for

from drivers.tomlsource import TomlError
from gateway.config import load_config
from hq.connect import Broker, close, connect

PROTOCOL_311 = 'protocol = "3.1.1"\n'


class Hq:
    """A head office on 3.1.1 that keeps every message of the gateway."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

        def prepare(client: paho.Client) -> None:
            client.on_message = self._on_message

        self.client = connect(
            Broker("127.0.0.1", port, tls=None, client_id="hq-311", protocol="3.1.1", persistent=False),
            deadline_s=5,
            on_connected=lambda c: c.subscribe("pmg/gw-test/#", qos=1),
            prepare=prepare,
        )

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, json.loads(msg.payload)))

    def of(self, suffix: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for topic, body in self.messages if topic.endswith(suffix)]

    def ack(self, command_id: str) -> dict[str, Any] | None:
        return next((a for a in self.of("/acks") if a.get("command_id") == command_id), None)

    def send(self, cmd: dict[str, Any]) -> None:
        info = self.client.publish(f"pmg/gw-test/commands/{cmd['type']}", json.dumps(cmd), qos=1)
        info.wait_for_publish(5)


def test_protocol_must_be_5_or_3_1_1(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    for value in ('"4"', "5", '"mqtt5"'):
        cfg.write_text(f'gateway_id = "g"\n[mqtt]\nhost = "h"\nprotocol = {value}\n')
        with pytest.raises(TomlError, match=r"mqtt\.protocol: Input should be '5' or '3\.1\.1'") as err:
            load_config(cfg)
        assert "\n" not in str(err.value)
    cfg.write_text(f'gateway_id = "g"\n[mqtt]\nhost = "h"\n{PROTOCOL_311}')
    mqtt = load_config(cfg).mqtt
    assert mqtt is not None and mqtt.protocol == "3.1.1"
    cfg.write_text('gateway_id = "g"\n[mqtt]\nhost = "h"\n')
    mqtt = load_config(cfg).mqtt
    assert mqtt is not None and mqtt.protocol == "5"


def test_gateway_over_3_1_1_delivers_and_takes_signed_commands_across_a_restart(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    hq = Hq(mosquitto.port)
    offline_cmd: dict[str, Any] = {}

    async def first_run() -> None:
        async with running_gateway(tmp_path, mosquitto.port, mqtt_extra=PROTOCOL_311) as run:
            link = run.gateway.mqtt
            assert link is not None
            await async_wait_for(lambda: link.stats.subscribed, what="command subscription over 3.1.1")
            cmd = signed("topup", run.gateway.clock(), account_id="acc1", amount="20.00")
            hq.send(cmd)
            await async_wait_for(lambda: hq.ack(cmd["id"]) is not None, timeout=20, what="the top-up's ack")
            ack = hq.ack(cmd["id"])
            assert ack is not None and ack["status"] == "applied" and isinstance(ack["seq"], int), ack
            assert ack["result"]["balance"] == "20.00"
            await async_wait_for(lambda: hq.of("/usage"), timeout=20, what="usage delivered over 3.1.1")
            offline_cmd.update(signed("topup", run.gateway.clock(), account_id="acc2", amount="5.00"))

    async def second_run() -> None:
        async with running_gateway(tmp_path, mosquitto.port, mqtt_extra=PROTOCOL_311) as run:
            await async_wait_for(
                lambda: hq.ack(offline_cmd["id"]) is not None,
                timeout=20,
                what="the command sent while the gateway was away, from its kept session",
            )
            ack = hq.ack(offline_cmd["id"])
            assert ack is not None and ack["status"] == "applied", ack
            assert run.store.scalar("SELECT balance_minor FROM accounts WHERE id = 'acc2'") == 500

    try:
        asyncio.run(first_run())
        hq.send(offline_cmd)  # the gateway is down: the broker queues it in the gateway's session
        asyncio.run(second_run())
    finally:
        close(hq.client)
    log = (mosquitto.workdir / "mosquitto.log").read_text()
    sessions = re.findall(r"as pmg-gw-test \((p\d), (c\d)", log)
    assert len(sessions) == 2 and set(sessions) == {("p2", "c0")}, sessions
    seqs = [body["seq"] for _, body in hq.messages if "seq" in body]
    assert len(seqs) == len(set(seqs)), "nothing doubled"
