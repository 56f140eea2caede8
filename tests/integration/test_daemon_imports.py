"""A running ``pmg run`` imports none of what the daemon does not need (gateway/cli/lazy.py): not the
web console, the head office, the simulators, the CLI's other commands, sqlite-utils, nor pymodbus
without a Modbus bus — each would stay in the memory of a process that runs for months.

A real daemon is started under ``python -X importtime``, which lists every import as it happens, lazy
ones included; the list is read once the daemon has started and tried its bus.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from support.daemon_imports import forbidden_in
from support.gateway_harness import offline_config

REPO = Path(__file__).resolve().parents[2]


def test_the_running_daemon_imports_none_of_it(tmp_path: Path) -> None:
    config = offline_config(tmp_path, 3)
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "gateway.cli.main", "run", "-c", str(config)],
            cwd=REPO,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 60
        while "bus stopped" not in log.read_text():  # started, then its first bus attempt came back
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(30)
    lines = log.read_text().splitlines()
    imported = {
        line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:") and "|" in line
    }
    assert (
        "gateway.runtime.daemon" in imported and "drivers.dlt645.link" in imported
    )  # the probe saw the start
    assert forbidden_in(imported) == []
