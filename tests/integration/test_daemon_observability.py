"""Observability and field jobs on a real in-process gateway against simulated DL/T 645 meters on a pty:
Prometheus metrics over real HTTP, the status snapshot ``pmg status`` reads, and the clock check that
broadcasts time to a bus whose meter drifted."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.gateway_harness import base_config, write_config
from support.waiting import async_wait_for

from gateway.config import load_config
from gateway.core.listen import MetricsError, parse_listen
from gateway.runtime import clocksync, status
from gateway.runtime.daemon import Gateway
from gateway.runtime.metrics import GatewayMetrics
from gateway.store.db import open_store
from simulators.dlt645 import SimulatedDlt645Bus
from simulators.model import LoadProfile, MeterModel

DRIFT_S = 300.0


@pytest.fixture
def sim() -> Iterator[tuple[SimulatedDlt645Bus, str]]:
    models = [
        MeterModel("000000000001", profile=LoadProfile((500,))),
        MeterModel("000000000002", profile=LoadProfile((500,)), clock_drift_s=DRIFT_S),
    ]
    bus = SimulatedDlt645Bus(models, baud=9600, response_delay_s=0.002, emulate_timing=False)
    port = bus.start_pty()
    try:
        yield bus, port
    finally:
        bus.stop()


def _config(tmp_path: Path, port: str) -> Path:
    body = base_config(tmp_path / "pmg.db") + (
        '\n[metrics]\nlisten = "127.0.0.1:0"\n'
        "\n[housekeeping]\nclock_max_drift_s = 30\n"
        f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "{port}"\nbaud = 9600\npoll_interval_s = 0.2\n'
        + "".join(
            f'\n[[meters]]\nid = "m{i}"\nbus = "b1"\naddress = "00000000000{i}"\naccount = "a{i}"\n'
            'tariff = "flat-cn"\n'
            for i in (1, 2)
        )
    )
    return write_config(tmp_path / "gw.toml", body)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        body: bytes = resp.read()
    return body.decode()


def test_metrics_status_and_clock_sync(tmp_path: Path, sim: tuple[SimulatedDlt645Bus, str]) -> None:
    bus, port = sim
    cfg_path = _config(tmp_path, port)

    async def scenario() -> None:
        gw = Gateway(cfg_path, load_config(cfg_path))
        await gw.start()
        try:
            store = gw.store
            await async_wait_for(
                lambda: store.scalar("SELECT COUNT(*) FROM readings WHERE quality = 'ok'") >= 6,
                what="polls",
            )
            address = gw.metrics.address
            assert address is not None
            text = await asyncio.to_thread(_get, f"http://{address[0]}:{address[1]}/metrics")
            assert 'pmg_meter_reads_total{bus="b1",quality="ok"}' in text
            assert 'pmg_poll_latency_seconds_count{bus="b1"}' in text
            assert "pmg_outbox_depth" in text and "pmg_payment_to_reconnect_seconds_bucket" in text

            snap = status.publish(gw)
            assert snap["buses"]["b1"]["polls_ok"] >= 6 and snap["healthy"] is True
            ro = open_store(store.path, readonly=True)
            try:
                seen = status.collect(ro, gw.clock())
            finally:
                ro.close()
            assert seen["daemon"] == "running"
            assert seen["meters"] == 2 and seen["meters_unreachable"] == []
            assert seen["live"]["buses"]["b1"]["error_rate"] == 0.0

            results = await clocksync.run(gw)
            assert len(results) == 1 and results[0].broadcast
            drift = results[0].drift_s
            assert abs(drift["m1"]) < 5 and abs(drift["m2"] - DRIFT_S) < 5
            assert abs(results[0].after_s["m2"]) < 5, "broadcast did not correct the drifted meter"
            assert abs(bus.models[1].clock_drift_s) < 5
            kinds = [
                r[0]
                for r in store.all(
                    "SELECT kind FROM events WHERE kind IN ('meter_clock_drift', 'time_broadcast')"
                )
            ]
            assert kinds == ["meter_clock_drift", "time_broadcast"]
            drift_event = json.loads(
                store.scalar("SELECT detail_json FROM events WHERE kind = 'meter_clock_drift'")
            )
            assert drift_event["bus"] == "b1" and drift_event["drift_s"] > 30
            # A second check finds nothing to correct and broadcasts nothing.
            again = await clocksync.run(gw)
            assert not again[0].broadcast
            # Clock reads are ordinary polls: they never count as comms failures.
            assert store.scalar("SELECT SUM(comms_failed) FROM meters") == 0
        finally:
            await gw.stop()
        assert gw.metrics.address is None  # the endpoint is closed with the gateway
        ro = open_store(store.path, readonly=True)
        try:
            assert status.collect(ro, gw.clock())["daemon"] == "stopped"
        finally:
            ro.close()

    asyncio.run(scenario())


def test_each_gateway_has_its_own_registry() -> None:
    a, b = GatewayMetrics(), GatewayMetrics()
    a.observe_read("bus-a", "ok", 0.1)
    b.observe_read("bus-b", "timeout", 3.0)
    assert b'bus="bus-a"' in a.render() and b'bus="bus-a"' not in b.render()
    assert b'pmg_meter_reads_total{bus="bus-b",quality="timeout"} 1.0' in b.render()


def test_bad_listen_address_is_one_clear_error() -> None:
    assert parse_listen("127.0.0.1:9108") == ("127.0.0.1", 9108)
    assert parse_listen("[::1]:9108") == ("::1", 9108)
    for bad in ("9108", "localhost:http", "127.0.0.1:70000"):
        with pytest.raises(MetricsError, match=r"metrics\.listen"):
            parse_listen(bad)
    m = GatewayMetrics()
    with pytest.raises(MetricsError, match="cannot listen"):
        m.serve("192.0.2.1:0")  # TEST-NET address not on this host
    assert m.address is None
