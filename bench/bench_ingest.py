"""The head office's ingest into PostgreSQL: sustained msg/s against raw psycopg COPY, and a fleet's load.

Everything is private to the run: a PostgreSQL started with ``initdb`` on a free port (default
durability: ``fsync`` and ``synchronous_commit`` on) and a Mosquitto on a free port.  The ingest is the
real ``pmg hq ingest --workers 2`` (two processes sharing ``$share/<group>/…``, each acknowledging a
batch only after its commit).

1. **Throughput.**  ``--messages`` usage messages of ``--gateways`` gateways are queued at the broker
   for the workers' persistent sessions while they are stopped (QoS 1); the figure is messages / (time
   from starting ``pmg hq ingest`` to the last one stored) — the publisher's speed is out of it.  Baseline, in
   the same run and on the same server: the same rows COPYed by raw psycopg into an identical ``usage``
   table (same partitions and index), in transactions of the ingest's batch size — what the database
   alone can take.  Ratio ingest/COPY, target ≥ 0.5.
2. **Load.**  ``--fleet`` gateways × ``--meters`` meters reading every minute (1,000 × 200 = 3,333
   msg/s) for ``--load-seconds``: each message's ``interval_end`` is its publish time (ms), and each
   worker records, per usage message, commit time − interval_end.  Target: the offered rate held (all
   stored) with p99 lag ≤ 2 s.

Rounds (``--rounds``) repeat both on fresh databases; the spread is printed.

    .venv/bin/python -m bench.bench_ingest [--messages 40000] [--rounds 3] [--load-seconds 45]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import REPO, Result, emit, machine, stop_process
from hq.ingest.migrations import migrate
from hq.ingest.schema import Message, parse
from hq.ingest.store import configure, ensure_month, month_of, write_batch
from simulators.mosquitto import UNCAPPED_OFFLINE_QUEUE, Mosquitto
from simulators.postgres import PostgresServer

EPOCH = "b" * 32
T0 = datetime(2027, 3, 1, tzinfo=UTC)


def payload(gw: str, seq: int, meter: int, end: str) -> bytes:
    return json.dumps({
        "schema": "pmg.usage/1", "meter_id": f"m{meter}", "account_id": f"a{meter}", "interval_start": None,
        "interval_end": end, "register_wh": 100_000 + seq, "energy_wh": 12, "charge": "0.0132",
        "balance": "48.3100", "gateway_id": gw, "seq": seq, "epoch": EPOCH,
    }, separators=(",", ":")).encode()


def start_ingest(dsn: str, broker: Mosquitto, workers: int, batch: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli.main", "hq", "ingest", "--dsn", dsn, "--host", broker.host,
         "--port", str(broker.port), "--plaintext", "--workers", str(workers), "--client-id", "bench",
         "--batch-size", str(batch), "--gap-delay", "3600"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if "consuming" not in line:
        stop_process(proc)
        raise SystemExit(f"ingest did not start: {line.strip()}")
    return proc


def stop_ingest(proc: subprocess.Popen[str]) -> list[dict[str, object]]:
    stop_process(proc, 60)
    assert proc.stderr is not None
    stats = []
    for line in proc.stderr.read().splitlines():
        if line.startswith("{"):
            stats.append(json.loads(line))
    return stats


def publisher(broker: Mosquitto) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{time.monotonic_ns()}", protocol=paho.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def stored(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute("SELECT count(*) FROM usage").fetchone()[0])


def wait_stored(dsn: str, n: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stored(dsn) >= n:
            return time.monotonic()
        time.sleep(0.05)
    raise SystemExit(f"only {stored(dsn)} of {n} stored after {timeout} s")


def throughput(server: PostgresServer, broker: Mosquitto, n: int, gateways: int, batch: int) -> tuple[float, float]:
    msgs = []
    for i in range(n):
        gw, seq = f"gw{i % gateways:04d}", i // gateways + 1
        end = (T0 + timedelta(minutes=seq)).strftime("%Y-%m-%dT%H:%M:%SZ")
        msgs.append((f"pmg/{gw}/meters/m{i % 200}/usage", payload(gw, seq, i % 200, end)))
    dsn = server.new_database("ingest")
    # The workers' persistent sessions and shared subscription exist first; while they are down the
    # broker queues the whole stream for them; then they drain it: the publisher's speed is out of it.
    stop_ingest(start_ingest(dsn, broker, 2, batch))
    pub = publisher(broker)
    t0 = time.monotonic()
    infos = [pub.publish(t, p, qos=1) for t, p in msgs]
    for info in infos:
        info.wait_for_publish(120)
    t_pub = time.monotonic() - t0
    pub.loop_stop()
    pub.disconnect()
    t0 = time.monotonic()
    proc = start_ingest(dsn, broker, 2, batch)
    try:
        t_end = wait_stored(dsn, n, 300)
    finally:
        stop_ingest(proc)
    ingest_rate = n / (t_end - t0)
    # The baseline: the same rows, raw COPY, same batch size, into an identical usage table.
    base = server.new_database("copy")
    rows = []
    for _t, p in msgs:
        b = json.loads(p)
        rows.append((b["gateway_id"], b["epoch"], b["seq"], b["meter_id"], b["account_id"], None,
                     b["interval_end"], b["register_wh"], b["energy_wh"], b["charge"], b["balance"]))
    with psycopg.connect(base, autocommit=True) as conn:
        migrate(conn)
        conn.autocommit = False
        for m in range(1, 13):
            ensure_month(conn, T0.date().replace(month=m))
        t0 = time.monotonic()
        for i in range(0, n, batch):
            with conn.transaction(), conn.cursor() as cur, cur.copy(
                "COPY usage (gateway_id, epoch, seq, meter_id, account_id, interval_start, interval_end, "
                "register_wh, energy_wh, charge, balance) FROM STDIN"
            ) as copy:
                for r in rows[i : i + batch]:
                    copy.write_row(r)
        copy_rate = n / (time.monotonic() - t0)
    receive_rate = bare_drain(broker, msgs)
    path_rate = database_path(server, msgs, batch)
    print(f"  throughput: ingest {ingest_rate:,.0f} msg/s (publisher alone {n / t_pub:,.0f} msg/s), "
          f"raw COPY {copy_rate:,.0f} rows/s, ratio {ingest_rate / copy_rate:.3f}; where the time goes: "
          f"bare paho manual-ack drain {receive_rate:,.0f} msg/s, checks + database path on one connection "
          f"{path_rate:,.0f} msg/s", flush=True)
    return ingest_rate, copy_rate


def bare_drain(broker: Mosquitto, msgs: list[tuple[str, bytes]]) -> float:
    """The receive ceiling: one paho client that only acknowledges (manual_ack), same backlog."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    got = [0]
    done = threading.Event()

    def on_message(c: paho.Client, _u: object, m: paho.MQTTMessage) -> None:
        c.ack(m.mid, m.qos)
        got[0] += 1
        if got[0] >= len(msgs):
            done.set()

    def connect() -> paho.Client:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=paho.MQTTv5, manual_ack=True)
        c.on_message = on_message
        subscribed = threading.Event()
        c.on_connect = lambda cl, *_a: cl.subscribe("$share/bare/bare/+/#", qos=1)
        c.on_subscribe = lambda *_a: subscribed.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        props.ReceiveMaximum = 1000
        c.connect(broker.host, broker.port, clean_start=False, properties=props)
        c.loop_start()
        subscribed.wait(10)
        return c

    c = connect()
    c.disconnect()
    c.loop_stop()
    pub = publisher(broker)
    # under another prefix: the ingest's sessions (stopped now) must not queue these
    for info in [pub.publish("bare/" + t.removeprefix("pmg/"), p, qos=1) for t, p in msgs]:
        info.wait_for_publish(120)
    pub.loop_stop()
    pub.disconnect()
    t0 = time.monotonic()
    c = connect()
    done.wait(300)
    rate = got[0] / (time.monotonic() - t0)
    c.disconnect()
    c.loop_stop()
    return rate


def database_path(server: PostgresServer, msgs: list[tuple[str, bytes]], batch: int) -> float:
    """The ingest without MQTT: checks and write_batch on one connection, same rows, same batch size."""
    dsn = server.new_database("path")
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
        configure(conn)
        t0 = time.monotonic()
        for i in range(0, len(msgs), batch):
            parsed = [parse(t, p, prefix="pmg") for t, p in msgs[i : i + batch]]
            months = {month_of(str(m.body["interval_end"])) for m in parsed if isinstance(m, Message)}
            for month in months:
                ensure_month(conn, month)
            write_batch(conn, [m for m in parsed if isinstance(m, Message)])
        return len(msgs) / (time.monotonic() - t0)


def load(server: PostgresServer, broker: Mosquitto, fleet: int, meters: int, seconds: float, batch: int
         ) -> tuple[float, float, int | None, int | None, int]:
    """Offered rate for ``seconds``; returns (offered msg/s, achieved publish msg/s, p50 ms, p99 ms, lost)."""
    dsn = server.new_database("load")
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
    proc = start_ingest(dsn, broker, 2, batch)
    rate = fleet * meters / 60.0
    template = (
        '{"schema":"pmg.usage/1","meter_id":"m%d","account_id":"a%d","interval_start":null,'
        '"interval_end":"%s","register_wh":%d,"energy_wh":12,"charge":"0.0132","balance":"48.3100",'
        f'"gateway_id":"gw%04d","seq":%d,"epoch":"{EPOCH}"}}'
    )
    tick = 0.1
    per_tick = rate * tick
    pub = publisher(broker)
    seqs = [0] * fleet
    sent = 0
    owed = 0.0
    slot = 0
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            owed += per_tick
            k = int(owed)
            owed -= k
            now = datetime.now(UTC)
            end = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
            for _ in range(k):
                g = slot % fleet
                meter = (slot // fleet) % meters
                slot += 1
                seqs[g] += 1
                body = template % (meter, meter, end, seqs[g], g, seqs[g])  # the generator must stay cheap
                pub.publish(f"pmg/gw{g:04d}/meters/m{meter}/usage", body, qos=1)
                sent += 1
            nxt = t0 + tick * (int((time.monotonic() - t0) / tick) + 1)
            time.sleep(max(0.0, nxt - time.monotonic()))
        achieved = sent / (time.monotonic() - t0)
        wait_stored(dsn, sent, 120)
    finally:
        pub.loop_stop()
        pub.disconnect()
        stats = stop_ingest(proc)
    p50s = [s["usage_age_ms"]["p50"] for s in stats if isinstance(s.get("usage_age_ms"), dict)]  # type: ignore[index]
    p99s = [s["usage_age_ms"]["p99"] for s in stats if isinstance(s.get("usage_age_ms"), dict)]  # type: ignore[index]
    p50 = max((int(v) for v in p50s if v is not None), default=None)
    p99 = max((int(v) for v in p99s if v is not None), default=None)
    lost = sent - stored(dsn)
    print(f"  load: offered {rate:,.0f} msg/s, published {achieved:,.0f} msg/s, {sent} messages, "
          f"lag p50 {p50} ms p99 {p99} ms (worst worker), not stored {lost}; workers {json.dumps(stats)}", flush=True)
    return rate, achieved, p50, p99, lost


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=40_000)
    ap.add_argument("--gateways", type=int, default=1000)
    ap.add_argument("--fleet", type=int, default=1000)
    ap.add_argument("--meters", type=int, default=200)
    ap.add_argument("--load-seconds", type=float, default=45)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args(argv)
    print(f"machine: {machine()}", flush=True)
    server = PostgresServer().start()
    broker = Mosquitto(Path(tempfile.mkdtemp(prefix="pmg-bench-mq-")),
                       extra="allow_anonymous true\n" + UNCAPPED_OFFLINE_QUEUE + "max_inflight_messages 1000\n").start()
    try:
        ratios, ingest_rates, copy_rates, lags, held = [], [], [], [], []
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", flush=True)
            ing, cp = throughput(server, broker, args.messages, args.gateways, args.batch)
            ingest_rates.append(ing)
            copy_rates.append(cp)
            ratios.append(ing / cp)
            offered, achieved, _p50, p99, lost = load(server, broker, args.fleet, args.meters, args.load_seconds, args.batch)
            lags.append(p99 if p99 is not None else 10**9)
            held.append(lost == 0 and achieved >= 0.95 * offered)  # the generator shares the cores too
    finally:
        broker.stop()
        server.stop()

    def spread(xs: list[float], fmt: str) -> str:
        return f"median {fmt.format(statistics.median(xs))} (min {fmt.format(min(xs))}, max {fmt.format(max(xs))})"

    ratio = statistics.median(ratios)
    emit(Result("Ingest into PostgreSQL (2 workers)", f"{statistics.median(ingest_rates):,.0f} msg/s",
                f"raw psycopg COPY {statistics.median(copy_rates):,.0f} rows/s", ratio, ">= 0.5", ratio >= 0.5,
                f"{args.rounds} rounds; ratio {spread(ratios, '{:.3f}')}"))
    p99 = statistics.median(lags)
    emit(Result(f"Ingest load {args.fleet} gateways x {args.meters} meters/min", f"p99 lag {p99 / 1000:.2f} s",
                f"{args.fleet * args.meters / 60:,.0f} msg/s offered", None, "p99 <= 2 s, all stored",
                p99 <= 2000 and all(held), f"p99 ms per round {lags}; held {held}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
