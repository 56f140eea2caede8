"""How the console shows money, energy and instants.

Small and local on purpose: money stays integer minor units until ``format_money`` writes it (never a
float), instants are stored in UTC and shown in the gateway's own time zone (``timezone``), which is
the one its tariffs and protected hours use.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from decimal import Decimal

from gateway.core.money import format_money
from gateway.core.present import instant_text
from gateway.core.timeutil import parse_iso


def money(minor: int | None, digits: int) -> str:
    return "" if minor is None else format_money(minor, digits)


def kwh(wh: int | None) -> str:
    """Wh as kWh with two decimals, exactly (integer arithmetic, rounded half up on the third)."""
    if wh is None:
        return ""
    sign = "-" if wh < 0 else ""
    tens = (abs(wh) + 5) // 10  # hundredths of a kWh
    return f"{sign}{tens // 100}.{tens % 100:02d}"


def local(text: str | None, tz: tzinfo) -> str:
    """A stored ISO instant as the command line shows it (``2026-12-02 23:46:30 +08:00``, the
    gateway's zone with its offset: one voice with ``gateway.core.present``); empty when unknown, the
    stored text itself when unreadable."""
    if not text:
        return ""
    try:
        return instant_text(text, tz, none="")
    except ValueError:
        return text


def ago(text: str | None, now: datetime) -> int | None:
    """Whole seconds since a stored instant (None when unknown)."""
    if not text:
        return None
    try:
        return max(0, int((now - parse_iso(text)).total_seconds()))
    except ValueError:
        return None


def days(value: Decimal | None) -> str:
    return "" if value is None else f"{value:.1f}"
