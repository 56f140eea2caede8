"""The wheel carries its own data: meter profiles and example tariffs, used from outside the checkout.

Profiles used to be found through an environment variable or by walking up from the source tree to
``config/profiles`` (now ``drivers/modbus/profiles``, package data), which an installed wheel does not have: ``pmg read --profile sdm120`` worked only
from a checkout.  This builds the wheel from a copy of the sources, installs it (``--no-deps
--no-index``) into a fresh venv whose dependencies come from the current environment's site-packages
(tests/support/wheel.py), and reads a simulated SDM120 over Modbus TCP from a temporary directory.
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest
from support.wheel import build_wheel, clean_env, first_line, venv_with

SHIPPED = [
    *(f"drivers/modbus/profiles/{name}.toml" for name in ("dds238", "ddsu666", "sdm120", "sdm630")),
    *(f"gateway/tariffs/examples/{name}.toml" for name in ("flat-cn", "tou-cn", "uk-standard", "zhejiang-residential")),
    "gateway/presets/cn.toml",
    "gateway/examples/gateway.example.toml",  # `pmg install-config` lays out /etc/pmg from it
]

pytestmark = pytest.mark.slow


def test_the_installed_wheel_reads_a_modbus_meter_by_profile_name(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(SHIPPED) <= names, sorted(set(SHIPPED) - names)

    home = venv_with(tmp_path / "venv", wheel)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = clean_env()
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
        line = first_line(sim, 30)
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
