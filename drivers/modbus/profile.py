"""Meter profiles: a Modbus meter model's register map as a TOML data file.

Nothing above the driver knows a register address.  Adding a meter model means adding a file under
``drivers/modbus/profiles/`` (shipped in the wheel as package data; and a test), not editing the poller;
a site adds its own models in the directories named by the configuration's ``profile_dirs``.  Every
shipped register map and its datasheet is listed in docs/sources/protocols.md.  Files are validated strictly
(``extra="forbid"``): a misspelt key is an error naming file, line and key, never a silent default.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from drivers.base import Point
from drivers.modbus.codec import DataType, WordOrder
from drivers.tomlsource import load_model

_UNITS: dict[str, dict[str, Decimal]] = {
    # point -> unit -> factor to the Reading's unit (Wh, V, A, W, Hz, ratio)
    "energy_import": {"kWh": Decimal(1000), "Wh": Decimal(1)},
    "energy_export": {"kWh": Decimal(1000), "Wh": Decimal(1)},
    "voltage": {"V": Decimal(1)},
    "current": {"A": Decimal(1), "mA": Decimal("0.001")},
    "power": {"W": Decimal(1), "kW": Decimal(1000)},
    "frequency": {"Hz": Decimal(1)},
    "power_factor": {"1": Decimal(1)},
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _exact_decimal(value: Any) -> Any:
    if isinstance(value, float):
        raise ValueError(f'write {value!r} as a string such as "{value}" (a TOML float is inexact)')
    return value


class PointSpec(_Strict):
    """Where one measurement lives and how to turn its registers into a value."""

    address: int = Field(alias="register", ge=0, le=0xFFFF)
    function: Literal[3, 4]
    type: DataType
    word_order: WordOrder = WordOrder.BIG
    scale: Decimal = Decimal(1)
    unit: str
    decimals: int | None = Field(default=None, ge=0, le=6)

    _check_scale = field_validator("scale", mode="before")(_exact_decimal)

    @field_validator("scale")
    @classmethod
    def _positive(cls, v: Decimal) -> Decimal:
        if not v.is_finite() or v <= 0:
            raise ValueError("scale must be a positive number")
        return v

    @property
    def count(self) -> int:
        return self.type.registers

    @property
    def end(self) -> int:
        return self.address + self.count


class RelayStateSpec(_Strict):
    """Where the relay state is read: a coil / discrete input (1, 2) or a register (3, 4)."""

    function: Literal[1, 2, 3, 4]
    address: int = Field(alias="register", ge=0, le=0xFFFF)
    closed: int = Field(default=1, ge=0, le=0xFFFF)
    open: int = Field(default=0, ge=0, le=0xFFFF)

    @model_validator(mode="after")
    def _values(self) -> RelayStateSpec:
        if self.closed == self.open:
            raise ValueError("closed and open must differ")
        if self.function in (1, 2) and {self.closed, self.open} != {0, 1}:
            raise ValueError("a coil or discrete input reads 0 or 1 only")
        return self


class RelayCommandSpec(_Strict):
    """Where the relay is commanded: a coil (5, 15) or a register (6, 16), with the values to write."""

    function: Literal[5, 6, 15, 16]
    address: int = Field(alias="register", ge=0, le=0xFFFF)
    close: int = Field(default=1, ge=0, le=0xFFFF)
    trip: int = Field(default=0, ge=0, le=0xFFFF)

    @model_validator(mode="after")
    def _values(self) -> RelayCommandSpec:
        if self.close == self.trip:
            raise ValueError("close and trip must differ")
        if self.function in (5, 15) and {self.close, self.trip} != {0, 1}:
            raise ValueError("a coil takes 0 or 1 only")
        return self


class RelaySpec(_Strict):
    state: RelayStateSpec
    command: RelayCommandSpec
    settle_s: float = Field(default=0.0, ge=0.0, le=10.0)  # time the contactor needs before read-back


class PointsTable(_Strict):
    """The measurements the model offers; keys are ``drivers.base.Point`` names."""

    energy_import: PointSpec | None = None
    energy_export: PointSpec | None = None
    voltage: PointSpec | None = None
    current: PointSpec | None = None
    power: PointSpec | None = None
    frequency: PointSpec | None = None
    power_factor: PointSpec | None = None

    @field_validator("*")
    @classmethod
    def _unit(cls, v: PointSpec | None, info: ValidationInfo) -> PointSpec | None:
        if v is None:
            return v
        name = info.field_name or ""
        allowed = _UNITS[name]
        if v.unit not in allowed:
            raise ValueError(f"unit {v.unit!r} not allowed for {name} (use {' or '.join(allowed)})")
        if v.type.is_float and v.decimals is None and not name.startswith("energy"):
            raise ValueError(f"{name} is {v.type.value}: give 'decimals' (the meter's resolution)")
        return v


class RegisterProbe(_Strict):
    """Registers read to tell models apart (``[identify]``)."""

    function: Literal[3, 4]
    address: int = Field(alias="register", ge=0, le=0xFFFF)
    count: int = Field(default=1, ge=1, le=125)

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.function, self.address, self.count)


class IdentifySpec(_Strict):
    """How ``pmg scan`` recognises the model: registers that must answer normally (``present``) and,
    where the datasheet allows telling a relative apart, registers it must refuse (``absent``).

    A unit is taken for the profile whose ``present`` registers all answer (and ``absent`` all refused);
    when several profiles match, the one with the most ``present`` registers is named first."""

    present: tuple[RegisterProbe, ...] = Field(min_length=1)
    absent: tuple[RegisterProbe, ...] = ()


class MeterInfo(_Strict):
    name: str = Field(min_length=1)
    manufacturer: str = ""
    baud: int = Field(default=9600, gt=0)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    default_unit: int = Field(default=1, ge=1, le=247)
    source: str = ""  # where the register map comes from (datasheet, revision)


class Profile(_Strict):
    """A validated register map.  ``name`` is the file's stem (``sdm120``)."""

    meter: MeterInfo
    max_block: int = Field(default=64, ge=1, le=125)  # registers per request (125 is the Modbus limit)
    max_gap: int = Field(default=0, ge=0, le=32)  # unused registers a block may span (0: contiguous only)
    points: PointsTable = Field(default_factory=PointsTable)
    relay: RelaySpec | None = None
    identify: IdentifySpec | None = None

    _name: str = PrivateAttr(default="")

    @property
    def name(self) -> str:
        return self._name

    def point(self, point: Point) -> PointSpec | None:
        spec = getattr(self.points, point.value, None)
        return spec if isinstance(spec, PointSpec) else None

    def offered(self) -> list[Point]:
        """Points this model can be asked for (``RELAY`` when it has a relay state)."""
        out = [p for p in Point if self.point(p) is not None]
        return [*out, Point.RELAY] if self.relay is not None else out

    def identifying(self) -> IdentifySpec:
        """The ``[identify]`` section, or by default every register the profile reads (its points and
        a relay state held in a register): a unit must answer them all to be taken for this model."""
        if self.identify is not None:
            return self.identify
        probes = [
            RegisterProbe(function=spec.function, register=spec.address, count=spec.count)
            for p in self.offered()
            if (spec := self.point(p)) is not None
        ]
        if self.relay is not None and self.relay.state.function in (3, 4):
            st = self.relay.state
            probes.append(RegisterProbe(function=st.function, register=st.address))  # type: ignore[arg-type]
        return IdentifySpec(present=tuple(probes))

    @staticmethod
    def factor(point: Point, unit: str) -> Decimal:
        return _UNITS[point.value][unit]


def builtin_dir() -> Path:
    """The profiles shipped inside the package (``drivers/modbus/profiles/``, package data of the wheel).

    Found through ``importlib.resources`` rather than by walking up from this file, so an installed
    wheel finds them wherever it lives and whatever the working directory is."""
    return Path(str(resources.files("drivers.modbus") / "profiles"))


def search_dirs(extra: Sequence[str | Path] = ()) -> list[Path]:
    """Where a bare profile name is looked up: the configured ``extra`` directories in order (a site's
    own or corrected register maps), then the shipped ones."""
    return [*(Path(d) for d in extra), builtin_dir()]


def list_profiles(extra: Sequence[str | Path] = ()) -> list[str]:
    """Names of the profiles that can be named (file stems), sorted."""
    return sorted({p.stem for d in search_dirs(extra) if d.is_dir() for p in d.glob("*.toml")})


def looks_like_path(name_or_path: str) -> bool:
    """A path (``site/x.toml``) rather than a profile name (``sdm120``)."""
    return os.sep in name_or_path or "/" in name_or_path or name_or_path.endswith(".toml")


def find_profile(name_or_path: str, extra: Sequence[str | Path] = ()) -> Path:
    """The file a profile name (``sdm120``) or path stands for; a one-line ``ValueError`` for an
    unknown name (the message lists the known names and where it looked)."""
    if looks_like_path(name_or_path):
        return Path(name_or_path)
    dirs = search_dirs(extra)
    for folder in dirs:
        path = folder / f"{name_or_path}.toml"
        if path.is_file():
            return path
    known = ", ".join(list_profiles(extra)) or "none"
    looked = ", ".join(str(d) for d in dirs)
    raise ValueError(f"unknown meter profile {name_or_path!r} (known: {known}; looked in {looked})")


def load_profile(name_or_path: str, extra: Sequence[str | Path] = ()) -> Profile:
    """Load a profile by bare name (``sdm120``, searched in ``extra`` then the shipped profiles) or by
    path; raises ``TomlError`` for a bad file and a one-line ``ValueError`` for an unknown name."""
    path = find_profile(name_or_path, extra)
    profile = load_model(path, Profile)
    profile._name = path.stem
    return profile
