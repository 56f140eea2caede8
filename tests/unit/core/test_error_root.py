"""One root for the gateway's errors (docs/architecture.md, "Errors"): the CLI maps by class."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sqlite3

import click
import pytest
from click.testing import CliRunner
from support.gateway_harness import base_config, write_config

import drivers
import gateway
from gateway.cli.main import PmgGroup, cli
from gateway.core.errors import OperationFailed, PmgError, UserError
from gateway.store.db import open_store
from gateway.store.migrations import MIGRATIONS


def _modules(package):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if ".demo" in info.name or info.name.endswith("__main__"):
            continue
        yield importlib.import_module(info.name)


def _own_exceptions(package):
    for module in _modules(package):
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                yield obj


def test_every_gateway_error_has_the_one_root():
    orphans = [f"{c.__module__}.{c.__name__}" for c in _own_exceptions(gateway) if not issubclass(c, PmgError)]
    assert orphans == []


def test_one_link_error_for_every_protocol():
    names = {f"{c.__module__}.{c.__name__}" for c in _own_exceptions(drivers) if c.__name__ == "LinkError"}
    assert names == {"drivers.base.LinkError"}


class _Bad(UserError):
    pass


class _Broken(OperationFailed):
    pass


@pytest.mark.parametrize(("error", "status"), [(_Bad("no such thing"), 2), (_Broken("disk full"), 1)])
def test_cli_maps_by_class(error, status):
    @click.group(cls=PmgGroup)
    def root() -> None:
        pass

    @root.command()
    def go() -> None:
        raise error

    result = CliRunner().invoke(root, ["go"])
    assert result.exit_code == status
    assert "Traceback" not in result.output


def test_a_database_from_a_newer_pmg_is_one_line_exit_1(tmp_path):
    """SchemaTooNew was a bare RuntimeError: ``pmg payment add`` printed a traceback.  It is an
    OperationFailed now (the input is fine; this pmg cannot do it)."""
    open_store(tmp_path / "pmg.db").close()
    conn = sqlite3.connect(tmp_path / "pmg.db")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    cfg = write_config(tmp_path / "gw.toml", base_config(tmp_path / "pmg.db"))
    args = ["payment", "add", "-c", str(cfg), "a1", "10.00", "--id", "cash-1", "--actor", "clerk"]
    result = CliRunner().invoke(cli, args, prog_name="pmg")
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "newer than this pmg" in lines[0], result.stderr
    assert "Traceback" not in result.output + result.stderr
