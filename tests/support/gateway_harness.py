"""Run a real gateway in-process against simulated meters, for end-to-end tests.

Nothing is mocked: simulators serve real pseudo-terminals, the gateway opens them with pyserial, the
ledger is a real SQLite file and the broker a real Mosquitto.  Both sides share a fast clock so a day
of consumption passes in seconds.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from simulators.lab import IMMEDIATE_POLICY_TOML

REPO = Path(__file__).resolve().parents[2]
TARIFFS = REPO / "gateway" / "tariffs" / "examples"

FAST_POLICY = IMMEDIATE_POLICY_TOML  # no notice, no protected hours, a payment closes the relay


def write_config(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def base_config(
    db: Path,
    *,
    gateway_id: str = "gw-test",
    timezone: str = "Asia/Shanghai",
    mqtt_port: int | None = None,
    policy: str = FAST_POLICY,
    mqtt_extra: str = "",
) -> str:
    """``mqtt_extra``: more lines of the ``[mqtt]`` table (e.g. ``protocol = "3.1.1"``)."""
    mqtt = (
        f'\n[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\ntls = false\nallow_plaintext = true\n{mqtt_extra}'
        if mqtt_port
        else ""
    )
    return (
        f'gateway_id = "{gateway_id}"\ntimezone = "{timezone}"\ndatabase = "{db}"\ncurrency = "CNY"\n'
        f'tariff_dir = "{TARIFFS}"\n{mqtt}{policy}\n'
    )


def offline_config(tmp_path: Path, meters: int, *, width: int = 1) -> Path:
    """A gateway whose one bus cannot open (a port that does not exist), with ``meters`` meters
    ``m<i>`` on accounts ``a<i>`` (``i`` zero-padded to ``width``): only what a test does itself
    reaches the ledger and the policy."""
    body = base_config(tmp_path / "pmg.db")
    body += f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "{tmp_path / "no-such-port"}"\n'
    for i in range(meters):
        body += (
            f'\n[[meters]]\nid = "m{i:0{width}d}"\nbus = "b1"\naddress = "{i + 1:012d}"\n'
            f'account = "a{i:0{width}d}"\ntariff = "flat-cn"\n'
        )
    return write_config(tmp_path / "gw.toml", body)


@dataclass
class Subscriber:
    """A head-office stand-in: subscribes to everything of one gateway and keeps what arrives."""

    port: int
    topic: str = "pmg/#"
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    client: paho.Client | None = None

    def start(self) -> Subscriber:
        ready = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-hq", protocol=paho.MQTTv5)

        def on_connect(c: paho.Client, *_: Any) -> None:
            c.subscribe(self.topic, qos=1)

        def on_subscribe(*_: Any) -> None:
            ready.set()

        def on_message(_c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
            try:
                body = json.loads(msg.payload)
            except ValueError:
                body = {"raw": msg.payload.decode(errors="replace")}
            with self.lock:
                self.messages.append((msg.topic, body))

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("test subscriber could not subscribe")
        self.client = client
        return self

    def of(self, suffix: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for topic, body in self.messages if topic.endswith(suffix)]

    def stop(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()


@contextmanager
def subscriber(port: int, topic: str = "pmg/#") -> Iterator[Subscriber]:
    sub = Subscriber(port, topic).start()
    try:
        yield sub
    finally:
        sub.stop()
