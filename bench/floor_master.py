"""The least a Python master can spend on the capacity benchmark's work: its floor, measured beside it.

The capacity target is a share of one core, and on a virtual machine the same commit measured 4.0 %
and 8.4 % on one day (docs/benchmarks.md, "Efficiency round, third part").  A figure that moves with
the host is judged against a baseline that moves with it: this process does, on the same fleet and at
the same rate, only what no gateway can avoid —

* each bus on its own thread, each meter at its poll interval, the same two exchanges a poll makes
  (the import block ``0001FF00`` and status word 3 ``04000503``), each a blocking pyserial
  write and read of the reply's length, with the bus's inter-frame gap before it;
* one row per poll, committed durably (WAL, ``synchronous = FULL``, as the gateway's store) in the
  gateway's cadence: every poll of the last ``READING_BATCH_S`` in one transaction.

No decoding beyond the reply's length, no pricing, no policy, no MQTT, no logging: a lower bound,
not a design.  ``bench.bench_capacity`` measures its CPU over the same kind of window as the gateway's
and reports the gateway's figure as a multiple of it.

    .venv/bin/python -m bench.floor_master -c GATEWAY.toml --database FLOOR.db
"""

from __future__ import annotations

import argparse
import sqlite3
import threading
import time
from pathlib import Path

import serial

from drivers.dlt645 import commands
from drivers.dlt645 import di as dis
from drivers.dlt645.frame import encode
from gateway.config import BusConfig, load_config
from gateway.runtime.daemon import READING_BATCH_S

WAKEUP = 4  # the link's default wake-up preamble (FE FE FE FE)
POLL_DIS = (dis.ENERGY_IMPORT_BLOCK, dis.status_word(3))  # what a routine poll reads (bench_capacity)


def open_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS polls (meter TEXT, taken_at REAL, block BLOB, status BLOB)")
    return conn


def read_reply(ser: serial.Serial) -> bytes:
    """One reply: the shortest frame first, then what its length byte says is left."""
    head = ser.read(12 + WAKEUP)
    start = head.find(0x68)
    if start < 0 or len(head) < start + 10:
        raise RuntimeError(f"no reply header in {head.hex()}")
    rest = start + 12 + head[start + 9] - len(head)
    tail = ser.read(rest) if rest > 0 else b""
    if len(tail) < rest:
        raise RuntimeError("reply cut short")
    return head + tail


def poll_wires(address: str) -> list[bytes]:
    """The wire bytes of one poll's requests to ``address``, built once per meter."""
    return [encode(commands.read_request(address, d), wakeup=WAKEUP) for d in POLL_DIS]


def exchange(ser: serial.Serial, wire: bytes) -> bytes:
    """One request and its reply, b"" when the reply did not come whole within the port's timeout."""
    ser.reset_input_buffer()
    ser.write(wire)
    try:
        return read_reply(ser)
    except RuntimeError:  # the poll is short of a reply; the bus goes on
        return b""


class Batch:
    """Rows of every bus, committed together every ``READING_BATCH_S`` as the gateway commits readings."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self.rows: list[tuple[str, float, bytes, bytes]] = []
        self.lock = threading.Lock()

    def add(self, row: tuple[str, float, bytes, bytes]) -> None:
        with self.lock:
            self.rows.append(row)

    def commit_forever(self) -> None:
        while True:
            time.sleep(READING_BATCH_S)
            with self.lock:
                rows, self.rows = self.rows, []
            if rows:
                self.db.execute("BEGIN")
                self.db.executemany("INSERT INTO polls VALUES (?, ?, ?, ?)", rows)
                self.db.execute("COMMIT")


def poll_bus(bus: BusConfig, addresses: list[str], interval_s: float, batch: Batch) -> None:
    wires = {a: poll_wires(a) for a in addresses}
    ser = serial.serial_for_url(bus.url, baudrate=bus.line_baud, parity=bus.line_parity, timeout=bus.timeout_s)
    gap = bus.frame_gap_s
    step = interval_s / max(1, len(addresses))
    due = time.monotonic()
    last_io = 0.0
    while True:
        for address in addresses:
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            due += step
            replies = []
            for wire in wires[address]:
                quiet = last_io + gap - time.monotonic()
                if quiet > 0:
                    time.sleep(quiet)  # the bus turnaround the gateway's link keeps too
                replies.append(exchange(ser, wire))
                last_io = time.monotonic()
            batch.add((address, time.time(), replies[0], replies[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", type=Path, required=True, help="the gateway configuration to mimic")
    ap.add_argument("--database", type=Path, required=True)
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    batch = Batch(open_db(args.database))
    threads = [threading.Thread(target=batch.commit_forever, name="commit", daemon=True)]
    threads[0].start()
    for bus in cfg.buses:
        addresses = [m.address for m in cfg.meters if m.bus == bus.id]
        if not addresses:
            continue
        t = threading.Thread(
            target=poll_bus, args=(bus, addresses, bus.poll_interval_s, batch), name=bus.id, daemon=True
        )
        t.start()
        threads.append(t)
    print(f"floor master ready: {len(threads) - 1} buses, {len(cfg.meters)} meters", flush=True)
    while all(t.is_alive() for t in threads):
        time.sleep(1.0)
    print("floor master: a bus thread ended", flush=True)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
