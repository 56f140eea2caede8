"""``pmg sim fleet`` as a process: a fleet whose DL/T 645 clocks outrun the gateway's relay command
validity says so once, at start, on stderr; a fleet that cannot have the problem says nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FLEET = """
speed = {speed}
[[buses]]
id = "b1"
protocol = "{protocol}"
{extra}
meters = 2
"""


def _serve(tmp_path: Path, speed: str, protocol: str) -> tuple[int, list[str], list[str]]:
    extra = 'profile = "sdm120"' if protocol == "modbus" else ""
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET.format(speed=speed, protocol=protocol, extra=extra))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli.main", "sim", "fleet", "-c", str(fleet)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        out = []
        while not (out and out[-1].startswith("ready")):
            line = proc.stdout.readline()
            assert line, "the fleet exited before it was ready"
            out.append(line)
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=20)
        return proc.returncode, out + rest.splitlines(keepends=True), err.splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def test_a_fast_dlt645_fleet_warns_in_one_line_at_start(tmp_path: Path) -> None:
    status, out, err = _serve(tmp_path, "60.0", "dlt645")
    assert status == 0 and out[-1].strip() == "stopped"
    assert len(err) == 1, err
    assert err[0].startswith("warning: speed = 60 (") and "after 30.5 s" in err[0]
    assert "refuse every trip as expired ('refused relay trip: other')" in err[0]


@pytest.mark.parametrize(("speed", "protocol"), [("1.0", "dlt645"), ("60.0", "modbus")])
def test_no_warning_where_relay_commands_do_not_expire(tmp_path: Path, speed: str, protocol: str) -> None:
    status, out, err = _serve(tmp_path, speed, protocol)
    assert status == 0 and out[-1].strip() == "stopped"
    assert err == []
