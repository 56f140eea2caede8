"""Crash campaign: ``kill -9`` the daemon at random instants under mixed load, then audit everything.

Load while the daemon runs: four simulated DL/T 645 meters on TCP (115200 baud) polled every 0.2 s (readings and
charges), payments through ``pmg payment add`` from a separate process, relay trips and reconnects
decided by the policy as credit runs out and comes back (no notice period: the fast test policy),
and the outbox publishing to a private Mosquitto.  A head-office subscriber is connected before the
first start and stays connected.

After N kills and one last clean run:
- ``pmg ledger verify`` passes;
- every payment whose ``pmg payment add`` succeeded is in the ledger exactly once, and replaying it
  applies nothing;
- every kWh is charged once: per meter, charged energy == last accepted register − first register;
- every outbox message was delivered at least once (its seq reached the subscriber).

``PMG_CAMPAIGN_N`` sets the number of kills (CI default 4; by hand: PMG_CAMPAIGN_N=200).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from support.broker import Mosquitto
from support.gateway_harness import base_config, subscriber, write_config
from support.waiting import wait_for

from gateway.store.db import open_store
from simulators.dlt645 import SimulatedDlt645Bus
from simulators.model import LoadProfile, MeterModel

N = int(os.environ.get("PMG_CAMPAIGN_N", "4"))
REPO = Path(__file__).resolve().parents[2]
METERS = 4
SEED = int(os.environ.get("PMG_CAMPAIGN_SEED", "645"))


def pmg(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def meters() -> Iterator[tuple[list[MeterModel], str]]:
    # Real time (relay commands carry a deadline in the meter's clock) and a huge load instead: 500 kW
    # costs about 7 fen a second, so small payments run out within a run and trips and reconnects recur.
    models = [MeterModel(f"{i:012d}", profile=LoadProfile((500_000,))) for i in range(1, METERS + 1)]
    sim = SimulatedDlt645Bus(models, baud=115200, response_delay_s=0.002)
    try:
        yield models, f"socket://127.0.0.1:{sim.start_tcp()}"
    finally:
        sim.stop()


class Daemon:
    """``pmg run`` as a child process; the log is kept for the failure message."""

    def __init__(self, cfg: Path, log: Path) -> None:
        self.cfg, self.log = cfg, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli.main", "run", "-c", str(self.cfg)],
                cwd=REPO,
                stdout=out,
                stderr=out,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(20)


@pytest.mark.campaign
def test_kill_9_at_random_instants_loses_and_doubles_nothing(
    tmp_path: Path, mosquitto: Mosquitto, meters: tuple[list[MeterModel], str]
) -> None:
    _models, url = meters
    db = tmp_path / "pmg.db"
    body = base_config(db, mqtt_port=mosquitto.port)
    body += f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "{url}"\nbaud = 115200\npoll_interval_s = 0.2\n'
    body += "timeout_s = 0.5\nretries = 1\n"
    for i in range(1, METERS + 1):
        body += f'\n[[meters]]\nid = "m{i}"\nbus = "b1"\naddress = "{i:012d}"\naccount = "acc{i}"\ntariff = "flat-cn"\n'
        body += "max_power_w = 1000000\n"
    cfg = write_config(tmp_path / "gw.toml", body)
    rng = random.Random(SEED)
    daemon = Daemon(cfg, tmp_path / "daemon.log")
    paid: list[str] = []
    taken: dict[str, tuple[str, str]] = {}

    def pay(n: int) -> None:
        account, amount, pid = f"acc{rng.randint(1, METERS)}", f"0.{rng.randint(1, 9)}0", f"pay-{n}"
        result = pmg("payment", "add", "-c", str(cfg), account, amount, "--id", pid, "--actor", "campaign")
        if result.returncode == 0:
            paid.append(pid)
            taken[pid] = (account, amount)

    with subscriber(mosquitto.port) as hq:
        try:
            for k in range(N):
                daemon.start()
                wait_for(db.exists, what="database created")
                deadline = time.monotonic() + rng.uniform(1.5, 4.0)  # the random instant of the kill
                pay(2 * k)
                if rng.random() < 0.5:
                    pay(2 * k + 1)
                time.sleep(max(0.0, deadline - time.monotonic()))
                daemon.kill()
            # One last clean run: the outbox drains, pending relay commands finish, then a graceful stop.
            starts = daemon.log.read_text().count("started gateway=")  # some kills hit a daemon still starting
            daemon.start()
            wait_for(
                lambda: daemon.log.read_text().count("started gateway=") == starts + 1,
                timeout=30,
                what="the last daemon started",
            )

            def drained() -> bool:
                with closing(open_store(db, readonly=True)) as store:
                    return bool(
                        store.scalar("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL") == 0
                        and store.scalar("SELECT COUNT(*) FROM meters WHERE last_register_wh IS NULL") == 0
                    )

            wait_for(drained, timeout=60, interval=0.2, what="outbox drained after the last restart")
            status = daemon.terminate()
            assert status == 0, f"exit {status}: {daemon.log.read_text()[-3000:]}"
        finally:
            daemon.kill()
        received = {m[1].get("seq") for m in list(hq.messages)}

    verify = pmg("ledger", "verify", "-c", str(cfg))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert paid, "no payment was taken during the campaign"
    with closing(open_store(db, readonly=True)) as store:
        for pid in paid:
            assert store.scalar("SELECT COUNT(*) FROM payments WHERE payment_id = ?", pid) == 1, pid
            assert store.scalar("SELECT COUNT(*) FROM entries WHERE kind = 'payment' AND external_id = ?", pid) == 1
        payments_before = store.scalar("SELECT COUNT(*) FROM entries WHERE kind = 'payment'")
        for i in range(1, METERS + 1):
            first = store.scalar(
                "SELECT register_wh FROM readings WHERE meter_id = ? AND outcome = 'baseline' ORDER BY id LIMIT 1", f"m{i}"
            )
            last = store.scalar("SELECT last_register_wh FROM meters WHERE id = ?", f"m{i}")
            charged = store.scalar(
                "SELECT COALESCE(SUM(energy_wh), 0) FROM entries WHERE kind = 'charge' AND meter_id = ?", f"m{i}"
            )
            assert store.scalar("SELECT COUNT(*) FROM readings WHERE meter_id = ? AND outcome = 'baseline'", f"m{i}") == 1
            assert charged == last - first, f"m{i}: charged {charged} Wh, register moved {last - first} Wh"
        seqs = [r[0] for r in store.all("SELECT seq FROM outbox WHERE qos > 0 ORDER BY seq")]
        trips = store.scalar("SELECT COUNT(*) FROM relay_commands")
    assert seqs, "nothing was published"
    missing = sorted(set(seqs) - received)
    assert not missing, f"{len(missing)} of {len(seqs)} outbox messages never reached the head office: {missing[:20]}"
    replay = pmg("payment", "add", "-c", str(cfg), *taken[paid[0]], "--id", paid[0], "--actor", "campaign")
    assert replay.returncode == 0 and "already applied" in replay.stdout
    with closing(open_store(db, readonly=True)) as store:
        assert store.scalar("SELECT COUNT(*) FROM entries WHERE kind = 'payment'") == payments_before
    print(f"campaign: {N} kills, {len(paid)} payments, {len(seqs)} messages, {trips} relay commands")
