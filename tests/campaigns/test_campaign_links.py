"""Link campaign: a serial device server that drops and comes back, again and again.

A real in-process gateway with two buses and a shared fast clock:
- ``sk``: DL/T 645 over ``socket://`` to three simulated meters behind a TCP server the campaign
  stops and restarts on the same port ``DROPS`` times (a device server rebooting);
- ``mb``: Modbus TCP to two simulated meters that stay up.
Checked (docs/operations.md, "Links that drop"):
- after every drop the ``sk`` link reopens by itself (backoff, no restart, no SIGHUP) and its meters
  are read again; the ``mb`` bus keeps its read rate throughout;
- every Wh of every meter is charged exactly once: the charge entries add up to the movement of the
  accepted register, energy used while the link was down included;
- the empty account's meter is cut, and when its relay is closed again by hand while the link is
  down (the field report: relay closed, balance 0, link dead), it is cut again once the link is back.

``PMG_CAMPAIGN_N`` scales the number of drops (5 + N - 2, CI default N=2).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from support.gateway_harness import base_config, write_config
from support.waiting import async_wait_for

from gateway.config import load_config
from gateway.core.timeutil import ScaledClock
from gateway.ledger.verify import verify
from gateway.runtime.daemon import Gateway
from gateway.store.db import Store, open_store
from simulators.dlt645 import SimulatedDlt645Bus, make_models
from simulators.fleet import Fleet, gateway_toml, load_fleet
from simulators.model import FastClock

N = int(os.environ.get("PMG_CAMPAIGN_N", "2"))
DROPS = 5 + max(0, N - 2)
SPEED = 60.0
INTERVAL_S = 0.5
EMPTY = "sk-0001"  # its account is never paid: the relay must be cut, and cut again
SK_METERS = ["sk-0001", "sk-0002", "sk-0003"]
MB_METERS = ["mb-0001", "mb-0002"]
RECLOSED_AT_DROP = 2  # during this drop the empty meter's relay is closed again by hand

FLEET = f"""
speed = {SPEED}
[[buses]]
id = "mb"
protocol = "modbus"
profile = "dds238"
meters = 2
vary_load = false
load_w = [600]
poll_interval_s = {INTERVAL_S}
timeout_s = 0.25
retries = 0
"""


def sk_toml(port: int) -> str:
    body = (
        f'\n[[buses]]\nid = "sk"\nprotocol = "dlt645"\nurl = "socket://127.0.0.1:{port}"\nbaud = 9600\n'
        f"poll_interval_s = {INTERVAL_S}\ntimeout_s = 0.25\nretries = 0\n"
    )
    for i, meter in enumerate(SK_METERS, start=1):
        body += (
            f'\n[[meters]]\nid = "{meter}"\nbus = "sk"\naddress = "{i:012d}"\naccount = "A-{meter}"\n'
            'tariff = "flat-cn"\n'
        )
    return body


def charged_vs_register(store: Store, meter: str) -> tuple[int, int]:
    first = store.scalar(
        "SELECT register_wh FROM readings WHERE meter_id = ? AND outcome = 'baseline' ORDER BY id LIMIT 1", meter
    )
    last = store.scalar("SELECT last_register_wh FROM meters WHERE id = ?", meter)
    charged = store.scalar(
        "SELECT COALESCE(SUM(energy_wh), 0) FROM entries WHERE kind = 'charge' AND meter_id = ?", meter
    )
    return charged, (last - first) if first is not None else 0


@pytest.mark.campaign
def test_a_socket_bus_that_drops_again_and_again_loses_no_energy_and_still_cuts(tmp_path: Path) -> None:
    gw_clock = ScaledClock(SPEED)
    models = make_models(3, clock=FastClock(SPEED, start=gw_clock.epoch()), power_w=600)
    servers: list[SimulatedDlt645Bus] = []

    def serve(port: int = 0) -> int:
        sim = SimulatedDlt645Bus(models, response_delay_s=0.002, emulate_timing=False)
        servers.append(sim)
        return sim.start_tcp(port=port)

    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_text(FLEET)
    cfg = load_fleet(fleet_file)
    try:
        with Fleet(cfg, clock=FastClock(SPEED, start=gw_clock.epoch())) as fleet:
            endpoints = fleet.start()
            port = serve()
            body = base_config(tmp_path / "pmg.db") + gateway_toml(cfg, endpoints, base_dir=tmp_path, fragment=True)
            cfg_path = write_config(tmp_path / "gw.toml", body + sk_toml(port))
            figures = asyncio.run(campaign(cfg_path, gw_clock, models, servers, serve, port))
    finally:
        for sim in servers:
            sim.stop()

    mb_polls, elapsed, reopens, cuts = figures
    print(f"links campaign: {DROPS} drops in {elapsed:.1f} s, sk reopens {reopens}, mb reads {mb_polls}, cuts {cuts}")
    for meter, n in mb_polls.items():
        expected = elapsed / INTERVAL_S
        assert n >= 0.75 * expected, f"{meter}: {n} reads in {elapsed:.1f} s while sk dropped, expected {expected:.0f}"
    assert reopens >= DROPS
    assert cuts >= 2, "the relay closed by hand at zero balance was not cut again"
    store = open_store(tmp_path / "pmg.db", readonly=True)
    try:
        for meter in [*SK_METERS, *MB_METERS]:
            charged, moved = charged_vs_register(store, meter)
            assert moved > 0, f"{meter}: register never moved"
            assert charged == moved, f"{meter}: charged {charged} Wh, register moved {moved} Wh"
        bad_charges = store.scalar(
            "SELECT COUNT(*) FROM entries e JOIN readings r ON e.reading_id = r.id "
            "WHERE e.kind = 'charge' AND r.quality != 'ok'"
        )
        assert bad_charges == 0
        assert verify(store) == []
    finally:
        store.close()


async def campaign(
    cfg_path: Path, gw_clock: ScaledClock, models: list[Any], servers: list[SimulatedDlt645Bus], serve: Any, port: int
) -> tuple[dict[str, int], float, int, int]:
    gateway = Gateway(cfg_path, load_config(cfg_path), clock=gw_clock)
    await gateway.start()
    for meter in [*SK_METERS[1:], *MB_METERS]:  # every account but the empty one has credit
        gateway.apply_payment(f"credit-{meter}", f"A-{meter}", 1_000_000, source="campaign")
    store = gateway.store
    empty = models[0]

    def ok(meter: str) -> int:
        return int(store.scalar("SELECT COUNT(*) FROM readings WHERE meter_id = ? AND quality = 'ok'", meter))

    def failed_reads() -> int:
        return int(store.scalar("SELECT COUNT(*) FROM readings WHERE meter_id LIKE 'sk-%' AND quality != 'ok'"))

    def cuts() -> int:
        return int(
            store.scalar(
                "SELECT COUNT(*) FROM relay_commands WHERE meter_id = ? AND action = 'trip' "
                "AND status = 'confirmed'",
                EMPTY,
            )
        )

    try:
        await async_wait_for(lambda: all(ok(m) for m in [*SK_METERS, *MB_METERS]), timeout=20, what="first reads")
        await async_wait_for(lambda: not empty.relay_closed, timeout=20, what="the empty account cut")
        link: Any = gateway.links["sk"]
        mb_start = {m: ok(m) for m in MB_METERS}
        started = gateway.monotonic()
        for k in range(DROPS):
            before = {m: ok(m) for m in SK_METERS}
            failed = failed_reads()
            servers[-1].stop()  # the device server drops every connection and stops listening
            # Away long enough for the gateway to notice and to be refused again: three failed reads.
            await async_wait_for(
                lambda: failed_reads() >= failed + 3,  # noqa: B023
                timeout=10,
                what=f"drop {k + 1} seen by the gateway",
            )
            if k == RECLOSED_AT_DROP:
                empty.close()  # someone closes the relay by hand: balance 0, power on, link dead
            serve(port)
            await async_wait_for(
                lambda: all(ok(m) > before[m] for m in SK_METERS),  # noqa: B023
                timeout=30,
                what=f"sk read again after drop {k + 1}",
            )
        elapsed = gateway.monotonic() - started
        mb_polls = {m: ok(m) - mb_start[m] for m in MB_METERS}
        await async_wait_for(lambda: not empty.relay_closed, timeout=30, what="the re-closed relay cut again")
        await async_wait_for(lambda: cuts() >= 2, timeout=10, what="the second cut confirmed")
        # A last clean read of every meter after everything settled, so the ledger catches up.
        final = {m: ok(m) for m in [*SK_METERS, *MB_METERS]}
        await async_wait_for(lambda: all(ok(m) > final[m] for m in final), timeout=20, what="final reads")
        return mb_polls, elapsed, getattr(link.stats, "reopens", 0), cuts()
    finally:
        await gateway.stop()
