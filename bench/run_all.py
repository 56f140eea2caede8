"""``make bench``: run every benchmark one after another and write ``bench/results/latest.md``.

Each benchmark is a separate process with its own time limit, so one that hangs or fails cannot take
the others with it; a missing script is listed as missing.  A
script that prints ``BENCH-RESULT {json}`` lines (``bench.common.emit``) gives table rows directly; for
one that does not, its last output line is the figure and its exit status the verdict.

The defaults fit the whole run in under 15 minutes on 2 cores: the capacity benchmark measures a
3-minute window here (its own default, and the figure the targets are stated for, is 10 minutes:
``python -m bench.bench_capacity``).

``--repeat N`` runs each selected benchmark N times in a row and adds a column with each figure's
spread over the runs (the median run's figure is the one shown, its ratio's min–max beside it), so a
reader sees what is noise; the verdict is a pass only when every run passed.  It multiplies the time
by N (all benchmarks, ``--repeat 3``: about 30 minutes on 2 cores; ``--only history --repeat 5``: 3).

    .venv/bin/python -m bench.run_all [--capacity-minutes 3] [--only capacity,dlt645] [--repeat 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
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
        Bench(
            "ingest",
            "Head-office ingest",
            "bench/bench_ingest.py",
            ("--rounds", "2", "--load-seconds", "30"),
            420,
        ),
        Bench(
            "capacity",
            "Capacity",
            "bench/bench_capacity.py",
            ("--minutes", f"{capacity_minutes:g}"),
            capacity_minutes * 60 + 360,  # + idle run, floor master, set-up
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
    # The report is committed: paths of this checkout (a traceback's) are written relative to it.
    output = (proc.stdout + proc.stderr).replace(f"{REPO}/", "")
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


@dataclass(frozen=True)
class Row:
    """One figure of the report: the run shown (the median one) and every run's result."""

    shown: Result
    runs: tuple[Result, ...]
    seconds: float


def _value(r: Result) -> float | None:
    """What the spread is taken of: the ratio, or else the figure's first number."""
    if r.ratio is not None:
        return r.ratio
    found = re.search(r"(?<![A-Za-z0-9.])[0-9][0-9,]*(?:\.[0-9]+)?", r.figure)  # not the 99 of p99
    return float(found.group(0).replace(",", "")) if found else None


def combine(runs: list[list[Result]], seconds: float) -> list[Row]:
    """Rows of N runs of one script, matched by name (in the order of first appearance); the row shown
    is the run with the median value (the lower of the two middle ones for an even N)."""
    by_name: dict[str, list[Result]] = {}
    for results in runs:
        for r in results:
            by_name.setdefault(r.name, []).append(r)
    rows = []
    for results in by_name.values():
        valued = sorted((v, i) for i, r in enumerate(results) if (v := _value(r)) is not None)
        shown = results[valued[(len(valued) - 1) // 2][1]] if valued else results[-1]
        rows.append(Row(shown, tuple(results), seconds))
    return rows


def spread(row: Row) -> str:
    values = [v for r in row.runs if (v := _value(r)) is not None]
    if len(row.runs) < 2 or not values:
        return "-"
    what = "ratio" if row.shown.ratio is not None else "figure"
    fmt = "{:.3f}" if what == "ratio" else "{:g}"
    low, mid, high = (fmt.format(x) for x in (min(values), statistics.median(values), max(values)))
    return f"{what} {low}–{high}, median {mid} ({len(row.runs)} runs)"


def verdict(row: Row) -> str:
    oks = [r.ok for r in row.runs]
    if all(ok is None for ok in oks):
        return "-"
    failed = sum(ok is False for ok in oks)
    if not failed:
        return "pass"
    return "FAIL" if len(oks) == 1 else f"FAIL ({failed} of {len(oks)} runs)"


def table(rows: list[Row], repeat: int = 1) -> str:
    wide = repeat > 1
    head = (
        "| Benchmark | Figure | Baseline | Ratio | Target | Verdict |"
        + (" Spread |" if wide else "")
        + " Notes |\n"
    )
    head += "|---" * (8 if wide else 7) + "|\n"
    body = ""
    for row in rows:
        r = row.shown
        ratio = "-" if r.ratio is None else f"{r.ratio:.3f}"
        took = row.seconds
        note = (r.note + f"; {took:.0f} s").strip("; ") if took else r.note
        extra = f" {spread(row)} |" if wide else ""
        body += f"| {r.name} | {r.figure} | {r.baseline} | {ratio} | {r.target} | {verdict(row)} |{extra} {note} |\n"
    return head + body


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capacity-minutes", type=float, default=3.0)
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated keys: dlt645, dlms, ledger, history, outbox, payment, ingest, capacity",
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="runs of each benchmark; > 1 adds each figure's spread"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "latest.md")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    wanted = {k for k in args.only.split(",") if k}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.monotonic()
    rows: list[Row] = []
    logs = []
    for bench in benches(args.capacity_minutes):
        if wanted and bench.key not in wanted:
            continue
        runs: list[list[Result]] = []
        seconds = 0.0
        for n in range(1, args.repeat + 1):
            label = f" run {n} of {args.repeat}" if args.repeat > 1 else ""
            print(f"== {bench.title} ({bench.script}){label}", flush=True)
            results, took, output = run_one(bench)
            print(output.rstrip(), flush=True)
            runs.append(results)
            seconds += took
            logs.append(f"### {bench.title}{label}\n\n```\n{output.strip()}\n```\n")
        rows += combine(runs, seconds)
    total = time.monotonic() - t0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    repeated = f"; each benchmark run {args.repeat} times, the median run shown" if args.repeat > 1 else ""
    report = (
        f"# Benchmarks\n\nDate: {started}  \nMachine: {machine()}  \nCommit: {commit.stdout.strip() or '?'}  \n"
        f"Total time: {total / 60:.1f} min (capacity window {args.capacity_minutes:g} min; the full run is 10{repeated})\n\n"
        + table(rows, args.repeat)
        + "\n## Output\n\n"
        + "\n".join(logs)
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"\n{table(rows, args.repeat)}\nwrote {args.out} in {total / 60:.1f} min")
    return 0 if all(r.ok is not False for row in rows for r in row.runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
