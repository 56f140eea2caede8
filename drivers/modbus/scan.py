"""Find the Modbus units on a bus and name each one's meter model (``pmg scan``).

Two passes, because a unit that is absent costs a whole response timeout and most of 1–247 are absent:

1. probe every unit once, without retries, at a short timeout (a meter answers a one-register read in
   tens of milliseconds: DEFAULT_PROBE_TIMEOUT_S);
2. confirm each candidate at the link's configured timeout and retries, then identify it: a unit is
   taken for the profile whose identifying registers (``Profile.identifying``: the ``[identify]``
   section, or every register the profile reads) all answer; when several profiles match, the one with
   the most identifying registers comes first, and a tie is reported as ambiguous.

Any reply makes a unit a candidate, an exception too (it heard us).  A broken or foreign frame makes
both the unit asked and the one asked before it candidates: a meter slower than the probe timeout
answers during the next probe, and is confirmed rather than lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from drivers.base import BadFrame, MeterRefused, MeterTimeout
from drivers.modbus.link import LinkError, ModbusLink
from drivers.modbus.profile import Profile, RegisterProbe

DEFAULT_PROBE_TIMEOUT_S = 0.15
PROBE = RegisterProbe(function=3, register=0)  # holding register 0: any meter answers, if only to refuse


@dataclass(frozen=True)
class UnitFound:
    """A unit that answered, with the profiles it matches (best first; empty: no known model)."""

    unit: int
    profiles: tuple[str, ...] = ()
    ambiguous: bool = False  # the best two match equally well

    @property
    def profile(self) -> str | None:
        """The model to configure: the one match, or the best unless it is a tie."""
        return self.profiles[0] if self.profiles and not self.ambiguous else None

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "profile": self.profile, "matches": list(self.profiles)}


@dataclass
class ScanStats:
    probed: int = 0
    candidates: int = 0
    confirmed: int = 0
    identify_reads: int = 0


@dataclass
class ScanResult:
    units: list[UnitFound] = field(default_factory=list)
    stats: ScanStats = field(default_factory=ScanStats)
    probe_s: float = 0.0  # the first pass
    elapsed_s: float = 0.0


Progress = Callable[[int, int, int], None]  # (unit just probed, units found so far, units probed so far)


async def answers(link: ModbusLink, unit: int, probe: RegisterProbe) -> bool | None:
    """True: a normal reply; False: an exception reply (the unit is there, the register is not);
    None: silence or a broken frame."""
    try:
        await link.read_registers(unit, probe.function, probe.address, probe.count)
    except MeterRefused:
        return False
    except (MeterTimeout, BadFrame):
        return None
    return True


def _ranked(profiles: Sequence[Profile]) -> list[Profile]:
    return sorted(profiles, key=lambda p: (-len(p.identifying().present), p.name))


async def identify(
    link: ModbusLink, unit: int, profiles: Sequence[Profile], stats: ScanStats | None = None
) -> UnitFound:
    """Which profiles' identifying registers this unit answers (each register asked once)."""
    seen: dict[tuple[int, int, int], bool | None] = {}

    async def ask(probe: RegisterProbe) -> bool | None:
        if probe.key not in seen:
            if stats is not None:
                stats.identify_reads += 1
            seen[probe.key] = await answers(link, unit, probe)
        return seen[probe.key]

    matches: list[Profile] = []
    for profile in _ranked(profiles):
        spec = profile.identifying()
        ok = True
        for probe in spec.present:
            if await ask(probe) is not True:
                ok = False
                break
        for probe in spec.absent if ok else ():
            if await ask(probe) is not False:
                ok = False
                break
        if ok:
            matches.append(profile)
    tie = len(matches) > 1 and len(matches[0].identifying().present) == len(matches[1].identifying().present)
    return UnitFound(unit, tuple(p.name for p in matches), tie)


async def scan_units(
    link: ModbusLink,
    units: Iterable[int],
    profiles: Sequence[Profile],
    *,
    probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S,
    progress: Progress | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> ScanResult:
    """The units that answer, confirmed and identified, in unit order (see the module's docstring).

    The link's own timeout and retries are the confirmation's; they are restored on return.  A port
    failure (``LinkError``) is raised."""
    began = monotonic()
    result = ScanResult()
    stats = result.stats
    timeout_s, retries = link.timeout_s, link.retries
    candidates: set[int] = set()
    previous: int | None = None
    try:
        link.set_timing(min(probe_timeout_s, timeout_s), 0)
        for unit in units:
            stats.probed += 1
            try:
                await link.read_registers(unit, PROBE.function, PROBE.address, PROBE.count)
                candidates.add(unit)
            except MeterRefused:
                candidates.add(unit)
            except BadFrame:  # garbled, or a slow unit's late answer to the previous probe
                candidates.add(unit)
                if previous is not None:
                    candidates.add(previous)
            except MeterTimeout:
                pass
            previous = unit
            if progress is not None:
                progress(unit, len(candidates), stats.probed)
        result.probe_s = monotonic() - began
        stats.candidates = len(candidates)
        link.set_timing(timeout_s, retries)
        for unit in sorted(candidates):
            if await answers(link, unit, PROBE) is None:
                continue
            stats.confirmed += 1
            link.set_timing(timeout_s, 0)
            result.units.append(await identify(link, unit, profiles, stats))
            link.set_timing(timeout_s, retries)
    finally:
        link.set_timing(timeout_s, retries)
    result.elapsed_s = monotonic() - began
    return result


ProbeSeen = Callable[[int, bool], None]  # (unit, present)


async def scan_single_pass(
    link: ModbusLink, units: Iterable[int], profile: Profile | None = None, progress: ProbeSeen | None = None
) -> list[int]:
    """Unit ids that answer, in the order probed: one pass at the link's timeout (``scan_units``' baseline).

    A unit is present when it replies at all, even with an exception (it heard us and answered).
    With a profile the probe reads the profile's first register (import energy when offered), so
    a found unit is likely that model; without one it reads holding register 0.  A dead unit costs
    the link's full timeout budget, so give the link a short timeout for scanning.
    ``progress(unit, found)`` is called after each probe.
    """
    function, address = 3, 0
    if profile is not None:
        offered = [spec for p in profile.offered() if (spec := profile.point(p)) is not None]
        if offered:
            function, address = offered[0].function, offered[0].address
        elif profile.relay is not None and profile.relay.state.function in (3, 4):
            function, address = profile.relay.state.function, profile.relay.state.address
    found: list[int] = []
    for unit in units:
        try:
            await link.read_registers(unit, function, address, 1)
            present = True
        except MeterRefused:
            present = True
        except (MeterTimeout, BadFrame):
            present = False
        except LinkError:
            raise
        if present:
            found.append(unit)
        if progress is not None:
            progress(unit, present)
    return found
