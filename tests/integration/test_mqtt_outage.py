"""Broker outage under load: stop the broker, keep producing, restart it — nothing lost, order kept.

The producer writes to the outbox the way the daemon does (one transaction per change) while the
link drains it; the broker is stopped mid-stream and restarted on the same port with its persistent
store, so the head office's persistent session (and its subscription) survives.  The head office must
end up with every seq, in order per gateway, with duplicates recognised by seq.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support.broker import UNCAPPED_OFFLINE_QUEUE, Mosquitto
from support.waiting import async_wait_for, wait_for

from gateway.config import MqttConfig
from gateway.core.timeutil import system_clock
from gateway.store import outbox
from gateway.store.db import open_store
from gateway.sync.mqtt import MqttLink
from hq.consumer import HqConsumer, Received

TOTAL = 2000


def persistent_broker(workdir: Path) -> Mosquitto:
    store = workdir / "store"
    store.mkdir(parents=True, exist_ok=True)
    return Mosquitto(
        workdir, extra=f"allow_anonymous true\npersistence true\npersistence_location {store}/\n{UNCAPPED_OFFLINE_QUEUE}"
    )


def plain(port: int) -> MqttConfig:
    return MqttConfig(host="127.0.0.1", port=port, tls=False, allow_plaintext=True, keepalive_s=5)


@pytest.mark.slow  # 4-7 s: paho's reconnect backoff (1 s, 2 s, ...) on both sides
def test_broker_stopped_under_load_then_restarted_loses_nothing(tmp_path: Path) -> None:
    broker = persistent_broker(tmp_path / "broker").start()
    received: list[Received] = []
    hq = HqConsumer("127.0.0.1", broker.port, tls=None, client_id="hq-outage", on_received=received.append)
    hq.tracker.start_at("gw-a", 1)
    hq.start()
    try:
        assert hq.subscribed.wait(10)
        store = open_store(tmp_path / "gw.db")
        link = MqttLink(plain(broker.port), "gw-a", store, system_clock)

        async def scenario() -> None:
            task = asyncio.create_task(link.run())
            try:
                for i in range(TOTAL):
                    with store.tx() as conn:
                        outbox.put(conn, "events", {"schema": "pmg.event/1", "n": i}, system_clock())
                    link.notify()
                    if i == TOTAL // 3:
                        await async_wait_for(lambda: link.stats.acknowledged > 100, what="some delivered")
                        broker.stop()
                        await async_wait_for(lambda: not link.stats.connected, what="link notices the outage")
                    if i == 2 * TOTAL // 3:
                        backlog = outbox.backlog(store)
                        assert backlog.messages > 0 and backlog.oldest_created_at is not None
                        broker.start()
                    if i % 50 == 0:
                        await asyncio.sleep(0)
                await async_wait_for(
                    lambda: outbox.backlog(store).messages == 0, timeout=60, what="outbox drained"
                )
            finally:
                await link.stop(2.0)
                await asyncio.gather(task, return_exceptions=True)

        asyncio.run(scenario())
        wait_for(lambda: hq.tracker.highest("gw-a") >= TOTAL, timeout=30, what="head office has the last seq")
        assert hq.tracker.gaps("gw-a") == []
        new = [r for r in received if r.topic == "events" and not r.duplicate]
        assert [r.seq for r in new] == list(range(1, TOTAL + 1))
        assert [r.body["n"] for r in new] == list(range(TOTAL))
        assert link.stats.connects >= 2
        store.close()
    finally:
        hq.stop()
        broker.stop()
