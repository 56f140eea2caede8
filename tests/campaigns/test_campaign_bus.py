"""Bus campaign: one DL/T 645 line with healthy meters among corrupted, truncated, noisy, dead, slow,
refusing and stuck-relay meters, plus one that corrupts frames only for a while (the fleet's schedule).

A real in-process gateway polls the line (TCP, the fleet simulator) with a shared fast clock:
- healthy meters keep their poll rate (a bad neighbour costs at most its timeout, then backs off);
- no reading that was not ``ok`` is ever charged, and every meter's charged energy equals the movement
  of its accepted register; a meter that never answered cleanly has no register and no charge;
- a stuck relay ends as a failed command with an alarm; the ledger verifies.

``PMG_CAMPAIGN_N`` scales the measuring window (seconds = 6 x N, CI default N=2).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from support.gateway_harness import base_config, write_config
from support.waiting import async_wait_for

from gateway.config import load_config
from gateway.core.timeutil import ScaledClock
from gateway.ledger.verify import verify
from gateway.runtime.daemon import Gateway
from gateway.store.db import Store, open_store
from simulators.fleet import Fleet, gateway_toml, load_fleet
from simulators.model import FastClock

N = int(os.environ.get("PMG_CAMPAIGN_N", "2"))
WINDOW_S = 6.0 * N
SPEED = 60.0
INTERVAL_S = 2.0
HEALTHY = ["b1-0001", "b1-0002", "b1-0003"]
ANSWERING_BADLY_BUT_READABLE = {"b1-0007": "late_answer", "b1-0008": "garbage"}
NEVER_CLEAN = {"b1-0004": "bad_frame", "b1-0005": "bad_frame", "b1-0006": "timeout", "b1-0010": "refused"}
STUCK = "b1-0009"
FLAKY = "b1-0011"

FLEET = f"""
speed = {SPEED}
[[buses]]
id = "b1"
protocol = "dlt645"
baud = 115200
response_delay_ms = 2
meters = 11
vary_load = false
load_w = [600]
poll_interval_s = {INTERVAL_S}
timeout_s = 0.25
retries = 1
""" + "".join(
    f'\n[[faults]]\nat_s = {at}\nbus = "b1"\nmeter = "{meter:012d}"\nfault = "{fault}"\nduration_s = {d}\n'
    for at, meter, fault, d in [
        (0, 4, "bad_checksum", 3600),
        (0, 5, "truncated", 3600),
        (0, 6, "no_answer", 3600),
        (0, 7, "late_answer", 3600),
        (0, 8, "garbage", 3600),
        (0, 9, "stuck_relay", 3600),
        (0, 10, "abnormal_reply", 3600),
        (0, 11, "bad_checksum", 6.0),
        (10.0, 11, "truncated", 4.0),
    ]
)


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
def test_bad_meters_cost_their_timeout_and_nothing_bad_is_charged(tmp_path: Path) -> None:
    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_text(FLEET)
    cfg = load_fleet(fleet_file)
    gw_clock = ScaledClock(SPEED)
    fleet = Fleet(cfg, clock=FastClock(SPEED, start=gw_clock.epoch()))
    fleet.model("b1", "000000000007").late_answer_s = 0.05  # slow, but inside the 0.25 s timeout
    with fleet:
        endpoints = fleet.start()
        body = base_config(tmp_path / "pmg.db") + gateway_toml(cfg, endpoints, base_dir=tmp_path, fragment=True)
        cfg_path = write_config(tmp_path / "gw.toml", body)
        stuck_model = fleet.model("b1", "000000000009")

        async def scenario() -> dict[str, int]:
            gateway = Gateway(cfg_path, load_config(cfg_path), clock=gw_clock)
            await gateway.start()
            store = gateway.store
            try:
                await async_wait_for(
                    lambda: all(
                        store.scalar("SELECT last_register_wh FROM meters WHERE id = ?", m) is not None
                        for m in HEALTHY
                    ),
                    what="healthy meters polled",
                )
                await async_wait_for(
                    lambda: store.scalar(
                        "SELECT COUNT(*) FROM relay_commands WHERE meter_id = ? AND status = 'failed'", STUCK
                    ),
                    timeout=30,
                    what="the stuck relay's command given up",
                )
                # Relay commands outrank polls, and the empty accounts' trips to the dead meters take their
                # whole retry budget first; the healthy meters' rate is measured once that is done.
                await async_wait_for(
                    lambda: store.scalar(
                        "SELECT COUNT(*) FROM relay_commands WHERE status IN ('pending', 'sending')"
                    )
                    == 0,
                    timeout=60,
                    what="relay commands settled",
                )
                start = {
                    m: store.scalar("SELECT COUNT(*) FROM readings WHERE meter_id = ? AND quality = 'ok'", m)
                    for m in HEALTHY
                }
                await asyncio.sleep(WINDOW_S)  # the measuring window itself, not a wait for state
                polls = {
                    m: store.scalar("SELECT COUNT(*) FROM readings WHERE meter_id = ? AND quality = 'ok'", m)
                    - start[m]
                    for m in HEALTHY
                }
                return polls
            finally:
                await gateway.stop()

        polls = asyncio.run(scenario())

    store = open_store(tmp_path / "pmg.db", readonly=True)
    try:
        expected = WINDOW_S / INTERVAL_S
        for meter, n in polls.items():
            assert n >= 0.75 * expected, f"{meter}: {n} polls in {WINDOW_S} s, expected about {expected:.0f}"
        bad_charges = store.scalar(
            "SELECT COUNT(*) FROM entries e JOIN readings r ON e.reading_id = r.id "
            "WHERE e.kind = 'charge' AND r.quality != 'ok'"
        )
        assert bad_charges == 0
        for meter, quality in NEVER_CLEAN.items():
            qualities = {r[0] for r in store.all("SELECT DISTINCT quality FROM readings WHERE meter_id = ?", meter)}
            assert qualities == {quality}, f"{meter}: {qualities}"
            assert store.scalar("SELECT last_register_wh FROM meters WHERE id = ?", meter) is None
            assert store.scalar("SELECT last_comms_error FROM meters WHERE id = ?", meter)
            assert store.scalar("SELECT COUNT(*) FROM entries WHERE kind = 'charge' AND meter_id = ?", meter) == 0
        for meter in [*HEALTHY, *ANSWERING_BADLY_BUT_READABLE, FLAKY, STUCK]:
            charged, moved = charged_vs_register(store, meter)
            assert charged == moved, f"{meter}: charged {charged} Wh, register moved {moved} Wh"
            assert store.scalar("SELECT COUNT(*) FROM readings WHERE meter_id = ? AND quality = 'ok'", meter) > 0
        assert store.scalar("SELECT COUNT(*) FROM readings WHERE meter_id = ? AND quality != 'ok'", FLAKY) > 0
        alarm = store.scalar(
            "SELECT COUNT(*) FROM events WHERE kind = 'relay_failed' AND severity = 'alarm' AND meter_id = ?", STUCK
        )
        assert alarm, "a stuck relay raised no alarm"
        assert stuck_model.relay_closed
        assert verify(store) == []
    finally:
        store.close()
