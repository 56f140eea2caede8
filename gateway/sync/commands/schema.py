"""The shape of every head-office command: strict pydantic models, one per type.

Strict means no coercion: ``"amount": 50`` or ``50.0`` is refused (money is a decimal string), an
unknown key is refused (a misspelt ``protected`` must not silently mean "unchanged"), and every
instant must carry its UTC offset.  A failure becomes one line naming the field.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.core.timeutil import parse_iso

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"
_SHORT = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"  # account, meter and tariff ids (as in the config)

COMMAND_TYPES = ("topup", "tariff", "account", "hold", "relay", "read", "ping", "calendar", "notice", "resend")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _instant(v: str | None) -> str | None:
    if v is None:
        return v
    try:
        parse_iso(v)
    except ValueError as exc:
        raise ValueError(f"not an RFC 3339 instant with offset: {v[:40]!r} ({exc})") from None
    return v


class Envelope(_Strict):
    """Fields every command carries; the signature covers all of them except ``sig``."""

    id: str = Field(pattern=_ID)
    type: Literal["topup", "tariff", "account", "hold", "relay", "read", "ping", "calendar", "notice", "resend"]
    gateway_id: str = Field(pattern=_SHORT)
    issued_at: str
    expires_at: str
    key_id: str = Field(min_length=1, max_length=64)
    sig: str = Field(min_length=1, max_length=200)

    _t = field_validator("issued_at", "expires_at")(_instant)

    @property
    def issued(self) -> datetime:
        return parse_iso(self.issued_at)

    @property
    def expires(self) -> datetime:
        return parse_iso(self.expires_at)


class Ping(Envelope):
    pass


class Topup(Envelope):
    account_id: str = Field(pattern=_SHORT)
    amount: str = Field(min_length=1, max_length=24)
    payment_id: str | None = Field(None, pattern=_ID)
    """Defaults to the command id; a payment id applies once whatever route it arrives by."""


class TariffCmd(Envelope):
    tariff: dict[str, Any]


class MeterAssignment(_Strict):
    meter_id: str = Field(pattern=_SHORT)
    keep_power: bool | None = None


class AccountCmd(Envelope):
    account_id: str = Field(pattern=_SHORT)
    tariff_id: str | None = Field(None, pattern=_SHORT)
    name: str | None = Field(None, max_length=200)
    protected: bool | None = None
    protected_category: str | None = Field(None, max_length=64)
    emergency_credit: str | None = Field(None, max_length=24)
    meters: list[MeterAssignment] = Field(default_factory=list, max_length=64)


class HoldCmd(Envelope):
    op: Literal["set", "clear"]
    hold_id: str = Field(pattern=_ID)
    kind: Literal["weather", "emergency"] | None = None
    reason: str | None = Field(None, min_length=1, max_length=500)
    until: str | None = None

    _u = field_validator("until")(_instant)


class RelayCmd(Envelope):
    op: Literal["set", "clear"]
    target: str | None = Field(None, pattern=_SHORT)
    """A meter id or an account id."""
    action: Literal["connect", "disconnect"] | None = None
    reason: str | None = Field(None, min_length=1, max_length=500)
    until: str | None = None
    allow_protected: bool = False
    override_id: int | None = Field(None, ge=1, le=2**53)

    _u = field_validator("until")(_instant)


class ReadCmd(Envelope):
    meter_id: str = Field(pattern=_SHORT)


_YMD = re.compile(r"\d{4}-\d{2}-\d{2}")


def _dates(v: list[str]) -> list[str]:
    for text in v:
        try:
            if not _YMD.fullmatch(text):  # fromisoformat also takes 20270101 and 2027-W01-1
                raise ValueError
            date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not a date YYYY-MM-DD: {text[:20]!r}") from None
    return v


class CalendarCmd(Envelope):
    """One year's official days off and adjusted working days (docs/enforcement.md, "Calendar freshness")."""

    country: str = Field(pattern=r"^[A-Z]{2,3}$")
    year: int = Field(ge=2000, le=2099)
    days_off: list[str] = Field(min_length=1, max_length=366)
    workdays: list[str] = Field(default_factory=list, max_length=366)
    source: str = Field(min_length=1, max_length=300)
    """The notice it transcribes, e.g. 国务院办公厅关于2027年部分节假日安排的通知."""

    _d = field_validator("days_off", "workdays")(_dates)


class NoticeCmd(Envelope):
    """The head office confirms that the notice ``notice_id`` reached the customer (docs/enforcement.md)."""

    account_id: str = Field(pattern=_SHORT)
    notice_id: str = Field(pattern=_ID)
    channel: Literal["sms", "letter", "in_person", "app", "email", "phone"]
    delivered_at: str

    _d = field_validator("delivered_at")(_instant)

    @property
    def delivered(self) -> datetime:
        return parse_iso(self.delivered_at)


MAX_RESEND_SPAN = 10_000  # seqs one resend may ask for (to_seq - from_seq < this)


class ResendCmd(Envelope):
    """Publish again what the head office missed of one epoch (docs/mqtt.md, "Gap repair").  The range
    itself (order, span) is checked by the handler, so that its refusal names both ends."""

    epoch: str = Field(pattern=r"^[0-9a-f]{32}$")
    from_seq: int = Field(ge=1, le=2**53)
    to_seq: int = Field(ge=1, le=2**53)


MODELS: dict[str, type[Envelope]] = {
    "ping": Ping,
    "topup": Topup,
    "tariff": TariffCmd,
    "account": AccountCmd,
    "hold": HoldCmd,
    "relay": RelayCmd,
    "read": ReadCmd,
    "calendar": CalendarCmd,
    "notice": NoticeCmd,
    "resend": ResendCmd,
}


def first_error(exc: ValidationError) -> str:
    """One line: the first problem, with its field path."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "command"
    msg = str(err["msg"]).removeprefix("Value error, ")
    extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {msg}{extra}"
