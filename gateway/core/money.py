"""Money: integer minor units at rest, exact Decimals in flight, one documented rounding rule.

Rounding rule (the only one in the product): an exact Decimal amount becomes minor units with
ROUND_HALF_EVEN, and charges are rounded *cumulatively* per meter — each posted charge is
``round(cumulative exact) − cumulative posted`` — so the sum of posted charges never differs from
the exact price of all energy by more than half a minor unit, however many small intervals there are.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Context, Decimal

from gateway.core.errors import UserError

_MONEY_TEXT = re.compile(r"^(-)?([0-9]{1,15})(?:\.([0-9]+))?$")  # ASCII digits: \d also takes "٣"


class MoneyError(UserError, ValueError):
    """A money value that cannot be represented exactly in the account's minor units."""


MAX_PAYMENT_MINOR = 10**11
"""A sanity ceiling on one payment (a billion in major units at two decimals): a head office's top-up
is refused at its command line with the same limit the gateway applies (docs/ledger.md)."""

# Fifty digits hold any amount a ledger sees; ``scaleb`` moves the point exactly, ``quantize`` rounds.
_MINOR = Context(prec=50, rounding=ROUND_HALF_EVEN)
_ONE = Decimal(1)
# The context's methods bound once: a Context looks its attributes up through its own getattr (it
# special-cases ``traps`` and ``flags``), a few hundred instructions per call on every charged reading.
_scaleb, _quantize = _MINOR.scaleb, _MINOR.quantize
# The two-digit fractions "00".."99": the usual currency's minor units without a format spec per call.
_CENTS = tuple(f"{i:02d}" for i in range(100))


def to_minor(amount: Decimal, digits: int = 2) -> int:
    """Exact Decimal → integer minor units, ROUND_HALF_EVEN (the one rounding a charge gets)."""
    return int(_quantize(_scaleb(amount, digits), _ONE))


def parse_money(text: str, digits: int = 2) -> int:
    """A decimal string like "12.34" → 1234 minor units.  Refuses floats, exponents and excess digits."""
    if not isinstance(text, str):
        raise MoneyError(f"money must be a decimal string, not {type(text).__name__}")
    m = _MONEY_TEXT.match(text.strip())
    if not m:
        raise MoneyError(f"not a decimal amount: {text!r}")
    sign, whole, frac = m.group(1), m.group(2), m.group(3) or ""
    if len(frac) > digits and frac[digits:].strip("0"):
        raise MoneyError(f"{text!r} has more than {digits} decimal places")
    frac = (frac + "0" * digits)[:digits]
    value = int(whole) * 10**digits + (int(frac) if digits else 0)
    return -value if sign else value


def format_money(minor: int, digits: int = 2) -> str:
    """Integer minor units → decimal string ("-0.05")."""
    if digits == 2:  # nearly every currency (two per charged reading): the fraction from a table
        if minor >= 0:
            q, r = divmod(minor, 100)
            return f"{q}.{_CENTS[r]}"
        q, r = divmod(-minor, 100)
        return f"-{q}.{_CENTS[r]}"
    sign = "-" if minor < 0 else ""
    q, r = divmod(abs(minor), 10**digits)
    return f"{sign}{q}.{r:0{digits}d}" if digits else f"{sign}{q}"
