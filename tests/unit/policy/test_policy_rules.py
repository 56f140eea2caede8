"""Rules presets and overrides: every preset loads, every override is validated, errors are one line."""

from datetime import time, timedelta
from pathlib import Path

import pytest

from drivers.tomlsource import TomlError
from gateway.policy.rules import PRESETS, Rules, RulesError, load_preset, load_rules_file


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads(name: str) -> None:
    rules = load_preset(name)
    assert rules.name == name
    assert rules.reconnect.threshold_minor > rules.disconnect.at_or_below_minor


def test_cn_defaults_follow_the_domain_doc() -> None:
    r = load_preset("cn")
    assert r.notice.required and r.notice.period == timedelta(days=3)
    assert r.notice.reminder_before == timedelta(minutes=30)
    assert r.notice.delivery == "head_office" and r.notice.valid_for == timedelta(days=7)
    assert r.notice.escalate_after == timedelta(days=1)
    # Automatic cuts start in working hours (08:00-17:00) of working days: the rest is protected.
    assert [(h.start, h.end) for h in r.windows.hours] == [(time(17), time(8))]
    assert r.windows.weekends and r.windows.public_holidays
    assert "important_user" in r.protected.categories and r.protected.allow_load_limit


def test_uk_defaults_follow_the_domain_doc() -> None:
    r = load_preset("uk")
    assert not r.notice.required
    assert [(h.start, h.end) for h in r.windows.hours] == [(time(18), time(10))]
    assert r.windows.weekends and r.windows.public_holidays and r.subdiv == "ENG"
    assert r.emergency_credit.enabled and r.emergency_credit.amount_minor == 500
    assert r.reconnect.threshold_minor == 100
    assert set(r.protected.categories) == {"medical_equipment", "age_75_plus", "child_under_2", "terminal_illness"}


@pytest.mark.parametrize(("period", "days"), [("P3D", "3"), ("P7D", "7"), ("PT36H", "1.5")])
def test_cn_notice_text_states_the_period_enforced(period: str, days: str) -> None:
    money = {"balance": "-1.00", "available": "-1.00", "currency": "CNY"}
    r = load_preset("cn", {"notice": {"period": period, "valid_for": "P10D"}})
    text = r.notice.notice_text(money)
    assert f"送达{days}日后" in text and f"{days} day(s) after delivery" in text
    assert "三日" not in text
    assert "30分钟后" in r.notice.reminder_message(money) and "in 30 minutes" in r.notice.reminder_message(money)
    hour = load_preset("cn", {"notice": {"reminder_before": "PT1H"}})
    assert "60分钟后" in hour.notice.reminder_message(money)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"notice": {"period": "P7D"}}, "rules override notice: valid_for (7 days, 0:00:00) must exceed period"),
        ({"notice": {"text": "cut in {weeks} weeks"}}, "rules override notice: text: unknown placeholder(s) ['weeks']"),
        ({"notice": {"text": "cut in {days"}}, "rules override notice: text: "),
        ({"notice": {"delivery": "carrier_pigeon"}}, "rules override notice.delivery: "),
    ],
)
def test_notice_rules_are_checked_at_load(overrides: dict, message: str) -> None:
    with pytest.raises(RulesError) as err:
        load_preset("cn", overrides)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_override_merges_one_field_and_keeps_the_rest() -> None:
    r = load_preset("cn", {"notice": {"period": "P5D"}, "windows": {"hours": [{"start": "22:00", "end": "06:00"}]}})
    assert r.notice.period == timedelta(days=5)
    assert r.notice.reminder_before == timedelta(minutes=30)  # untouched
    assert r.windows.hours[0].contains(time(23, 0)) and not r.windows.hours[0].contains(time(12, 0))
    assert load_preset("cn").notice.period == timedelta(days=3)  # the preset itself is unchanged


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"notice": {"perod": "P1D"}}, "rules override notice.perod: unknown key 'perod'"),
        ({"nottice": {}}, "rules override nottice: unknown key 'nottice'"),
        ({"notice": {"period": "soon"}}, "rules override notice.period: "),
        ({"reconnect": {"threshold_minor": 0}}, "must exceed disconnect.at_or_below_minor"),
        ({"warnings": {"level_2": {"balance_at_or_below_minor": 99999}}}, "must not increase"),
        ({"reconnect": {"mode": "teleport"}}, "rules override reconnect.mode"),
        ({"load_limit": {"enabled": True, "power_w": 0}}, "power_w must be positive"),
    ],
)
def test_bad_override_is_one_line_error(overrides: dict, message: str) -> None:
    with pytest.raises(RulesError) as info:
        load_preset("cn", overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_preset_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown rules preset 'fr' \(known: cn, uk, us-tx, generic\)"):
        load_preset("fr")


def test_rules_file_errors_name_file_and_line(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[3] / "gateway" / "presets" / "uk.toml").read_text(encoding="utf-8")
    bad = tmp_path / "rules.toml"
    bad.write_text(text.replace("threshold_minor = 100", "threshold_minor = 100\ncolour = 'red'"), encoding="utf-8")
    with pytest.raises(TomlError) as info:
        load_rules_file(bad)
    line = text.splitlines().index("threshold_minor = 100                 # emergency credit used, plus £1, repaid")
    assert str(info.value) == f"{bad}:{line + 2}: reconnect.colour: unknown key 'colour'"
    ok = tmp_path / "ok.toml"
    ok.write_text(text, encoding="utf-8")
    assert isinstance(load_rules_file(ok), Rules)
