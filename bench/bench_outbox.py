"""Outbox drain rate to a local broker, against raw paho publishing the same messages in the same run.

Both sides publish the same N payloads at QoS 1 with the same in-flight window to a private Mosquitto
and count a message only when its PUBACK has arrived; the outbox side additionally reads every
message from SQLite, publishes it in order and marks it delivered on acknowledgement (a durable
write).  The ratio outbox/raw says what durability costs (target >= 0.5).

    .venv/bin/python bench/bench_outbox.py [--messages 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import MqttConfig
from gateway.store.db import open_store
from gateway.sync import outbox
from gateway.sync.mqtt import WINDOW, MqttLink
from gateway.timeutil import iso, system_clock
from simulators.mosquitto import Mosquitto


def payload(i: int) -> dict[str, Any]:
    """A usage message as the ledger writes it."""
    return {
        "schema": "pmg.usage/1",
        "meter_id": f"m{i % 100}",
        "account_id": f"acc{i % 100}",
        "interval_start": "2026-03-01T00:00:00Z",
        "interval_end": "2026-03-01T00:01:00Z",
        "register_wh": 1_000_000 + i,
        "energy_wh": 17,
        "charge": "0.01",
        "balance": "41.27",
    }


def raw_rate(port: int, n: int) -> float:
    done = threading.Event()
    acked = 0
    lock = threading.Lock()

    def on_publish(*_: Any) -> None:
        nonlocal acked
        with lock:
            acked += 1
            if acked == n:
                done.set()

    connected = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=paho.MQTTv5)
    client.on_publish = on_publish
    client.on_connect = lambda *_: connected.set()
    client.max_inflight_messages_set(WINDOW)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    connected.wait(10)
    bodies = [
        json.dumps({**payload(i), "gateway_id": "gw-raw", "seq": i + 1}, separators=(",", ":")).encode()
        for i in range(n)
    ]
    start = time.perf_counter()
    for i, body in enumerate(bodies):
        client.publish(f"pmg/gw-raw/meters/m{i % 100}/usage", body, qos=1)
    if not done.wait(120):
        raise RuntimeError(f"raw: only {acked} of {n} acknowledged")
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return n / elapsed


def outbox_rate(port: int, n: int, workdir: Path) -> float:
    store = open_store(workdir / f"bench-{time.monotonic_ns()}.db")
    now = datetime.now(UTC)
    with store.tx() as conn:
        for i in range(n):
            outbox.put(conn, f"meters/m{i % 100}/usage", payload(i), now)
    cfg = MqttConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "tls": False,
            "allow_plaintext": True,
            "client_id": "bench-outbox",
        }
    )
    link = MqttLink(cfg, "gw-outbox", store, system_clock)

    async def run() -> float:
        # The link starts draining on CONNACK; the clock starts when we see it connected (<= 1 ms later).
        task = asyncio.create_task(link.run())
        while not link.stats.connected:
            await asyncio.sleep(0.001)
        start = time.perf_counter()
        link.notify()
        # Done when every message is marked delivered; watch the link's counter (a COUNT over the
        # outbox every millisecond would compete with the drain it measures), then confirm once.
        while link.stats.acknowledged < n:
            await asyncio.sleep(0.001)
        elapsed = time.perf_counter() - start
        assert outbox.backlog(store).messages == 0, "acknowledged but not marked delivered"
        await link.stop(1.0)
        await asyncio.gather(task, return_exceptions=True)
        return elapsed

    elapsed = asyncio.run(run())
    store.close()
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker").start()
        try:
            raws, outs = [], []
            for r in range(args.rounds):
                raws.append(raw_rate(broker.port, args.messages))
                outs.append(outbox_rate(broker.port, args.messages, Path(tmp)))
                print(f"round {r + 1}: raw {raws[-1]:,.0f} msg/s  outbox {outs[-1]:,.0f} msg/s")
        finally:
            broker.stop()
    raw, out = max(raws), max(outs)
    print(f"{iso(datetime.now(UTC))} messages={args.messages} window={WINDOW} (best of {args.rounds})")
    print(f"raw paho QoS 1     {raw:10,.0f} msg/s")
    print(f"outbox drain QoS 1 {out:10,.0f} msg/s")
    print(f"ratio outbox/raw   {out / raw:10.2f}  (target >= 0.5)")


if __name__ == "__main__":
    main()
