"""The demo runs to the end of its story (the README's first command runs exactly this, faster here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_tells_the_whole_story(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli.main",
            "demo",
            "--plain",
            "--speed",
            "5400",
            "--minutes",
            "3",
            "--workdir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "policy_serve_notice" in out and "policy_send_reminder" in out
    assert "M-01 cut after notice" in out
    assert "signed top-up" in out, "the top-up should travel over MQTT, signed"
    assert "M-01 power restored, confirmed by read-back" in out
    assert "policy_escalate" in out, "the clinic is escalated, not cut"
    assert any("policy_warn" in line and "M-05" in line for line in out.splitlines()), "the DLMS meter is billed"
    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli.main",
            "ledger",
            "verify",
            "-c",
            str(tmp_path / "demo" / "gateway.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    trips = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli.main",
            "events",
            "--json",
            "--limit",
            "100000",
            "-c",
            str(tmp_path / "demo" / "gateway.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    tripped = {
        e["meter_id"]
        for e in json.loads(trips.stdout)
        if e["kind"] == "relay_confirmed" and e["detail"].get("action") == "trip"
    }
    assert tripped == {"M-01"}, f"only the Wang household may be cut, not {tripped}"
