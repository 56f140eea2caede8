"""Find every DL/T 645 meter on a shared bus without knowing their addresses (a collision-aware search).

DL/T 645-2007 §4.1.2 (abbreviated addressing, 缩位寻址): a read request may give only the low digit
pairs of an address and fill the high pairs with the wildcard ``AA``; every meter whose low pairs match
answers, with its real address in the reply.  On a shared RS-485 line several such answers collide.  So
the search walks the address from its least significant pair, as concentrators do, and judges what the
line carried during a listening window after each probe (``classify``):

- nothing: no meter has these low pairs;
- exactly one valid reply and nothing else: one meter — confirmed by reading its full address, which is
  also how it is identified (``identify``);
- anything else — a broken frame (bad checksum, overlapping bytes) or two valid replies one after the
  other: more than one meter; the next pair is fixed, 00..99, and each is asked in turn.

The wildcard covers a whole byte (two digits), so a level splits into 100 probes; a bus whose meters
differ in their last two digits is resolved at the first level (1 + 100 probes).  A valid reply from an
address the probe did not name is a meter that answered a previous probe late: it is kept and confirmed
at the end at the link's configured timeout.  Two meters with one address collide even when asked by
their full address: the search reports the address as a suspect (or a noisy line) instead of a meter.

Residual risk, stated in docs/sources/protocols.md: colliding bytes that happen to form a valid frame
naming a real meter of the same branch would hide the other meters of that branch.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drivers.base import BadFrame, MeterTimeout
from drivers.dlt645 import commands
from drivers.dlt645 import di as dis
from drivers.dlt645.frame import (
    WAKEUP,
    Dlt645Refused,
    Frame,
    FrameError,
    address_matches,
    check_address,
    scan,
)
from drivers.dlt645.link import Dlt645Link
from drivers.dlt645.meter import Dlt645Meter

PAIRS = 6  # an address is six BCD bytes
DEFAULT_WINDOW_S = 0.3  # listening window after a probe; DL/T 645-2007 allows a meter up to 500 ms
SUSPECT_RETRIES = 2  # a full address that keeps colliding: two meters share it, or the line is noisy

METER_TYPES = {0: "not prepaid", 1: "energy prepaid", 2: "money prepaid"}  # status word 3, bits 8-9


class Heard(enum.Enum):
    SILENCE = "silence"
    ONE = "one"
    MANY = "many"


@dataclass(frozen=True)
class Judgement:
    """What one probe's listening window carried."""

    outcome: Heard
    address: str | None = None  # ONE: the meter that answered
    strays: tuple[str, ...] = ()  # valid replies from addresses the probe did not name (late answers)


def pattern(low_pairs: tuple[int, ...]) -> str:
    """The request address for known low pairs (least significant first), ``AA`` above them.

    ``(61, 1)`` → ``"AAAAAAAA0161"``: meters ending in …0161 answer."""
    if len(low_pairs) > PAIRS or any(not 0 <= p <= 99 for p in low_pairs):
        raise ValueError(f"not a DL/T 645 address prefix: {low_pairs}")
    return "AA" * (PAIRS - len(low_pairs)) + "".join(f"{p:02d}" for p in reversed(low_pairs))


def probe_request(address: str) -> Frame:
    """The probe: read the communication address (04000401).  A meter without that DI still answers
    (an abnormal reply carries its address too)."""
    return commands.read_request(address, dis.COMM_ADDRESS)


def classify(heard: bytes, request: Frame) -> Judgement:
    """Judge the bytes of one listening window (pure).

    Wake-up ``FE`` bytes and an echo of our own request (some RS-485 adapters echo) are not answers.
    Any other byte outside a valid frame means replies overlapped or broke: more than one meter."""
    answers: list[str] = []
    strays: list[str] = []
    garbled = False
    buf = heard
    while buf:
        result = scan(buf)
        frame = result.frame
        if frame is None:
            garbled = garbled or any(b != WAKEUP for b in buf)
            break
        start = result.end - (12 + len(frame.data))
        garbled = garbled or any(b != WAKEUP for b in buf[:start])
        buf = buf[result.end :]
        if not frame.is_reply:
            continue  # our own request echoed by the adapter
        if frame.function != request.function or "AA" in frame.address:
            garbled = True
        elif address_matches(request.address, frame.address):
            answers.append(frame.address)
        else:
            strays.append(frame.address)
    if garbled or len(answers) > 1:
        return Judgement(Heard.MANY, strays=tuple(strays))
    if answers:
        return Judgement(Heard.ONE, answers[0], tuple(strays))
    return Judgement(Heard.SILENCE, strays=tuple(strays))


@dataclass(frozen=True)
class MeterIdentity:
    """What a found meter says about itself; ``None`` where it has no such data."""

    address: str
    meter_number: str | None = None
    asset_number: str | None = None
    model: str | None = None
    meter_type: str | None = None
    notes: tuple[str, ...] = ()  # fields it answered badly

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "meter_number": self.meter_number,
            "asset_number": self.asset_number,
            "model": self.model,
            "meter_type": self.meter_type,
            "notes": list(self.notes),
        }


async def identify(link: Dlt645Link, address: str) -> MeterIdentity:
    """Read a meter's identity by its full address at the link's configured timeout and retries.

    The communication address must answer (a timeout or a broken frame is raised: the meter is not
    confirmed; a refusal is an answer).  The meter number, asset number, model and the meter type of
    status word 3 are optional: a meter without one answers "no such data" and the field stays
    ``None``; another refusal, a bad value or silence is noted and the rest is still read."""
    meter = Dlt645Meter(link, check_address(address))
    try:
        raw = await meter.read_raw(dis.COMM_ADDRESS)
    except Dlt645Refused:
        raw = b""
    notes: list[str] = []
    if raw and dis.lookup(dis.COMM_ADDRESS).decode(raw) != address:
        notes.append(f"communication address DI reads {raw[::-1].hex()}")

    async def optional(di: int) -> Any:
        fmt = dis.lookup(di)
        try:
            return fmt.decode(await meter.read_raw(di))
        except Dlt645Refused as exc:
            if not exc.no_such_data:
                notes.append(f"{fmt.name}: {exc}")
        except (FrameError, BadFrame, MeterTimeout) as exc:
            notes.append(f"{fmt.name}: {exc}")
        return None

    number = await optional(dis.METER_NUMBER)
    asset = await optional(dis.ASSET_NUMBER)
    model = await optional(dis.METER_MODEL)
    word = await optional(dis.status_word(3))
    meter_type = None
    if isinstance(word, int):
        meter_type = METER_TYPES.get((word >> dis.SW3_METER_TYPE_SHIFT) & 0x3, "reserved")
    return MeterIdentity(
        address,
        meter_number=number if isinstance(number, str) else None,
        asset_number=(asset or None) if isinstance(asset, str) else None,
        model=(model or None) if isinstance(model, str) else None,
        meter_type=meter_type,
        notes=tuple(notes),
    )


@dataclass
class SearchStats:
    probes: int = 0
    silent: int = 0
    clean: int = 0
    collisions: int = 0
    confirmations: int = 0


@dataclass
class SearchResult:
    meters: list[MeterIdentity] = field(default_factory=list)
    suspects: list[str] = field(default_factory=list)  # full addresses whose replies kept colliding
    unconfirmed: list[str] = field(default_factory=list)  # clean once, silent when asked directly
    stats: SearchStats = field(default_factory=SearchStats)
    elapsed_s: float = 0.0

    @property
    def addresses(self) -> list[str]:
        return [m.address for m in self.meters]


Progress = Callable[[int, int, str], None]  # (meters found so far, probes so far, address asked)


async def search(
    link: Dlt645Link,
    *,
    window_s: float = DEFAULT_WINDOW_S,
    progress: Progress | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> SearchResult:
    """Every meter on the bus, identified, in the order found (see the module's docstring).

    ``window_s`` is how long the line is heard after each probe; confirmations and identification use
    the link's own timeout and retries.  A port failure (``LinkError``) is raised."""
    began = monotonic()
    result = SearchResult()
    stats = result.stats
    found: dict[str, MeterIdentity] = {}
    strays: list[str] = []
    todo: list[tuple[int, ...]] = [()]

    async def confirm(address: str) -> bool:
        stats.confirmations += 1
        try:
            found[address] = await identify(link, address)
        except (MeterTimeout, BadFrame):
            return False
        result.meters.append(found[address])
        return True

    while todo:
        prefix = todo.pop()
        request = probe_request(pattern(prefix))
        judgement = classify(await link.listen(request, window_s), request)
        stats.probes += 1
        strays += [a for a in judgement.strays if a not in strays]
        if judgement.outcome is Heard.SILENCE:
            stats.silent += 1
        elif judgement.outcome is Heard.ONE:
            stats.clean += 1
            address = judgement.address
            assert address is not None
            if address not in found and not await confirm(address):
                if len(prefix) < PAIRS:
                    todo += _children(prefix)  # a clean reply nobody stands by: treat it as a collision
                else:
                    result.unconfirmed.append(address)
        else:
            stats.collisions += 1
            if len(prefix) < PAIRS:
                todo += _children(prefix)
            elif not await _settles(link, request, window_s, stats):
                result.suspects.append(pattern(prefix))
            elif pattern(prefix) not in found:
                await confirm(pattern(prefix))
        if progress is not None:
            progress(len(found), stats.probes, request.address)
    for address in strays:
        if address not in found:
            await confirm(address)
            if progress is not None:
                progress(len(found), stats.probes, address)
    result.elapsed_s = monotonic() - began
    return result


def _children(prefix: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The next pair's 100 values, in the order a stack pops them: 00 first."""
    return [(*prefix, p) for p in range(99, -1, -1)]


async def _settles(link: Dlt645Link, request: Frame, window_s: float, stats: SearchStats) -> bool:
    """A full address that collided: ask again; one clean answer means it was noise."""
    for _ in range(SUSPECT_RETRIES):
        stats.probes += 1
        if classify(await link.listen(request, window_s), request).outcome is Heard.ONE:
            return True
    return False


__all__ = [
    "DEFAULT_WINDOW_S",
    "Heard",
    "Judgement",
    "MeterIdentity",
    "SearchResult",
    "SearchStats",
    "classify",
    "identify",
    "pattern",
    "probe_request",
    "search",
]
