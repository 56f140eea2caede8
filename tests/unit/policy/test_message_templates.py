"""Customer texts as templates: each text's placeholders are checked at load (one line naming the key),
and the texts a decision emits carry the account's figures in the gateway's configured money."""

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.base import RelayState
from drivers.tomlsource import TomlError
from gateway.core.calendar import WorkCalendar
from gateway.policy import texts
from gateway.policy.decide import AccountView, MeterView, decide
from gateway.policy.rules import PRESETS, RulesError, load_preset, load_rules_file
from gateway.policy.state import ActionKind as K
from gateway.policy.state import EnforcementState as S
from gateway.policy.texts import MoneyFormat

LONDON = WorkCalendar("Europe/London", "GB", "ENG")
SHANGHAI = WorkCalendar("Asia/Shanghai", "CN")
WEDNESDAY_11 = datetime(2026, 3, 11, 11, 0, tzinfo=UTC)  # a working day: 11:00 in London
CN_WEDNESDAY_11 = datetime(2026, 3, 11, 3, 0, tzinfo=UTC)  # 11:00 in Shanghai


def account(balance: int, **kw: object) -> AccountView:
    base = AccountView("A1", balance, 0, False, None, False, None, S.NORMAL, datetime(2026, 1, 1, tzinfo=UTC))
    return replace(base, **kw)  # type: ignore[arg-type]


METER = MeterView("M1", RelayState.CLOSED, True, False, False, False)


def messages(d: object, kind: K) -> list[str]:
    return [a.message or "" for a in d.actions if a.kind is kind]  # type: ignore[attr-defined]


# -- validation at load -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"warnings": {"level_2": {"text": "low: {balanse}"}}},
         "rules override warnings.level_2: text: unknown placeholder(s) ['balanse']"),
        ({"warnings": {"level_3": {"text": "{days_left} days"}}},
         "rules override warnings.level_3: text: unknown placeholder(s) ['days_left']"),
        ({"warnings": {"level_1": {"text": "{balance:>8}"}}},
         "rules override warnings.level_1: text: {balance} takes no format spec or conversion"),
        ({"warnings": {"level_1": {"text": "{balance!r}"}}},
         "rules override warnings.level_1: text: {balance} takes no format spec or conversion"),
        ({"warnings": {"level_1": {"text": "{}"}}}, "rules override warnings.level_1: text: unknown placeholder(s) ['']"),
        ({"emergency_credit": {"text": "{days} of credit"}},
         "rules override emergency_credit: text: unknown placeholder(s) ['days']"),
        ({"notice": {"reminder_text": "{days} days"}},
         "rules override notice: reminder_text: unknown placeholder(s) ['days']"),
        ({"notice": {"text": "{balance.real}"}}, "rules override notice: text: unknown placeholder(s) ['balance.real']"),
    ],
)
def test_an_unknown_placeholder_is_one_line_naming_the_text(overrides: dict, message: str) -> None:
    with pytest.raises(RulesError) as err:
        load_preset("cn", overrides)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_days_left_is_refused_where_the_level_has_no_days_threshold_and_says_why() -> None:
    with pytest.raises(RulesError, match=r"\['days_left'\] .*; \{days_left\} needs days_left_at_or_below on this level$"):
        load_preset("uk", {"warnings": {"level_3": {"text": "about {days_left} days"}}})
    level_1 = load_preset("uk", {"warnings": {"level_1": {"text": "about {days_left} days"}}}).warnings.level_1
    assert level_1.message({}, Decimal("2.9")) == "about 2 days"  # rounded down: never promise a day
    assert level_1.message({}, None) == "about ? days"  # no forecast (no tariff, nothing consumed)


def test_every_allowed_placeholder_is_accepted_and_literal_braces_stay() -> None:
    r = load_preset("cn", {
        "warnings": {"level_1": {"text": "{balance} {available} {currency} {days_left} {{x}}"}},
        "emergency_credit": {"text": "{emergency_credit} {balance} {available} {currency}"},
        "notice": {"text": "{days} {balance} {available} {currency}",
                   "reminder_text": "{minutes} {balance} {available} {currency}"},
    })
    money = texts.money_values(-512, 0, MoneyFormat("CNY", 2))
    assert r.warnings.level_1.message(money, Decimal(3)) == "-5.12 0.00 CNY 3 {x}"
    assert r.emergency_credit.offer_text(money, "5.00") == "5.00 -5.12 0.00 CNY"
    assert r.notice.notice_text(money) == "3 -5.12 0.00 CNY"
    assert r.notice.reminder_message(money) == "30 -5.12 0.00 CNY"


def test_a_bad_placeholder_in_a_rules_file_names_its_table_line(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[3] / "gateway" / "presets" / "generic.toml").read_text()
    bad = text.replace('text = "Your credit is very low: {balance} {currency} left."',
                       'text = "Your credit is very low: {saldo}."')
    assert bad != text
    file = tmp_path / "rules.toml"
    file.write_text(bad)
    with pytest.raises(TomlError) as err:
        load_rules_file(file)
    line = 1 + bad[: bad.index("[warnings.level_2]")].count("\n")  # a check across the table's keys
    assert f":{line}" in str(err.value) and "['saldo']" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", PRESETS)
def test_every_shipped_text_fills_and_states_the_balance(name: str) -> None:
    r = load_preset(name)
    money = texts.money_values(1234, 1234, MoneyFormat("EUR", 2))
    for lv in r.warnings.levels():
        filled = lv.message(money, Decimal("4.5"))
        assert "{" not in filled and "12.34" in filled and "EUR" in filled, (name, filled)
    for filled in (r.emergency_credit.offer_text(money, "5.00"), r.notice.notice_text(money),
                   r.notice.reminder_message(money)):
        assert "{" not in filled and "}" not in filled, (name, filled)


# -- money: exact, in the configured digits ---------------------------------------------------------

@pytest.mark.parametrize(("digits", "minor", "text"),
                         [(2, -512, "-5.12"), (0, -512, "-512"), (3, 1234, "1.234"), (2, 5, "0.05")])
def test_amounts_are_exact_in_the_configured_minor_digits(digits: int, minor: int, text: str) -> None:
    assert MoneyFormat("XXX", digits).amount(minor) == text


# -- filled where the decision builds the message ---------------------------------------------------

def test_a_warning_states_balance_and_the_configured_currency_not_the_presets() -> None:
    d = decide(account(450), METER, WEDNESDAY_11, SHANGHAI, load_preset("cn"), money=MoneyFormat("HKD", 2))
    (warn,) = messages(d, K.WARN)
    assert warn.startswith("low_credit_2: ") and "余额4.50HKD" in warn and "(4.50 HKD)" in warn
    # Without a configuration: the preset's currency, in cents.
    (plain,) = messages(decide(account(450), METER, WEDNESDAY_11, SHANGHAI, load_preset("cn")), K.WARN)
    assert "4.50 CNY" in plain


def test_the_emergency_credit_offer_states_the_amount_granted_and_the_credit_it_makes_available() -> None:
    uk = load_preset("uk")
    acc = account(-20, emergency_credit_minor=750, state=S.WARNING_2, warnings_sent={1: WEDNESDAY_11, 2: WEDNESDAY_11})
    d = decide(acc, METER, WEDNESDAY_11, LONDON, uk, money=MoneyFormat("GBP", 2))
    (offer,) = messages(d, K.OFFER_EMERGENCY_CREDIT)
    assert offer == "emergency_credit_offer: Emergency credit of 7.50 GBP is available: press A on your meter."
    custom = load_preset("uk", {"emergency_credit": {"text": "{emergency_credit}: now {available} (was {balance})"}})
    (offer,) = messages(decide(acc, METER, WEDNESDAY_11, LONDON, custom, money=MoneyFormat("GBP", 3)),
                        K.OFFER_EMERGENCY_CREDIT)
    assert offer.endswith(": 0.750: now 0.730 (was -0.020)")


def test_notice_and_reminder_state_the_balance() -> None:
    cn = load_preset("cn", {"notice": {"reminder_text": "{minutes} min, balance {balance} {currency}"}})
    d = decide(account(-300), METER, WEDNESDAY_11, SHANGHAI, cn, money=MoneyFormat("CNY", 2))
    (notice,) = messages(d, K.SERVE_NOTICE)
    assert "电费余额-3.00CNY" in notice and "送达3日后" in notice
    acc = account(-300, state=S.NOTICE_SERVED, notice_served_at=datetime(2026, 3, 6, 2, tzinfo=UTC),
                  notice_delivered_at=datetime(2026, 3, 6, 2, tzinfo=UTC), warnings_sent={3: WEDNESDAY_11})
    d = decide(acc, METER, CN_WEDNESDAY_11, SHANGHAI, cn, money=MoneyFormat("CNY", 2))
    (reminder,) = messages(d, K.SEND_REMINDER)
    assert reminder == "disconnect_reminder: 30 min, balance -3.00 CNY"
