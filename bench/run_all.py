"""``make bench``: run every benchmark one after another and write ``bench/results/latest.md``.

Each benchmark is a separate process with its own time limit, so one that hangs or fails cannot take
the others with it; a missing script is listed as missing.  A
script that prints ``BENCH-RESULT {json}`` lines (``bench.common.emit``) gives table rows directly; for
one that does not, its last output line is the figure and its exit status the verdict.

The defaults fit the whole run in under 15 minutes on 2 cores: the capacity benchmark measures a
3-minute window here (its own default, and the figure the targets are stated for, is 10 minutes:
``python -m bench.bench_capacity``).

    .venv/bin/python -m bench.run_all [--capacity-minutes 3] [--only capacity,dlt645]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import REPO, Result, machine, parse_results

RESULTS = REPO / "bench" / "results"


@dataclass(frozen=True)
class Bench:
    key: str
    title: str
    script: str
    args: tuple[str, ...]
    timeout_s: float


def benches(capacity_minutes: float) -> list[Bench]:
    return [
        Bench("dlt645", "Bus efficiency (DL/T 645)", "bench/bench_dlt645_bus.py", ("--seconds", "5"), 120),
        Bench("dlms", "Bus efficiency (DLMS HDLC)", "bench/bench_dlms_bus.py", ("--seconds", "5"), 120),
        Bench("ledger", "Ledger", "bench/bench_ledger.py", (), 180),
        Bench("history", "History", "bench/bench_history.py", (), 180),
        Bench("outbox", "Outbox", "bench/bench_outbox.py", (), 180),
        Bench("payment", "Payment to power", "bench/bench_payment_to_power.py", (), 180),
        Bench("ingest", "Head-office ingest", "bench/bench_ingest.py", ("--rounds", "2", "--load-seconds", "30"), 420),
        Bench(
            "capacity",
            "Capacity",
            "bench/bench_capacity.py",
            ("--minutes", f"{capacity_minutes:g}"),
            capacity_minutes * 60 + 240,
        ),
    ]


def run_one(bench: Bench) -> tuple[list[Result], float, str]:
    """Run one script as a module of the repository; returns its rows, seconds taken and its output."""
    path = REPO / bench.script
    if not path.exists():
        return [Result(bench.title, "not run", "-", None, "-", None, f"{bench.script} is missing")], 0.0, ""
    module = bench.script.removesuffix(".py").replace("/", ".")
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", module, *bench.args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=bench.timeout_s,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        row = Result(bench.title, "timed out", "-", None, "-", False, f"over {bench.timeout_s:.0f} s")
        return [row], time.monotonic() - t0, out
    took = time.monotonic() - t0
    output = proc.stdout + proc.stderr
    rows = parse_results(proc.stdout)
    if not rows:
        lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
        last = lines[-1] if lines else (proc.stderr.strip().splitlines() or ["no output"])[-1]
        last = " ".join(last.split())
        found = re.search(r"ratio[^0-9]*([0-9]+(?:\.[0-9]+)?)", last)
        ratio = float(found.group(1)) if found else None
        ok = proc.returncode == 0
        bound = re.search(r"target\s*(>=|<=)\s*([0-9]+(?:\.[0-9]+)?)", last)
        target = f"{bound.group(1)} {bound.group(2)}" if bound else "-"
        if ratio is not None and bound is not None:  # judge the printed ratio against its printed target
            limit = float(bound.group(2))
            ok = ok and (ratio >= limit if bound.group(1) == ">=" else ratio <= limit)
        rows = [Result(bench.title, last, "see output", ratio, target, ok, f"exit {proc.returncode}")]
    return rows, took, output


def table(rows: list[tuple[Result, float]]) -> str:
    head = "| Benchmark | Figure | Baseline | Ratio | Target | Verdict | Notes |\n|---|---|---|---|---|---|---|\n"
    body = ""
    for r, took in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.3f}"
        verdict = {True: "pass", False: "FAIL", None: "-"}[r.ok]
        note = (r.note + f"; {took:.0f} s").strip("; ") if took else r.note
        body += f"| {r.name} | {r.figure} | {r.baseline} | {ratio} | {r.target} | {verdict} | {note} |\n"
    return head + body


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capacity-minutes", type=float, default=3.0)
    ap.add_argument("--only", default="", help="comma-separated keys: dlt645, ledger, outbox, payment, ingest, capacity")
    ap.add_argument("--out", type=Path, default=RESULTS / "latest.md")
    args = ap.parse_args(argv)
    wanted = {k for k in args.only.split(",") if k}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.monotonic()
    rows: list[tuple[Result, float]] = []
    logs = []
    for bench in benches(args.capacity_minutes):
        if wanted and bench.key not in wanted:
            continue
        print(f"== {bench.title} ({bench.script})", flush=True)
        results, took, output = run_one(bench)
        print(output.rstrip(), flush=True)
        rows += [(r, took) for r in results]
        logs.append(f"### {bench.title}\n\n```\n{output.strip()}\n```\n")
    total = time.monotonic() - t0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    report = (
        f"# Benchmarks\n\nDate: {started}  \nMachine: {machine()}  \nCommit: {commit.stdout.strip() or '?'}  \n"
        f"Total time: {total / 60:.1f} min (capacity window {args.capacity_minutes:g} min; the full run is 10)\n\n"
        + table(rows)
        + "\n## Output\n\n"
        + "\n".join(logs)
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"\n{table(rows)}\nwrote {args.out} in {total / 60:.1f} min")
    return 0 if all(r.ok is not False for r, _ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
