"""What every benchmark shares: process CPU and memory from /proc, the machine's description, and the
one-line result format that ``bench/run_all.py`` collects into ``bench/results/latest.md``.

CPU is read from ``/proc/PID/stat`` (utime + stime in clock ticks), so a benchmark measures exactly one
process — the gateway — and not the simulators that feed it; peak memory is the kernel's own high-water
mark (``VmHWM``), not a sample that might miss the peak.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "BENCH-RESULT "
_TICK = os.sysconf("SC_CLK_TCK")


def _stat_cpu_seconds(stat: str) -> float:
    """User + system CPU seconds from a ``/proc`` stat file (a process's or one thread's)."""
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime: fields 14 and 15 of stat(5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (its threads included)."""
    return _stat_cpu_seconds(f"/proc/{pid}/stat")


def main_thread_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process's main thread alone (its task id is the pid)."""
    return _stat_cpu_seconds(f"/proc/{pid}/task/{pid}/stat")


def memory_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) in KiB from ``/proc/PID/status``."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


@dataclass
class CpuWindow:
    """CPU share of one core used by ``pid`` between ``start()`` and ``share()``, and how it divides
    between the main thread (the gateway's event loop) and the others (its link threads, the
    executor): two parts that a change moves separately."""

    pid: int
    _cpu0: float = 0.0
    _main0: float = 0.0
    _t0: float = 0.0
    _main_share: float = 0.0

    def start(self) -> CpuWindow:
        self._cpu0, self._main0 = cpu_seconds(self.pid), main_thread_cpu_seconds(self.pid)
        self._t0 = time.monotonic()
        return self

    def share(self) -> float:
        """Fraction of one core (0.05 = 5 %) since ``start()``; also sets ``main_share``."""
        elapsed = time.monotonic() - self._t0
        if elapsed <= 0:
            return 0.0
        self._main_share = (main_thread_cpu_seconds(self.pid) - self._main0) / elapsed
        return (cpu_seconds(self.pid) - self._cpu0) / elapsed

    @property
    def main_share(self) -> float:
        """The main thread's part of the last ``share()`` (the rest went to the other threads)."""
        return self._main_share


def machine() -> str:
    """One line: CPU model, cores, memory, OS, Python."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        mem_gib = int(first.split()[1]) / 1024 / 1024
    except (OSError, IndexError, ValueError):
        pass
    return (
        f"{model}, {os.cpu_count()} cores, {mem_gib:.1f} GiB, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


@dataclass(frozen=True)
class Result:
    """One benchmark figure with its comparison: ``ratio`` = figure / baseline (or / target)."""

    name: str
    figure: str
    baseline: str
    ratio: float | None
    target: str
    ok: bool | None
    note: str = ""


def emit(result: Result) -> None:
    """Print the machine-readable line ``run_all`` collects (besides the human-readable output)."""
    print(RESULT_PREFIX + json.dumps(asdict(result)), flush=True)


def parse_results(output: str) -> list[Result]:
    out = []
    for line in output.splitlines():
        if line.startswith(RESULT_PREFIX):
            out.append(Result(**json.loads(line[len(RESULT_PREFIX) :])))
    return out


def python_module(module: str, *args: str) -> list[str]:
    """The argv that runs ``python -m module args`` with this interpreter (the venv's)."""
    return [sys.executable, "-m", module, *args]


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 15.0) -> int:
    """SIGTERM, wait, then SIGKILL; returns the exit status.  Never leaves the process behind."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode
