"""The fleet file: a whole concentrator's simulated meters, and the gateway config that points at them.

A lab describes buses (protocol, how they are served, line speed, how many meters, their load) and a
fault schedule ("at T seconds meter M gets fault F for D seconds") in one strict TOML file; the same
file yields the matching gateway configuration, so the gateway under test and the fleet can never
disagree about addresses, unit ids or line settings.  Unknown keys and dangling references are
one-line ``TomlError``s naming file, line and key, like every other file of the project.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.tomlsource import TomlError, load_model, locate, read_toml
from simulators.model import Fault

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,40}$"


def _example_tariffs() -> Path:
    """The example tariffs shipped as package data of ``gateway.tariffs`` (found by package name, so an
    installed wheel has them too; simulators import nothing of the gateway's code)."""
    return Path(str(resources.files("gateway.tariffs") / "examples"))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FleetBus(_Strict):
    """One simulated line.  DL/T 645 addresses are 12 digits from ``start_address``; Modbus unit ids
    and DLMS HDLC physical addresses are ``start_address`` … ``start_address + meters - 1`` (DLMS meters
    share one HDLC line, ``simulators.dlms_line``; the gateway opens it as a pty or ``socket://``)."""

    id: str = Field(pattern=_ID)
    protocol: Literal["dlt645", "modbus", "dlms"]
    serve: Literal["tcp", "pty"] = "tcp"
    port: int = Field(0, ge=0, le=65535)
    """TCP port to listen on (0: any free port); ignored for ``serve = "pty"``."""
    baud: int = Field(9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "E"
    response_delay_ms: float = Field(20.0, ge=0, le=5000)
    emulate_timing: bool = True
    """Pace replies at the line speed (DL/T 645 on pty or TCP; Modbus RTU on a pty)."""
    meters: int = Field(ge=1, le=999)
    start_address: int = Field(1, ge=1)
    profile: str | None = None
    """Modbus meter profile (a shipped one, ``drivers/modbus/profiles/NAME.toml``, or a path); required for Modbus, refused for DL/T 645."""
    load_w: list[int] = Field(default_factory=lambda: [500], min_length=1, max_length=24)
    """Power drawn while the relay is closed: one value, or 24 values by local hour."""
    vary_load: bool = True
    """Scale each meter's load by a fixed 80–120 % so the meters do not all read alike."""
    poll_interval_s: float = Field(60.0, gt=0, le=86400)
    timeout_s: float = Field(1.0, gt=0, le=30)
    retries: int = Field(2, ge=0, le=10)

    @field_validator("load_w")
    @classmethod
    def _hours(cls, v: list[int]) -> list[int]:
        if len(v) not in (1, 24):
            raise ValueError(f"load_w needs 1 value or 24 (one per hour), got {len(v)}")
        if any(w < 0 or w > 100_000 for w in v):
            raise ValueError("load_w values must be 0..100000 W")
        return v

    @model_validator(mode="after")
    def _protocol_rules(self) -> FleetBus:
        if self.protocol == "modbus":
            if self.profile is None:
                raise ValueError('a Modbus bus needs a profile (e.g. profile = "dds238")')
            if self.start_address + self.meters - 1 > 247:
                raise ValueError(
                    f"Modbus unit ids {self.start_address}..{self.start_address + self.meters - 1} exceed 247"
                )
        elif self.profile is not None:
            raise ValueError("profile applies to Modbus buses only")
        elif self.protocol == "dlms":
            if "parity" not in self.model_fields_set:  # HDLC lines are 8N1 (IEC 62056-46); E is DL/T 645's
                object.__setattr__(self, "parity", "N")
            if self.start_address + self.meters - 1 > 0x3FFD:
                raise ValueError(
                    f"DLMS HDLC addresses {self.start_address}..{self.start_address + self.meters - 1} exceed 16381"
                )
            if len(self.load_w) != 1:
                raise ValueError("a DLMS bus takes one load_w value (the simulated DLMS meter has no hourly profile)")
        elif self.start_address + self.meters - 1 > 999_999_999_999:
            raise ValueError("DL/T 645 addresses exceed 12 digits")
        return self

    def addresses(self) -> list[str]:
        """Meter addresses as the gateway configures them (12 digits, or a unit id)."""
        span = range(self.start_address, self.start_address + self.meters)
        return [f"{a:012d}" for a in span] if self.protocol == "dlt645" else [str(a) for a in span]


DLMS_FAULTS = {"no_answer": "silent", "bad_checksum": "bad_fcs", "garbage": "bad_fcs", "late_answer": "slow"}
"""The fleet's faults a simulated DLMS meter can show, and its own name for each."""


class FleetFault(_Strict):
    """At ``at_s`` seconds after the fleet starts, ``meter`` on ``bus`` shows ``fault`` for ``duration_s``."""

    at_s: float = Field(ge=0)
    bus: str
    meter: str = Field(min_length=1)
    """The meter's address on its bus, as in the gateway config ("000000000003" or unit id "3")."""
    fault: Fault
    duration_s: float = Field(gt=0)


class GatewaySide(_Strict):
    """What the written gateway configuration needs beyond the buses."""

    gateway_id: str = Field("gw-fleet", pattern=_ID)
    timezone: str = "Asia/Shanghai"
    database: str = "var/fleet-gateway.db"
    tariff_dir: str | None = None
    """Default: the example tariffs shipped in the package (``gateway/tariffs/examples``)."""
    tariff: str = Field("flat-cn", pattern=_ID)
    preset: str = "generic"


class FleetConfig(_Strict):
    host: str = "127.0.0.1"
    speed: float = Field(1.0, gt=0, le=1_000_000)
    """Simulated clocks run this many times faster than real time (energy accrues faster)."""
    gateway: GatewaySide = Field(default_factory=lambda: GatewaySide.model_validate({}))
    buses: list[FleetBus] = Field(min_length=1)
    faults: list[FleetFault] = Field(default_factory=list)

    @property
    def meter_count(self) -> int:
        return sum(b.meters for b in self.buses)


def _cross_check(cfg: FleetConfig, file: Path, text: str) -> None:
    def fail(path: tuple[str | int, ...], reason: str) -> NoReturn:
        where = "".join(f"[{p}]" if isinstance(p, int) else (("." if i else "") + p) for i, p in enumerate(path))
        raise TomlError(file, locate(text, path), where, reason)

    seen: dict[str, int] = {}
    ports: dict[int, str] = {}
    for i, bus in enumerate(cfg.buses):
        if bus.id in seen:
            fail(("buses", i, "id"), f"duplicate bus id '{bus.id}' (first at buses[{seen[bus.id]}])")
        seen[bus.id] = i
        if bus.serve == "tcp" and bus.port:
            if bus.port in ports:
                fail(("buses", i, "port"), f"port {bus.port} already used by bus '{ports[bus.port]}'")
            ports[bus.port] = bus.id
    buses = {b.id: b for b in cfg.buses}
    for i, fault in enumerate(cfg.faults):
        if fault.bus not in buses:
            fail(("faults", i, "bus"), f"no bus '{fault.bus}' (buses: {', '.join(sorted(buses))})")
        bus = buses[fault.bus]
        if bus.protocol == "dlms" and fault.fault.value not in DLMS_FAULTS:
            fail(
                ("faults", i, "fault"),
                f"fault '{fault.fault.value}' is not simulated on DLMS buses ({', '.join(DLMS_FAULTS)} are)",
            )
        if fault.meter not in bus.addresses():
            first, last = bus.addresses()[0], bus.addresses()[-1]
            fail(("faults", i, "meter"), f"no meter '{fault.meter}' on bus '{bus.id}' ({first}..{last})")


def load_fleet(file: str | Path) -> FleetConfig:
    """Load and validate a fleet file, or raise a one-line ``TomlError``."""
    path = Path(file)
    cfg = load_model(path, FleetConfig)
    _, text = read_toml(path)
    _cross_check(cfg, path, text)
    return cfg


def meter_id(bus: FleetBus, address: str) -> str:
    return f"{bus.id}-{int(address):04d}"


def gateway_toml(
    cfg: FleetConfig,
    endpoints: dict[str, str],
    *,
    base_dir: Path,
    database: str | None = None,
    mqtt_port: int | None = None,
    fragment: bool = False,
) -> str:
    """A gateway configuration (or only its buses, accounts and meters) for the served fleet.

    ``endpoints`` maps bus id to the URL the gateway opens (``socket://…``, ``tcp://…`` or a pty path).
    Relative paths in the fleet file are resolved against ``base_dir`` and written absolute, so the
    output works wherever it is saved.
    """
    gw = cfg.gateway
    lines: list[str] = [f"# Generated by `pmg sim fleet` for {cfg.meter_count} meters on {len(cfg.buses)} buses."]
    if not fragment:
        tariff_dir = (base_dir / gw.tariff_dir).resolve() if gw.tariff_dir else _example_tariffs()
        db = Path(database) if database else base_dir / gw.database
        lines += [
            f'gateway_id = "{gw.gateway_id}"',
            f'timezone = "{gw.timezone}"',
            f'database = "{db.resolve()}"',
            f'tariff_dir = "{tariff_dir}"',
            "",
            "[policy]",
            f'preset = "{gw.preset}"',
        ]
        if mqtt_port is not None:
            lines += ["", "[mqtt]", f'host = "{cfg.host}"', f"port = {mqtt_port}", "tls = false"]
            lines += ["allow_plaintext = true"]
    for bus in cfg.buses:
        lines += [
            "",
            "[[buses]]",
            f'id = "{bus.id}"',
            f'protocol = "{bus.protocol}"',
            f'url = "{endpoints[bus.id]}"',
            f"baud = {bus.baud}",
            f'parity = "{bus.parity}"',
            f"timeout_s = {bus.timeout_s}",
            f"retries = {bus.retries}",
            f"poll_interval_s = {bus.poll_interval_s}",
        ]
    for bus in cfg.buses:
        for address in bus.addresses():
            mid = meter_id(bus, address)
            lines += ["", "[[meters]]", f'id = "{mid}"', f'bus = "{bus.id}"', f'address = "{address}"']
            lines += [f'account = "A-{mid}"', f'tariff = "{gw.tariff}"']
            if bus.profile is not None:
                lines.append(f'profile = "{bus.profile}"')
    return "\n".join(lines) + "\n"
