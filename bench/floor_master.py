"""The least a Python master can spend on the capacity benchmark's work: its floor, measured beside it.

The capacity target is a share of one core, and the share measured for one commit on this
development host moved from 4.0 % to 8.8 % within a day (docs/benchmarks.md, "Efficiency round,
third part").  A figure that moves with the host is judged against a baseline that moves with it:
this process does, on the same fleet and at the same rate, only what no gateway can avoid —

* each bus on its own thread, each meter at its poll interval, the same two exchanges a poll makes
  (the import block ``0001FF00`` and status word 3 ``04000503``), each after the bus's inter-frame
  gap: the request written, then the reply read the way the gateway's link reads it
  (``drivers.dlt645.link``): one wait for its first byte, one sleep for the time the rest of a reply
  as long as the last one takes on the line, one read — three wake-ups, not one per piece the line
  delivers;
* one row per poll, committed durably (WAL, ``synchronous = FULL``, as the gateway's store) in the
  gateway's cadence: every poll of the last ``READING_BATCH_S`` in one transaction.

No decoding beyond the reply's length, no pricing, no policy, no MQTT, no asyncio, no logging: a
lower bound, not a design.  ``bench.bench_capacity`` measures its CPU over the same kind of window as
the gateway's and reports the gateway's figure as a multiple of it.

    .venv/bin/python -m bench.floor_master -c GATEWAY.toml --database FLOOR.db
"""

from __future__ import annotations

import argparse
import os
import select
import sqlite3
import sys
import threading
import time
from pathlib import Path

import serial

from drivers.dlt645 import commands
from drivers.dlt645 import di as dis
from drivers.dlt645.frame import encode
from drivers.dlt645.link import bits_per_byte
from gateway.config import BusConfig, ConfigError, load_config
from gateway.runtime.daemon import READING_BATCH_S

WAKEUP = 4  # the link's default wake-up preamble (FE FE FE FE)
POLL_DIS = (dis.ENERGY_IMPORT_BLOCK, dis.status_word(3))  # what a routine poll reads (bench_capacity)

Row = tuple[str, float, bytes, bytes]


def open_db(path: Path) -> sqlite3.Connection:
    """The floor's own database, as durable as the gateway's store (WAL, every commit fsynced)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS polls (meter TEXT, taken_at REAL, block BLOB, status BLOB)")
    return conn


def _frame_length(buf: bytes) -> int | None:
    """Bytes from the start of ``buf`` to the end of the frame it holds (preamble included), once the
    length byte has arrived; None before that."""
    start = buf.find(0x68)
    if start < 0 or len(buf) < start + 10:
        return None
    return start + 12 + buf[start + 9]


def read_reply(fd: int, expected: int, byte_time_s: float, timeout_s: float) -> bytes:
    """One reply from the non-blocking descriptor ``fd``, in as few wake-ups as the gateway's link:
    wait for the first byte, sleep until ``expected`` bytes (the last reply's length) can be there,
    take what has arrived; only a reply longer than expected costs more waits.  Raises RuntimeError
    when the reply does not come whole within ``timeout_s`` (plus the frame's own line time)."""
    deadline = time.monotonic() + timeout_s
    buf = b""
    while True:
        need = _frame_length(buf)
        if need is not None and len(buf) >= need:
            return buf[:need]
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise RuntimeError(f"reply cut short after {len(buf)} bytes" if buf else "no reply")
        if not buf and expected > 1:
            time.sleep((expected - 1) * byte_time_s)  # the line cannot deliver it faster
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            continue
        if not chunk:
            raise RuntimeError("the other end closed the connection")
        buf += chunk
        if need is None and (need := _frame_length(buf)) is not None:
            deadline = max(deadline, time.monotonic() + (need - len(buf)) * byte_time_s + 0.05)


class BusPoller:
    """One bus: its port, its line timing, the last reply length per request kind."""

    def __init__(self, bus: BusConfig) -> None:
        self.ser = serial.serial_for_url(
            bus.url, baudrate=bus.line_baud, parity=bus.line_parity, timeout=bus.timeout_s
        )
        self.fd = self.ser.fileno()
        os.set_blocking(self.fd, False)
        self.byte_time_s = bits_per_byte(bus.line_parity) / bus.line_baud
        self.timeout_s = bus.timeout_s
        self.gap_s = bus.frame_gap_s
        self.last_io = 0.0
        self.expected = [0] * len(POLL_DIS)

    def poll(self, wires: list[bytes]) -> list[bytes]:
        """A poll's exchanges, each after the inter-frame gap; b"" for a reply that did not come whole."""
        replies = []
        for i, wire in enumerate(wires):
            quiet = self.last_io + self.gap_s - time.monotonic()
            if quiet > 0:
                time.sleep(quiet)  # the bus turnaround the gateway's link keeps too
            self.ser.reset_input_buffer()
            self.ser.write(wire)
            try:
                reply = read_reply(self.fd, self.expected[i], self.byte_time_s, self.timeout_s)
                self.expected[i] = len(reply)
            except RuntimeError:  # the poll is short of a reply; the bus goes on
                reply = b""
            replies.append(reply)
            self.last_io = time.monotonic()
        return replies

    def close(self) -> None:
        self.ser.close()


def poll_wires(address: str) -> list[bytes]:
    """The wire bytes of one poll's requests to ``address``, built once per meter."""
    return [encode(commands.read_request(address, d), wakeup=WAKEUP) for d in POLL_DIS]


class Batch:
    """Rows of every bus, committed together every ``READING_BATCH_S`` as the gateway commits readings."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.rows: list[Row] = []
        self.lock = threading.Lock()

    def add(self, row: Row) -> None:
        with self.lock:
            self.rows.append(row)

    def commit_forever(self) -> None:
        """The gateway's cadence: one durable transaction per ``READING_BATCH_S`` with what came in."""
        while True:
            time.sleep(READING_BATCH_S)
            with self.lock:
                rows, self.rows = self.rows, []
            if rows:
                self.db.execute("BEGIN")
                self.db.executemany("INSERT INTO polls VALUES (?, ?, ?, ?)", rows)
                self.db.execute("COMMIT")


def poll_bus(bus: BusConfig, addresses: list[str], interval_s: float, batch: Batch) -> None:
    """Every meter of ``bus`` at ``interval_s``, evenly spread, forever."""
    wires = {a: poll_wires(a) for a in addresses}
    poller = BusPoller(bus)
    step = interval_s / max(1, len(addresses))
    due = time.monotonic()
    while True:
        for address in addresses:
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            due += step
            block, status = poller.poll(wires[address])
            batch.add((address, time.time(), block, status))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", type=Path, required=True, help="the gateway configuration to mimic")
    ap.add_argument("--database", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:  # one line, nothing created
        print(f"floor master: {exc}", file=sys.stderr)
        return 2
    batch = Batch(open_db(args.database))
    threads = [threading.Thread(target=batch.commit_forever, name="commit", daemon=True)]
    for bus in cfg.buses:
        addresses = [m.address for m in cfg.meters if m.bus == bus.id]
        if addresses:
            threads.append(
                threading.Thread(
                    target=poll_bus, args=(bus, addresses, bus.poll_interval_s, batch), name=bus.id, daemon=True
                )
            )
    for t in threads:
        t.start()
    print(f"floor master ready: {len(threads) - 1} buses, {len(cfg.meters)} meters", flush=True)
    while all(t.is_alive() for t in threads):
        time.sleep(1.0)
    ended = next(t.name for t in threads if not t.is_alive())
    print(f"floor master: thread {ended} ended (its error is above)", flush=True)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
