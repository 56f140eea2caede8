"""Disk campaign: the database's filesystem fills up under a running gateway, then space comes back.

The database lives on a small tmpfs mounted for this test (we run as root in CI; without permission to
mount, the test is skipped with the reason).  A real in-process gateway polls two simulated meters and
bills; the test fills the filesystem to the last byte and, while it is full:
- the gateway keeps running (the bus worker keeps polling, nothing crashes);
- a payment is refused with an error, and nothing of it is half-written;
- the failure is raised as an error in the log (the database cannot hold an alarm when it is full);
then frees the space and checks that billing resumes and catches up exactly (charged energy == register
movement: nothing committed was lost, nothing charged twice) and that the ledger verifies.

``PMG_CAMPAIGN_N`` sets the number of fill/free cycles (CI default 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.gateway_harness import base_config, write_config
from support.waiting import async_wait_for

from gateway.config import load_config
from gateway.ledger.verify import verify
from gateway.runtime.daemon import Gateway
from gateway.store.db import Store
from simulators.dlt645 import SimulatedDlt645Bus
from simulators.model import LoadProfile, MeterModel

N = int(os.environ.get("PMG_CAMPAIGN_N", "2"))
SIZE = "8m"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip() or result.returncode}")
    try:
        (mount / "filler").touch()
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Append to the filler file until the filesystem refuses another byte (unbuffered: nothing is left
    to flush, so closing cannot fail)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_APPEND)  # created at mount time: opening needs no space
    try:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * chunk):
                    pass
    finally:
        os.close(fd)
    return filler


def charged_and_moved(store: Store, meter: str) -> tuple[int, int]:
    first = store.scalar(
        "SELECT register_wh FROM readings WHERE meter_id = ? AND outcome = 'baseline' ORDER BY id LIMIT 1", meter
    )
    last = store.scalar("SELECT last_register_wh FROM meters WHERE id = ?", meter)
    charged = store.scalar("SELECT COALESCE(SUM(energy_wh), 0) FROM entries WHERE kind = 'charge' AND meter_id = ?", meter)
    return charged, last - first


@pytest.mark.campaign
def test_full_disk_refuses_new_work_and_loses_nothing(
    tmp_path: Path, small_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models = [MeterModel(f"{i:012d}", profile=LoadProfile((20_000,))) for i in (1, 2)]
    sim = SimulatedDlt645Bus(models, baud=115200, response_delay_s=0.002)
    try:
        url = f"socket://127.0.0.1:{sim.start_tcp()}"
        body = base_config(small_fs / "pmg.db")
        body += f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "{url}"\nbaud = 115200\npoll_interval_s = 0.1\n'
        for i in (1, 2):
            body += f'\n[[meters]]\nid = "m{i}"\nbus = "b1"\naddress = "{i:012d}"\naccount = "acc{i}"\ntariff = "flat-cn"\n'
        cfg_path = write_config(tmp_path / "gw.toml", body)

        async def scenario() -> None:
            gateway = Gateway(cfg_path, load_config(cfg_path))
            await gateway.start()
            store = gateway.store
            worker = gateway.workers["b1"]

            def charged_rows() -> int:
                return int(store.scalar("SELECT COUNT(*) FROM readings WHERE outcome = 'charged'"))

            try:
                await async_wait_for(lambda: charged_rows() >= 4, what="billing under way")
                for k in range(N):
                    gateway.apply_payment(f"before-full-{k}", "acc1", 500, source="campaign")
                    caplog.clear()
                    filler = fill(small_fs)
                    polls = worker.stats.polls_ok + worker.stats.polls_failed
                    await async_wait_for(
                        lambda p=polls: worker.stats.polls_ok + worker.stats.polls_failed > p + 10,  # type: ignore[misc]
                        what="the bus keeps polling with the disk full",
                    )
                    payments = store.scalar("SELECT COUNT(*) FROM payments")
                    with pytest.raises(Exception) as refused:
                        gateway.apply_payment(f"while-full-{k}", "acc1", 500, source="campaign")
                    assert "full" in str(refused.value).lower() or "disk" in str(refused.value).lower(), refused.value
                    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
                    assert errors, "a full disk raised no error in the log"
                    filler.write_bytes(b"")
                    assert store.scalar("SELECT COUNT(*) FROM payments") == payments
                    rows = charged_rows()
                    await async_wait_for(lambda r=rows: charged_rows() > r + 4, what=f"billing resumed (cycle {k + 1})")  # type: ignore[misc]
                    gateway.apply_payment(f"after-full-{k}", "acc1", 500, source="campaign")
                for m in ("m1", "m2"):
                    charged, moved = charged_and_moved(store, m)
                    assert charged == moved, f"{m}: charged {charged} Wh, register moved {moved} Wh"
                paid = {r[0] for r in store.all("SELECT payment_id FROM payments")}
                assert paid == {f"{w}-{k}" for k in range(N) for w in ("before-full", "after-full")}
                assert store.scalar("PRAGMA integrity_check") == "ok"
                assert verify(store) == []
            finally:
                await gateway.stop()

        asyncio.run(scenario())
    finally:
        sim.stop()
