"""A multi-drop DL/T 645 bus of simulated meters, served on a pseudo-terminal and/or TCP.

One background thread owns every endpoint (pty master, TCP listener and its connections) and
answers requests one at a time, like a half-duplex RS-485 line.  With ``emulate_timing`` it delays
each reply as a real line would: the request's own transmission time (the driver's write to a pty
or socket is instant), the meter's response delay, then the reply paced at 11 bits per byte for
8E1 (10 for 8N1), so benchmarks measure what a real bus would allow.

A shared line, modelled honestly for the bus search (``drivers.dlt645.search``): every meter a request's
address names (a wildcarded one names several) answers after its own response delay
(``MeterModel.response_delay_s``, else the bus's; plus ``late_answer_s`` under ``LATE_ANSWER``).  Replies
whose transmissions overlap in time collide (``collide``): the bytes that share a byte slot are OR-ed (two
RS-485 drivers fighting leave the receiver undefined; OR is one deterministic garble — a frame made so
nearly always fails its checksum or its BCD address, and is never patched up to fail).  Replies that do not
overlap — one meter much slower than another — go out one after the other, as two clean frames.
"""

from __future__ import annotations

import contextlib
import functools
import os
import selectors
import socket
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass

from drivers.dlt645.frame import BROADCAST, Frame, encode, scan
from drivers.dlt645.link import bits_per_byte
from simulators.dlt645.responder import respond
from simulators.model import FastClock, Fault, LoadProfile, MeterModel

GARBAGE = bytes.fromhex("0d 68 aa 68 16 33 fe 68 00")  # noise with stray 68s, sent before a reply
TRUNCATE_BY = 3


@dataclass
class BusStats:
    requests: int = 0
    replies: int = 0


def make_models(
    n: int,
    *,
    clock: Callable[[], float] | FastClock | None = None,
    start_address: int = 1,
    power_w: int = 500,
) -> list[MeterModel]:
    """``n`` meters with addresses ``000000000001``…, a flat load of ``power_w`` and a shared clock."""
    models = []
    for i in range(n):
        m = MeterModel(address=f"{start_address + i:012d}", profile=LoadProfile((power_w,)))
        if clock is not None:
            m.clock = clock
        models.append(m)
    return models


def _address_matches(pattern: str, address: str) -> bool:
    """A request address matches a meter when every digit pair is equal or the ``AA`` wildcard."""
    return all(pattern[i : i + 2] in ("AA", address[i : i + 2]) for i in range(0, 12, 2))


def collide(replies: list[tuple[float, bytes]], byte_time_s: float) -> list[tuple[float, bytes]]:
    """What the line carries when several meters transmit: ``(start, wire)`` in, transmissions out.

    A reply that starts before the previous transmission has ended is OR-ed into it, byte slot by byte
    slot (its offset is its start difference in byte times); one that starts later is a transmission of
    its own.  With ``byte_time_s`` 0 (no line timing) replies that start at the same instant collide."""
    out: list[tuple[float, bytes]] = []
    for start, wire in sorted(replies, key=lambda r: r[0]):
        if out:
            first, line = out[-1]
            if start <= first + len(line) * byte_time_s:
                offset = round((start - first) / byte_time_s) if byte_time_s else 0
                merged = bytearray(line.ljust(max(len(line), offset + len(wire)), b"\0"))
                for i, b in enumerate(wire):
                    merged[offset + i] |= b
                out[-1] = (first, bytes(merged))
                continue
        out.append((start, wire))
    return out


class SimulatedDlt645Bus:
    """Simulated meters sharing one line; start on a pty and/or TCP, then ``stop()``."""

    def __init__(
        self,
        models: list[MeterModel],
        *,
        baud: int = 2400,
        parity: str = "E",
        response_delay_s: float = 0.02,
        emulate_timing: bool = True,
        reply_wakeup: int = 0,
    ) -> None:
        addresses = [m.address for m in models]
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"duplicate meter addresses on one bus: {sorted(addresses)}")
        self.models = list(models)
        self.baud = baud
        self.parity = parity
        self.response_delay_s = response_delay_s
        self.emulate_timing = emulate_timing
        self.reply_wakeup = reply_wakeup
        self.stats = BusStats()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fds: list[int] = [self._wake_r, self._wake_w]
        self._socks: list[socket.socket] = []
        self._buffers: dict[object, bytearray] = {}
        self._lock = threading.Lock()

    @property
    def byte_time_s(self) -> float:
        return bits_per_byte(self.parity) / self.baud

    # -- endpoints ------------------------------------------------------------------------------
    def start_pty(self) -> str:
        """Open a pseudo-terminal; returns the slave path to give pyserial."""
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        os.set_blocking(master, False)
        with self._lock:
            self._fds += [master, slave]
            self._buffers[master] = bytearray()
            self._sel.register(master, selectors.EVENT_READ, ("pty", master))
        self._ensure_thread()
        return os.ttyname(slave)

    def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on TCP (one bus shared by all connections); returns the port."""
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((host, port))
        srv.listen()
        srv.setblocking(False)
        with self._lock:
            self._socks.append(srv)
            self._sel.register(srv, selectors.EVENT_READ, ("listen", srv))
        self._ensure_thread()
        return int(srv.getsockname()[1])

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="dlt645-sim-bus", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close every fd and socket; safe to call twice."""
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            for s in self._socks:
                s.close()
            self._socks.clear()
            for fd in self._fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds.clear()
            with contextlib.suppress(Exception):
                self._sel.close()

    def __enter__(self) -> SimulatedDlt645Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving --------------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=1.0):
                kind, obj = key.data
                if kind == "wake":
                    return
                if kind == "listen":
                    self._accept(obj)
                elif kind == "pty":
                    self._on_data(obj, self._read_fd(obj), functools.partial(self._write_fd, obj))
                else:
                    self._on_data(obj, self._read_sock(obj), functools.partial(self._write_sock, obj))

    def _accept(self, srv: socket.socket) -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        conn.setblocking(True)
        conn.settimeout(0.0)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._socks.append(conn)
            self._buffers[conn] = bytearray()
            self._sel.register(conn, selectors.EVENT_READ, ("conn", conn))

    def _read_fd(self, fd: int) -> bytes | None:
        try:
            return os.read(fd, 4096)
        except BlockingIOError:
            return b""
        except OSError:
            return b""  # EIO while no client holds the slave open: nothing to read

    def _read_sock(self, conn: socket.socket) -> bytes | None:
        try:
            data = conn.recv(4096)
        except BlockingIOError:
            return b""
        except OSError:
            data = b""
        if not data:
            with self._lock:
                self._sel.unregister(conn)
                self._buffers.pop(conn, None)
                self._socks.remove(conn)
            conn.close()
            return None
        return data

    def _write_fd(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._stop.is_set():
            try:
                n = os.write(fd, view)
                view = view[n:]
            except BlockingIOError:
                self._stop.wait(0.001)

    def _write_sock(self, conn: socket.socket, data: bytes) -> None:
        with contextlib.suppress(OSError):
            conn.setblocking(True)
            conn.sendall(data)
            conn.setblocking(False)

    def _on_data(self, key: object, data: bytes | None, write: Callable[[bytes], None]) -> None:
        if data is None:
            return
        buf = self._buffers.setdefault(key, bytearray())
        buf += data
        arrived = time.monotonic()
        while True:
            result = scan(bytes(buf))
            if result.frame is None:
                del buf[: result.end]
                return
            wire_len = result.end  # the request plus its wake-up bytes (and any noise before it)
            del buf[: result.end]
            if result.frame.is_reply:
                continue  # another meter's reply on the shared line
            self.stats.requests += 1
            self._handle(result.frame, arrived + wire_len * self.byte_time_s * self.emulate_timing, write)

    def _handle(self, request: Frame, request_end: float, write: Callable[[bytes], None]) -> None:
        broadcast = request.address == BROADCAST
        targets = [m for m in self.models if broadcast or _address_matches(request.address, m.address)]
        replies: list[tuple[MeterModel, bytes]] = []
        for model in targets:
            if model.has(Fault.NO_ANSWER):
                continue  # a meter that does not hear the request does not act on it either
            frames = respond(model, request)
            if frames:
                wire = b"".join(encode(f, wakeup=self.reply_wakeup) for f in frames)
                replies.append((model, self._corrupt(model, wire)))
        if not replies:
            return
        timed = [(request_end + self._delay(model), wire) for model, wire in replies]
        bt = self.byte_time_s if self.emulate_timing else 0.0
        for start, wire in collide(timed, bt):
            self._transmit(wire, start, write)
        self.stats.replies += len(replies)

    def _delay(self, model: MeterModel) -> float:
        own = self.response_delay_s if model.response_delay_s is None else model.response_delay_s
        return own + (model.late_answer_s if model.has(Fault.LATE_ANSWER) else 0.0)

    def _corrupt(self, model: MeterModel, wire: bytes) -> bytes:
        if model.has(Fault.BAD_CHECKSUM):
            wire = wire[:-2] + bytes([(wire[-2] + 1) & 0xFF]) + wire[-1:]
        if model.has(Fault.TRUNCATED):
            wire = wire[:-TRUNCATE_BY]
        if model.has(Fault.GARBAGE):
            wire = GARBAGE + wire
        return wire

    def _transmit(self, wire: bytes, start: float, write: Callable[[bytes], None]) -> None:
        """Send ``wire`` from ``start`` on, releasing each chunk when the line would have carried it."""
        bt = self.byte_time_s if self.emulate_timing else 0.0
        chunk = max(1, int(0.004 / bt)) if bt else len(wire)  # ~4 ms per write keeps syscalls few
        sent = 0
        while sent < len(wire) and not self._stop.is_set():
            target = min(len(wire), sent + chunk)
            delay = start + target * bt - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            write(wire[sent:target])
            sent = target
