"""The tariff model as the rest of the gateway uses it: values plus their strict loaders.

Tariffs are data under ``tariff_dir`` (TOML; examples in ``gateway/tariffs/examples/``) or arrive as JSON over MQTT; both go through the
same pydantic models (``spec``) and cross-field rules (``build``), and every problem is a one-line
``TomlError`` naming the file (or source), the line when there is one, and the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from drivers.tomlsource import TomlError, load_model, locate, read_toml, validation_to_toml_error
from gateway.tariffs.build import SpecError, build_tariff, format_path, tariff_to_dict
from gateway.tariffs.spec import TariffSpec
from gateway.tariffs.values import Block, BlockCycle, Tariff, TariffVersion, TimeOfUse, Window


def load_tariff(path: str | Path) -> Tariff:
    """Load one tariff file; any problem is a one-line ``TomlError`` naming file, line and key:
    ``drivers.tomlsource.load_model``, then the cross-field checks, located the same way."""
    spec = load_model(path, TariffSpec)
    try:
        return build_tariff(spec)
    except SpecError as exc:
        _data, text = read_toml(path)
        raise TomlError(path, locate(text, exc.path), format_path(exc.path), exc.reason) from None


def example_dir() -> Path:
    """The example tariffs shipped inside the package (``gateway/tariffs/examples/``, package data of the
    wheel), found through ``importlib.resources`` so an installed gateway has them wherever it lives.
    Their prices and sources: docs/sources/tariffs.md."""
    return Path(str(resources.files("gateway.tariffs") / "examples"))


def load_tariff_dir(directory: str | Path) -> dict[str, Tariff]:
    """Every ``*.toml`` tariff in ``directory`` by id; two files with one id is an error."""
    tariffs: dict[str, Tariff] = {}
    origin: dict[str, Path] = {}
    for file in sorted(Path(directory).glob("*.toml")):
        tariff = load_tariff(file)
        if tariff.id in tariffs:
            raise TomlError(
                file, None, "id", f"tariff id '{tariff.id}' is already defined in {origin[tariff.id]}"
            )
        tariffs[tariff.id], origin[tariff.id] = tariff, file
    return tariffs


def tariff_from_dict(data: Mapping[str, Any], source: str) -> Tariff:
    """Build a tariff from its JSON form (as sent over MQTT); errors are one-line ``TomlError``s."""
    try:
        spec = TariffSpec.model_validate(data)
    except ValidationError as exc:
        raise validation_to_toml_error(source, "", exc) from None
    try:
        return build_tariff(spec)
    except SpecError as exc:
        raise TomlError(source, None, format_path(exc.path), exc.reason) from None


__all__ = [
    "Block",
    "BlockCycle",
    "Tariff",
    "TariffVersion",
    "TimeOfUse",
    "Window",
    "example_dir",
    "load_tariff",
    "load_tariff_dir",
    "tariff_from_dict",
    "tariff_to_dict",
]
