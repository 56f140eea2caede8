"""Enforcement rules as data: the model, the jurisdiction presets and field-by-field overrides.

Every number here is a configurable default; the presets in ``gateway/presets/*.toml`` name their
sources, and docs/sources/rules.md states each rule with its regulation and article.  A deployment picks a preset and may
override any field from its configuration; validation is strict (unknown keys are errors) and
every error is one line naming the file and line, or the override key.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from drivers.tomlsource import TomlError, read_toml, validation_to_toml_error
from gateway.core.errors import UserError
from gateway.policy import texts

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
PRESETS: tuple[str, ...] = ("cn", "uk", "us-tx", "generic")


def _no_bare_number(value: object) -> object:
    """A duration must say its unit: pydantic would read ``period = 7`` as 7 *seconds*, so a notice
    meant as 7 days would let a cut follow a 7-second notice.  Only ISO 8601 texts ("P7D")."""
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        raise ValueError(f'a duration needs a unit: write an ISO 8601 duration like "P7D" or "PT30M" (got {value!r})')
    return value


Duration = Annotated[timedelta, BeforeValidator(_no_bare_number)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WarningLevel(_Strict):
    """A warning grade triggers when *either* threshold is reached (both are "at or below").

    ``text`` may say ``{balance}``, ``{available}``, ``{currency}`` and, on a level with
    ``days_left_at_or_below``, ``{days_left}`` (``gateway.policy.texts``).
    """

    balance_at_or_below_minor: int | None = None
    days_left_at_or_below: Decimal | None = Field(default=None, ge=0)
    message_id: str
    text: str

    @model_validator(mode="after")
    def _one_threshold(self) -> WarningLevel:
        if self.balance_at_or_below_minor is None and self.days_left_at_or_below is None:
            raise ValueError("a warning level needs balance_at_or_below_minor or days_left_at_or_below")
        texts.check("text", self.text, self.allowed_fields(),
                    {"days_left": "{days_left} needs days_left_at_or_below on this level"})
        return self

    def allowed_fields(self) -> frozenset[str]:
        return texts.WARNING_FIELDS | ({"days_left"} if self.days_left_at_or_below is not None else set())

    def message(self, money: Mapping[str, str], days_left: Decimal | None) -> str:
        """The warning as the customer reads it, with the account's figures."""
        return texts.fill(self.text, {**money, "days_left": texts.days_text(days_left)})


class Warnings(_Strict):
    level_1: WarningLevel
    level_2: WarningLevel
    level_3: WarningLevel  # credit exhausted

    def levels(self) -> tuple[WarningLevel, WarningLevel, WarningLevel]:
        return (self.level_1, self.level_2, self.level_3)

    @model_validator(mode="after")
    def _ordered(self) -> Warnings:
        for attr in ("balance_at_or_below_minor", "days_left_at_or_below"):
            values = [getattr(lv, attr) for lv in self.levels()]
            given = [v for v in values if v is not None]
            if given != sorted(given, reverse=True):
                raise ValueError(f"{attr} must not increase from level_1 to level_3 (got {given})")
        if self.level_3.balance_at_or_below_minor is None:
            raise ValueError("level_3 (credit exhausted) needs balance_at_or_below_minor")
        return self


class EmergencyCredit(_Strict):
    """``text`` may say ``{emergency_credit}`` (the amount offered) besides the money placeholders."""

    enabled: bool = False
    amount_minor: int = Field(default=0, ge=0)
    message_id: str = "emergency_credit_offer"
    text: str = "Your credit has run out. Emergency credit of {emergency_credit} {currency} is available."

    @model_validator(mode="after")
    def _text_fits(self) -> EmergencyCredit:
        texts.check("text", self.text, texts.OFFER_FIELDS)
        return self

    def offer_text(self, money: Mapping[str, str], offered: str) -> str:
        """The offer as the customer reads it; ``offered``: the amount granted, as money text."""
        return texts.fill(self.text, {**money, "emergency_credit": offered})


class Notice(_Strict):
    """Written notice before a cut, and a short reminder just before it (see the presets' sources).

    The notice is *issued* by the gateway but only *served* once it reached the customer: either the
    head office confirms delivery (a signed ``notice`` command, ``delivery = "head_office"``), or,
    where the rules allow it, the meter's display counts as delivery (``delivery = "meter_display"``).
    The period runs from delivery; ``valid_for`` (from delivery too) is how long the notice may
    still justify a cut before a fresh one is needed.  ``text`` may say ``{days}`` (the period) and
    ``reminder_text`` ``{minutes}`` (``reminder_before``), so the text states what is enforced; both
    may state the account's money (``gateway.policy.texts``).
    """

    required: bool
    period: Duration = Field(ge=timedelta(0))
    delivery: Literal["head_office", "meter_display"] = "head_office"
    # Issued but not confirmed delivered after this long: an alarm to the head office.
    escalate_after: Duration = Field(default=timedelta(days=1), gt=timedelta(0))
    valid_for: Duration | None = Field(default=None, gt=timedelta(0))
    reminder_before: Duration = Field(default=timedelta(0), ge=timedelta(0))
    # A reminder sent long before the cut no longer warns of it: past this age a new one is sent.
    reminder_valid_for: Duration = Field(default=timedelta(hours=2), gt=timedelta(0))
    message_id: str = "disconnect_notice"
    text: str = "Supply will be disconnected for non-payment {days} day(s) after this notice unless credit is added."
    reminder_message_id: str = "disconnect_reminder"
    reminder_text: str = "Supply will be disconnected in {minutes} minutes unless credit is added."

    @model_validator(mode="after")
    def _reminder_fits(self) -> Notice:
        if self.reminder_valid_for < self.reminder_before:
            raise ValueError("reminder_valid_for must be at least reminder_before")
        if self.valid_for is not None and self.valid_for <= self.period:
            raise ValueError(f"valid_for ({self.valid_for}) must exceed period ({self.period})")
        texts.check("text", self.text, texts.NOTICE_FIELDS)
        texts.check("reminder_text", self.reminder_text, texts.REMINDER_FIELDS)
        return self

    def notice_text(self, money: Mapping[str, str]) -> str:
        """The notice as the customer reads it, with the period actually enforced."""
        return texts.fill(self.text, {**money, "days": texts.span_amount(self.period, timedelta(days=1))})

    def reminder_message(self, money: Mapping[str, str]) -> str:
        """The reminder as the customer reads it, with the lead time actually enforced."""
        return texts.fill(self.reminder_text,
                          {**money, "minutes": texts.span_amount(self.reminder_before, timedelta(minutes=1))})


class Disconnect(_Strict):
    # Credit available (balance plus active emergency credit) at or below this starts the cut track.
    at_or_below_minor: int = 0


class Reconnect(_Strict):
    threshold_minor: int
    mode: Literal["close_permitted", "direct_close"] = "close_permitted"
    # UK: taking emergency credit restores supply even though the balance is negative.
    on_emergency_credit: bool = False


class HourRange(_Strict):
    """Local wall-clock range [start, end); end before start wraps past midnight."""

    start: time
    end: time

    @model_validator(mode="after")
    def _not_empty(self) -> HourRange:
        if self.start == self.end:
            raise ValueError("start and end are equal (an empty or 24-hour range is ambiguous)")
        return self

    def contains(self, t: time) -> bool:
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def label(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


class Windows(_Strict):
    """When no automatic cut or load limit may start, in the calendar's local time."""

    hours: tuple[HourRange, ...] = ()
    weekends: bool = False
    public_holidays: bool = False


class Protected(_Strict):
    categories: tuple[str, ...] = ()
    allow_load_limit: bool = False
    escalate_message_id: str = "protected_customer_exhausted"


class LoadLimit(_Strict):
    """A power cap as a life-line step before (or instead of) a cut."""

    enabled: bool = False
    power_w: int = Field(default=0, ge=0)
    before_cut: Duration = Field(default=timedelta(days=1), ge=timedelta(0))
    instead_of_cut: bool = False

    @model_validator(mode="after")
    def _has_power(self) -> LoadLimit:
        if self.enabled and self.power_w <= 0:
            raise ValueError("power_w must be positive when the load limit is enabled")
        return self


class Rules(_Strict):
    name: str
    description: str = ""
    sources: tuple[str, ...] = ()
    country: str | None = None
    subdiv: str | None = None
    currency: str = "XXX"
    warnings: Warnings
    emergency_credit: EmergencyCredit = EmergencyCredit()
    notice: Notice
    disconnect: Disconnect = Disconnect()
    reconnect: Reconnect
    windows: Windows = Windows()
    protected: Protected = Protected()
    load_limit: LoadLimit = LoadLimit()

    @model_validator(mode="after")
    def _hysteresis(self) -> Rules:
        # Without a gap between cut and reconnect thresholds a meter could flap open and closed.
        if self.reconnect.threshold_minor <= self.disconnect.at_or_below_minor:
            raise ValueError(
                f"reconnect.threshold_minor ({self.reconnect.threshold_minor}) must exceed "
                f"disconnect.at_or_below_minor ({self.disconnect.at_or_below_minor})"
            )
        return self


class RulesError(UserError, ValueError):
    """Overrides that do not fit the rules model; ``str()`` is one line naming the key."""


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _in_overrides(overrides: Mapping[str, Any], loc: tuple[Any, ...]) -> bool:
    node: Any = overrides
    for part in loc:
        if (isinstance(node, Mapping) and part in node) or (isinstance(node, list | tuple) and isinstance(part, int) and part < len(node)):
            node = node[part]
        else:
            return False
    return True


def load_preset(name: str, overrides: Mapping[str, Any] | None = None) -> Rules:
    """The named preset with ``overrides`` (a nested dict, as from the config file) merged on top.

    An error in the preset file is a ``TomlError`` with its line; an error caused by an override
    is a ``RulesError`` naming the override key.  Nothing is partially applied.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown rules preset {name!r} (known: {', '.join(PRESETS)})")
    file = PRESET_DIR / f"{name}.toml"
    data, text = read_toml(file)
    merged = _merge(data, overrides or {})
    try:
        return Rules.model_validate(merged)
    except ValidationError as exc:
        err = validation_to_toml_error(file, text, exc)
        loc = tuple(exc.errors()[0]["loc"])
        if overrides and (_in_overrides(overrides, loc) or _model_level(loc, overrides)):
            reason = err.reason
            if exc.errors()[0]["type"] == "value_error":  # a cross-field check: its message says it all
                reason = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            raise RulesError(f"rules override {err.where or '(top level)'}: {reason}") from None
        raise err from None


def _model_level(loc: tuple[Any, ...], overrides: Mapping[str, Any]) -> bool:
    """A cross-field check fails at a table, not a key: blame overrides that touched that table."""
    return len(loc) == 0 or loc[0] in overrides


def load_rules_file(file: str | Path) -> Rules:
    """A complete rules file (not a preset), for deployments that keep their own."""
    data, text = read_toml(file)
    try:
        return Rules.model_validate(data)
    except ValidationError as exc:
        raise validation_to_toml_error(file, text, exc) from None


__all__ = ["PRESETS", "Rules", "RulesError", "TomlError", "load_preset", "load_rules_file"]
