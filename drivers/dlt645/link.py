"""One DL/T 645 bus (RS-485 line, or a serial server reached by URL): half-duplex, one request in flight.

Blocking pyserial I/O runs on a single-thread executor owned by the link, so the asyncio loop is
never blocked and requests are serialised even if two coroutines call at once (an ``asyncio.Lock``
guards the whole exchange including retries).  Replies are picked out of the byte stream with
``frame.scan``: noise, echoes of our own request, replies from other meters and broken frames are
skipped until a reply that matches the request (same function, same address) arrives or the
response timeout runs out.

A port that fails (a ``socket://`` peer that closes the connection, an adapter unplugged, a tty
that will not take its settings again) is dropped and reopened by the link itself on a later
request, on the schedule of ``drivers.backoff`` (docs/operations.md, "Links that drop"): until then
every request fails at once with ``LinkError`` instead of writing into a dead descriptor forever.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import logging
import os
import random
import select
import termios
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import serial

from drivers.backoff import Backoff
from drivers.base import BadFrame, DriverError, LinkError, MeterTimeout
from drivers.dlt645.frame import BROADCAST, Frame, Function, address_matches, encode, scan

MAX_REPLY_DATA = 200  # L ≤ 200 for reads (DL/T 645-2007)
POLL_S = 0.01  # pyserial read timeout: how often the reader wakes while waiting for the first byte
_ECHOED_DI: dict[int, int] = {
    Function.READ: 4,
    Function.READ_FOLLOW_UP: 4,
    Function.V97_READ: 2,
}  # replies repeat the DI
_PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}
# What a port can raise when it fails: pyserial wraps most errors, but not termios.error from a
# tcsetattr on reopen (seen: (22, 'Invalid argument') on an 8E1 pty) nor every OSError.
PORT_ERRORS: tuple[type[BaseException], ...] = (serial.SerialException, OSError, ValueError, termios.error)

log = logging.getLogger("pmg.link")

_T = TypeVar("_T")
BlockingExchange = Callable[[Sequence[Frame]], "list[Frame | DriverError]"]
"""``request_many`` for code already on the link's thread (``Dlt645Link.hold``): the replies, or the
error of each frame's last attempt (stopping at the first); ``LinkError`` when the port failed."""


def _refuse_broadcast(frames: Sequence[Frame]) -> None:
    if any(frame.address == BROADCAST for frame in frames):
        raise ValueError("broadcast frames get no reply: use send()")


@dataclass
class LinkStats:
    """Counters for benchmarks and the technician's ``pmg`` output."""

    requests: int = 0
    attempts: int = 0
    timeouts: int = 0
    bad_frames: int = 0
    frames_skipped: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    link_errors: int = 0  # port failures: I/O errors and reopens that did not work
    reopens: int = 0  # the port was opened again after a failure (or on request)
    last_link_error: str | None = None


def bits_per_byte(parity: str) -> int:
    """Start bit + 8 data bits + parity bit (if any) + 1 stop bit: 11 for 8E1, 10 for 8N1."""
    return 10 if parity == "N" else 11


def _nonblocking_fd(ser: Any) -> int | None:
    """The port's file descriptor if reading it never blocks, else None (use pyserial's read)."""
    try:
        fd = int(ser.fileno())
        return fd if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK else None
    except (AttributeError, OSError, ValueError, TypeError, io.UnsupportedOperation, serial.SerialException):
        return None


class Dlt645Link:
    """A DL/T 645 bus reached through any pyserial URL (``/dev/ttyUSB0``, ``socket://h:p``, ``rfc2217://``)."""

    def __init__(
        self,
        url: str,
        *,
        baud: int = 2400,
        parity: str = "E",
        timeout_s: float = 1.0,
        retries: int = 2,
        backoff_s: float = 0.05,
        inter_frame_gap_s: float = 0.02,
        wakeup: int = 4,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if parity not in _PARITIES:
            raise ValueError(f"parity must be one of N, E, O, got {parity!r}")
        if baud <= 0 or timeout_s <= 0 or retries < 0 or backoff_s < 0 or inter_frame_gap_s < 0:
            raise ValueError(
                f"invalid link settings: baud={baud} timeout_s={timeout_s} retries={retries} "
                f"backoff_s={backoff_s} inter_frame_gap_s={inter_frame_gap_s}"
            )
        if not 0 <= wakeup <= 4:
            raise ValueError(f"wake-up byte count must be 0..4, got {wakeup}")
        self.url = url
        self.baud = baud
        self.parity = parity
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.inter_frame_gap_s = inter_frame_gap_s
        self.wakeup = wakeup
        self.stats = LinkStats()
        self._serial: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()
        self._last_io = 0.0
        # Bytes the last clean reply to each request took (meter, control code, DI), preamble included:
        # after the first byte, the reader sleeps until the whole reply can be there and takes it in
        # one read.  A wrong guess costs nothing but a second wait.
        self._reply_bytes: dict[tuple[str, int, bytes], int] = {}
        # The port's descriptor when reads on it never block (pyserial's ttys and socket://): the reply
        # is then taken with one os.read of what has arrived; other ports go through pyserial's read.
        self._fd: int | None = None
        # Reopening after a failure: wanted while the owner holds the link open (open() .. close());
        # the backoff says when the next attempt may be made.
        self.backoff = Backoff(monotonic=monotonic, rng=rng or random.Random())
        self._wanted = False
        self._reopen_requested = False
        self._exchanged_since_open = False

    @property
    def byte_time_s(self) -> float:
        return bits_per_byte(self.parity) / self.baud

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    @property
    def down(self) -> bool:
        """Held open by its owner but without a working port (waiting to reopen)."""
        return self._wanted and self._serial is None

    async def open(self) -> None:
        """Open the port; raises ``LinkError`` (and leaves the link closed) when it cannot be opened."""
        if self._serial is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlt645-link")
        try:
            self._serial = await self._run(self._open_blocking)
            self._fd = _nonblocking_fd(self._serial)
        except BaseException as exc:
            self._executor.shutdown(wait=True)
            self._executor = None
            if isinstance(exc, LinkError):
                self.stats.link_errors += 1
                self.stats.last_link_error = str(exc)
            raise
        self._wanted = True
        self._exchanged_since_open = False
        self.backoff.reset()

    def request_reopen(self) -> None:
        """Close and reopen the port before the next request, whatever the backoff says (SIGHUP)."""
        self._reopen_requested = True
        self.backoff.reset()

    async def _ensure_port(self) -> None:
        """Under the lock, before an exchange: reopen a dropped port when the backoff allows."""
        if not self._wanted or self._executor is None:
            raise LinkError(f"DL/T 645 link {self.url} is not open")
        if self._reopen_requested:
            self._reopen_requested = False
            if self._serial is not None:
                await self._drop_port()
        if self._serial is not None:
            return
        if not self.backoff.due():
            raise LinkError(
                f"DL/T 645 link {self.url} is down ({self.stats.last_link_error}); "
                f"next reopen in {self.backoff.wait_s():.1f} s"
            )
        try:
            ser = await self._run(self._open_blocking)
        except LinkError as exc:
            delay = self._count_error(exc)
            log.warning("link=%s reopen failed: %s; next try in %.1f s", self.url, exc, delay)
            raise
        self._serial, self._fd = ser, _nonblocking_fd(ser)
        self._exchanged_since_open = False
        self.stats.reopens += 1
        log.warning("link=%s reopened", self.url)

    def _count_error(self, exc: BaseException) -> float:
        """Count a port failure and schedule the next reopen; returns the wait."""
        self.stats.link_errors += 1
        self.stats.last_link_error = str(exc)
        return self.backoff.failed()

    async def _drop_port(self) -> None:
        ser, self._serial, self._fd = self._serial, None, None
        if ser is not None and self._executor is not None:

            def close_quietly() -> None:
                try:
                    ser.close()
                except Exception:  # a dead port may fail to close; it is forgotten either way
                    pass

            await asyncio.get_running_loop().run_in_executor(self._executor, close_quietly)

    async def _port_failed(self, exc: LinkError) -> None:
        """An exchange hit a port error: drop the port so a later request opens it again.

        A port that had carried an exchange since it was opened may be reopened by the very next
        request (a peer restarted once); one that fails before any exchange went through is backed
        off, so a peer that accepts and drops at once is not hammered."""
        await self._drop_port()
        if self._exchanged_since_open:
            self.stats.link_errors += 1
            self.stats.last_link_error = str(exc)
            self.backoff.succeeded()
            log.warning("link=%s dropped: %s; reopening on the next request", self.url, exc)
        else:
            delay = self._count_error(exc)
            log.warning("link=%s dropped: %s; next try in %.1f s", self.url, exc, delay)

    def _open_blocking(self) -> Any:
        try:
            return serial.serial_for_url(
                self.url,
                baudrate=self.baud,
                parity=_PARITIES[self.parity],
                bytesize=serial.EIGHTBITS,
                stopbits=serial.STOPBITS_ONE,
                timeout=POLL_S,
                # pyserial's rfc2217 client refuses any write timeout (NotImplementedError): its writes
                # go to a socket that has its own.
                write_timeout=None if self.url.startswith("rfc2217://") else 5.0,
            )
        except PORT_ERRORS as exc:
            raise LinkError(f"cannot open DL/T 645 link {self.url}: {exc}") from None

    async def close(self) -> None:
        async with self._lock:
            self._wanted = False
            ser, self._serial, self._fd = self._serial, None, None
            executor, self._executor = self._executor, None
            if executor is None:
                return
            if ser is not None:
                await asyncio.get_running_loop().run_in_executor(executor, ser.close)
            executor.shutdown(wait=True)

    async def __aenter__(self) -> Dlt645Link:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, fn: Callable[[], Any]) -> Any:
        if self._executor is None:
            raise LinkError(f"DL/T 645 link {self.url} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # -- requests ---------------------------------------------------------------------------------
    async def send(self, frame: Frame) -> None:
        """Send a frame that gets no reply (broadcast time sync)."""
        wire = encode(frame, wakeup=self.wakeup)
        async with self._lock:
            await self._ensure_port()
            try:
                await self._run(lambda: self._exchange(frame, wire, expect_reply=False))
            except LinkError as exc:
                await self._port_failed(exc)
                raise
            self._exchange_went_through()

    async def request(self, frame: Frame, *, retries: int | None = None) -> Frame:
        """Send ``frame`` and return the meter's matching reply (normal or abnormal).

        Retries on timeout or an unusable reply, with exponential backoff.  Raises ``MeterTimeout``
        when nothing arrived on the last attempt, ``BadFrame`` when only unusable bytes did.  A batch
        of one, so single requests and polls share one retry loop (``_request_blocking``) and cost
        one hand-off to the link thread, retries included.  Cancelling the caller stops the retries
        after the attempt on the wire (an exchange cannot be interrupted half-way: the bus stays one
        conversation at a time).
        """
        (result,) = await self.request_many([frame], retries=retries)
        if isinstance(result, DriverError):
            raise result
        return result

    async def request_many(
        self, frames: Sequence[Frame], *, retries: int | None = None
    ) -> list[Frame | DriverError]:
        """Several requests in a row in one hand-off to the link thread: a poll's frames.

        Each frame is exchanged and retried by ``_request_blocking``; the list holds its reply or the
        error of its last attempt.  The batch stops at the first error — a meter that did not
        answer one request is not asked the next — so the list may be shorter than ``frames``.  A
        port failure (``LinkError``) is raised.  Handing each frame to the thread and back costs the
        event loop more CPU than the frame itself; one hand-off per poll halves that.
        """
        _refuse_broadcast(frames)
        attempts = 1 + (self.retries if retries is None else retries)
        abandoned = threading.Event()  # the caller was cancelled: stop at the next attempt
        async with self._lock:
            await self._ensure_port()
            try:
                result: list[Frame | DriverError] = await self._run(
                    lambda: self._batch_blocking(frames, attempts, abandoned)
                )
            except asyncio.CancelledError:
                abandoned.set()  # the thread cannot be interrupted mid-exchange, but asks no more
                raise
            except LinkError as exc:
                await self._port_failed(exc)
                raise
            self._exchange_went_through()
            return result

    async def hold(
        self, work: Callable[[BlockingExchange], _T], *, on_cancel: Callable[[], None] | None = None
    ) -> _T:
        """Hold the bus and run ``work`` on the link's thread; ``work`` exchanges frames by calling
        the ``BlockingExchange`` it is given (``request_many``'s batch, with the same retries), as
        often as it likes, without coming back to the event loop between them.

        The bus worker's polls run this way (``gateway.runtime.bus``): a poll that goes through the
        event loop costs the loop two wake-ups and a future, more CPU than the poll's own Python on a
        small core.  ``work`` must return when its owner asks it to (a relay command waits behind it)
        and must stop exchanging once one exchange raised ``LinkError``: the port is dropped (and
        reopened by a later request, as after any port failure) when ``work`` returns.  Raises
        ``LinkError`` without running ``work`` when the port is down and not yet due to reopen.
        Cancelling the caller calls ``on_cancel`` first (so that ``work`` can tell a failure it caused
        from a real one), then lets the exchange on the wire finish and makes every later one fail
        with ``LinkError`` at once, so ``work`` ends promptly.
        """
        attempts = 1 + self.retries
        abandoned = threading.Event()
        failures: list[LinkError] = []
        exchanged = False

        def exchange(frames: Sequence[Frame]) -> list[Frame | DriverError]:
            nonlocal exchanged
            _refuse_broadcast(frames)
            if failures or abandoned.is_set():
                raise LinkError(f"DL/T 645 link {self.url}: the bus is no longer held")
            try:
                out = self._batch_blocking(frames, attempts, abandoned)
            except LinkError as exc:
                failures.append(exc)
                raise
            exchanged = True
            return out

        async with self._lock:
            await self._ensure_port()
            try:
                result: _T = await self._run(lambda: work(exchange))
            except asyncio.CancelledError:
                if on_cancel is not None:
                    on_cancel()
                abandoned.set()
                raise
            finally:
                if failures and not abandoned.is_set():  # even when work then failed: drop the dead port
                    await self._port_failed(failures[0])
            if exchanged and not failures:
                self._exchange_went_through()
            return result

    def _batch_blocking(
        self, frames: Sequence[Frame], attempts: int, abandoned: threading.Event
    ) -> list[Frame | DriverError]:
        """On the link thread: each frame exchanged and retried by ``_request_blocking``, stopping at
        the first error; a port failure raises ``LinkError``.  Callers refuse broadcasts first
        (``_refuse_broadcast``)."""
        out: list[Frame | DriverError] = []
        for frame in frames:
            result = self._request_blocking(frame, encode(frame, wakeup=self.wakeup), attempts, abandoned)
            out.append(result)
            if isinstance(result, DriverError) or abandoned.is_set():
                break
        return out

    async def listen(self, frame: Frame, window_s: float) -> bytes:
        """Send ``frame`` and return every byte the line carries for ``window_s`` after it.

        ``request`` returns at the first matching reply; a bus search cannot: two meters that answer
        one after the other (their response delays differ) look like one clean reply unless the master
        keeps listening.  The window starts once the request can have left the wire (its bytes at the
        line rate: a pty or a socket takes them at once), and a frame still arriving when it closes is
        heard to its end (until the line is quiet for a few character times).  Bytes that arrived since
        the last exchange come first (a late answer to the previous probe).  No retries, no parsing:
        the caller judges what it heard (``drivers.dlt645.search.classify``).
        """
        if frame.address == BROADCAST:
            raise ValueError("broadcast frames get no reply: use send()")
        if window_s <= 0:
            raise ValueError(f"listening window must be > 0 s, got {window_s}")
        wire = encode(frame, wakeup=self.wakeup)
        async with self._lock:
            await self._ensure_port()
            try:
                heard: bytes = await self._run(lambda: self._listen_blocking(wire, window_s))
            except LinkError as exc:
                await self._port_failed(exc)
                raise
            self._exchange_went_through()
            return heard

    def _listen_blocking(self, wire: bytes, window_s: float) -> bytes:
        ser = self._serial
        if ser is None:
            raise LinkError(f"DL/T 645 link {self.url} is not open")
        self.stats.requests += 1
        self.stats.attempts += 1
        gap = self._last_io + self.inter_frame_gap_s - time.monotonic()
        if gap > 0:
            time.sleep(gap)
        quiet = 0.05 + 4 * self.byte_time_s  # the line is done when it stays idle this long
        buf = bytearray()
        try:
            # Unlike a request, nothing pending is thrown away: a meter slower than the previous window
            # answers now, and the search keeps what it says (a valid frame from an address it did not
            # ask for is a late meter, confirmed at the end).
            while self._wait_readable(ser, 0) and (pending := self._take(ser, 1)):
                buf += pending
                self.stats.bytes_in += len(pending)
            ser.write(wire)
            ser.flush()
            self.stats.bytes_out += len(wire)
            deadline = time.monotonic() + len(wire) * self.byte_time_s + window_s
            hard_deadline = deadline + 2 * (12 + MAX_REPLY_DATA) * self.byte_time_s
            last_byte: float | None = None
            while True:
                now = time.monotonic()
                if now >= hard_deadline:
                    break
                if now >= deadline:
                    if last_byte is None or now - last_byte >= quiet:
                        break
                    wait = quiet - (now - last_byte)
                else:
                    wait = deadline - now
                if not self._wait_readable(ser, wait):
                    continue
                chunk = self._take(ser, 1)
                if chunk:
                    buf += chunk
                    last_byte = time.monotonic()
                    self.stats.bytes_in += len(chunk)
        except (serial.SerialException, OSError, termios.error) as exc:
            raise LinkError(f"DL/T 645 link {self.url} failed: {exc}") from None
        finally:
            self._last_io = time.monotonic()
        return bytes(buf)

    def _exchange_went_through(self) -> None:
        """The port carried an exchange (a meter's silence is not the port's fault)."""
        self._exchanged_since_open = True
        if self.backoff.failures:
            self.backoff.succeeded()

    def _request_blocking(
        self, frame: Frame, wire: bytes, attempts: int, abandoned: threading.Event
    ) -> Frame | DriverError:
        """One request with its retries, on the link thread: the reply, or the last attempt's error.

        The only retry loop of the link (``request`` is a batch of one).  The backoff waits here, on
        the link thread, so the event loop stays free and the bus stays ours between attempts; it
        ends early, with no more attempts, when the caller was cancelled (``abandoned``): a stopping
        gateway should not wait for a dead meter's retries."""
        self.stats.requests += 1
        error: DriverError | None = None
        for attempt in range(attempts):
            if attempt and abandoned.wait(self.backoff_s * 2 ** (attempt - 1)):
                break
            try:
                reply = self._exchange(frame, wire, expect_reply=True)
                assert reply is not None
                return reply
            except MeterTimeout as exc:
                self.stats.timeouts += 1
                error = exc
            except BadFrame as exc:
                self.stats.bad_frames += 1
                error = exc
        assert error is not None
        return error

    def _exchange(self, request: Frame, wire: bytes, *, expect_reply: bool) -> Frame | None:
        """Blocking: one write and (optionally) one reply, on the executor thread."""
        ser = self._serial
        if ser is None:
            raise LinkError(f"DL/T 645 link {self.url} is not open")
        self.stats.attempts += 1
        gap = self._last_io + self.inter_frame_gap_s - time.monotonic()
        if gap > 0:
            time.sleep(gap)  # bus turnaround: meters need a quiet line before the next request
        try:
            ser.reset_input_buffer()
            self._write(ser, wire)
            ser.flush()
            self.stats.bytes_out += len(wire)
            if not expect_reply:
                return None
            return self._receive(ser, request)
        except (serial.SerialException, OSError, termios.error) as exc:
            raise LinkError(f"DL/T 645 link {self.url} failed: {exc}") from None
        finally:
            self._last_io = time.monotonic()

    def _write(self, ser: Any, wire: bytes) -> None:
        """The request onto the line.  Where the port's descriptor never blocks (``_fd``), one
        ``os.write`` puts a frame of a few dozen bytes into the kernel's buffer whole; pyserial's
        write around it (a timeout object and a wait for room per call) cost more than the frame.
        What the kernel does not take at once goes through pyserial's write, which waits for room."""
        if self._fd is None:
            ser.write(wire)
            return
        try:
            sent = os.write(self._fd, wire)
        except BlockingIOError:
            sent = 0
        if sent < len(wire):
            ser.write(wire[sent:])

    def _matches(self, request: Frame, reply: Frame) -> bool:
        if not (
            reply.is_reply
            and reply.function == request.function
            and (reply.address == request.address or address_matches(request.address, reply.address))
        ):
            return False
        # A late reply to an earlier read of another DI must not pass for this one's.
        di_len = _ECHOED_DI.get(request.function, 0)
        return reply.is_abnormal or reply.data[:di_len] == request.data[:di_len]

    @staticmethod
    def _wait_readable(ser: Any, seconds: float) -> bool:
        """Sleep until the line has a byte (one wake-up instead of polling every ``POLL_S``).

        False when nothing came.  Ports without a selectable descriptor fall back to polling reads."""
        try:
            ready, _, _ = select.select([ser.fileno()], [], [], max(0.0, seconds))
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return True
        return bool(ready)

    def _take(self, ser: Any, want: int) -> bytes:
        """What the line holds now, after ``_wait_readable`` said something is there."""
        if self._fd is None:
            # Ask for what the frame still needs: in_waiting is exact on a tty but only 0/1 on socket://.
            return bytes(ser.read(max(1, ser.in_waiting, want)))
        try:
            data = os.read(self._fd, 4096)  # everything that has arrived, in one system call
        except BlockingIOError:
            return b""
        if not data:
            raise LinkError(f"DL/T 645 link {self.url}: the other end closed the connection")
        return data

    @staticmethod
    def _missing_bytes(buf: bytearray) -> int:
        """Bytes still to come for a plausible frame at the start of ``buf`` (0 when it is noise, which
        the resync will drop): ``68 A0..A5 68 C L`` with L within what a reply may carry."""
        if not buf or buf[0] != 0x68:
            return 0
        if len(buf) < 8:
            return 12 - len(buf)
        if buf[7] != 0x68:
            return 0
        if len(buf) < 10:
            return 12 - len(buf)
        return max(0, 12 + min(buf[9], MAX_REPLY_DATA) - len(buf))

    def _receive(self, ser: Any, request: Frame) -> Frame:
        reply_key = (
            request.address,
            request.control,
            bytes(request.data[: _ECHOED_DI.get(request.function, 0)]),
        )
        expected = self._reply_bytes.get(reply_key, 0)
        start = time.monotonic()
        deadline = start + self.timeout_s
        # A frame that has started may finish after the response timeout: allow the longest frame.
        hard_deadline = deadline + (12 + 255) * self.byte_time_s
        buf = bytearray()
        received = 0
        skipped: list[str] = []
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            want = self._missing_bytes(buf)
            if not buf or self._fd is not None:
                if not self._wait_readable(ser, deadline - now):
                    continue
                if received == 0 and expected > 1:
                    # The reply has begun and cannot arrive faster than the line: wait for all of it
                    # (as long as it was last time) and take it in one read, rather than wake for the
                    # preamble, the header and the rest.  Each wake-up costs more CPU than the frame.
                    time.sleep(
                        max(0.0, min((expected - 1) * self.byte_time_s, hard_deadline - time.monotonic()))
                    )
                    want = expected
            chunk = self._take(ser, want)
            if not chunk:
                continue
            received += len(chunk)
            self.stats.bytes_in += len(chunk)
            buf += chunk
            while True:
                result = scan(bytes(buf))
                if result.frame is None:
                    del buf[: result.end]
                    if result.pending and len(buf) >= 10:
                        finish = time.monotonic() + (12 + buf[9] - len(buf)) * self.byte_time_s + 0.05
                        deadline = min(max(deadline, finish), hard_deadline)
                    break
                del buf[: result.end]
                if self._matches(request, result.frame):
                    if not skipped and not buf:
                        self._reply_bytes[reply_key] = received
                    return result.frame
                self.stats.frames_skipped += 1
                kind = "reply" if result.frame.is_reply else "request/echo"
                skipped.append(f"{kind} C={result.frame.control:02X} from {result.frame.address}")
            # Bytes trickle in at the line rate and cannot come faster: rather than wake for each one
            # (dozens of reads, each re-scanning the buffer), wait the time the rest of the frame needs.
            missing = self._missing_bytes(buf)
            if missing > 1:
                time.sleep(max(0.0, min(missing * self.byte_time_s, deadline - time.monotonic())))
        waited = time.monotonic() - start
        if received == 0:
            raise MeterTimeout(f"meter {request.address}: no answer within {waited:.2f} s on {self.url}")
        detail = f"; skipped {', '.join(skipped[:3])}" if skipped else ""
        raise BadFrame(
            f"meter {request.address}: no valid reply in {received} bytes within {waited:.2f} s on {self.url}{detail}"
        )
