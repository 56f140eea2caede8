"""``pmg sim modbus`` (simulators/modbus/cli.py) as a separate process, then a driver reading it."""

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
    proc, line = start(cli_process, "--profile", "dds238", "--meters", "3", *where)
    assert line.startswith("Hiking DDS238-2 ZN/SR x3 (units 1..3) listening on "), line
    url = line.rsplit(" ", 1)[1]
    prof = load_profile("dds238")
    reading = run(with_link(url, lambda link: ModbusMeter(link, 3, prof).read()))
    assert reading.quality is Quality.OK and reading.energy_import_wh == 0
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0


def test_the_earlier_option_names_still_serve(cli_process: list[subprocess.Popen[str]]) -> None:
    """``--units`` and ``--watts`` were renamed ``--meters`` and ``--power-w``; scripts keep working."""
    proc, line = start(cli_process, "--profile", "sdm120", "--units", "2", "--watts", "800", "--tcp", "0")
    assert line.startswith("Eastron SDM120 x2 (units 1..2) listening on tcp://"), line
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


def _pmg_sim(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", "sim", "modbus", *args],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=60,
    )


def test_cli_rejects_unknown_profile() -> None:
    done = _pmg_sim("--profile", "nope", "--tcp", "0")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("pmg: error: unknown meter profile 'nope' (known: "), done.stderr
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args,message",
    [
        (("--profile", "sdm120"), "give exactly one of --tcp PORT and --pty"),
        (("--profile", "sdm120", "--tcp", "0", "--pty"), "give exactly one of --tcp PORT and --pty"),
        (("--profile", "sdm120", "--tcp", "0", "--meters", "2", "--units", "2"), "--units is the earlier name"),
        (("--profile", "sdm120", "--tcp", "0", "--power-w", "1", "--watts", "1"), "--watts is the earlier name"),
        (("--profile", "sdm120", "--tcp", "0", "--meters", "248"), "'--meters': 248 is not in the range"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    done = _pmg_sim(*args)
    assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr
