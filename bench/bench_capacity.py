"""Capacity: one gateway polling 2,000 meters on 8 simulated 9600-baud DL/T 645 buses at 60 s.

The fleet simulator runs in its own process (``python -m simulators.fleet``) and serves each bus on TCP
with line-speed pacing; the gateway is a real ``pmg run`` in another process; a private Mosquitto takes
its outbox when one is installed.  Only the gateway's CPU is counted (``/proc/PID/stat``), as a share of
one core over the measuring window (after a warm-up), with its peak RSS (``VmHWM``) over the whole run.
Targets: <= 2.5 % of one core, <= 64 MB (a 1 GHz ARM concentrator; they were 10 % and 150 MB before the
efficiency round).  The ratio printed is against the target (figure / target);
an idle ``pmg run`` with the same buses and no meters is measured in the same run and shown beside it,
and so is the floor master (``bench.floor_master``: a poll's exchanges and the durable commits, nothing
else), the gateway's CPU reported as a multiple of the floor's, a figure that moves less with the host.

The accounts start as a utility's would: ``--funded`` of them (default 90 %) hold ¥500 of credit, the
rest hold nothing and so walk the notice-and-cut track (the policy's most expensive path) for the whole
run.  Before this, every account started at zero, which measured 2,000 customers all in arrears.

Also reported: polls achieved per meter per minute against the configured rate, because a bus that
cannot carry its meters at the interval makes the gateway look cheaper than it would be; how the CPU
divides between the event loop (the main thread: charging, deciding, MQTT) and the other threads (the
links'); and, with ``--compare-without-broker``, the same run again with no ``[mqtt]`` table, whose
difference is what delivering the outbox costs.

    .venv/bin/python -m bench.bench_capacity [--minutes 10] [--meters 2000] [--buses 8] [--no-broker]
        [--compare-without-broker]
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import REPO, CpuWindow, Result, emit, memory_kib, python_module, stop_process
from gateway.core.timeutil import iso
from simulators.mosquitto import Mosquitto, mosquitto_binary

CPU_TARGET = 0.025
RSS_TARGET_MB = 64


@dataclass
class Measured:
    cpu_share: float
    loop_share: float  # the main thread's part: the event loop (charging, deciding, MQTT)
    peak_rss_mb: float
    polls_ok: int
    polls_failed: int
    meters_polled: int
    window_s: float


def fleet_file(path: Path, *, meters: int, buses: int, baud: int, delay_ms: float, interval_s: float) -> Path:
    per_bus, extra = divmod(meters, buses)
    parts = ['speed = 1.0\n[gateway]\ngateway_id = "gw-capacity"\npreset = "generic"\n']
    for b in range(buses):
        n = per_bus + (1 if b < extra else 0)
        parts.append(
            f'\n[[buses]]\nid = "bus{b + 1}"\nprotocol = "dlt645"\nserve = "tcp"\nbaud = {baud}\n'
            f"response_delay_ms = {delay_ms}\nmeters = {n}\nstart_address = {b * 1000 + 1}\n"
            f"poll_interval_s = {interval_s}\n"
        )
    path.write_text("".join(parts))
    return path


def wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until a line of ``log`` contains ``text`` (the process must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and any(text in line for line in log.read_text().splitlines()):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}): {log.read_text()[-2000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"no line with '{text}' in {log} within {timeout} s")


def _read_one_row(db: Path, sql: str, params: tuple[object, ...]) -> tuple[Any, ...]:
    """One row of a query on a database another process wrote, opened read-only."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return tuple(conn.execute(sql, params).fetchone())
    finally:
        conn.close()


def count_polls(db: Path, since: str, until: str) -> tuple[int, int, int]:
    ok, failed, meters = _read_one_row(
        db,
        "SELECT SUM(quality = 'ok'), SUM(quality != 'ok'), COUNT(DISTINCT meter_id) FROM readings "
        "WHERE taken_at >= ? AND taken_at < ?",
        (since, until),
    )
    return int(ok or 0), int(failed or 0), int(meters or 0)


def prefund(config: Path, share: float, amount_minor: int = 50_000) -> int:
    """Seed the gateway database from its configuration and pay ``share`` of the accounts in advance."""
    from gateway.config import load_config
    from gateway.ledger.accounts import seed_from_config
    from gateway.ledger.payments import apply_payment
    from gateway.store.db import open_store

    cfg = load_config(config)
    now = datetime.now(UTC)
    store = open_store(cfg.database)
    try:
        seed_from_config(store, cfg, now)
        accounts = sorted({m.account for m in cfg.meters})
        # spread over the buses: account i is funded when the running share steps up at i
        funded = [a for i, a in enumerate(accounts) if int((i + 1) * share) > int(i * share)]
        with store.tx() as conn:
            for account_id in funded:
                apply_payment(conn, f"bench-{account_id}", account_id, amount_minor, now, source="bench")
    finally:
        store.close()
    return len(funded)


def _iso_utc(unix: float) -> str:
    """A Unix time as the readings table writes ``taken_at`` (``gateway.core.timeutil.iso``)."""
    return iso(datetime.fromtimestamp(unix, UTC))


@dataclass(frozen=True)
class Window:
    """One process measured: its CPU share of one core, its main thread's part, its peak RSS, and the
    window's start and end as Unix times (so that the work counted is the work of that window)."""

    share: float
    main_share: float
    peak_mb: float
    since: float
    until: float


def measure_process(argv: list[str], log: Path, ready: str, *, warmup_s: float, window_s: float) -> Window:
    """Start ``argv``, wait for ``ready`` in its log, let it warm up, measure its CPU share over
    ``window_s``, stop it."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=out)
    try:
        wait_for_line(log, ready, proc, timeout=120)
        time.sleep(warmup_s)  # a fixed measuring schedule, not waiting for state
        since = time.time()
        window = CpuWindow(proc.pid).start()
        time.sleep(window_s)
        share = window.share()
        until = time.time()
        _rss, peak = memory_kib(proc.pid)
        if proc.poll() is not None:
            raise RuntimeError(f"{log.stem} exited during the run: {log.read_text()[-2000:]}")
    finally:
        stop_process(proc)
    return Window(share, window.main_share, peak / 1024, since, until)


def run_gateway(config: Path, workdir: Path, name: str, *, warmup_s: float, window_s: float) -> Measured:
    """Start ``pmg run``, let it warm up, measure its CPU over ``window_s``, stop it."""
    argv = python_module("gateway.cli.main", "run", "-c", str(config))
    w = measure_process(argv, workdir / f"{name}.log", "started gateway=", warmup_s=warmup_s, window_s=window_s)
    db = Path(next(line.split('"')[1] for line in config.read_text().splitlines() if line.startswith("database")))
    ok, failed, meters = count_polls(db, _iso_utc(w.since), _iso_utc(w.until)) if db.exists() else (0, 0, 0)
    return Measured(w.share, w.main_share, w.peak_mb, ok, failed, meters, window_s)


def run_floor(config: Path, workdir: Path, *, warmup_s: float, window_s: float) -> tuple[float, int, int]:
    """``bench.floor_master`` doing the same exchanges and durable commits: its CPU share,
    and its polls in the window, complete and with a reply missing (it must keep the same rate)."""
    db = workdir / "floor.db"
    argv = python_module("bench.floor_master", "-c", str(config), "--database", str(db))
    w = measure_process(argv, workdir / "floor.log", "floor master ready", warmup_s=warmup_s, window_s=window_s)
    ok, failed = _read_one_row(
        db,
        "SELECT SUM(block != x'' AND status != x''), SUM(block = x'' OR status = x'') FROM polls "
        "WHERE taken_at >= ? AND taken_at < ?",
        (w.since, w.until),
    )
    return w.share, int(ok or 0), int(failed or 0)


def without_meters(config: Path, out: Path, db: Path) -> Path:
    """The same gateway configuration with its buses but no meters (the idle baseline)."""
    head = config.read_text().split("\n[[meters]]", 1)[0]
    lines = [f'database = "{db}"' if line.startswith("database") else line for line in head.splitlines()]
    out.write_text("\n".join(lines) + "\n")
    return out


def without_mqtt(config: Path, out: Path, db: Path | None = None) -> Path:
    """The same gateway configuration without its ``[mqtt]`` table (and on ``db`` when given): the
    outbox fills and nothing is sent, so the difference from the run with the broker is what
    delivering the messages costs."""
    kept: list[str] = []
    skipping = False
    for line in config.read_text().splitlines():
        if line.startswith("["):
            skipping = line.strip() == "[mqtt]"
        if db is not None and not skipping and line.startswith("database"):
            line = f'database = "{db}"'
        if not skipping:
            kept.append(line)
    out.write_text("\n".join(kept) + "\n")
    return out


def seeded_copy(db: Path, out: Path) -> Path:
    """A copy of the seeded database as committed (whatever is still in its WAL), taken before any
    run: the comparison without a broker starts from the same accounts as the loaded run."""
    src, dst = sqlite3.connect(db), sqlite3.connect(out)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="measuring window (the full run is 10)")
    ap.add_argument("--meters", type=int, default=2000)
    ap.add_argument("--buses", type=int, default=8)
    ap.add_argument("--baud", type=int, default=9600)
    ap.add_argument("--interval", type=float, default=60.0, help="poll interval in seconds")
    ap.add_argument("--response-delay-ms", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds before the CPU window opens")
    ap.add_argument("--idle-seconds", type=float, default=30.0, help="idle baseline window")
    ap.add_argument("--no-broker", action="store_true", help="no Mosquitto (the outbox only buffers)")
    ap.add_argument("--funded", type=float, default=0.9, help="share of accounts paid in advance (0..1)")
    ap.add_argument(
        "--floor-seconds", type=float, default=90.0, help="window of the floor master (bench.floor_master); 0 skips it"
    )
    ap.add_argument(
        "--compare-without-broker",
        action="store_true",
        help="after the loaded run, the same run without [mqtt]: what delivering the outbox costs",
    )
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pmg-capacity-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        broker_port = None
        if not args.no_broker and mosquitto_binary() is not None:
            broker = Mosquitto(work / "broker").start()
            stack.callback(broker.stop)
            broker_port = broker.port
        fleet_cfg = fleet_file(
            work / "fleet.toml",
            meters=args.meters,
            buses=args.buses,
            baud=args.baud,
            delay_ms=args.response_delay_ms,
            interval_s=args.interval,
        )
        gw_cfg = work / "gw.toml"
        fleet_log = work / "fleet.log"
        fleet_argv = ["--config", str(fleet_cfg), "--write-gateway-config", str(gw_cfg)]
        fleet_argv += ["--database", str(work / "gw.db")]
        if broker_port is not None:
            fleet_argv += ["--mqtt-port", str(broker_port)]
        with fleet_log.open("wb") as out:
            fleet = subprocess.Popen(
                python_module("simulators.fleet", *fleet_argv), cwd=REPO, stdout=out, stderr=out
            )
        stack.callback(stop_process, fleet)
        wait_for_line(fleet_log, "ready:", fleet, timeout=60)

        funded = prefund(gw_cfg, args.funded)
        compare = args.compare_without_broker and broker_port is not None
        unsent_db = seeded_copy(work / "gw.db", work / "unsent.db") if compare else None
        idle_cfg = without_meters(gw_cfg, work / "idle.toml", work / "idle.db")
        idle = run_gateway(idle_cfg, work, "idle", warmup_s=5, window_s=args.idle_seconds)
        loaded = run_gateway(gw_cfg, work, "loaded", warmup_s=args.warmup, window_s=args.minutes * 60)
        unsent = (
            run_gateway(
                without_mqtt(gw_cfg, work / "unsent.toml", unsent_db), work, "unsent", warmup_s=args.warmup,
                window_s=args.minutes * 60,
            )
            if compare
            else None
        )
        floor, floor_ok, floor_failed = (
            run_floor(gw_cfg, work, warmup_s=10, window_s=args.floor_seconds)
            if args.floor_seconds > 0
            else (None, 0, 0)
        )

    expected = args.meters * loaded.window_s / args.interval
    rate = loaded.polls_ok / expected if expected else 0.0
    polls = loaded.polls_ok + loaded.polls_failed
    ms_per_poll = (loaded.cpu_share - idle.cpu_share) * loaded.window_s / polls * 1000 if polls else 0.0
    full_rate = ms_per_poll / 1000 * args.meters / args.interval + idle.cpu_share  # share if the bus kept up
    print(
        f"gateway, {args.meters} meters on {args.buses} x {args.baud}-baud DL/T 645 buses at {args.interval:.0f} s, "
        f"{loaded.window_s / 60:.1f} min window after {args.warmup:.0f} s warm-up, broker "
        f"{'on' if broker_port else 'off'}, {funded} of {args.meters} accounts in credit:"
    )
    print(f"  CPU {loaded.cpu_share * 100:.2f} % of one core (target <= {CPU_TARGET * 100:g} %); "
          f"idle pmg run {idle.cpu_share * 100:.2f} %")
    print(f"  of which the event loop (main thread) {loaded.loop_share * 100:.2f} %, the link threads and "
          f"the rest {(loaded.cpu_share - loaded.loop_share) * 100:.2f} %")
    if unsent is not None:
        print(
            f"  the same run with no broker (the outbox only fills): {unsent.cpu_share * 100:.2f} %, event loop "
            f"{unsent.loop_share * 100:.2f} %, {unsent.polls_ok} polls ok, {unsent.polls_failed} failed; delivering "
            f"the messages cost {(loaded.loop_share - unsent.loop_share) * 100:.2f} % of one core on the event loop "
            f"({(loaded.cpu_share - unsent.cpu_share) * 100:.2f} % in the whole process, noisier)"
        )
    print(f"  peak RSS {loaded.peak_rss_mb:.1f} MB (target <= {RSS_TARGET_MB} MB); idle {idle.peak_rss_mb:.1f} MB")
    print(
        f"  polls ok {loaded.polls_ok}, failed {loaded.polls_failed}, meters polled {loaded.meters_polled}; "
        f"{rate:.2f} of the configured rate ({expected:.0f} polls due)"
    )
    print(
        f"  gateway CPU per poll {ms_per_poll:.1f} ms above idle; at the full configured rate that would be "
        f"{full_rate * 100:.1f} % of one core"
    )
    floor_rate = floor_ok / (args.meters * args.floor_seconds / args.interval) if floor is not None else 0.0
    if floor is not None:
        print(
            f"  floor master (the same two exchanges per poll and its row committed as the gateway commits, "
            f"nothing else): "
            f"{floor * 100:.2f} % of one core at {floor_rate:.2f} of the rate ({floor_failed} polls "
            f"short of a reply); the gateway spends {loaded.cpu_share / floor:.2f} times that"
        )
    note = (
        f"{args.meters} meters/{args.buses} buses, {funded / args.meters:.0%} in credit, {args.minutes:g} min; polls {rate:.2f} of configured rate"
        f"{' (bus-limited)' if rate < 0.95 else ''}; {ms_per_poll:.1f} ms CPU/poll, {full_rate * 100:.1f} % at full rate; "
        f"event loop {loaded.loop_share * 100:.2f} %, other threads {(loaded.cpu_share - loaded.loop_share) * 100:.2f} %"
        + (
            f"; without a broker {unsent.cpu_share * 100:.2f} % (delivery on the event loop "
            f"{(loaded.loop_share - unsent.loop_share) * 100:.2f} %)"
            if unsent is not None
            else ""
        )
    )
    emit(
        Result(
            "Capacity: gateway CPU",
            f"{loaded.cpu_share * 100:.2f} % of one core",
            f"target {CPU_TARGET * 100:g} % (idle {idle.cpu_share * 100:.2f} %)",
            loaded.cpu_share / CPU_TARGET,
            f"<= {CPU_TARGET * 100:g} %",
            loaded.cpu_share <= CPU_TARGET,
            note,
        )
    )
    if floor is not None:
        emit(
            Result(
                "Capacity: gateway CPU over the floor master's",
                f"{loaded.cpu_share / floor:.2f} x",
                f"floor master {floor * 100:.2f} % (same exchanges and commits)",
                loaded.cpu_share / floor,
                "-",
                None,
                f"the floor alone is {floor / CPU_TARGET:.2f} of the CPU target; floor polls "
                f"{floor_rate:.2f} of the rate, {floor_failed} short of a reply",
            )
        )
    emit(
        Result(
            "Capacity: gateway peak RSS",
            f"{loaded.peak_rss_mb:.1f} MB",
            f"target {RSS_TARGET_MB} MB (idle {idle.peak_rss_mb:.1f} MB)",
            loaded.peak_rss_mb / RSS_TARGET_MB,
            f"<= {RSS_TARGET_MB} MB",
            loaded.peak_rss_mb <= RSS_TARGET_MB,
            note,
        )
    )
    return 0 if loaded.cpu_share <= CPU_TARGET and loaded.peak_rss_mb <= RSS_TARGET_MB else 1


if __name__ == "__main__":
    raise SystemExit(main())
