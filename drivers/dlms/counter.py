"""The client's HLS-GMAC invocation counter for one meter: never used twice, across associations,
retries and restarts.

Every ciphered APDU carries the sender's invocation counter, and with the system title it is the
AES-GCM nonce (IEC 62056-5-3, "Security"): a meter refuses an APDU whose counter is not above the
last one it accepted from that client, so a client that starts at 0 in every association is refused
from its second association on.  Head-ends do two things, and so does this module, taking the
larger of the two:

- **the meter's own word**: before the first HLS association (and after a refused one) the public
  client reads the meter's invocation counter object for the client's key set (class 1 Data,
  0.0.43.1.x.255, IEC 62056-6-1; the driver reads the configured code) and starts above it.  It
  survives our disk being lost or another head-end having used the client, but costs an extra
  association and needs the meter to let the public client read it;
- **our own record**, a file next to the key file: survives a restart and works with a meter that
  hides the object.  Before an association it already holds the end of the block of counters the
  association may use (``MARGIN`` each attempt), written atomically (temporary file, fsync, rename,
  fsync of the directory), so a kill at any moment leaves a value above every counter sent.  A
  block not used up is skipped: at one conversation a minute the 32-bit counter lasts decades.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

from drivers.base import MeterRefused

MAX_COUNTER = 2**32 - 1  # 4 octets (IEC 62056-5-3)
MARGIN = 64  # counters one association may use: AARQ, HLS answer, every request, RLRQ (a full read: ~25)
DEFAULT_OBIS = "0.0.43.1.0.255"
_OBIS = re.compile(r"0\.0\.43\.1\.([0-9]{1,3})\.255")


class CounterError(MeterRefused):
    """No counter is safe to use (the file unreadable or unwritable, the counter spent): the gateway
    refuses to associate rather than risk a reused nonce; ``str()`` is one line."""


def check_counter_obis(text: str) -> str:
    """``text`` if it names an invocation counter object (0.0.43.1.x.255, x 0–255, or ``none`` for a
    meter whose public client cannot read it), else ``ValueError`` in one line."""
    if text == "none":
        return text
    m = _OBIS.fullmatch(text)
    if m is None or int(m.group(1)) > 255:
        raise ValueError(
            f"invocation_counter {text!r} is not an invocation counter object: expected 0.0.43.1.x.255 "
            "(x: the key set, 0–255) or \"none\""
        )
    return text


class CounterFile:
    """The next counter that is safe to use, as a decimal line in one file; only ever raised."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int:
        try:
            text = self.path.read_text(encoding="ascii")
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            raise CounterError(f"{self.path}: cannot read the invocation counter ({type(exc).__name__})") from None
        value = text.strip()
        if not value.isdigit() or int(value) > MAX_COUNTER + 1:
            raise CounterError(f"{self.path}: not an invocation counter (a whole number up to {MAX_COUNTER + 1})")
        return int(value)

    def save(self, value: int) -> None:
        """Atomically: a reader (or a restart after a kill) sees the old value or the new, never less."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, f"{value}\n".encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the rename itself survives a power cut
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise CounterError(f"{self.path}: cannot record the invocation counter ({exc.strerror})") from None


def counter_path(key_file: str | Path, where: str, client: int) -> Path:
    """The counter file for one meter and client, next to the meter's key file: one per key file,
    line (``where``: the link's URL and the meter's address) and client."""
    key = Path(key_file)
    tag = re.sub(r"[^A-Za-z0-9.]+", "_", where).strip("_")
    return key.with_name(f"{key.name}.ic-{tag}-c{client}")


class ClientCounter:
    """One meter's client counter: ``block`` before a conversation, ``saw_meter`` after reading the
    meter's object, ``used`` after a conversation that went further than its margin."""

    def __init__(self, store: CounterFile | None, margin: int = MARGIN) -> None:
        self.store = store
        self.margin = margin
        self._next: int | None = None  # the next counter no association has had (None: not loaded)
        self.meter_floor = 0  # above the meter's last accepted counter, as last read
        self.meter_read = False
        self.last_start: int | None = None  # where the last attempt began
        self._high_water = 0  # above every counter an attempt reported using
        self._lock = threading.Lock()  # the meter's conversations run on its link's thread

    @property
    def next(self) -> int:
        with self._lock:
            return self._loaded()

    def _loaded(self) -> int:
        if self._next is None:
            self._next = self.store.load() if self.store is not None else 0
        return self._next

    def saw_meter(self, last_accepted: int) -> None:
        """The meter says the last counter it accepted from this client was ``last_accepted``."""
        with self._lock:
            self.meter_floor = max(self.meter_floor, last_accepted + 1)
            self.meter_read = True

    def block(self, attempts: int) -> Callable[[], int]:
        """Reserve ``attempts`` associations' worth of counters (recorded before any is used) and
        return what hands each attempt its first counter.

        An attempt starts at the next counter of the block or above the highest counter any earlier
        attempt reported using (``used``), whichever is larger: a retry after an attempt that went
        past its share never repeats a counter (the same counter under the same key is the same
        GCM nonce).  Past the reserved end, the new end is recorded before the attempt starts."""
        with self._lock:
            start = max(self._loaded(), self.meter_floor, self._high_water)
            end = start + attempts * self.margin
            self._reserve(start, end)
        planned = iter(range(start, end, self.margin))

        def first() -> int:
            at = next(planned, None)
            if at is None:
                raise CounterError(f"more association attempts than the {attempts} reserved")
            with self._lock:
                at = max(at, self._high_water, self.meter_floor)
                if at + self.margin > self._loaded():
                    self._reserve(at, at + self.margin)
                self.last_start = at
            return at

        return first

    def _reserve(self, start: int, end: int) -> None:
        """Record ``end`` (exclusive) as the first counter not yet handed out; the lock is held."""
        if end > MAX_COUNTER:
            raise CounterError(
                f"the invocation counter is spent ({start} of {MAX_COUNTER}): the meter's keys must be changed"
            )
        if self.store is not None:
            self.store.save(end)
        self._next = end
        self.last_start = start

    def used(self, next_free: int) -> None:
        """An association went on to ``next_free`` (its next unused counter): if that is past the
        block, record it too, so that nothing used is ever above the record."""
        with self._lock:
            self._high_water = max(self._high_water, next_free)
            if next_free > self._loaded():
                if self.store is not None:
                    self.store.save(next_free)
                self._next = next_free
