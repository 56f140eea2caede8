"""Broker campaign: Mosquitto stopped and started repeatedly, and network partitions through a proxy.

A real in-process gateway polls two simulated meters fast (a usage message per poll, events, state
snapshots) and publishes through a small asyncio TCP proxy to a private Mosquitto with a persistent
store.  The head office (the reference ``HqConsumer``, persistent session) connects to the broker
directly.  Each round either restarts the broker or partitions the gateway from it (the proxy cuts
every connection and refuses new ones for a while).  Meanwhile polling and billing go on; afterwards
the outbox drains and every sequenced message has reached the head office, at least once.

``PMG_CAMPAIGN_N`` sets the number of rounds (CI default 4, alternating restart and partition).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.broker import UNCAPPED_OFFLINE_QUEUE, Mosquitto, mosquitto_binary
from support.gateway_harness import base_config, write_config
from support.waiting import async_wait_for

from gateway.config import load_config
from gateway.ledger.verify import verify
from gateway.runtime.daemon import Gateway
from hq.consumer import HqConsumer
from simulators.dlt645 import SimulatedDlt645Bus
from simulators.model import LoadProfile, MeterModel

N = int(os.environ.get("PMG_CAMPAIGN_N", "4"))


class PartitionProxy:
    """TCP proxy on its own loop thread; ``partition()`` drops every connection until ``heal()``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxy", daemon=True)
        self._open = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    def start(self) -> PartitionProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._client, "127.0.0.1", 0), self._loop
        ).result(5)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._open:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.connections += 1
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def _drop_all(self) -> None:
        for w in list(self._writers):
            w.transport.abort()  # a cut cable: no FIN handshake, in-flight bytes are lost
        self._writers.clear()

    def partition(self) -> None:
        self._open = False
        self._loop.call_soon_threadsafe(self._drop_all)

    def heal(self) -> None:
        self._open = True

    def stop(self) -> None:
        self.partition()
        if self._server is not None:
            self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed")
    store = tmp_path / "broker" / "store"
    store.mkdir(parents=True)
    broker = Mosquitto(
        tmp_path / "broker",
        extra=f"allow_anonymous true\npersistence true\npersistence_location {store}/\n{UNCAPPED_OFFLINE_QUEUE}",
    ).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.campaign
def test_broker_restarts_and_partitions_lose_no_message(tmp_path: Path, persistent_broker: Mosquitto) -> None:
    models = [MeterModel(f"{i:012d}", profile=LoadProfile((3000,))) for i in (1, 2)]
    sim = SimulatedDlt645Bus(models, baud=115200, response_delay_s=0.002)
    proxy = PartitionProxy(persistent_broker.port).start()
    hq = HqConsumer("127.0.0.1", persistent_broker.port, tls=None, client_id="hq-campaign")
    hq.tracker.start_at("gw-test", 1)
    try:
        url = f"socket://127.0.0.1:{sim.start_tcp()}"
        body = base_config(tmp_path / "pmg.db", mqtt_port=proxy.port)
        body += f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "{url}"\nbaud = 115200\npoll_interval_s = 0.1\n'
        for i in (1, 2):
            body += f'\n[[meters]]\nid = "m{i}"\nbus = "b1"\naddress = "{i:012d}"\naccount = "acc{i}"\ntariff = "flat-cn"\n'
        body += "\n[mqtt.command_keys]\n"  # none: this campaign is about the outbound path
        cfg_path = write_config(tmp_path / "gw.toml", body.replace("tls = false\n", "tls = false\nkeepalive_s = 5\n"))
        hq.start()
        assert hq.subscribed.wait(10), "head office could not subscribe"

        async def scenario() -> None:
            gateway = Gateway(cfg_path, load_config(cfg_path))
            await gateway.start()
            store = gateway.store

            def last_seq() -> int:
                return int(store.scalar("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'") or 0)

            def delivered() -> int:
                return int(store.scalar("SELECT COALESCE(MAX(seq), 0) FROM outbox WHERE delivered_at IS NOT NULL"))

            try:
                await async_wait_for(lambda: delivered() > 0, timeout=20, what="first delivery")
                for k in range(N):
                    produced = last_seq()
                    if k % 2 == 0:
                        await asyncio.to_thread(persistent_broker.restart)
                    else:
                        proxy.partition()
                        await async_wait_for(lambda p=produced: last_seq() > p + 20, what="billing goes on offline")  # type: ignore[misc]
                        proxy.heal()
                    await async_wait_for(
                        lambda p=produced: delivered() > p,  # type: ignore[misc]
                        timeout=60,
                        what=f"delivery resumed after round {k + 1}",
                    )
                target = last_seq()
                await async_wait_for(lambda: delivered() >= target, timeout=60, what="outbox drained")
                await async_wait_for(
                    lambda: hq.tracker.highest("gw-test") >= target and not hq.tracker.gaps("gw-test"),
                    timeout=30,
                    what=f"head office has every seq up to {target} (gaps {hq.tracker.gaps('gw-test')[:5]})",
                )
                assert verify(store) == []
            finally:
                await gateway.stop()

        asyncio.run(scenario())
        assert proxy.connections >= 1 + N // 2, "the gateway never reconnected through the proxy"
    finally:
        hq.stop()
        proxy.stop()
        sim.stop()
