"""``pmg sim dlms`` as a process: it prints where it listens, the driver reads its meters there (HDLC
over TCP with two addresses, a pty with the mode E opening), SIGTERM stops it; bad options are one
line with exit status 2."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from drivers.base import Quality
from drivers.dlms.link import DlmsLink, Target
from drivers.dlms.meter import DlmsMeter
from drivers.dlms.profile import load_profile
from gateway.cli.main import cli

REPO = Path(__file__).resolve().parents[2]


def _read(url: str, address: int, opening: str = "none") -> Quality:
    async def go() -> Quality:
        async with DlmsLink(url, timeout_s=0.3, retries=0, opening=opening) as link:
            return (await DlmsMeter(link, Target(1, address), load_profile("generic")).read()).quality

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("args", "reads"),
    [
        (["--tcp", "0", "--meters", "2", "--address", "30"], [(30, "none"), (31, "none")]),
        (["--pty", "--opening", "iec62056-21", "--baud", "19200"], [(17, "iec62056-21")]),
    ],
)
def test_pmg_sim_dlms_serves_until_sigterm(args: list[str], reads: list[tuple[int, str]]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli.main", "sim", "dlms", *args],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "listening on " in first, first + (proc.stderr.read() if proc.stderr else "")
        url = first.strip().rsplit(" ", 1)[-1]
        for address, opening in reads:
            assert _read(url, address, opening) is Quality.OK
        assert _read(url, 99) is Quality.TIMEOUT  # no meter there
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 0
        assert proc.stdout.read().strip() == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--pty", "--tcp", "0"], "exactly one of --tcp PORT and --pty"),
        (["--pty", "--wrapper"], "--wrapper"),
        (["--pty", "--meters", "2", "--opening", "iec62056-21"], "one meter only"),
        (["--pty", "--opening", "iec62056-21", "--baud", "38400"], "mode E baud"),
        (["--pty", "--fault", "melt"], "--fault"),
    ],
)
def test_bad_options_are_one_line(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(cli, ["sim", "dlms", *args], prog_name="pmg")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], result.stderr
