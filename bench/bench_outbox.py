"""Outbox drain rate to a local broker, against raw paho publishing the same messages in the same run.

Both sides publish the same N payloads at QoS 1 with the same in-flight window to a private Mosquitto
and count a message only when its PUBACK has arrived; the outbox side additionally reads every
message from SQLite, publishes it in order and marks it delivered on acknowledgement (a durable
write).  The ratio outbox/raw says what durability costs (target >= 0.7).

The trickle figure is what the daemon pays in steady state: messages committed one per transaction
(``synchronous=FULL``, as the ledger does) at ``--rate`` per second, each followed by ``notify()``.
Three variants run interleaved in the same process, rounds apart, and each reports process CPU
(``time.process_time``: the event loop plus paho's network thread) per message over the whole
window from the first commit until the last message is acknowledged (and, for the outbox, marked
delivered):

- ``commit``: the commits alone, nothing published — the floor every variant pays;
- ``raw``: the commits, then the same bytes published by a bare paho client (QoS 1, no marking) —
  the same-run baseline for "just send it";
- ``outbox``: the commits, then ``MqttLink`` delivers from the outbox as the daemon runs it.

``outbox - commit`` is the CPU that delivery costs per message; compare it with ``raw - commit``.
Commits counts every COMMIT the process issued per message, and how many of them were durable
(``synchronous=FULL``, an fsync) — the outbox's ack marks add to the producer's one per message.

    .venv/bin/python bench/bench_outbox.py [--messages 20000] [--rounds 3] [--rate 40 --seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import Result, emit
from gateway.config import MqttConfig
from gateway.core.timeutil import iso, system_clock
from gateway.store import outbox
from gateway.store.db import open_store
from gateway.sync.mqtt import WINDOW, MqttLink
from simulators.mosquitto import Mosquitto

TARGET = 0.7  # the share of raw paho the gateway aims for (0.5 before the efficiency round)


def payload(i: int) -> dict[str, Any]:
    """A usage message as the ledger writes it."""
    return {
        "schema": "pmg.usage/1",
        "meter_id": f"m{i % 100}",
        "account_id": f"acc{i % 100}",
        "interval_start": "2026-03-01T00:00:00Z",
        "interval_end": "2026-03-01T00:01:00Z",
        "register_wh": 1_000_000 + i,
        "energy_wh": 17,
        "charge": "0.01",
        "balance": "41.27",
    }


def raw_rate(port: int, n: int) -> float:
    done = threading.Event()
    acked = 0
    lock = threading.Lock()

    def on_publish(*_: Any) -> None:
        nonlocal acked
        with lock:
            acked += 1
            if acked == n:
                done.set()

    connected = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=paho.MQTTv5)
    client.on_publish = on_publish
    client.on_connect = lambda *_: connected.set()
    client.max_inflight_messages_set(WINDOW)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    connected.wait(10)
    bodies = [
        json.dumps({**payload(i), "gateway_id": "gw-raw", "seq": i + 1}, separators=(",", ":")).encode()
        for i in range(n)
    ]
    start = time.perf_counter()
    for i, body in enumerate(bodies):
        client.publish(f"pmg/gw-raw/meters/m{i % 100}/usage", body, qos=1)
    if not done.wait(120):
        raise RuntimeError(f"raw: only {acked} of {n} acknowledged")
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return n / elapsed


def outbox_rate(port: int, n: int, workdir: Path) -> float:
    store = open_store(workdir / f"bench-{time.monotonic_ns()}.db")
    now = datetime.now(UTC)
    with store.tx() as conn:
        for i in range(n):
            outbox.put(conn, f"meters/m{i % 100}/usage", payload(i), now)
    cfg = MqttConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "tls": False,
            "allow_plaintext": True,
            "client_id": "bench-outbox",
        }
    )
    link = MqttLink(cfg, "gw-outbox", store, system_clock)

    async def run() -> float:
        # The link starts draining on CONNACK; the clock starts when we see it connected (<= 1 ms later).
        task = asyncio.create_task(link.run())
        while not link.stats.connected:
            await asyncio.sleep(0.001)
        start = time.perf_counter()
        link.notify()
        # Done when every message is marked delivered; watch the link's counter (a COUNT over the
        # outbox every millisecond would compete with the drain it measures), then confirm once.
        while link.stats.acknowledged < n:
            await asyncio.sleep(0.001)
        elapsed = time.perf_counter() - start
        assert outbox.backlog(store).messages == 0, "acknowledged but not marked delivered"
        await link.stop(1.0)
        await asyncio.gather(task, return_exceptions=True)
        return elapsed

    elapsed = asyncio.run(run())
    store.close()
    return n / elapsed


@dataclass
class Trickle:
    variant: str
    messages: int
    cpu_s: float  # process CPU (all threads) over the window
    loop_cpu_s: float  # of which the event-loop thread
    commits: int  # COMMITs issued on the store's connection
    durable_commits: int  # of which with synchronous=FULL (an fsync of the WAL)

    @property
    def us_per_msg(self) -> float:
        return self.cpu_s / self.messages * 1e6

    @property
    def loop_us_per_msg(self) -> float:
        return self.loop_cpu_s / self.messages * 1e6


class CommitCounter:
    """Counts COMMITs on a connection and which were durable, from SQLite's statement trace.

    The trace callback runs for every statement, so the counter adds the same small cost to every
    variant; it follows ``PRAGMA synchronous`` changes to tell durable commits from the others."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.commits = 0
        self.durable = 0
        self._full = conn.execute("PRAGMA synchronous").fetchone()[0] >= 2
        conn.set_trace_callback(self._trace)

    def _trace(self, sql: str) -> None:
        if sql.startswith("COMMIT"):
            self.commits += 1
            self.durable += self._full
        elif sql.startswith("PRAGMA synchronous"):
            self._full = sql.rstrip().upper().endswith(("FULL", "EXTRA", "2", "3"))


def trickle(port: int, workdir: Path, variant: str, rate: float, seconds: float) -> Trickle:
    """One trickle run (see the module docstring); ``variant`` is commit, raw or outbox."""
    n = max(1, int(rate * seconds))
    store = open_store(workdir / f"trickle-{variant}-{time.monotonic_ns()}.db")
    counter = CommitCounter(store.conn)
    acked = 0
    all_acked = threading.Event()
    raw: paho.Client | None = None
    link: MqttLink | None = None
    if variant == "raw":
        lock = threading.Lock()

        def on_publish(*_: Any) -> None:
            nonlocal acked
            with lock:
                acked += 1
                if acked == n:
                    all_acked.set()

        connected = threading.Event()
        raw = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-trickle-raw", protocol=paho.MQTTv5)
        raw.on_publish = on_publish
        raw.on_connect = lambda *_: connected.set()
        raw.max_inflight_messages_set(WINDOW)
        raw.max_queued_messages_set(0)
        raw.connect("127.0.0.1", port)
        raw.loop_start()
        if not connected.wait(10):
            raise RuntimeError("raw client did not connect")
    elif variant == "outbox":
        cfg = MqttConfig.model_validate(
            {
                "host": "127.0.0.1",
                "port": port,
                "tls": False,
                "allow_plaintext": True,
                "client_id": "bench-trickle-outbox",
            }
        )
        link = MqttLink(cfg, "gw-trickle", store, system_clock)

    async def run() -> tuple[float, float]:
        task = asyncio.create_task(link.run()) if link is not None else None
        if link is not None:
            while not link.stats.connected:
                await asyncio.sleep(0.001)
        after: Callable[[int, int], None]
        if raw is not None:
            client = raw

            def after(i: int, seq: int) -> None:
                body = {**payload(i), "gateway_id": "gw-trickle", "seq": seq}
                client.publish(
                    f"pmg/gw-trickle/meters/m{i % 100}/usage",
                    json.dumps(body, separators=(",", ":")).encode(),
                    qos=1,
                )
        elif link is not None:
            notify = link.notify

            def after(i: int, seq: int) -> None:
                notify()
        else:

            def after(i: int, seq: int) -> None:
                pass

        loop = asyncio.get_running_loop()
        counter.commits = counter.durable = 0
        cpu0, loop0 = time.process_time(), time.thread_time()
        due = loop.time()
        for i in range(n):
            due += 1.0 / rate
            await asyncio.sleep(max(0.0, due - loop.time()))  # the bench paces itself; tests never do
            with store.tx() as conn:
                seq = outbox.put(conn, f"meters/m{i % 100}/usage", payload(i), datetime.now(UTC))
            after(i, seq)
        if raw is not None:
            await asyncio.to_thread(all_acked.wait, 30)
        elif link is not None:
            while link.stats.acknowledged < n:  # marked delivered; polled only once producing ends
                await asyncio.sleep(0.01)
        cpu, loop_cpu = time.process_time() - cpu0, time.thread_time() - loop0
        if link is not None:
            assert outbox.backlog(store).messages == 0, "acknowledged but not marked delivered"
            await link.stop(1.0)
            assert task is not None
            await asyncio.gather(task, return_exceptions=True)
        return cpu, loop_cpu

    try:
        cpu, loop_cpu = asyncio.run(run())
    finally:
        if raw is not None:
            raw.disconnect()
            raw.loop_stop()
        store.close()
    if raw is not None and acked < n:
        raise RuntimeError(f"raw: only {acked} of {n} acknowledged")
    return Trickle(variant, n, cpu, loop_cpu, counter.commits, counter.durable)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=40.0, help="trickle: messages committed per second")
    ap.add_argument("--seconds", type=float, default=15.0, help="trickle: length of one run")
    ap.add_argument("--no-burst", action="store_true", help="only the trickle figure")
    ap.add_argument("--no-trickle", action="store_true", help="only the burst figure")
    args = ap.parse_args()
    trickles: dict[str, list[Trickle]] = {"commit": [], "raw": [], "outbox": []}
    raws: list[float] = []
    outs: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker").start()
        try:
            for r in range(args.rounds):
                if not args.no_trickle:
                    for variant, runs in trickles.items():
                        runs.append(trickle(broker.port, Path(tmp), variant, args.rate, args.seconds))
                    print(
                        f"round {r + 1}: trickle CPU us/msg "
                        + "  ".join(f"{v} {runs[-1].us_per_msg:,.0f}" for v, runs in trickles.items())
                    )
                if not args.no_burst:
                    raws.append(raw_rate(broker.port, args.messages))
                    outs.append(outbox_rate(broker.port, args.messages, Path(tmp)))
                    print(f"round {r + 1}: raw {raws[-1]:,.0f} msg/s  outbox {outs[-1]:,.0f} msg/s")
        finally:
            broker.stop()
    print(f"{iso(datetime.now(UTC))} rounds={args.rounds} window={WINDOW}")
    if not args.no_trickle:
        print(
            f"trickle: {args.rate:g} msg/s for {args.seconds:g} s, one commit per message (median of rounds)"
        )
        print("variant   CPU us/msg  (loop thread)  minus commit  spread        commits/msg  durable/msg")
        floor = statistics.median(t.us_per_msg for t in trickles["commit"])
        for variant, runs in trickles.items():
            per = sorted(t.us_per_msg for t in runs)
            med = statistics.median(per)
            loop_med = statistics.median(t.loop_us_per_msg for t in runs)
            commits = statistics.median(t.commits / t.messages for t in runs)
            durable = statistics.median(t.durable_commits / t.messages for t in runs)
            print(
                f"{variant:8} {med:10,.0f}  ({loop_med:11,.0f})  {med - floor:12,.0f}  "
                f"{per[0]:,.0f}-{per[-1]:,.0f}".ljust(70)
                + f"{commits:11.2f}  {durable:11.2f}"
            )
    if not args.no_burst:
        raw, out = max(raws), max(outs)
        print(f"burst: messages={args.messages} (best of {args.rounds})")
        print(f"raw paho QoS 1     {raw:10,.0f} msg/s")
        print(f"outbox drain QoS 1 {out:10,.0f} msg/s")
        print(f"ratio outbox/raw   {out / raw:10.2f}  (target >= 0.7)")
        emit(
            Result(
                "Outbox drain, QoS 1, to a local Mosquitto",
                f"{out:,.0f} msg/s",
                f"raw paho QoS 1, same messages and window: {raw:,.0f} msg/s",
                out / raw,
                ">= 0.7",
                out / raw >= TARGET,
                f"{args.messages} messages, best of {args.rounds}; per round outbox/raw "
                + ", ".join(f"{o / r:.2f}" for o, r in zip(outs, raws, strict=True)),
            )
        )


if __name__ == "__main__":
    main()
