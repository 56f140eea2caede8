"""The gateway's one configuration file: strict, validated at load, line-accurate errors.

A misspelt key must never silently become a default (``baud_rate`` instead of ``baud`` would leave a
2400-baud bus polled at 9600 and every meter "dead"), so every table forbids unknown keys, and a
dangling reference (a meter on a bus that does not exist) is an error naming the line.  The daemon
refuses to start on any of these; on SIGHUP the old configuration is kept.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from drivers.tomlsource import TomlError, locate, read_toml, validation_to_toml_error
from gateway.core.errors import UserError

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_public_key(text: str) -> str:
    """A bad head-office key stops the daemon at load, with its line, not at the first command."""
    from gateway.core.keys import public_key_bytes

    public_key_bytes(text, "")
    return text


class MqttConfig(Strict):
    """Head-office broker.  TLS is the default; plaintext must be asked for by name."""

    host: str
    port: int = Field(8883, ge=1, le=65535)
    tls: bool = True
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    allow_plaintext: bool = False
    topic_prefix: str = Field("pmg", pattern=r"^[A-Za-z0-9_\-/]+$")
    client_id: str | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    protocol: Literal["5", "3.1.1"] = "5"
    """MQTT 5 by default; "3.1.1" for a broker that speaks only that (persistent session by
    clean_session = false; no Maximum Packet Size to ask for).  docs/mqtt.md, "Connection"."""
    command_keys: dict[str, Annotated[str, AfterValidator(_check_public_key)]] = Field(default_factory=dict)
    """Head-office Ed25519 public keys (key_id -> base64 raw key) that may sign commands."""
    max_backlog_messages: int = Field(5_000_000, ge=1000)
    max_packet_bytes: int = Field(256 * 1024, ge=128 * 1024, le=268_435_455)
    """MQTT 5 Maximum Packet Size asked of the broker: it drops larger commands instead of sending them
    (a command is at most 64 KiB; the MQTT 5 limit is 268,435,455 bytes).  docs/mqtt.md."""
    rejected_commands_per_minute: int = Field(60, ge=1, le=100_000)
    """Rejected commands logged (and, unauthenticated, acknowledged) per rejection code; the rest
    are summed up in one line a minute.  docs/mqtt.md."""

    @model_validator(mode="after")
    def _plaintext_is_explicit(self) -> MqttConfig:
        if not self.tls and not self.allow_plaintext:
            raise ValueError("tls = false needs allow_plaintext = true (plaintext must be explicit)")
        return self


class BusConfig(Strict):
    id: str = Field(pattern=_ID)
    protocol: Literal["dlt645", "modbus", "dlms"]
    url: str = Field(min_length=1)
    """A pyserial URL (/dev/ttyUSB0, socket://host:port, rfc2217://…) or tcp://host:port for Modbus TCP
    and for the DLMS/COSEM TCP wrapper (port 4059 by default); DLMS on a pyserial URL is HDLC."""
    baud: int | None = Field(None, ge=300, le=921600)
    """Default: 2400 for DL/T 645 (the standard's default), 9600 for Modbus."""
    parity: Literal["N", "E", "O"] | None = None
    """Default: E (8E1) for DL/T 645, N for Modbus."""
    timeout_s: float = Field(1.0, gt=0, le=30)
    retries: int = Field(2, ge=0, le=10)
    inter_frame_gap_s: float | None = Field(None, ge=0, le=5)
    """Quiet time between frames; default 3.5 character times at the bus's baud (as Modbus RTU requires)."""
    poll_interval_s: float = Field(60.0, gt=0, le=86400)
    unhealthy_after_s: float = Field(300.0, gt=0, le=86400)
    """The bus is unhealthy (``pmg status``, ``pmg doctor``, metrics) once none of its meters answered
    for this long: a dead link or cable, not one dead meter."""
    opening: Literal["none", "iec62056-21"] = "none"
    """DLMS on a serial line: ``iec62056-21`` starts each conversation with the IEC 62056-21 mode E
    opening (sign-on at 300 baud 7E1, then HDLC at the baud the meter names; ``baud`` is then unused).
    A bus setting because it changes the line's speed, which every station on it shares; one meter
    per such bus, since the sign-on names no device and every meter on the line would answer it.
    docs/sources/protocols.md ("IEC 62056-21 mode E opening")."""

    @model_validator(mode="after")
    def _opening_is_hdlc(self) -> BusConfig:
        if self.opening != "none" and (self.protocol != "dlms" or self.url.startswith("tcp://")):
            raise ValueError(
                f"opening = \"{self.opening}\" applies to DLMS buses on a serial line (HDLC), not to "
                + ("the TCP wrapper" if self.protocol == "dlms" else f"{self.protocol}")
            )
        return self

    @property
    def line_baud(self) -> int:
        return self.baud or (2400 if self.protocol == "dlt645" else 9600)

    @property
    def line_parity(self) -> str:
        return self.parity or ("E" if self.protocol == "dlt645" else "N")

    @property
    def frame_gap_s(self) -> float:
        if self.inter_frame_gap_s is not None:
            return self.inter_frame_gap_s
        bits = 10 if self.line_parity == "N" else 11
        return 3.5 * bits / self.line_baud


class DlmsMeterConfig(Strict):
    """A DLMS meter's association (``[meters.dlms]``); its secrets are in ``key_file``, never here."""

    logical: int = Field(default=1, ge=0, le=0x3FFF)
    """The server's logical device on an HDLC line (1: the management logical device)."""
    client: int = Field(default=16, ge=1, le=127)
    """The client address (SAP): 16 is the public client; the meter's configuration names the others."""
    auth: Literal["none", "low", "hls-gmac"] = "none"
    key_file: str | None = None
    """TOML with ``password`` (low) or ``encryption_key``/``authentication_key`` (hls-gmac, 32 hex
    digits each); relative to this file.  docs/sources/protocols.md ("DLMS/COSEM")."""
    invocation_counter: str = "0.0.43.1.0.255"
    """hls-gmac: the meter's invocation counter object for this client's key set (0.0.43.1.x.255),
    read with the public client to start above it, or ``"none"`` (our record beside the key file only)."""


class MeterConfig(Strict):
    id: str = Field(pattern=_ID)
    bus: str
    address: str = Field(min_length=1)
    """DL/T 645: 12-digit address; Modbus: unit id 1–247; DLMS: HDLC physical address (TCP wrapper:
    the logical device), 0–16383."""
    account: str = Field(pattern=_ID)
    tariff: str = Field(pattern=_ID)
    profile: str | None = None
    poll_interval_s: float | None = Field(None, gt=0, le=86400)
    max_power_w: int = Field(30_000, gt=0, le=10_000_000)
    register_modulus_wh: int = Field(1_000_000_000, gt=0)
    keep_power: bool = False
    dlms: DlmsMeterConfig | None = None


class AccountConfig(Strict):
    id: str = Field(pattern=_ID)
    name: str | None = None
    protected: bool = False
    protected_category: str | None = None
    emergency_credit: str = "0"

    @field_validator("emergency_credit")
    @classmethod
    def _money(cls, v: str) -> str:
        return _check_money(v)


class PolicyConfig(Strict):
    preset: str = "generic"
    country: str | None = None
    subdiv: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    calendar_file: str | None = Field(default=None, min_length=1)
    """TOML file of official years (days off, adjusted working days) ``holidays`` lacks (gateway.policy.calendar_sources)."""


class MetricsConfig(Strict):
    listen: str | None = Field(default=None, pattern=r"^[^\s:]*:[0-9]{1,5}$")  # "127.0.0.1:9108"; None disables
    status_interval_s: float = Field(default=10.0, ge=1, le=3600)
    """How often the daemon writes its live status snapshot for ``pmg status``."""

    @field_validator("listen")
    @classmethod
    def _port(cls, v: str | None) -> str | None:
        # The daemon binds with ``parse_listen``; checking with it here makes ``run --check`` refuse
        # exactly what ``run`` would (a port above 65535 used to pass the check).
        if v is not None:
            from gateway.core.listen import parse_listen

            parse_listen(v)
        return v


class WebConfig(Strict):
    """``pmg web``, the local console (docs/web.md): where it listens, who may log in, TLS."""

    listen: str = Field(default="127.0.0.1:8080", pattern=r"^[^\s]*:[0-9]{1,5}$")
    users_file: str | None = Field(default=None, min_length=1)
    """Accounts (``pmg web passwd``); required unless ``listen`` is a loopback address."""
    tls_cert: str | None = Field(default=None, min_length=1)
    tls_key: str | None = Field(default=None, min_length=1)
    session_hours: float = Field(default=12.0, gt=0, le=24 * 31)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        from gateway.core.listen import MetricsError, parse_listen

        try:
            parse_listen(v)
        except MetricsError:
            raise ValueError(f"expected host:port like 127.0.0.1:8080 (got {v!r})") from None
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> WebConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self


class HousekeepingConfig(Strict):
    """Retention, backups and meter clock checks (``gateway.runtime.housekeeping``, ``gateway.runtime.clocksync``)."""

    readings_full_days: int = Field(default=90, ge=1, le=36500)
    """Readings older than this keep only the last per meter per hour (and every one an entry cites)."""
    outbox_delivered_days: int = Field(default=7, ge=0, le=3650)
    backup_dir: str | None = None  # default: "backups" beside the database
    backup_every_hours: float = Field(default=24.0, gt=0, le=8760)
    backups_kept: int = Field(default=7, ge=1, le=1000)
    clock_max_drift_s: int = Field(default=60, ge=1, le=86400)
    """A DL/T 645 meter whose clock is further off than this gets a broadcast time sync on its bus."""


class TimeConfig(Strict):
    """When the wall clock is doubted (``gateway.runtime.timetrust``; docs/enforcement.md, "Untrusted time")."""

    step_tolerance_s: float = Field(default=5.0, gt=0, le=3600)
    """A wall-clock move against the monotonic clock larger than this (one look) is a step."""
    reference_tolerance_s: float = Field(default=300.0, gt=0, le=86400)
    """How far a majority of meter clocks, or a signed command's issued_at, may be from ours."""
    require_ntp: bool = False
    """Doubt the clock while the kernel says NTP has not synchronised it (off: no NTP in containers)."""
    ntp_settle_s: float = Field(default=900.0, ge=0, le=86400)
    """NTP synchronised this long vouches for a stepped clock."""
    meter_quorum: int = Field(default=3, ge=1, le=10000)
    """Meter clocks needed on a bus before their majority counts as a witness."""


class RiskConfig(Strict):
    """``[risk]``: the three warning levels of the risk grade (gateway/ledger/risk.py; docs/ledger.md,
    "Risk grade").  Validated with the rest of the file, so a typo stops ``run --check`` and start
    with one line and is refused on SIGHUP, instead of being found by every settlement run."""

    days_left: tuple[Decimal, Decimal, Decimal] = (Decimal(14), Decimal(7), Decimal(3))
    """Base grade 1, 2, 3 at or below these days of credit left (must not increase)."""
    no_payment_days: int = Field(default=30, ge=1, le=3660)
    recent_days: int = Field(default=7, ge=1, le=366)
    baseline_days: int = Field(default=28, ge=1, le=3660)
    consumption_rise: Decimal = Field(default=Decimal("0.5"), ge=0)
    negative_balance_grade: int = Field(default=3, ge=0, le=3)

    @field_validator("days_left", "consumption_rise", mode="before")
    @classmethod
    def _exact(cls, v: Any) -> Any:
        for item in v if isinstance(v, list | tuple) else [v]:
            if isinstance(item, float):
                raise ValueError(f'write {item!r} as a string such as "{item}" (a TOML float is inexact)')
        return v

    @model_validator(mode="after")
    def _ordered(self) -> RiskConfig:
        if any(d < 0 for d in self.days_left):
            raise ValueError(f"days_left must not be negative (got {[str(d) for d in self.days_left]})")
        if list(self.days_left) != sorted(self.days_left, reverse=True):
            raise ValueError(
                f"days_left must not increase from grade 1 to grade 3 (got {[str(d) for d in self.days_left]})"
            )
        return self


class GatewayConfig(Strict):
    gateway_id: str = Field(pattern=_ID)
    timezone: str = "UTC"
    database: str = "var/pmg.db"
    currency: str = Field("CNY", pattern=r"^[A-Z]{3}$")
    minor_digits: int = Field(2, ge=0, le=4)
    tariff_dir: str = "config/tariffs"
    profile_dirs: list[str] = Field(default_factory=list)
    """Directories of a site's own Modbus meter profiles, searched before the shipped ones."""
    risk: RiskConfig = Field(default_factory=RiskConfig)
    mqtt: MqttConfig | None = None
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    housekeeping: HousekeepingConfig = Field(default_factory=HousekeepingConfig)
    time: TimeConfig = Field(default_factory=TimeConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    buses: list[BusConfig] = Field(default_factory=list)
    meters: list[MeterConfig] = Field(default_factory=list)
    accounts: list[AccountConfig] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone '{v}'") from None
        return v

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def bus(self, bus_id: str) -> BusConfig:
        return next(b for b in self.buses if b.id == bus_id)

    def meters_on(self, bus_id: str) -> list[MeterConfig]:
        return [m for m in self.meters if m.bus == bus_id]

    def profile_file(self, meter: MeterConfig) -> str | None:
        """The file of a Modbus meter's profile (``profile_dirs``, then the shipped ones); None for
        DL/T 645.  ``load_config`` has checked that it exists."""
        if self.bus(meter.bus).protocol == "dlms":
            from drivers.dlms.profile import find_profile as find_dlms_profile

            return str(find_dlms_profile(meter.profile or "generic", self.profile_dirs))
        if meter.profile is None:
            return None
        from drivers.modbus.profile import find_profile

        return str(find_profile(meter.profile, self.profile_dirs))

    def meter_options(self, meter: MeterConfig) -> dict[str, Any]:
        """Protocol options for ``drivers.factory.make_meter`` (a DLMS meter's association)."""
        if meter.dlms is None:
            return {}
        return meter.dlms.model_dump()


_MONEY = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,4})?$")  # ASCII digits: ``\d`` would take any script's


def _check_money(v: str) -> str:
    if not _MONEY.fullmatch(v):
        raise ValueError(f'money must be a non-negative decimal string like "5.00" (got {v!r})')
    return v


def _credit_fits(text: str, minor_digits: int) -> bool:
    """Emergency credit must be whole minor units: "5.001" with 2 digits would be rounded on seeding."""
    return not text.partition(".")[2][minor_digits:].strip("0")


_DIGITS = re.compile(r"[0-9]+")


def normalized_address(protocol: str, address: str) -> str:
    """The one spelling of a meter address, so that two spellings of one device compare equal.

    Modbus: the unit id as a decimal integer 1–247 ("01" and "1" are the same slave; MODBUS over
    Serial Line V1.02 §2.2: individual slave addresses 1–247); DL/T 645: exactly 12 ASCII digits
    (DL/T 645-2007: the address field A0–A5 is six BCD bytes).  Raises ``ValueError`` with a one-line
    reason otherwise.
    """
    if not _DIGITS.fullmatch(address):
        what = {"dlt645": "DL/T 645 address must be 12 digits", "dlms": "DLMS address must be 0–16383"}.get(
            protocol, "Modbus unit id must be 1–247"
        )
        raise ValueError(f"{what} (got '{address}'; only the digits 0-9 are allowed)")
    if protocol == "dlms":  # IEC 62056-46: HDLC addresses are at most 14 bits
        if int(address) > 0x3FFF:
            raise ValueError(f"DLMS address must be 0–16383 (got '{address}')")
        return str(int(address))
    if protocol == "dlt645":
        if len(address) != 12:
            raise ValueError(f"DL/T 645 address must be 12 digits (got '{address}')")
        return address
    unit = int(address)
    if not 1 <= unit <= 247:
        raise ValueError(f"Modbus unit id must be 1–247 (got '{address}')")
    return str(unit)


class ConfigError(UserError, TomlError):
    """Invalid configuration; ``str()`` is ``file:line: key: reason``."""


def _cross_check(cfg: GatewayConfig, file: Path, text: str) -> None:
    """References and uniqueness, with the line of the offending key."""

    def fail(path: tuple[str | int, ...], reason: str) -> NoReturn:
        where = "".join(
            f"[{p}]" if isinstance(p, int) else (("." if i else "") + p) for i, p in enumerate(path)
        )
        raise ConfigError(file, locate(text, path), where, reason)

    from drivers.modbus.profile import find_profile

    for i, folder in enumerate(cfg.profile_dirs):
        if not Path(folder).is_dir():
            fail(("profile_dirs", i), f"no such directory: {folder}")
    if (file.resolve().parent / "risk.toml").is_file():
        fail(
            ("risk",),
            "risk.toml beside this file is no longer read: move its keys into the [risk] section and delete it",
        )
    seen: dict[str, int] = {}
    for i, bus in enumerate(cfg.buses):
        if bus.id in seen:
            fail(("buses", i, "id"), f"duplicate bus id '{bus.id}' (first at buses[{seen[bus.id]}])")
        seen[bus.id] = i
    bus_ids = {b.id: b for b in cfg.buses}
    meter_ids: dict[str, int] = {}
    addresses: dict[tuple[str, str], str] = {}  # (bus, normalised address) -> meter id
    for i, meter in enumerate(cfg.meters):
        if meter.id in meter_ids:
            fail(
                ("meters", i, "id"),
                f"duplicate meter id '{meter.id}' (first at meters[{meter_ids[meter.id]}])",
            )
        meter_ids[meter.id] = i
        meter_bus = bus_ids.get(meter.bus)
        if meter_bus is None:
            known = ", ".join(sorted(bus_ids)) or "none defined"
            fail(("meters", i, "bus"), f"no bus '{meter.bus}' (buses: {known})")
            return
        try:
            normal = normalized_address(meter_bus.protocol, meter.address)
        except ValueError as exc:
            fail(("meters", i, "address"), str(exc))
        if meter.dlms is not None and meter_bus.protocol != "dlms":
            fail(("meters", i, "dlms"), "[meters.dlms] applies to DLMS meters only")
        if meter_bus.protocol == "dlms":
            _check_dlms_meter(cfg, meter, i, fail)
        elif meter_bus.protocol == "dlt645":
            if meter.profile is not None:
                fail(("meters", i, "profile"), "profile applies to Modbus and DLMS meters only")
        elif meter.profile is None:
            fail(("meters", i), 'a Modbus meter needs a profile (e.g. profile = "sdm120")')
        else:
            try:
                found = find_profile(meter.profile, cfg.profile_dirs)
            except ValueError as exc:
                fail(("meters", i, "profile"), str(exc))
            if not found.is_file():
                fail(("meters", i, "profile"), f"no such profile file: {found}")
        key = (meter.bus, normal)
        if key in addresses:
            fail(
                ("meters", i, "address"),
                f"address {meter.address}{f' (unit {normal})' if normal != meter.address else ''} already "
                f"used on bus {meter.bus} by meter "
                f"'{addresses[key]}': one physical meter would be billed to two accounts",
            )
        addresses[key] = meter.id
        if meter_bus.opening != "none":
            others = [m.id for m in cfg.meters[:i] if m.bus == meter.bus]
            if others:
                fail(
                    ("meters", i, "bus"),
                    f"bus {meter.bus} opens with {meter_bus.opening}, whose sign-on names no meter: one meter "
                    f"per such bus ('{others[0]}' is already on it; an optical port reads one meter)",
                )
    acc_ids: set[str] = set()
    for i, acc in enumerate(cfg.accounts):
        if acc.id in acc_ids:
            fail(("accounts", i, "id"), f"duplicate account id '{acc.id}'")
        acc_ids.add(acc.id)
        # Checked here, not at seeding, so ``run --check`` refuses what ``run`` would refuse or round.
        if not _credit_fits(acc.emergency_credit, cfg.minor_digits):
            fail(
                ("accounts", i, "emergency_credit"),
                f"{acc.emergency_credit!r} has more than minor_digits = {cfg.minor_digits} decimal places",
            )
    if cfg.mqtt and cfg.mqtt.password and cfg.mqtt.password_file:
        fail(("mqtt", "password"), "give password or password_file, not both")


def _check_dlms_meter(cfg: GatewayConfig, meter: MeterConfig, i: int, fail: Any) -> None:
    """A DLMS meter's profile loads (known OBIS codes and classes) and its key file is right:
    what ``run`` would refuse, ``run --check`` refuses, in one line."""
    from drivers.dlms.counter import check_counter_obis
    from drivers.dlms.keys import KeyFileError, load_security
    from drivers.dlms.profile import load_profile

    try:
        load_profile(meter.profile or "generic", cfg.profile_dirs)
    except (TomlError, ValueError) as exc:
        fail(("meters", i, "profile"), str(exc))
    opts = meter.dlms or DlmsMeterConfig()
    try:
        load_security(opts.auth, opts.client, opts.key_file)
    except KeyFileError as exc:
        fail(("meters", i, "dlms", "key_file"), str(exc))
    if opts.auth == "hls-gmac" and opts.key_file is not None:
        folder = Path(opts.key_file).resolve().parent  # the invocation counter's record lives beside the key
        if not os.access(folder, os.W_OK):
            fail(
                ("meters", i, "dlms", "key_file"),
                f"{folder} is not writable: HLS-GMAC records its invocation counter beside the key file",
            )
    try:
        check_counter_obis(opts.invocation_counter)
    except ValueError as exc:
        fail(("meters", i, "dlms", "invocation_counter"), str(exc))


def resolve(config_file: str | Path, value: str) -> Path:
    """A path from the file, relative to the file's own directory (so it works from any cwd)."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else (Path(config_file).resolve().parent / p)


def load_config(file: str | Path) -> GatewayConfig:
    """Load and fully validate a gateway configuration, or raise a one-line ``ConfigError``."""
    path = Path(file)
    try:
        data, text = read_toml(path)
    except TomlError as exc:
        raise ConfigError(exc.file, exc.line, exc.where, exc.reason) from None
    except RecursionError:  # thousands of nested arrays: the parser's recursion, not a traceback
        raise ConfigError(path, None, "", "nested too deeply") from None
    try:
        cfg = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        err = validation_to_toml_error(path, text, exc)
        raise ConfigError(err.file, err.line, err.where, err.reason) from None
    except RecursionError:
        raise ConfigError(path, None, "", "nested too deeply") from None
    # Relative profile directories (and a profile given as a path) are relative to the file, like every
    # other path in it, not to the working directory.
    from drivers.modbus.profile import looks_like_path

    meters = [
        m.model_copy(update={"profile": str(resolve(path, m.profile))})
        if m.profile is not None and looks_like_path(m.profile)
        else m
        for m in cfg.meters
    ]
    meters = [  # a DLMS key file, like every path in the file, is relative to the file
        m.model_copy(update={"dlms": m.dlms.model_copy(update={"key_file": str(resolve(path, m.dlms.key_file))})})
        if m.dlms is not None and m.dlms.key_file is not None
        else m
        for m in meters
    ]
    cfg = cfg.model_copy(
        update={"profile_dirs": [str(resolve(path, d)) for d in cfg.profile_dirs], "meters": meters}
    )
    _cross_check(cfg, path, text)
    return cfg
