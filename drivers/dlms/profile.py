"""DLMS meter profiles: which OBIS code and interface class holds each point, as a TOML data file.

Like the Modbus profiles (``drivers/modbus/profile.py``), nothing above the driver knows an OBIS
code.  A profile names, per point, the logical name (OBIS, IEC 62056-6-1) and the interface class
(IEC 62056-6-2) of the object holding it; the driver reads attribute 2 (the value) and, for a
register, attribute 3 (the scaler-unit).  Validation is strict: an OBIS code that cannot hold the
point (voltage at 1.0.1.8.0.255), a class the driver does not read, or a misspelt key is one line
naming file, line and key.  Shipped profiles live in ``drivers/dlms/profiles/`` (package data).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator

from drivers.base import Point
from drivers.tomlsource import load_model

_OBIS = re.compile(r"^(\d{1,3})[.-](\d{1,3})[:.](\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:\.(\d{1,3}))?$")

# Interface classes (IEC 62056-6-2): 1 Data, 3 Register, 4 Extended register, 8 Clock, 70 Disconnect control.
VALUE_CLASSES = (1, 3, 4)
CLOCK_CLASS = 8
DISCONNECT_CLASS = 70

# What each point's OBIS code may be (IEC 62056-6-1, electricity, A = 1): value group C (quantity)
# and D (processing: 8 = time integral (energy), 7 = instantaneous value).
_QUANTITY: dict[str, tuple[frozenset[int], frozenset[int], str]] = {
    "energy_import": (frozenset({1}), frozenset({8}), "energy"),
    "energy_export": (frozenset({2}), frozenset({8}), "energy"),
    "energy_import_tariffs": (frozenset({1}), frozenset({8}), "energy"),
    "voltage": (frozenset({12, 32, 52, 72}), frozenset({7}), "voltage"),
    "current": (frozenset({11, 31, 51, 71, 91}), frozenset({7}), "current"),
    "power": (frozenset({1, 15, 16, 21}), frozenset({7}), "power"),
    "frequency": (frozenset({14}), frozenset({7}), "frequency"),
    "power_factor": (frozenset({13, 33}), frozenset({7}), "ratio"),
}


def parse_obis(text: str) -> tuple[int, int, int, int, int, int]:
    """``1.0.1.8.0.255``, ``1-0:1.8.0.255`` or ``1-0:1.8.0`` (F = 255) as six integers 0–255."""
    m = _OBIS.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not an OBIS code (A.B.C.D.E.F, e.g. 1.0.1.8.0.255)")
    groups = tuple(int(g) if g is not None else 255 for g in m.groups())
    if any(g > 255 for g in groups):
        raise ValueError(f"{text!r}: each OBIS group is 0–255")
    return groups  # type: ignore[return-value]


def obis_text(groups: Sequence[int]) -> str:
    return ".".join(str(g) for g in groups)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ValueSpec(_Strict):
    """One point: the object's OBIS code and class; ``decimals`` rounds instantaneous values."""

    obis: str
    cls: int = Field(alias="class")
    decimals: int | None = Field(default=None, ge=0, le=6)

    @field_validator("obis")
    @classmethod
    def _obis(cls, v: str) -> str:
        return obis_text(parse_obis(v))

    @field_validator("cls")
    @classmethod
    def _class(cls, v: int) -> int:
        if v not in VALUE_CLASSES:
            raise ValueError(f"class {v} is not read for a value (use 1 Data, 3 Register or 4 Extended register)")
        return v

    @property
    def groups(self) -> tuple[int, int, int, int, int, int]:
        return parse_obis(self.obis)


class TariffSpec(_Strict):
    """Import energy per tariff: T1..Tn in order (1.0.1.8.1.255 .. 1.0.1.8.4.255)."""

    obis: list[str] = Field(min_length=1, max_length=8)
    cls: int = Field(default=3, alias="class")

    @field_validator("obis")
    @classmethod
    def _obis(cls, v: list[str]) -> list[str]:
        return [obis_text(parse_obis(o)) for o in v]

    @field_validator("cls")
    @classmethod
    def _class(cls, v: int) -> int:
        if v not in VALUE_CLASSES:
            raise ValueError(f"class {v} is not read for a value (use 1 Data, 3 Register or 4 Extended register)")
        return v

    def specs(self) -> list[ValueSpec]:
        return [ValueSpec.model_validate({"obis": o, "class": self.cls}) for o in self.obis]


class ClockSpec(_Strict):
    obis: str = "0.0.1.0.0.255"
    cls: Literal[8] = Field(default=8, alias="class")

    @field_validator("obis")
    @classmethod
    def _obis(cls, v: str) -> str:
        g = parse_obis(v)
        if g[:2] != (0, 0) or g[2:4] != (1, 0):
            raise ValueError(f"{v!r} is not a clock's OBIS code (0.0.1.0.e.255)")
        return obis_text(g)


class RelaySpec(_Strict):
    """The disconnect control object (class 70): output state (2), control state (3), mode (4)."""

    obis: str = "0.0.96.3.10.255"
    cls: Literal[70] = Field(default=70, alias="class")

    @field_validator("obis")
    @classmethod
    def _obis(cls, v: str) -> str:
        g = parse_obis(v)
        if g[:4] != (0, 0, 96, 3) or not 10 <= g[4] <= 19:
            raise ValueError(f"{v!r} is not a disconnect control object's OBIS code (0.0.96.3.10–19.255)")
        return obis_text(g)


class PointsTable(_Strict):
    """The values the model offers; keys are ``drivers.base.Point`` names."""

    energy_import: ValueSpec | None = None
    energy_export: ValueSpec | None = None
    energy_import_tariffs: TariffSpec | None = None
    voltage: ValueSpec | None = None
    current: ValueSpec | None = None
    power: ValueSpec | None = None
    frequency: ValueSpec | None = None
    power_factor: ValueSpec | None = None

    @field_validator("*")
    @classmethod
    def _known_obis(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return v
        name = info.field_name or ""
        c_ok, d_ok, _ = _QUANTITY[name]
        for obis in v.obis if isinstance(v, TariffSpec) else [v.obis]:
            a, _b, c, d, e, _f = parse_obis(obis)
            if a != 1 or c not in c_ok or d not in d_ok:
                raise ValueError(f"OBIS {obis} does not hold {name} (IEC 62056-6-1: expected 1.b.C.D.e.f "
                                 f"with C in {sorted(c_ok)}, D in {sorted(d_ok)})")
            if name in ("energy_import", "energy_export") and e != 0:
                raise ValueError(f"OBIS {obis} is a tariff register (E = {e}); the total is E = 0")
            if name == "energy_import_tariffs" and e == 0:
                raise ValueError(f"OBIS {obis} is the total (E = 0); tariffs are E = 1..")
        return v


class MeterInfo(_Strict):
    name: str = Field(min_length=1)
    manufacturer: str = ""
    source: str = ""
    baud: int = Field(default=9600, gt=0)
    parity: Literal["N", "E", "O"] = "N"


class Profile(_Strict):
    """A validated OBIS map.  ``name`` is the file's stem (``generic``)."""

    meter: MeterInfo
    points: PointsTable = Field(default_factory=PointsTable)
    clock: ClockSpec | None = None
    relay: RelaySpec | None = None

    _name: str = PrivateAttr(default="")

    @property
    def name(self) -> str:
        return self._name

    def value_spec(self, point: Point) -> ValueSpec | None:
        spec = getattr(self.points, point.value, None)
        return spec if isinstance(spec, ValueSpec) else None

    @staticmethod
    def quantity(point: Point) -> str:
        return _QUANTITY[point.value][2]

    def offered(self) -> list[Point]:
        out = [p for p in Point if getattr(self.points, p.value, None) is not None]
        if self.clock is not None:
            out.append(Point.METER_TIME)
        if self.relay is not None:
            out.append(Point.RELAY)
        return out


def builtin_dir() -> Path:
    """The shipped profiles (``drivers/dlms/profiles/``, package data of the wheel)."""
    return Path(str(resources.files("drivers.dlms") / "profiles"))


def find_profile(name_or_path: str, extra: Sequence[str | Path] = ()) -> Path:
    """The file a profile name (``generic``) or path stands for; one-line ``ValueError`` if unknown."""
    if "/" in name_or_path or name_or_path.endswith(".toml"):
        return Path(name_or_path)
    dirs = [*(Path(d) for d in extra), builtin_dir()]
    for folder in dirs:
        path = folder / f"{name_or_path}.toml"
        if path.is_file():
            return path
    known = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.toml")})
    raise ValueError(f"unknown DLMS profile {name_or_path!r} (known: {', '.join(known) or 'none'})")


def load_profile(name_or_path: str, extra: Sequence[str | Path] = ()) -> Profile:
    """Load and validate a profile; ``TomlError`` (a ``ValueError``, one line) when it is bad."""
    path = find_profile(name_or_path, extra)
    profile = load_model(path, Profile)
    profile._name = path.stem
    return profile
