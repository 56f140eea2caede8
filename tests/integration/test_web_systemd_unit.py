"""systemd/pmg-web.service: it verifies, its exposure is no worse than pmg.service's bound (2.0), and
it shares the daemon's identity and state directory without the daemon's devices.

As for pmg.service, ``systemd-analyze`` checks a copy whose ExecStart is /bin/true (no /usr/bin/pmg
on a build machine)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "pmg-web.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _testable_copy(tmp_path: Path) -> Path:
    text = UNIT.read_text()
    assert text.count("ExecStart=/usr/bin/pmg ") == 1
    copy = tmp_path / "pmg-web.service"
    copy.write_text(text.replace("ExecStart=/usr/bin/pmg ", "ExecStart=/bin/true "))
    return copy


def test_unit_runs_pmg_web_as_the_daemons_user_without_devices() -> None:
    d = _directives(UNIT.read_text())
    assert d["ExecStart"][0].split()[1] == "web"
    assert d["User"] == ["pmg"] and d["StateDirectory"] == ["pmg"]
    assert d["PrivateDevices"] == ["yes"] and "DeviceAllow" not in d
    assert d["NoNewPrivileges"] == ["yes"] and d["CapabilityBoundingSet"] == [""]
    assert d["ProtectSystem"] == ["strict"]
    assert "2" in d["RestartPreventExitStatus"][0].split()


@needs_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    copy = _testable_copy(tmp_path)
    proc = subprocess.run([str(ANALYZE), "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "pmg-web.service" not in proc.stderr, proc.stderr


@needs_analyze
def test_exposure_is_two_or_less(tmp_path: Path) -> None:
    copy = _testable_copy(tmp_path)
    proc = subprocess.run(
        [str(ANALYZE), "security", "--offline=yes", "--no-pager", str(copy)],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r"Overall exposure level for pmg-web\.service: (\d+\.\d)", proc.stdout + proc.stderr)
    assert match, proc.stdout[-2000:] + proc.stderr
    assert float(match.group(1)) <= 2.0, proc.stdout
