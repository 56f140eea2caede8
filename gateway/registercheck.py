"""Can every meter's energy be priced?  ``pmg run --check`` asks before the first reading does.

A reading whose energy the tariff cannot price is quarantined (docs/ledger.md): safe, but a
technician's work on every meter it hits.  Most causes are visible from the configuration alone:

* a meter that counts energy in time-of-use registers (DL/T 645: 费率 1–4, DI 0001 01nn; DL/T
  645-2007 Appendix A) on a tariff version whose register map leaves one of them out — energy the
  meter counts there has no period, hence no price;
* a tariff with no version in force now (its first version starts in the future).

The check is pure: it takes the configuration, the tariff book and the instant, and returns one line
per problem.  It does not read the meters.  A meter with no tariff, or a tariff with no version in
force, can bill nothing: an *error*.  A register the protocol can count but the map leaves out is a
*warning*: a meter programmed with fewer rates never counts energy there (the map "must match how the
meters were programmed"), and one that does is quarantined and alarmed at its first such reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from gateway.config import GatewayConfig
from gateway.tariffs.values import Tariff

# The TOU import registers each protocol's driver reports (``Reading.energy_import_tariffs_wh``):
# the DL/T 645 driver reads T1..T4 (drivers/dlt645/meter.py); no Modbus profile carries any; the
# shipped DLMS profile reads 1.0.1.8.1..4 (drivers/dlms/profiles/generic.toml).
PROTOCOL_REGISTERS: Mapping[str, tuple[str, ...]] = {
    "dlt645": ("T1", "T2", "T3", "T4"), "modbus": (), "dlms": ("T1", "T2", "T3", "T4"),
}


@dataclass(frozen=True)
class Problem:
    severity: Literal["error", "warning"]
    line: str


def register_problems(cfg: GatewayConfig, tariffs: Mapping[str, Tariff], now: datetime) -> list[Problem]:
    """One problem per meter whose energy its tariff could not price, now or in a future version."""
    problems: list[Problem] = []
    for meter in cfg.meters:
        tariff = tariffs.get(meter.tariff)
        if tariff is None:
            problems.append(Problem("error", f"meter '{meter.id}': no tariff '{meter.tariff}'"))
            continue
        current = [v for v in tariff.versions if v.effective_from <= now][-1:]
        if not current:
            problems.append(Problem(
                "error",
                f"meter '{meter.id}': tariff '{tariff.id}' has no version in force now "
                f"(first from {tariff.versions[0].effective_from.isoformat()}); its readings would be quarantined",
            ))
        registers = PROTOCOL_REGISTERS[cfg.bus(meter.bus).protocol]
        for version in [*current, *(v for v in tariff.versions if v.effective_from > now)]:
            mapping = version.tou.register_map if version.tou is not None else {}
            if not mapping or not registers:
                continue  # energy is split by time: every Wh has a price
            unmapped = [r for r in registers if r not in mapping]
            if unmapped:
                problems.append(Problem(
                    "warning",
                    f"meter '{meter.id}': tariff '{tariff.id}' v{version.version} maps registers "
                    f"{', '.join(sorted(mapping))} but the meter can count {', '.join(registers)}; energy in "
                    f"{', '.join(unmapped)} would be quarantined",
                ))
    return problems
