"""One DLMS line: HDLC on a serial line (any pyserial URL) or the TCP wrapper, one conversation at a time.

A DLMS read is a conversation, not a request: open the HDLC link (SNRM/UA), associate (AARQ/AARE,
with a password or the HLS-GMAC exchange), GET/SET/ACTION, then leave (DISC on HDLC, RLRQ on the
wrapper).  ``converse`` runs one whole conversation on the link's own thread under the link's lock,
so no other meter's frames can slip in between, and maps every failure to the driver's typed errors:
silence is ``MeterTimeout``; bytes that never made a valid frame (a bad FCS, garbage) ``BadFrame``; an
association or a request the meter rejected ``MeterRefused``; a port that failed ``LinkError`` (and
the port is reopened on the schedule of ``drivers.backoff``, as the other links do).

The frames, APDUs and ciphering are the ``dlms-cosem`` library's (its sans-I/O HDLC and DLMS state
machines); this module only moves their bytes over the port, with the timeouts.

``opening = "iec62056-21"`` (a bus setting: it sets the line's speed) starts every conversation with
the IEC 62056-21 mode E opening that optical ports and some serial lines need: the sign-on ``/?!`` CR LF
at 300 baud 7E1, the meter's identification ``/XXXZ\\2…`` (``Z`` its baud, ``\\2`` mode E: HDLC), the
acknowledgement ``ACK 2 Z 2`` CR LF, then HDLC at ``Z`` baud 8N1 (``_ModeE``).

URLs: ``tcp://host[:port]`` is the DLMS/COSEM TCP wrapper (IEC 62056-9-7, port 4059 by default);
anything else is a pyserial URL carrying HDLC (IEC 62056-46): ``/dev/ttyUSB0``, ``socket://host:port``
(a serial device server), ``rfc2217://``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import termios
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import serial
from dlms_cosem import cosem, enumerations, exceptions
from dlms_cosem import security as cosem_security
from dlms_cosem.client import ActionError, DataResultError, DlmsClient, HLSError
from dlms_cosem.cosem import Obis
from dlms_cosem.io import HdlcTransport, TcpTransport

from drivers.backoff import Backoff
from drivers.base import BadFrame, DriverError, LinkError, MeterRefused, MeterTimeout
from drivers.dlms.keys import DlmsSecurity
from drivers.dlms.opening import OPENINGS, open_mode_e

TCP_PORT = 4059  # IEC 62056-9-7: the DLMS/COSEM wrapper's registered port
POLL_S = 0.01
_PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}
PORT_ERRORS: tuple[type[BaseException], ...] = (serial.SerialException, OSError, ValueError, termios.error)

log = logging.getLogger("pmg.link")
T = TypeVar("T")


@dataclass
class LinkStats:
    """Counters for the technician, the metrics and the bench."""

    conversations: int = 0
    attempts: int = 0
    timeouts: int = 0
    bad_frames: int = 0
    refusals: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    link_errors: int = 0
    reopens: int = 0
    unanswered_goodbyes: int = 0  # DISC/RLRQ without a valid answer: each cost a timeout
    openings: int = 0  # IEC 62056-21 mode E openings completed
    last_link_error: str | None = None


@dataclass(frozen=True)
class Target:
    """Who to talk to on the line: the server's logical device (SAP) and HDLC physical address, and how."""

    logical: int = 1
    physical: int | None = None  # HDLC lower address; None on the TCP wrapper
    security: DlmsSecurity = field(default_factory=DlmsSecurity)

    def __post_init__(self) -> None:
        if not 0 <= self.logical <= 0x3FFF:
            raise ValueError(f"logical device must be 0–16383 (got {self.logical})")
        if self.physical is not None and not 0 <= self.physical <= 0x3FFF:
            raise ValueError(f"HDLC physical address must be 0–16383 (got {self.physical})")

    def __str__(self) -> str:
        return f"{self.logical}/{self.physical}" if self.physical is not None else str(self.logical)


class _Silence(MeterTimeout):
    """No (more) bytes within the timeout: raised inside a conversation, judged by ``_translate``."""


def _parse_tcp(url: str) -> tuple[str, int] | None:
    if not url.startswith("tcp://"):
        return None
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"DLMS TCP url {url!r} has no host (expected tcp://host:port)")
    try:
        return parts.hostname, parts.port or TCP_PORT
    except ValueError:
        raise ValueError(f"DLMS TCP url {url!r} has a bad port") from None


class _PortIO:
    """``dlms-cosem``'s I/O interface over an open pyserial port, with the link's timeouts.

    A reply must start within ``timeout_s`` of the request, may not pause longer than ``timeout_s``
    between bytes, and must be complete within four times ``timeout_s``: a meter that dribbles bytes
    forever is a timeout, not a hung bus."""

    def __init__(self, link: DlmsLink, ser: Any) -> None:
        self.link = link
        self.ser = ser
        self.buf = bytearray()
        self.started = 0.0
        self.last_byte = 0.0
        self.got_since_send = 0

    def connect(self) -> None:
        """The port belongs to the link: nothing to open."""

    def disconnect(self) -> None:
        """The port belongs to the link: nothing to close."""

    def send(self, data: bytes) -> None:
        gap = self.link.inter_frame_gap_s
        if gap:
            time.sleep(gap)
        try:
            self.ser.write(bytes(data))
            self.ser.flush()
        except PORT_ERRORS as exc:
            raise LinkError(f"DLMS link {self.link.url}: write failed: {exc}") from None
        self.link.stats.bytes_out += len(data)
        self.started = self.last_byte = self.link.monotonic()
        self.got_since_send = 0

    def _fill(self) -> None:
        now = self.link.monotonic()
        t = self.link.timeout_s
        if now - self.last_byte > t or now - self.started > 4 * t:
            raise _Silence(f"no answer within {t:g} s")
        try:
            waiting = self.ser.in_waiting
            chunk = self.ser.read(max(1, min(int(waiting), 4096)))
        except PORT_ERRORS as exc:
            raise LinkError(f"DLMS link {self.link.url}: read failed: {exc}") from None
        if chunk:
            self.buf += chunk
            self.got_since_send += len(chunk)
            self.link.stats.bytes_in += len(chunk)
            self.last_byte = self.link.monotonic()

    def recv(self, amount: int = 1) -> bytes:
        while len(self.buf) < amount:
            self._fill()
        out = bytes(self.buf[:amount])
        del self.buf[:amount]
        return out

    def recv_until(self, end: bytes) -> bytes:
        while True:
            at = self.buf.find(end)
            if at >= 0:
                out = bytes(self.buf[: at + len(end)])
                del self.buf[: at + len(end)]
                return out
            self._fill()


class Session:
    """The services of one association, used by a conversation's ``work`` on the link's thread."""

    def __init__(self, client: DlmsClient, where: str) -> None:
        self.client = client
        self.where = where

    def get(self, interface: int, obis: str, attribute: int) -> bytes:
        """The attribute's A-XDR data; ``MeterRefused`` when the meter answers with an access error."""
        attr = cosem.CosemAttribute(enumerations.CosemInterface(interface), Obis.from_string(obis), attribute)
        try:
            return bytes(self.client.get(attr))
        except DataResultError as exc:
            raise MeterRefused(f"{self.where}: GET {obis} attribute {attribute} refused ({_reason(exc)})") from None

    def set(self, interface: int, obis: str, attribute: int, data: bytes) -> None:
        attr = cosem.CosemAttribute(enumerations.CosemInterface(interface), Obis.from_string(obis), attribute)
        response = self.client.set(attr, data)
        result = getattr(response, "result", None)
        if result is not None and int(result) != 0:
            raise MeterRefused(f"{self.where}: SET {obis} attribute {attribute} refused ({result!r})")

    def action(self, interface: int, obis: str, method: int, data: bytes) -> None:
        meth = cosem.CosemMethod(enumerations.CosemInterface(interface), Obis.from_string(obis), method)
        try:
            self.client.action(meth, data)
        except ActionError as exc:
            raise MeterRefused(f"{self.where}: ACTION {obis} method {method} refused ({exc})") from None


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text.rsplit(":", 1)[-1].strip(" <>") or type(exc).__name__


def _authentication(sec: DlmsSecurity) -> Any:
    if sec.auth == "low":
        return cosem_security.LowLevelSecurityAuthentication(secret=sec.password)
    if sec.auth == "hls-gmac":
        return cosem_security.HighLevelSecurityGmacAuthentication(challenge_length=32)
    return cosem_security.NoSecurityAuthentication()


class DlmsLink:
    """A DLMS client on one line (an HDLC bus or one TCP wrapper connection)."""

    def __init__(
        self,
        url: str,
        *,
        baud: int = 9600,
        parity: str = "N",
        timeout_s: float = 1.0,
        retries: int = 2,
        inter_frame_gap_s: float = 0.0,
        opening: str = "none",
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if parity not in _PARITIES:
            raise ValueError(f"parity must be one of N, E, O, got {parity!r}")
        if baud <= 0 or timeout_s <= 0 or retries < 0 or inter_frame_gap_s < 0:
            raise ValueError(
                f"invalid link settings: baud={baud} timeout_s={timeout_s} retries={retries} "
                f"inter_frame_gap_s={inter_frame_gap_s}"
            )
        if opening not in OPENINGS:
            raise ValueError(f"opening must be one of {', '.join(OPENINGS)}, got {opening!r}")
        self.url = url
        self.tcp = _parse_tcp(url)
        if opening != "none" and self.tcp is not None:
            raise ValueError(f"the IEC 62056-21 opening is for serial lines, not the TCP wrapper ({url})")
        self.opening = opening
        self.baud = baud
        self.parity = parity
        self.timeout_s = timeout_s
        self.retries = retries
        self.inter_frame_gap_s = inter_frame_gap_s
        self.monotonic = monotonic
        self.stats = LinkStats()
        self.backoff = Backoff(monotonic=monotonic, rng=rng or random.Random())
        self._serial: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()
        self._wanted = False
        self._reopen_requested = False
        self._exchanged_since_open = False

    def __repr__(self) -> str:
        return f"DlmsLink({self.url!r})"

    @property
    def wrapper(self) -> bool:
        """True on the TCP wrapper (no HDLC addresses), False for HDLC."""
        return self.tcp is not None

    # -- lifecycle ----------------------------------------------------------------------------------
    @property
    def down(self) -> bool:
        return self._wanted and self._serial is None

    async def open(self) -> None:
        """Open the port; ``LinkError`` (and the link left closed) when it cannot be opened."""
        if self._serial is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlms-link")
        try:
            self._serial = await self._run(self._open_blocking)
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
        self._reopen_requested = True
        self.backoff.reset()

    def _open_blocking(self) -> Any:
        url = f"socket://{self.tcp[0]}:{self.tcp[1]}" if self.tcp is not None else self.url
        try:
            return serial.serial_for_url(
                url,
                baudrate=self.baud,
                parity=_PARITIES[self.parity],
                bytesize=serial.EIGHTBITS,
                stopbits=serial.STOPBITS_ONE,
                timeout=POLL_S,
                write_timeout=None if url.startswith("rfc2217://") else 5.0,
            )
        except PORT_ERRORS as exc:
            raise LinkError(f"cannot open DLMS link {self.url}: {exc}") from None

    async def _ensure_port(self) -> None:
        if not self._wanted or self._executor is None:
            raise LinkError(f"DLMS link {self.url} is not open")
        if self._reopen_requested:
            self._reopen_requested = False
            await self._drop_port()
        if self._serial is not None:
            return
        if not self.backoff.due():
            raise LinkError(
                f"DLMS link {self.url} is down ({self.stats.last_link_error}); "
                f"next reopen in {self.backoff.wait_s():.1f} s"
            )
        try:
            self._serial = await self._run(self._open_blocking)
        except LinkError as exc:
            self.stats.link_errors += 1
            self.stats.last_link_error = str(exc)
            delay = self.backoff.failed()
            log.warning("link=%s reopen failed: %s; next try in %.1f s", self.url, exc, delay)
            raise
        self._exchanged_since_open = False
        self.stats.reopens += 1
        log.warning("link=%s reopened", self.url)

    async def _drop_port(self) -> None:
        ser, self._serial = self._serial, None
        if ser is not None and self._executor is not None:

            def close_quietly() -> None:
                try:
                    ser.close()
                except Exception:  # a dead port may fail to close; it is forgotten either way
                    pass

            await asyncio.get_running_loop().run_in_executor(self._executor, close_quietly)

    async def _port_failed(self, exc: LinkError) -> None:
        await self._drop_port()
        self.stats.link_errors += 1
        self.stats.last_link_error = str(exc)
        if self._exchanged_since_open:
            self.backoff.succeeded()
            log.warning("link=%s dropped: %s; reopening on the next request", self.url, exc)
        else:
            delay = self.backoff.failed()
            log.warning("link=%s dropped: %s; next try in %.1f s", self.url, exc, delay)

    async def close(self) -> None:
        async with self._lock:
            self._wanted = False
            ser, self._serial = self._serial, None
            executor, self._executor = self._executor, None
            if executor is None:
                return
            if ser is not None:
                await asyncio.get_running_loop().run_in_executor(executor, ser.close)
            executor.shutdown(wait=True)

    async def __aenter__(self) -> DlmsLink:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise LinkError(f"DLMS link {self.url} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # -- conversations ------------------------------------------------------------------------------
    async def converse(self, target: Target, work: Callable[[Session], T], *, retries: int | None = None) -> T:
        """Run ``work`` inside one association with ``target``; retried whole on silence or a bad frame.

        ``work`` runs on the link's thread and must only use the ``Session`` it is given.  A refusal
        is not retried (the meter will refuse again); a port failure drops the port (``LinkError``)."""
        tries = (self.retries if retries is None else retries) + 1
        async with self._lock:
            await self._ensure_port()
            self.stats.conversations += 1
            try:
                result = await self._run(lambda: self._converse_blocking(target, work, tries))
            except LinkError as exc:
                await self._port_failed(exc)
                raise
            self._exchanged_since_open = True
            self.backoff.succeeded()
            return result

    def _converse_blocking(self, target: Target, work: Callable[[Session], T], tries: int) -> T:
        last: DriverError | None = None
        for _ in range(tries):
            self.stats.attempts += 1
            try:
                return self._once(target, work)
            except MeterTimeout as exc:
                self.stats.timeouts += 1
                last = exc
            except BadFrame as exc:
                self.stats.bad_frames += 1
                last = exc
            except MeterRefused:
                self.stats.refusals += 1
                raise
        assert last is not None
        raise last

    def _once(self, target: Target, work: Callable[[Session], T]) -> T:
        where = f"DLMS meter {target}"
        io = _PortIO(self, self._serial)
        try:
            self._serial.reset_input_buffer()
        except PORT_ERRORS as exc:
            raise LinkError(f"DLMS link {self.url}: {exc}") from None
        if self.opening == "iec62056-21":
            opened = open_mode_e(self._serial, where, wait_s=self.timeout_s, monotonic=self.monotonic)
            self.stats.bytes_out += opened.sent
            self.stats.bytes_in += opened.received
            self.stats.openings += 1
        sec = target.security
        transport: Any
        if self.tcp is not None:
            transport = TcpTransport(
                client_logical_address=sec.client, server_logical_address=target.logical, io=io,
                timeout=int(self.timeout_s) + 1,
            )
        else:
            transport = HdlcTransport(
                client_logical_address=sec.client,
                server_logical_address=target.logical,
                server_physical_address=target.physical,
                io=io,
                timeout=int(self.timeout_s) + 1,
            )
        hls = sec.auth == "hls-gmac"
        client = DlmsClient(
            transport=transport,
            authentication=_authentication(sec),
            encryption_key=sec.encryption_key if hls else None,
            authentication_key=sec.authentication_key if hls else None,
            security_suite=0,
            client_system_title=sec.system_title if hls else None,
            client_initial_invocation_counter=sec.first_invocation_counter(),
        )
        try:
            transport.connect()
            try:
                client.associate()
            except exceptions.DlmsClientException:
                raise MeterRefused(f"{where}: association refused (wrong client, password or key?)") from None
            except HLSError:
                raise MeterRefused(f"{where}: HLS authentication failed (wrong key?)") from None
            result = work(Session(client, where))
            self._leave(client, transport)
            return result
        except DriverError as exc:
            if isinstance(exc, MeterTimeout) and io.got_since_send:
                raise BadFrame(f"{where}: {io.got_since_send} byte(s) arrived but no valid frame (bad FCS?)") from None
            if isinstance(exc, MeterTimeout):
                raise MeterTimeout(f"{where}: {exc}") from None
            raise
        except Exception as exc:  # anything the codec raised on what came back is a bad frame
            raise BadFrame(f"{where}: unusable reply ({type(exc).__name__})") from None

    def _leave(self, client: DlmsClient, transport: Any) -> None:
        """End the association: DISC on HDLC (it ends the association too), RLRQ on the wrapper.

        The work is done: a meter that does not answer the goodbye costs its timeout, not the result."""
        try:
            if self.tcp is not None:
                client.release_association()
            else:
                transport.disconnect()
        except LinkError:
            raise
        except Exception:
            self.stats.unanswered_goodbyes += 1
