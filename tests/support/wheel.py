"""The wheel, built from a copy of the sources and installed into a fresh venv outside the checkout.

Offline: the wheel is built without build isolation when this environment has the build backend
(setuptools ≥ 68 with ``bdist_wheel``), and installed with ``--no-deps --no-index``; the venv finds
its dependencies (pymodbus, pydantic, click …) in this environment's site-packages through a ``.pth``
line placed after its own packages (the nested ``.pth`` files there, such as an editable install of
this project, are not processed, so the checkout cannot answer for the wheel).
"""

from __future__ import annotations

import importlib.util
import os
import selectors
import shutil
import subprocess
import sys
import sysconfig
import time
import venv
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "drivers", "simulators", "hq")  # pyproject's [tool.setuptools.packages.find]


def clean_env() -> dict[str, str]:
    """No PYTHONPATH: the installed wheel, not the checkout, must answer."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def can_build_here() -> bool:
    """setuptools ≥ 68 (pyproject's build requirement) with a ``bdist_wheel`` command: built in since
    setuptools 70.1, else from the ``wheel`` package."""
    try:
        version = tuple(int(p) for p in metadata.version("setuptools").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    if version < (68, 0):
        return False
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


def build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"  # a copy, so the build leaves nothing (build/, *.egg-info) in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(REPO / package, src / package, ignore=ignore)
    dist = tmp_path / "dist"
    # Offline when this environment can build wheels itself; otherwise pip fetches the build backend.
    isolation = ["--no-build-isolation"] if can_build_here() else []
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "-w", str(dist), "--no-deps", "-q", *isolation],
        capture_output=True,
        text=True,
        timeout=180,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = dist.glob("*.whl")
    return wheel


def venv_with(home: Path, wheel: Path) -> Path:
    """A fresh venv at ``home`` with the wheel installed; returns ``home``."""
    venv.EnvBuilder(with_pip=False).create(home)
    python = home / "bin" / "python"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
            env=clean_env(),
        ).stdout.strip()
    )
    (site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return home


def first_line(proc: subprocess.Popen[str], timeout_s: float, what: str = "where it listens") -> str:
    """The process's next stdout line, or an AssertionError after ``timeout_s``."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sel.select(deadline - time.monotonic()):
                return proc.stdout.readline()
    raise AssertionError(f"the process did not say {what} in {timeout_s} s")
