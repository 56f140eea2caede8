"""The wheel carries its own data: meter profiles and example tariffs, used from outside the checkout.

Profiles used to be found through an environment variable or by walking up from the source tree to
``config/profiles`` (now ``drivers/modbus/profiles``, package data), which an installed wheel does not have: ``pmg read --profile sdm120`` worked only
from a checkout.  This builds the wheel from a copy of the sources, installs it (``--no-deps
--no-index``) into a fresh venv whose dependencies come from the current environment's site-packages
(a ``.pth`` line: the nested ``.pth`` files there, such as an editable install of this project, are not
processed), and reads a simulated SDM120 over Modbus TCP from a temporary directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import selectors
import shutil
import subprocess
import sys
import sysconfig
import time
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = [
    *(f"drivers/modbus/profiles/{name}.toml" for name in ("dds238", "ddsu666", "sdm120", "sdm630")),
    *(f"gateway/tariffs/examples/{name}.toml" for name in ("flat-cn", "tou-cn", "uk-standard", "zhejiang-residential")),
    "gateway/presets/cn.toml",
]

pytestmark = pytest.mark.slow


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH: the installed wheel, not the checkout, must answer."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _can_build_here() -> bool:
    """setuptools ≥ 68 (pyproject's build requirement) with a ``bdist_wheel`` command: built in since
    setuptools 70.1, else from the ``wheel`` package."""
    try:
        version = tuple(int(p) for p in metadata.version("setuptools").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    if version < (68, 0):
        return False
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"  # a copy, so the build leaves nothing (build/, *.egg-info) in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("gateway", "drivers", "simulators"):
        shutil.copytree(REPO / package, src / package, ignore=ignore)
    dist = tmp_path / "dist"
    # Offline when this environment can build wheels itself; otherwise pip fetches the build backend.
    isolation = ["--no-build-isolation"] if _can_build_here() else []
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "-w", str(dist), "--no-deps", "-q", *isolation],
        capture_output=True,
        text=True,
        timeout=180,
        env=_clean_env(),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = dist.glob("*.whl")
    return wheel


def _venv_with(tmp_path: Path, wheel: Path) -> Path:
    home = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(home)
    python = home / "bin" / "python"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_env(),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # The dependencies (pymodbus, pydantic, click …) from this environment, after the venv's own packages.
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
            env=_clean_env(),
        ).stdout.strip()
    )
    (site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return home


def _first_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sel.select(deadline - time.monotonic()):
                return proc.stdout.readline()
    raise AssertionError("the simulator did not say where it listens")


def test_the_installed_wheel_reads_a_modbus_meter_by_profile_name(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(SHIPPED) <= names, sorted(set(SHIPPED) - names)

    home = _venv_with(tmp_path, wheel)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = _clean_env()
    python, pmg = str(home / "bin" / "python"), str(home / "bin" / "pmg")

    where = subprocess.run(
        [
            python,
            "-c",
            "import drivers.modbus.profile as p, gateway.tariffs.model as t; "
            "print(p.find_profile('sdm120')); print(t.example_dir()); print(sorted(t.load_tariff_dir(t.example_dir())))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=work,
        env=env,
    )
    assert where.returncode == 0, where.stderr
    profile_file, tariff_dir, tariff_ids = where.stdout.splitlines()
    assert Path(profile_file).is_relative_to(home) and Path(tariff_dir).is_relative_to(home)
    assert "flat-cn" in tariff_ids and "zhejiang-residential" in tariff_ids

    sim = subprocess.Popen(
        [pmg, "sim", "modbus", "--profile", "sdm120", "--tcp", "0", "--power-w", "800"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=work,
        env=env,
    )
    try:
        line = _first_line(sim, 30)
        assert "listening on tcp://" in line, line
        url = line.rsplit(" ", 1)[-1].strip()
        done = subprocess.run(
            [pmg, "read", "--protocol", "modbus", "--port", url, "--unit", "1", "--profile", "sdm120", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=work,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        reading = json.loads(done.stdout)
        assert reading["energy_import_wh"] is not None, reading
    finally:
        sim.terminate()
        sim.wait(timeout=10)
