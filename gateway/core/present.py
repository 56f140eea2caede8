"""How an instant and an amount are shown: to a person, and to a script.

One module so that every surface that shows the ledger (the ``pmg`` commands, the web console, the
customer texts) speaks with one voice:

- a person reads an instant in the gateway's configured zone with its offset, to the second
  (``2026-12-02 23:46:30 +08:00``), or in UTC when asked (``pmg --utc``): stored instants are UTC
  with microseconds, which no technician can compare with the clock on the wall;
- a script reads ISO 8601 UTC to the second (``2026-12-02T15:46:30Z``) whatever the zone, so a
  parser needs one format;
- an amount is exact decimal text in the configured minor digits, with the configured currency
  for a person (``12.50 CNY``) and without it in JSON, where ``currency`` is its own field.

Pure: no I/O, nothing below ``core`` is imported; the zone and the currency are given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

from gateway.core.money import format_money

# A stored instant: an ISO 8601 date-time with a UTC offset or Z (the only strings normalised).
_INSTANT = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})$"
)
NEVER = "never"


def to_instant(value: datetime | str) -> datetime:
    """A stored instant (aware datetime or RFC 3339 text) as an aware datetime; naive is refused."""
    dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00")) if isinstance(value, str) else value
    if dt.tzinfo is None:
        raise ValueError(f"time '{value}' has no UTC offset")
    return dt


def is_instant_text(value: str) -> bool:
    """Whether ``value`` is a whole ISO 8601 instant with an offset (not a date, not prose)."""
    return bool(_INSTANT.match(value))


def instant_text(value: datetime | str | None, tz: tzinfo, *, utc: bool = False, none: str = NEVER) -> str:
    """For a person: ``2026-12-02 23:46:30 +08:00`` in ``tz`` (or ``+00:00`` with ``utc``), to the
    second (truncated: a reading taken at :30.9 was not taken at :31)."""
    if value is None or value == "":
        return none
    dt = to_instant(value).astimezone(UTC if utc else tz).replace(microsecond=0)
    offset = dt.strftime("%z")  # +0800
    return f"{dt:%Y-%m-%d %H:%M:%S} {offset[:3]}:{offset[3:]}"


def instant_json(value: datetime | str | None) -> str | None:
    """For a script: ISO 8601 UTC to the second, ``2026-12-02T15:46:30Z``."""
    if value is None:
        return None
    return to_instant(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def money_text(minor: int, minor_digits: int, currency: str) -> str:
    """For a person: ``-3.50 CNY``."""
    return f"{format_money(minor, minor_digits)} {currency}"


def money_json(minor: int | None, minor_digits: int) -> str | None:
    """For a script: the exact decimal as text (``"-3.50"``): a JSON number would invite floats."""
    return None if minor is None else format_money(minor, minor_digits)


def json_ready(value: Any) -> Any:
    """``value`` with every instant in the JSON form (datetimes and stored instant texts, at any
    depth), so that no command can print a zone-dependent or microsecond timestamp to a script."""
    if isinstance(value, datetime):
        return instant_json(value)
    if isinstance(value, str):
        return instant_json(value) if is_instant_text(value) else value
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def scalar_text(value: Any, *, none: str = "-") -> str:
    """A value a person reads in a table cell or a sentence: never a Python repr (``None``, a dict,
    ``True``): absent is ``none``, booleans are yes/no, a mapping is ``key value, …``."""
    if value is None or value == "":
        return none
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k} {scalar_text(v, none=none)}" for k, v in value.items()) or none
    if isinstance(value, list | tuple):
        return ", ".join(scalar_text(v, none=none) for v in value) or none
    return str(value)


@dataclass(frozen=True)
class Presenter:
    """The site's way of showing things: its zone, its currency, and whether the reader asked for UTC."""

    tz: tzinfo
    currency: str
    minor_digits: int
    utc: bool = False

    def when(self, value: datetime | str | None, none: str = NEVER) -> str:
        """An instant for a person (local with offset, or UTC with ``--utc``)."""
        return instant_text(value, self.tz, utc=self.utc, none=none)

    def money(self, minor: int) -> str:
        """An amount for a person, with the configured currency."""
        return money_text(minor, self.minor_digits, self.currency)

    def amount(self, minor: int) -> str:
        """An amount without the currency (a table column whose header names it)."""
        return format_money(minor, self.minor_digits)
