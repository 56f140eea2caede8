"""Money as text (``gateway.core.money.parse_money``): every channel's amounts go through it.

A payment over MQTT, the CLI or the web console is a decimal string; anything else is refused with
``MoneyError`` rather than read "generously" (docs/ledger.md, "Money").
"""

from __future__ import annotations

import pytest

from gateway.core.money import MoneyError, format_money, parse_money


@pytest.mark.parametrize(
    "text,digits,minor",
    [("12.34", 2, 1234), ("0.5", 2, 50), ("-3.50", 2, -350), ("7", 0, 7), ("1.2300", 2, 123), (" 5.00 ", 2, 500)],
)
def test_decimal_strings_become_exact_minor_units(text: str, digits: int, minor: int) -> None:
    assert parse_money(text, digits) == minor
    assert parse_money(format_money(minor, digits), digits) == minor


@pytest.mark.parametrize(
    "text",
    [
        "٣",  # ARABIC-INDIC DIGIT THREE: int() and Decimal() take it, an amount must not
        "٣.٠٠",
        "１２.００",  # fullwidth digits
        "1_000",
        "1e3",
        "nan",
        "1.2.3",
        "",
        "+5",
        "0x10",
        "1.001",
    ],
)
def test_anything_but_ascii_decimal_text_is_refused(text: str) -> None:
    with pytest.raises(MoneyError):
        parse_money(text, 2)
