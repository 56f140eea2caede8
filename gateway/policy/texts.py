"""Customer-facing message templates: which ``{name}``s each text may use, checked at load, and filling.

A warning, the emergency-credit offer, the notice and the reminder are what the customer reads (on the
meter's display, by SMS from the head office): they should state the figures the gateway enforces,
not a copy typed into the preset that drifts from them.  So each text is a template, and the set of
placeholders it may use is fixed per text and checked when the rules load (``pmg run --check`` shows
an unknown one in one line) — a placeholder that could not be filled would otherwise only fail when
the first customer ran low on credit.

Amounts are exact: integer minor units formatted with the gateway's configured minor digits
(``gateway.core.money.format_money``), never floats; the currency is the gateway's configured one (the
preset's ``currency`` is only a default for callers without a configuration).  Placeholders take no
format spec nor conversion (``{balance:>8}``, ``{balance!r}``): every value is already text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import ROUND_FLOOR, Decimal
from string import Formatter

from gateway.core.money import format_money

# Every customer text may state the account's money; each text adds its own figures.
MONEY_FIELDS = frozenset({"balance", "available", "currency"})
WARNING_FIELDS = MONEY_FIELDS  # plus ``days_left`` on a level that has days_left_at_or_below
OFFER_FIELDS = MONEY_FIELDS | {"emergency_credit"}
NOTICE_FIELDS = MONEY_FIELDS | {"days"}
REMINDER_FIELDS = MONEY_FIELDS | {"minutes"}
DAYS_UNKNOWN = "?"  # days left where the gateway has no forecast (no tariff, or nothing consumed)


@dataclass(frozen=True)
class MoneyFormat:
    """The gateway's currency and minor digits (from its configuration) for amounts in texts."""

    currency: str
    minor_digits: int

    def amount(self, minor: int) -> str:
        """``minor`` units as exact decimal text (``-5.12``), without the currency."""
        return format_money(minor, self.minor_digits)


def placeholders(template: str) -> set[str]:
    """The ``{name}`` fields of a template (``{{`` is a literal brace); ``ValueError`` if malformed
    or if a field has a format spec or a conversion (its value is text, a spec could fail on it)."""
    names = set()
    for _, name, spec, conversion in Formatter().parse(template):
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(f"{{{name}}} takes no format spec or conversion")
        names.add(name)
    return names


def check(field_name: str, template: str, allowed: frozenset[str], hints: Mapping[str, str] | None = None) -> None:
    """Raise one line (``ValueError``) if ``template`` is malformed or uses a name not in ``allowed``;
    ``hints``: why a known name is not allowed here, said when the template uses it."""
    try:
        names = placeholders(template)
    except ValueError as exc:
        raise ValueError(f"{field_name}: {exc} (write {{{{ for a literal brace)") from None
    unknown = names - allowed
    if unknown:
        raise ValueError(f"{field_name}: unknown placeholder(s) {sorted(unknown)} "
                         f"(allowed: {sorted(allowed)})"
                         + "".join(f"; {h}" for name, h in sorted((hints or {}).items()) if name in unknown))


def fill(template: str, values: Mapping[str, str]) -> str:
    """The template with its placeholders replaced; the template was checked at load, so every name
    it uses is in ``values`` (a missing one is a programming error and raises ``KeyError``)."""
    return template.format_map(values)


def money_values(balance_minor: int, available_minor: int, money: MoneyFormat) -> dict[str, str]:
    """The figures every customer text may state."""
    return {
        "balance": money.amount(balance_minor),
        "available": money.amount(available_minor),
        "currency": money.currency,
    }


def span_amount(span: timedelta, unit: timedelta) -> str:
    """``span`` in whole or decimal ``unit``s, as a customer reads it: 3, 1.5 (never 3.0)."""
    value = Decimal(span // timedelta(microseconds=1)) / Decimal(unit // timedelta(microseconds=1))
    return format(value.normalize(), "f")


def days_text(days: Decimal | None) -> str:
    """Days of credit left for a customer: whole days, rounded down (a text must not promise a day
    the credit will not last); ``?`` where the gateway has no forecast."""
    if days is None:
        return DAYS_UNKNOWN
    return str(max(days, Decimal(0)).to_integral_value(rounding=ROUND_FLOOR))
