"""Instructions per charged reading and per drained message, counted by valgrind's callgrind.

Seconds move with the load of a shared machine; the instructions a piece of work executes do not (to
within a fraction of a percent), so a change to the per-reading or per-message path is judged here on
a figure that a busy neighbour cannot blur.  Four workloads, each next to its same-run baseline, as in
``bench_ledger.py`` and ``bench_outbox.py``:

- ``ledger``: ``record_reading`` under the Zhejiang tariff, one durable commit per reading;
- ``replay``: the rows those readings wrote (reading, charge entry, usage message) inserted again
  verbatim into a fresh database of the same schema, one durable commit each (the ledger benchmark's
  baseline: same rows, same durability, the same hash-chain trigger);
- ``outbox``: ``MqttLink`` draining messages from the outbox to a private Mosquitto at QoS 1 until
  every one is acknowledged and marked delivered;
- ``raw``: bare paho publishing the same bodies, pre-built, with the same window, until every PUBACK.

Each workload runs in a child process under ``valgrind --tool=callgrind``; the child calls a marker
(``binascii.crc_hqx``, a C function nothing else here calls) around each measured segment and callgrind
dumps its counters at every call (``--dump-before``), so start-up, imports, seeding and a warm-up are
counted apart and left out.  Every workload is measured twice (two segments of the same size): the
two figures agree to a fraction of a percent for the ledger; the drain's depend a little on how the
broker's acknowledgements interleave with the loop (batch sizes), a few percent.  Instructions are
user-space only: the fsync of a durable commit, the kernel's share of a socket write and the time
waited for a lock or the broker are not in them — that is what the seconds benchmarks are for.

Also counted, without valgrind: the SQL statements per charged reading, BEGIN and COMMIT included,
and the trigger programs they fire (``set_trace_callback``).  The readings a workload charges are
built before its segments: they are the drivers' work, as the replay's rows are built before its own.

    .venv/bin/python -m bench.instructions [--readings 300] [--messages 2000] [--only ledger,outbox]

Under valgrind Python runs about 50 times slower: the defaults take about a minute (the two children
run side by side).
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import REPO, Result, emit

MARKER = "binascii_crc_hqx"  # the C function behind binascii.crc_hqx: callgrind dumps before each call
METERS = 20
WARM_READINGS = 2 * METERS
WARM_MESSAGES = 400


def marker() -> None:
    """A segment boundary: callgrind dumps (and zeroes) its counters here."""
    binascii.crc_hqx(b"", 0)


# -- the workloads (in the child, under valgrind) ------------------------------------------------------


def _book() -> Any:
    from gateway.core.calendar import WorkCalendar
    from gateway.ledger.tariff_book import TariffBook
    from gateway.tariffs.model import load_tariff_dir

    return TariffBook(
        load_tariff_dir(REPO / "gateway" / "tariffs" / "examples"), WorkCalendar("Asia/Shanghai", "CN")
    )


def _reading(i: int) -> tuple[str, Any]:
    from bench.bench_ledger import T0
    from drivers.base import Quality, Reading

    m, n = i % METERS, i // METERS + 1
    return f"m{m}", Reading(f"{m}", T0 + timedelta(minutes=n), Quality.OK, energy_import_wh=50 * n)


def ledger_child(readings: int, workdir: Path) -> None:
    """Warm-up, then two segments of ``readings`` charged readings, then the raw replay of the same rows
    (warm-up and two segments): six markers after the warm-ups."""
    from bench.bench_ledger import T0, _ledger_rows, open_replay, seed_meter
    from drivers.base import Quality, Reading
    from gateway.ledger.charging import record_reading
    from gateway.store.db import open_store

    book = _book()
    store = open_store(workdir / "ledger.db")
    with store.tx() as conn:
        for m in range(METERS):
            seed_meter(conn, m, "zhejiang-residential")
            record_reading(
                conn,
                f"m{m}",
                Reading(f"{m}", T0, Quality.OK, energy_import_wh=0),
                book.pricer(conn),
                max_power_w=30_000,
            )

    inputs = [_reading(i) for i in range(WARM_READINGS + 2 * readings)]  # the drivers' work, not counted

    def charge(first: int, count: int) -> None:
        for meter_id, reading in inputs[first : first + count]:
            with store.tx() as conn:
                out = record_reading(conn, meter_id, reading, book.pricer(conn), max_power_w=30_000)
            assert out.outcome == "charged"

    charge(0, WARM_READINGS)
    marker()
    charge(WARM_READINGS, readings)
    marker()
    charge(WARM_READINGS + readings, readings)
    marker()
    store.close()

    rows = _ledger_rows(workdir / "ledger.db")
    replay, insert_rows = open_replay(workdir, rows, METERS)
    conn = replay.conn

    def insert(first: int, count: int) -> None:
        for reading, entry, message in rows[first : first + count]:
            conn.execute("BEGIN IMMEDIATE")
            insert_rows(reading, entry, message)
            conn.execute("COMMIT")

    insert(0, WARM_READINGS)
    marker()
    insert(WARM_READINGS, readings)
    marker()
    insert(WARM_READINGS + readings, readings)
    marker()
    replay.close()


def outbox_child(messages: int, port: int, workdir: Path) -> None:
    """Raw paho (warm-up, two segments), then the outbox drain (warm-up, two segments, each preceded by
    a segment that only commits its messages): seven markers after the warm-ups."""
    import json

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from bench.bench_outbox import payload
    from gateway.config import MqttConfig
    from gateway.core.timeutil import system_clock
    from gateway.store import outbox
    from gateway.store.db import open_store
    from gateway.sync.mqtt import WINDOW, MqttLink

    acked = 0
    target = 0
    done = threading.Event()
    lock = threading.Lock()

    def on_publish(*_: Any) -> None:
        nonlocal acked
        with lock:
            acked += 1
            if acked == target:
                done.set()

    connected = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="instr-raw", protocol=paho.MQTTv5)
    client.on_publish = on_publish
    client.on_connect = lambda *_: connected.set()
    client.max_inflight_messages_set(WINDOW)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not connected.wait(60):
        raise RuntimeError("raw client did not connect")
    total = WARM_MESSAGES + 2 * messages
    bodies = [
        json.dumps({**payload(i), "gateway_id": "gw-raw", "seq": i + 1}, separators=(",", ":")).encode()
        for i in range(total)
    ]

    def publish(first: int, count: int) -> None:
        nonlocal target
        done.clear()
        target = first + count
        for i in range(first, first + count):
            client.publish(f"pmg/gw-raw/meters/m{i % 100}/usage", bodies[i], qos=1)
        if not done.wait(300):
            raise RuntimeError(f"raw: only {acked} of {target} acknowledged")

    publish(0, WARM_MESSAGES)
    marker()
    publish(WARM_MESSAGES, messages)
    marker()
    publish(WARM_MESSAGES + messages, messages)
    marker()
    client.disconnect()
    client.loop_stop()

    store = open_store(workdir / "outbox.db")
    cfg = MqttConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "tls": False,
            "allow_plaintext": True,
            "client_id": "instr-outbox",
        }
    )
    link = MqttLink(cfg, "gw-outbox", store, system_clock)

    def put(first: int, count: int) -> None:
        now = datetime.now(UTC)
        with store.tx() as conn:
            for i in range(first, first + count):
                outbox.put(conn, f"meters/m{i % 100}/usage", payload(i), now)

    async def drained(count: int) -> None:
        link.notify()
        deadline = time.monotonic() + 300
        while link.stats.acknowledged < count:  # a coarse poll: its own cost stays out of the figure
            if time.monotonic() > deadline:
                raise RuntimeError(f"outbox: only {link.stats.acknowledged} of {count} marked delivered")
            await asyncio.sleep(0.05)

    async def run() -> None:
        task = asyncio.create_task(link.run())
        while not link.stats.connected:
            await asyncio.sleep(0.01)
        put(0, WARM_MESSAGES)  # no await in between: the link cannot read them before the marker
        await drained(WARM_MESSAGES)
        marker()  # then: the commit of the first segment's messages (not counted)
        put(WARM_MESSAGES, messages)
        marker()
        await drained(WARM_MESSAGES + messages)
        marker()
        put(WARM_MESSAGES + messages, messages)
        marker()
        await drained(WARM_MESSAGES + 2 * messages)
        marker()
        await link.stop(5.0)
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    store.close()


# -- the parent: run the children under valgrind, read the dumps ----------------------------------------


def segments(out_file: Path) -> list[int]:
    """Instructions (Ir) of each dump callgrind wrote for ``out_file``: ``out_file.1``, ``.2``, … in
    order (the cost from the previous marker, or the start, up to each marker)."""
    dumps = sorted(out_file.parent.glob(out_file.name + ".*"), key=lambda p: int(p.suffix[1:]))
    counts = []
    for path in dumps:
        match = re.search(r"^(?:summary|totals): (\d+)", path.read_text(errors="replace"), re.MULTILINE)
        counts.append(int(match.group(1)) if match else 0)
    return counts


def run_child(workload: str, args: list[str], workdir: Path) -> subprocess.Popen[str]:
    out = workdir / f"{workload}.cg"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--dump-before={MARKER}",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "bench.instructions",
        "--child",
        workload,
        "--workdir",
        str(workdir),
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@dataclass(frozen=True)
class Counted:
    name: str
    per_unit: tuple[float, float]  # the two segments

    @property
    def mean(self) -> float:
        return sum(self.per_unit) / len(self.per_unit)

    def line(self, unit: str) -> str:
        a, b = self.per_unit
        return f"{self.name:8} {self.mean:12,.0f} instructions/{unit}   (segments {a:,.0f} and {b:,.0f})"


def statements_per_reading(readings: int) -> tuple[float, float]:
    """SQL statements per charged reading (BEGIN and COMMIT included) and trigger programs run by them,
    from SQLite's trace callback; no valgrind."""
    from bench.bench_ledger import T0, seed_meter
    from drivers.base import Quality, Reading
    from gateway.ledger.charging import record_reading
    from gateway.store.db import open_store

    book = _book()
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "ledger.db")
        with store.tx() as conn:
            for m in range(METERS):
                seed_meter(conn, m, "zhejiang-residential")
                record_reading(
                    conn,
                    f"m{m}",
                    Reading(f"{m}", T0, Quality.OK, energy_import_wh=0),
                    book.pricer(conn),
                    max_power_w=30_000,
                )
        seen: list[str] = []
        store.conn.set_trace_callback(seen.append)
        for i in range(readings):
            meter_id, reading = _reading(i)
            with store.tx() as conn:
                record_reading(conn, meter_id, reading, book.pricer(conn), max_power_w=30_000)
        store.conn.set_trace_callback(None)
        store.close()
    # Python's trace callback passes a trigger's statements with the text of the statement that fired
    # them: a repeat of the previous text is a trigger program, not a statement of the code.
    statements = sum(1 for k, text in enumerate(seen) if k == 0 or text != seen[k - 1])
    return statements / readings, (len(seen) - statements) / readings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=300, help="charged readings per measured segment")
    ap.add_argument("--messages", type=int, default=2000, help="messages per measured segment")
    ap.add_argument("--only", default="ledger,outbox", help="ledger, outbox or both (comma-separated)")
    ap.add_argument("--child", choices=("ledger", "outbox"), help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.readings < 1 or args.messages < 1:
        ap.error("--readings and --messages must be at least 1")
    if args.child == "ledger":
        ledger_child(args.readings, args.workdir)
        return
    if args.child == "outbox":
        outbox_child(args.messages, args.port, args.workdir)
        return
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    if not only or only - {"ledger", "outbox"}:
        ap.error(f"--only: ledger and/or outbox, not {args.only!r}")
    if shutil.which("valgrind") is None:
        print("bench.instructions: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        raise SystemExit(2)
    run(args.readings, args.messages, only)


def run(readings: int, messages: int, only: set[str]) -> None:
    from simulators.mosquitto import Mosquitto

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        children: dict[str, subprocess.Popen[str]] = {}
        broker = None
        try:
            if "ledger" in only:
                (work / "ledger").mkdir()
                children["ledger"] = run_child("ledger", ["--readings", str(readings)], work / "ledger")
            if "outbox" in only:
                (work / "outbox").mkdir()
                broker = Mosquitto(work / "broker").start()
                children["outbox"] = run_child(
                    "outbox", ["--messages", str(messages), "--port", str(broker.port)], work / "outbox"
                )
            outputs = {name: child.communicate(timeout=900)[0] for name, child in children.items()}
        finally:
            for child in children.values():
                if child.poll() is None:
                    child.kill()
                    child.wait()
            if broker is not None:
                broker.stop()
        for name, child in children.items():
            if child.returncode != 0:
                print(outputs[name], file=sys.stderr)
                raise SystemExit(f"bench.instructions: the {name} workload failed (exit {child.returncode})")
        counts = {name: segments(work / name / f"{name}.cg") for name in children}
    print(f"callgrind, {time.monotonic() - started:.0f} s; instructions are user space, all threads")
    if "ledger" in counts:
        report_ledger(counts["ledger"], readings)
    if "outbox" in counts:
        report_outbox(counts["outbox"], messages)


def _pair(counts: list[int], first: int, second: int, units: int) -> tuple[float, float]:
    return counts[first] / units, counts[second] / units


def report_ledger(counts: list[int], readings: int) -> None:
    # dumps: 1 start-up..warm-up, 2 and 3 the ledger's segments, 4 the replay's set-up and warm-up,
    # 5 and 6 the replay's segments
    if len(counts) < 6:
        raise SystemExit(f"bench.instructions: expected 6 ledger dumps, found {len(counts)}")
    ledger = Counted("ledger", _pair(counts, 1, 2, readings))
    replay = Counted("replay", _pair(counts, 4, 5, readings))
    statements, triggers = statements_per_reading(readings)
    print(f"ledger: {readings} charged readings per segment, Zhejiang tariff, one durable commit each")
    print(ledger.line("reading"))
    print(replay.line("reading") + "  (the same rows inserted raw)")
    print(
        f"ratio    {replay.mean / ledger.mean:12.3f}   (raw ÷ ledger instructions: the share the ledger keeps)"
    )
    print(f"SQL statements per reading {statements:.1f} (and {triggers:.1f} trigger programs they fire)")
    emit(
        Result(
            "Ledger: instructions per charged reading (callgrind)",
            f"{ledger.mean:,.0f}",
            f"the same rows inserted raw, same durability: {replay.mean:,.0f}",
            replay.mean / ledger.mean,
            "—",
            None,
            f"{readings} readings per segment, segments {ledger.per_unit[0]:,.0f} and {ledger.per_unit[1]:,.0f}; "
            f"{statements:.1f} SQL statements per reading (+{triggers:.1f} trigger programs); user space only",
        )
    )


def report_outbox(counts: list[int], messages: int) -> None:
    # dumps: 1 start-up..warm-up, 2 and 3 raw paho's segments, 4 the drain's set-up and warm-up,
    # 5 the first commit, 6 the first drain, 7 the second commit, 8 the second drain
    if len(counts) < 8:
        raise SystemExit(f"bench.instructions: expected 8 outbox dumps, found {len(counts)}")
    raw = Counted("raw", _pair(counts, 1, 2, messages))
    drain = Counted("outbox", _pair(counts, 5, 7, messages))
    print(f"outbox: {messages} messages per segment, QoS 1 to a private Mosquitto")
    print(drain.line("message"))
    print(raw.line("message") + "  (raw paho, the same bodies pre-built)")
    print(f"ratio    {raw.mean / drain.mean:12.3f}   (raw ÷ drain instructions)")
    emit(
        Result(
            "Outbox drain: instructions per message (callgrind)",
            f"{drain.mean:,.0f}",
            f"raw paho QoS 1, same messages and window: {raw.mean:,.0f}",
            raw.mean / drain.mean,
            "—",
            None,
            f"{messages} messages per segment, segments {drain.per_unit[0]:,.0f} and {drain.per_unit[1]:,.0f}; "
            "user space only, paho's thread included",
        )
    )


if __name__ == "__main__":
    main()
