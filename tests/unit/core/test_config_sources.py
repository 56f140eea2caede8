"""Settings come from the one validated configuration: ``[risk]`` and ``profile_dirs``, no side files.

The risk rule used to be read from a ``risk.toml`` beside the configuration on every settlement run (a
typo stopped standing charges, found a minute at a time), and meter profiles were found through an
undocumented environment variable or by walking up from the source tree.  Both are now keys of the
configuration, checked by ``load_config`` — at start, by ``run --check`` and on SIGHUP.
"""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from test_config import GOOD, write

from gateway.config import ConfigError, load_config

SITE_PROFILE = """\
[meter]
name = "site meter"

[points.energy_import]
register = 0x0000
function = 3
type = "u32"
scale = "0.01"
unit = "kWh"
"""


def test_the_risk_section_is_part_of_the_configuration(tmp_path: Path) -> None:
    text = GOOD + '\n[risk]\ndays_left = ["10", "5", "2"]\nno_payment_days = 45\n'
    cfg = load_config(write(tmp_path, text))
    assert cfg.risk.days_left == (Decimal(10), Decimal(5), Decimal(2))
    assert cfg.risk.no_payment_days == 45 and cfg.risk.recent_days == 7
    assert load_config(write(tmp_path, GOOD)).risk.days_left == (Decimal(14), Decimal(7), Decimal(3))


@pytest.mark.parametrize(
    ("risk", "fragment"),
    [
        ("no_payment_dayz = 3\n", "risk.no_payment_dayz: unknown key"),
        ('days_left = ["3", "7", "14"]\n', "risk: days_left must not increase"),
        ("days_left = [14.5, 7, 3]\n", "a TOML float is inexact"),
        ("negative_balance_grade = 4\n", "risk.negative_balance_grade"),
    ],
)
def test_a_bad_risk_value_is_one_line_with_its_line(tmp_path: Path, risk: str, fragment: str) -> None:
    text = GOOD + "\n[risk]\n" + risk
    path = write(tmp_path, text)
    header = text.splitlines().index("[risk]") + 1
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message and fragment in message, message
    assert message.startswith((f"{path}:{header}: ", f"{path}:{header + 1}: ")), message


def test_run_check_stops_on_a_bad_risk_value(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "\n[risk]\nrecent_days = 0\n")
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", "run", "--check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "risk.recent_days" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "pmg.db").exists()


def test_a_left_over_risk_file_is_refused_not_silently_ignored(tmp_path: Path) -> None:
    (tmp_path / "risk.toml").write_text("no_payment_days = 10\n")
    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigError, match=r"risk.toml beside this file is no longer read: move its keys into"):
        load_config(path)


def test_profile_dirs_add_a_sites_own_profiles_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "site.toml").write_text(SITE_PROFILE)
    text = GOOD.replace('profile = "sdm120"', 'profile = "site"')
    cfg = load_config(write(tmp_path, 'profile_dirs = ["profiles"]\n' + text))
    assert cfg.profile_dirs == [str(tmp_path / "profiles")]
    m2 = next(m for m in cfg.meters if m.id == "m2")
    assert cfg.profile_file(m2) == str(tmp_path / "profiles" / "site.toml")
    m1 = next(m for m in cfg.meters if m.id == "m1")
    assert cfg.profile_file(m1) is None  # DL/T 645: no profile


@pytest.mark.parametrize(
    ("head", "change", "line", "fragment"),
    [
        ('profile_dirs = ["nowhere"]\n', None, 1, "profile_dirs[0]: no such directory"),
        ("", ('profile = "sdm120"', 'profile = "sdm121"'), 26, "meters[1].profile: unknown meter profile 'sdm121'"),
        ("", ('profile = "sdm120"', 'profile = "nowhere/x.toml"'), 26, "meters[1].profile: no such profile file: "),
    ],
)
def test_a_missing_profile_or_directory_stops_the_load(
    tmp_path: Path, head: str, change: tuple[str, str] | None, line: int, fragment: str
) -> None:
    text = GOOD.replace(*change) if change else GOOD
    path = write(tmp_path, head + text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}:{line}: {fragment}"), str(err.value)


def test_sighup_applies_a_good_risk_section_and_keeps_the_running_one_on_a_bad_value(tmp_path: Path) -> None:
    import asyncio

    from support.gateway_harness import offline_config

    from gateway.runtime.daemon import Gateway

    cfg_path = offline_config(tmp_path, 1)
    body = cfg_path.read_text()

    async def main() -> None:
        gw = Gateway(cfg_path, load_config(cfg_path))
        await gw.start()
        try:
            assert gw.cfg.risk.no_payment_days == 30
            cfg_path.write_text(body + "\n[risk]\nno_payment_days = 10\n")
            assert await gw.reload() is True
            assert gw.cfg.risk.no_payment_days == 10
            cfg_path.write_text(body + "\n[risk]\nno_payment_days = 0\n")  # below the minimum of 1
            assert await gw.reload() is False
            assert gw.cfg.risk.no_payment_days == 10  # the running configuration is kept
        finally:
            await gw.stop()

    asyncio.run(main())


def test_a_profile_given_as_a_path_is_relative_to_the_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "mine.toml").write_text(SITE_PROFILE)
    path = write(tmp_path, GOOD.replace('profile = "sdm120"', 'profile = "site/mine.toml"'))
    monkeypatch.chdir(tmp_path / "site")  # a working directory where "site/mine.toml" does not exist
    cfg = load_config(path)
    m2 = next(m for m in cfg.meters if m.id == "m2")
    assert cfg.profile_file(m2) == str(tmp_path / "site" / "mine.toml")
