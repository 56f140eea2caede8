"""``pmg install-config``: /etc/pmg laid out from the shipped examples, nothing overwritten, bad input one line."""

from __future__ import annotations

import grp
import json
import os
import stat
from pathlib import Path

from click.testing import CliRunner

from gateway.cli.commands.install import example_config
from gateway.cli.main import cli
from gateway.config import load_config, resolve
from gateway.tariffs.model import example_dir, load_tariff_dir


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_lays_out_a_configuration_whose_tariff_dir_holds_the_tariffs_it_names(tmp_path: Path) -> None:
    status, out, _ = _run("install-config", "--root", str(tmp_path))
    assert status == 0, out
    config = tmp_path / "etc" / "pmg" / "gateway.toml"
    assert config.read_bytes() == example_config().read_bytes()
    cfg = load_config(config)
    tariffs = load_tariff_dir(resolve(config, cfg.tariff_dir))
    assert resolve(config, cfg.tariff_dir) == tmp_path / "etc" / "pmg" / "tariffs"
    assert {m.tariff for m in cfg.meters} <= set(tariffs)
    assert sorted(p.name for p in (tmp_path / "etc/pmg/tariffs").iterdir()) == sorted(
        p.name for p in example_dir().glob("*.toml")
    )
    assert stat.S_IMODE((tmp_path / "etc/pmg").stat().st_mode) == 0o750
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert out.splitlines()[-1] == f"next: edit {config}, then pmg run --check -c {config}"


def test_a_second_run_keeps_what_exists_and_adds_what_is_missing(tmp_path: Path) -> None:
    assert _run("install-config", "--root", str(tmp_path))[0] == 0
    config = tmp_path / "etc/pmg/gateway.toml"
    config.write_text("# mine\n")
    (tmp_path / "etc/pmg/tariffs/flat-cn.toml").unlink()
    status, out, _ = _run("install-config", "--root", str(tmp_path), "--json")
    assert status == 0
    report = json.loads(out)
    assert report["written"] == [str(tmp_path / "etc/pmg/tariffs/flat-cn.toml")]
    assert str(config) in report["kept"]
    assert config.read_text() == "# mine\n"


def test_group_is_given_to_what_it_creates(tmp_path: Path) -> None:
    name = grp.getgrgid(os.getgid()).gr_name
    assert _run("install-config", "--root", str(tmp_path), "--group", name)[0] == 0
    assert (tmp_path / "etc/pmg/gateway.toml").stat().st_gid == os.getgid()


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    status, _, err = _run("install-config", "--root", str(missing))
    assert status == 2 and err.count("\n") == 1 and "is not a directory" in err
    status, _, err = _run("install-config", "--root", str(tmp_path), "--group", "no-such-group-x")
    assert status == 2 and err.count("\n") == 1 and "no group 'no-such-group-x'" in err
    assert not (tmp_path / "etc").exists()
