"""The systemd unit: it verifies, its exposure score is 2.0 or less, and it keeps the promises the
daemon relies on (notify readiness, watchdog, dialout, state directory only, no privileges).

``systemd-analyze verify`` insists that ExecStart's binary exists.  On a build machine /opt/pmg/bin/pmg
is not installed, so the verify test checks a temporary copy whose ExecStart points at /bin/true
(everything else byte-identical), and separately checks that the shipped unit's only complaint, if
any, is that missing binary.  tests/integration/test_install.py verifies it against a real install.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "pmg.service"
PMG = "/opt/pmg/bin/pmg"  # README, "Running under systemd"
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
    assert text.count(f"ExecStart={PMG} ") == 1
    copy = tmp_path / "pmg.service"
    copy.write_text(text.replace(f"ExecStart={PMG} ", "ExecStart=/bin/true "))
    return copy


def test_unit_makes_the_promises_the_daemon_relies_on() -> None:
    d = _directives(UNIT.read_text())
    assert d["Type"] == ["notify"]
    assert int(d["WatchdogSec"][0]) >= 10
    assert "dialout" in d["SupplementaryGroups"][0].split()
    assert d["StateDirectory"] == ["pmg"]
    assert d["ProtectSystem"] == ["strict"]
    assert d["NoNewPrivileges"] == ["yes"]
    assert d["CapabilityBoundingSet"] == [""]
    assert set(d["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert d["User"] == ["pmg"]
    assert "run" in d["ExecStart"][0].split()
    assert "3" in d["RestartPreventExitStatus"][0].split()  # a second instance is not a crash
    assert "DynamicUser" not in d  # the static user pmg: the technician's commands write as it does


def test_unit_waits_for_time_sync_and_allows_the_serial_families_concentrators_use() -> None:
    d = _directives(UNIT.read_text())
    wants = {w for line in d["Wants"] for w in line.split()}
    after = {a for line in d["After"] for a in line.split()}
    assert "time-sync.target" in wants and "time-sync.target" in after
    allowed = {line.split()[0]: line.split()[1] for line in d["DeviceAllow"]}
    families = ["ttyS", "ttyUSB", "ttyACM", "ttyAMA", "ttymxc", "ttySC", "ttyO", "ttyTHS", "ttyXRUSB"]
    assert {f"char-{f}": "rw" for f in families}.items() <= allowed.items(), allowed
    assert d["DevicePolicy"] == ["closed"]


def test_unit_lets_the_daemon_write_its_state_and_a_backup_dir_in_var_backups() -> None:
    d = _directives(UNIT.read_text())
    assert d["WorkingDirectory"] == ["/var/lib/pmg"]
    assert d["ReadWritePaths"] == ["-/var/backups/pmg"]  # "-": skipped while it does not exist


@needs_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    copy = _testable_copy(tmp_path)
    proc = subprocess.run(
        [str(ANALYZE), "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "pmg.service" not in proc.stderr, proc.stderr


@needs_analyze
def test_shipped_unit_only_lacks_the_installed_binary() -> None:
    proc = subprocess.run(
        [str(ANALYZE), "verify", str(UNIT)], capture_output=True, text=True, timeout=60, check=False
    )
    if Path(PMG).exists():
        assert proc.returncode == 0, proc.stderr
        return
    complaints = [line for line in proc.stderr.splitlines() if "pmg.service" in line]
    assert complaints, f"verify should notice {PMG} is missing"
    assert all(PMG in line for line in complaints), complaints


@needs_analyze
def test_exposure_is_two_or_less(tmp_path: Path) -> None:
    copy = _testable_copy(tmp_path)
    proc = subprocess.run(
        [str(ANALYZE), "security", "--offline=yes", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for pmg\.service: (\d+\.\d)", proc.stdout + proc.stderr)
    assert match, proc.stdout[-2000:] + proc.stderr
    assert float(match.group(1)) <= 2.0, proc.stdout
