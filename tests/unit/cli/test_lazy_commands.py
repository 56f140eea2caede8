"""``pmg``'s commands load lazily (gateway/cli/lazy.py): ``pmg run`` imports only the daemon's modules,
and ``pmg --help`` still lists every command with its one-line help.

The import check runs in a fresh interpreter (``sys.modules`` of this test process holds whatever other
tests imported); tests/integration/test_daemon_imports.py checks a running daemon the same way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner
from support.daemon_imports import forbidden_in

from gateway.cli.main import COMMANDS, PmgGroup, cli

REPO = Path(__file__).resolve().parents[3]


def fresh_modules(code: str) -> set[str]:
    """``sys.modules`` after ``code`` runs in a new interpreter of this checkout."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_loading_the_run_command_imports_none_of_the_other_commands_parts() -> None:
    modules = fresh_modules(
        "import click\nfrom gateway.cli.main import cli\n"
        "assert cli.get_command(click.Context(cli), 'run') is not None"
    )
    assert "gateway.cli.commands.run" in modules  # the probe did load the command
    assert forbidden_in(modules) == []
    others = {m for m in modules if m.startswith("gateway.cli.commands.")} - {"gateway.cli.commands.run"}
    assert others == set()


def fresh_group() -> PmgGroup:
    """``pmg``'s group with nothing loaded yet (other tests load commands into ``cli``)."""
    return PmgGroup(
        "pmg",
        lazy_commands=COMMANDS,
        params=cli.params,
        callback=cli.callback,
        help=cli.help,
        context_settings=cli.context_settings,
    )


def test_help_lists_every_command_with_the_same_line_as_the_command_itself() -> None:
    runner = CliRunner()
    for width in (110, 60):
        group = fresh_group()
        lazy = runner.invoke(group, ["--help"], terminal_width=width)
        assert lazy.exit_code == 0, lazy.output
        assert group.commands == {}  # the help imported no command
        for name in COMMANDS:
            group.get_command(click.Context(group), name)  # now every command is loaded: click's own lines
        loaded = runner.invoke(group, ["--help"], terminal_width=width)
        assert lazy.output == loaded.output
    names = [line.split()[0] for line in loaded.output.split("Commands:")[1].splitlines() if line.strip()]
    assert names == sorted(COMMANDS) and "run" in names and "web" in names


def test_the_table_names_each_command_by_its_own_name() -> None:
    for name, entry in COMMANDS.items():
        assert entry.load().name == name
    group = cli.get_command(click.Context(cli), "hq")
    assert isinstance(group, click.Group)
    assert {"ingest", "gaps", "reconcile", "quarantine", "topup"} <= set(group.commands)


def test_an_unknown_command_is_one_line_and_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["pmg: error: No such command 'nope'."]


def test_each_simulator_is_named_and_helped_as_its_own_command() -> None:
    from gateway.cli.commands.sim import SIMULATORS

    for name, entry in SIMULATORS.items():
        command = entry.load()
        assert command.name == name
        assert (command.help or "").split("\n")[0] == entry.help


def _without_gurux(*argv: str) -> subprocess.CompletedProcess[str]:
    """``pmg ARGV`` in a fresh interpreter where the dlms extra (Gurux) is not installed."""
    code = (
        "import sys\nsys.modules['gurux_dlms'] = None\nsys.argv = ['pmg', *sys.argv[1:]]\n"
        "from gateway.cli.main import main\nmain()"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_without_the_dlms_extra_the_other_simulators_run_and_the_dlms_one_says_what_is_missing() -> None:
    """The DLMS meter is built on Gurux, an optional extra: ``pmg sim dlt645`` must not need it, and
    ``pmg sim dlms`` says in one line which package to install (exit 1), never a traceback."""
    for argv in (("sim", "dlt645", "--help"), ("sim", "modbus", "--help"), ("sim", "fleet", "--help")):
        ok = _without_gurux(*argv)
        assert ok.returncode == 0, ok.stderr
    missing = _without_gurux("sim", "dlms", "--help")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "pmg: error: this command needs the Python package 'gurux_dlms', which is not installed: "
        "pip install 'prepaid-meter-gateway[dlms]'"
    ]
