"""One root for the gateway's errors (docs/architecture.md, "Errors"): the CLI maps by class."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import click
import pytest
from click.testing import CliRunner

import drivers
import gateway
from gateway.cli.main import PmgGroup
from gateway.core.errors import OperationFailed, PmgError, UserError


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
