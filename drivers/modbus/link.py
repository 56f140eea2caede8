"""One Modbus bus (an RS-485 line or a Modbus TCP connection) and its single conversation.

A bus is half-duplex: one request in flight, enforced by a lock held from the first byte of a
request to the end of the post-request gap.  RS-485 converters and slow meters need quiet time
between frames and after the unit id changes; both are configurable and applied under the lock,
so no caller can squeeze a request into the gap.  pymodbus errors become the driver's typed errors
(``MeterTimeout``, ``MeterRefused``, ``BadFrame``) with one-line messages naming the unit.

A connection or port that fails is closed and opened again by the link itself, on the schedule of
``drivers.backoff`` (docs/operations.md, "Links that drop"); pymodbus's own background reconnect is
off, so there is one schedule, one count of link errors and no socket reopened behind our back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import termios
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from drivers.backoff import Backoff
from drivers.base import BadFrame, LinkError, MeterRefused, MeterTimeout

READ_REGISTER_FUNCTIONS = (3, 4)
READ_BIT_FUNCTIONS = (1, 2)
WRITE_REGISTER_FUNCTIONS = (6, 16)
WRITE_COIL_FUNCTIONS = (5, 15)

_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


log = logging.getLogger("pmg.link")

Client = AsyncModbusTcpClient | AsyncModbusSerialClient


@dataclass
class LinkStats:
    """Counters a technician or a benchmark reads to judge a bus."""

    requests: int = 0
    timeouts: int = 0
    refusals: int = 0
    bad_frames: int = 0
    foreign_replies: int = 0  # frames from a unit other than the one asked (cross-talk, duplicate ids)
    link_errors: int = 0  # connection/port failures: I/O errors and reopens that did not work
    reopens: int = 0  # the connection was opened again after a failure (or on request)
    last_link_error: str | None = None


def _parse_tcp(url: str) -> tuple[str, int] | None:
    if not url.startswith("tcp://"):
        return None
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"Modbus TCP url {url!r} has no host (expected tcp://host:port)")
    try:
        port = parts.port or 502
    except ValueError:
        raise ValueError(f"Modbus TCP url {url!r} has a bad port") from None
    return parts.hostname, port


class ModbusLink:
    """A Modbus master on one bus.  ``url`` is ``tcp://host:port`` or a pyserial URL/device (RTU)."""

    def __init__(
        self,
        url: str,
        *,
        baud: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        timeout_s: float = 1.0,
        retries: int = 2,
        inter_frame_gap_s: float = 0.0,
        unit_switch_delay_s: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if parity not in ("N", "E", "O"):
            raise ValueError(f"parity must be N, E or O, got {parity!r}")
        if stopbits not in (1, 2):
            raise ValueError(f"stopbits must be 1 or 2, got {stopbits!r}")
        if timeout_s <= 0 or retries < 0 or inter_frame_gap_s < 0 or unit_switch_delay_s < 0:
            raise ValueError("timeout_s must be > 0; retries and delays must be >= 0")
        self.url = url
        self.tcp = _parse_tcp(url)
        self.baud = baud
        self.parity = parity
        self.stopbits = stopbits
        self.timeout_s = timeout_s
        self.retries = retries
        self.inter_frame_gap_s = inter_frame_gap_s
        self.unit_switch_delay_s = unit_switch_delay_s
        self.stats = LinkStats()
        self._monotonic = monotonic
        self._lock = asyncio.Lock()
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._last_unit: int | None = None
        self._quiet_until = 0.0
        self._asked_unit: int | None = None
        self._foreign_unit: int | None = None
        self.backoff = Backoff(monotonic=monotonic, rng=rng or random.Random())
        self._wanted = False
        self._reopen_requested = False
        self._exchanged_since_open = False

    def __repr__(self) -> str:
        return f"ModbusLink({self.url!r})"

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def down(self) -> bool:
        """Held open by its owner but without a working connection (waiting to reopen)."""
        return self._wanted and self._client is None

    async def open(self) -> None:
        """Connect; raises ``LinkError`` when the port or host cannot be reached."""
        if self._client is not None and self._client.connected:
            return
        try:
            await self._connect()
        except LinkError as exc:
            self.stats.link_errors += 1
            self.stats.last_link_error = str(exc)
            raise
        self._wanted = True
        self.backoff.reset()

    def request_reopen(self) -> None:
        """Close and reopen the connection before the next request, whatever the backoff says."""
        self._reopen_requested = True
        self.backoff.reset()

    async def _connect(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        common: dict[str, Any] = {
            "timeout": self.timeout_s,
            "retries": self.retries,
            "reconnect_delay": 0,  # no background reconnect: the link reopens on its own schedule
            "trace_packet": self._trace_packet,
        }
        if self.tcp is not None:
            host, port = self.tcp
            self._client = AsyncModbusTcpClient(host, port=port, framer=FramerType.SOCKET, **common)
        else:
            self._client = AsyncModbusSerialClient(
                self.url, baudrate=self.baud, parity=self.parity, stopbits=self.stopbits, **common
            )
        # pymodbus closes a TCP connection after retries+3 unanswered requests in a row.  Behind a
        # TCP-to-RS-485 gateway that means one dead meter disconnects every meter on the bus, so
        # silence from a unit is never taken as a sign that the connection itself is dead.
        self._client.set_max_no_responses(1 << 30)
        try:
            connected = await self._client.connect()
        except (OSError, ValueError, termios.error, ModbusException) as exc:  # a port that cannot be set up
            connected, why = False, f" ({exc})"
        else:
            why = ""
        if not connected:
            self._client.close()
            self._client = None
            raise LinkError(f"{self.url}: cannot open the bus{why}")
        self._exchanged_since_open = False

    async def _ensure_client(self) -> Client:
        """Under the lock, before a request: reopen a dropped connection when the backoff allows."""
        if not self._wanted:
            raise LinkError(f"{self.url}: link is not open")
        if self._reopen_requested:
            self._reopen_requested = False
            self._drop()
        if self._client is not None:
            return self._client
        if not self.backoff.due():
            raise LinkError(
                f"{self.url}: bus down ({self.stats.last_link_error}); next reopen in {self.backoff.wait_s():.1f} s"
            )
        try:
            await self._connect()
        except LinkError as exc:
            delay = self._count_error(exc)
            log.warning("link=%s reopen failed: %s; next try in %.1f s", self.url, exc, delay)
            raise
        self.stats.reopens += 1
        log.warning("link=%s reopened", self.url)
        assert self._client is not None
        return self._client

    def _count_error(self, exc: BaseException) -> float:
        self.stats.link_errors += 1
        self.stats.last_link_error = str(exc)
        return self.backoff.failed()

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _connection_failed(self, message: str) -> bool:
        """The connection broke during a request: drop it.  True when it may be reopened at once
        (it had carried exchanges: a peer restarted once), False when the backoff now applies."""
        self._drop()
        self.stats.link_errors += 1
        self.stats.last_link_error = message
        if self._exchanged_since_open:
            self.backoff.succeeded()
            log.warning("link=%s dropped: %s; reopening", self.url, message)
            return True
        delay = self.backoff.failed()
        log.warning("link=%s dropped: %s; next try in %.1f s", self.url, message, delay)
        return False

    def _lost_quietly(self, client: Client) -> None:
        """A request timed out and pymodbus noticed the connection is gone meanwhile: drop it now
        rather than let the next request find out."""
        if not client.connected and client is self._client:
            self._connection_failed("connection lost")

    def set_timing(self, timeout_s: float, retries: int) -> None:
        """Change the response timeout and retries from the next request on (``pmg scan`` probes with a
        short timeout, then confirms at the configured one).  pymodbus keeps both in its transaction
        manager; they are set there too when a client exists, and used by any client made later."""
        if timeout_s <= 0 or retries < 0:
            raise ValueError("timeout_s must be > 0 and retries >= 0")
        self.timeout_s, self.retries = timeout_s, retries
        if self._client is not None:
            self._client.ctx.comm_params.timeout_connect = timeout_s
            self._client.ctx.retries = retries

    async def close(self) -> None:
        self._wanted = False
        if self._client is not None:
            self._client.close()
            self._client = None

    async def __aenter__(self) -> ModbusLink:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- requests ------------------------------------------------------------------------------
    async def read_registers(self, unit: int, function: int, address: int, count: int) -> list[int]:
        """FC03 (holding) or FC04 (input) registers."""
        if function not in READ_REGISTER_FUNCTIONS:
            raise ValueError(f"function {function} does not read registers")
        def call(c: Client) -> Awaitable[ModbusPDU]:
            read = c.read_holding_registers if function == 3 else c.read_input_registers
            return read(address, count=count, device_id=unit)

        pdu = await self._transact(unit, function, address, call)
        regs = list(getattr(pdu, "registers", []))
        if len(regs) != count:
            self.stats.bad_frames += 1
            raise BadFrame(f"unit {unit}: FC{function:02d} @{address:#06x} asked {count} registers, got {len(regs)}")
        return regs

    async def read_bits(self, unit: int, function: int, address: int, count: int) -> list[bool]:
        """FC01 (coils) or FC02 (discrete inputs)."""
        if function not in READ_BIT_FUNCTIONS:
            raise ValueError(f"function {function} does not read bits")
        def call(c: Client) -> Awaitable[ModbusPDU]:
            read = c.read_coils if function == 1 else c.read_discrete_inputs
            return read(address, count=count, device_id=unit)

        pdu = await self._transact(unit, function, address, call)
        bits = list(getattr(pdu, "bits", []))
        if len(bits) < count:
            self.stats.bad_frames += 1
            raise BadFrame(f"unit {unit}: FC{function:02d} @{address:#06x} asked {count} bits, got {len(bits)}")
        return [bool(b) for b in bits[:count]]

    async def write_registers(self, unit: int, function: int, address: int, values: Sequence[int]) -> None:
        """FC06 (one register) or FC16 (several); the meter's echo is the acknowledgement."""
        if function == 6:
            if len(values) != 1:
                raise ValueError("FC06 writes exactly one register")
            await self._transact(unit, 6, address, lambda c: c.write_register(address, values[0], device_id=unit))
        elif function == 16:
            await self._transact(
                unit, 16, address, lambda c: c.write_registers(address, list(values), device_id=unit)
            )
        else:
            raise ValueError(f"function {function} does not write registers")

    async def write_coil(self, unit: int, function: int, address: int, value: bool) -> None:
        """FC05 (one coil) or FC15 (coils, here one)."""
        if function == 5:
            await self._transact(unit, 5, address, lambda c: c.write_coil(address, value, device_id=unit))
        elif function == 15:
            await self._transact(unit, 15, address, lambda c: c.write_coils(address, [value], device_id=unit))
        else:
            raise ValueError(f"function {function} does not write coils")

    # -- internals -----------------------------------------------------------------------------
    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """Notice replies from a unit we did not ask (pymodbus drops them silently as a timeout)."""
        if not sending and data and self._asked_unit is not None:
            unit = data[6] if self.tcp is not None and len(data) > 6 else data[0]
            if unit != self._asked_unit:
                self._foreign_unit = unit
        return data

    async def _with_reconnect(self, request: Callable[[Client], Awaitable[ModbusPDU]]) -> ModbusPDU:
        """Send; if the connection was lost (gateway restart, cable) after it had worked, reopen once
        and resend; otherwise the backoff decides when a later request may reopen it."""
        client = await self._ensure_client()
        try:
            pdu = await request(client)
        except ConnectionException as exc:
            if not self._connection_failed(str(exc)):
                raise
            client = await self._ensure_client()
            try:
                pdu = await request(client)
            except ConnectionException as again:
                self._connection_failed(str(again))
                raise
            except ModbusException:
                self._lost_quietly(client)
                raise
        except ModbusException:
            self._lost_quietly(client)
            raise
        self._exchanged_since_open = True
        if self.backoff.failures:
            self.backoff.succeeded()
        return pdu

    async def _transact(
        self, unit: int, function: int, address: int, request: Callable[[Client], Awaitable[ModbusPDU]]
    ) -> ModbusPDU:
        if not 1 <= unit <= 247:
            raise ValueError(f"unit id {unit} is outside 1..247")
        where = f"unit {unit}: FC{function:02d} @{address:#06x}"
        async with self._lock:
            wait = self._quiet_until - self._monotonic()
            if self._last_unit is not None and unit != self._last_unit:
                wait = max(wait, self.unit_switch_delay_s)
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_unit = unit
            self._asked_unit, self._foreign_unit = unit, None
            self.stats.requests += 1
            try:
                pdu = await self._with_reconnect(request)
            except ConnectionException as exc:
                self.stats.timeouts += 1
                raise LinkError(f"{where}: bus not connected ({exc})") from None
            except ModbusException as exc:
                foreign = self._foreign_unit
                if foreign is not None:
                    self.stats.foreign_replies += 1
                    raise BadFrame(f"{where}: unit {foreign} answered instead") from None
                self.stats.timeouts += 1
                raise MeterTimeout(f"{where}: no answer after {self.retries + 1} tries") from exc
            finally:
                self._asked_unit = None
                self._quiet_until = self._monotonic() + self.inter_frame_gap_s
            if isinstance(pdu, ExceptionResponse) or pdu.isError():
                code = int(getattr(pdu, "exception_code", 0))
                self.stats.refusals += 1
                name = _EXCEPTION_NAMES.get(code, "exception")
                raise MeterRefused(f"{where}: exception {code:#04x} ({name})", code)
            return pdu
