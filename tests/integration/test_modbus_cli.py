"""``pmg sim modbus`` (simulators.modbus.cli.main) as a separate process, then a driver reading it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.modbus_fixtures import run, with_link

from drivers.base import Quality
from drivers.modbus import ModbusMeter, load_profile
from simulators.modbus.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli_process() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def start(procs: list[subprocess.Popen[str]], *args: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.modbus.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=env,
    )
    procs.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the server prints where it listens (or exits)
    return proc, line.strip()


@pytest.mark.parametrize("where", [["--tcp", "0"], ["--pty"]])
def test_cli_serves_until_interrupted(cli_process: list[subprocess.Popen[str]], where: list[str]) -> None:
    proc, line = start(cli_process, "--profile", "dds238", "--units", "3", *where)
    assert line.startswith("Hiking DDS238-2 ZN/SR x3 (units 1..3) listening on "), line
    url = line.rsplit(" ", 1)[1]
    prof = load_profile("dds238")
    reading = run(with_link(url, lambda link: ModbusMeter(link, 3, prof).read()))
    assert reading.quality is Quality.OK and reading.energy_import_wh == 0
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0


def test_cli_rejects_unknown_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--profile", "nope", "--tcp", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown meter profile 'nope' (known: ") and err.count("\n") == 1
