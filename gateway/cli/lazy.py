"""A click group whose commands are imported when one is run, not when ``pmg`` starts.

``pmg run`` is the daemon: a long-running process on a small concentrator, where every module imported
stays in memory for months.  Registering every command at import pulled in the simulators, the head
office's tools, the web console and their libraries (about 15 MB of a 60 MB daemon) for a process that
runs none of them.  Here each command is a row of a static table — name, ``module:attribute``, the
one-line help ``pmg --help`` shows — and its module is imported only by ``get_command`` (click's
"lazy loading of subcommands").  ``pmg --help`` is written from the table without importing anything;
a test checks the table against the commands themselves.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import click

from gateway.core.errors import OperationFailed

OUR_PACKAGES = frozenset({"gateway", "drivers", "simulators", "hq"})
EXTRAS = {  # pyproject.toml's optional dependencies, by the package a command imports
    "gurux_dlms": "dlms",
    "psycopg": "hq",
    "psycopg_pool": "hq",
    "starlette": "web",
    "jinja2": "web",
    "uvicorn": "web",
    "multipart": "web",
}


class MissingExtra(OperationFailed):
    """A command whose optional library is not installed (``pip install 'prepaid-meter-gateway[dlms]'``)."""


@dataclass(frozen=True)
class LazyCommand:
    """Where a command lives and what ``pmg --help`` says of it before it is imported.

    ``target`` is ``"package.module:attribute"``: a ``click.Command``, or a function without arguments
    that returns one (for a group that gathers commands from several modules)."""

    target: str
    help: str

    def load(self) -> click.Command:
        """The command; a library of an extra that is not installed is one line (exit 1), and any other
        error while importing our own module is a programming error, never taken for bad input."""
        module_name, _, attribute = self.target.partition(":")
        try:
            found: Any = getattr(importlib.import_module(module_name), attribute)
        except ModuleNotFoundError as exc:
            top = (exc.name or "").partition(".")[0]
            if top in OUR_PACKAGES or not top:
                raise ImportError(f"{self.target}: {exc}") from exc  # ours: a defect, shown as one
            extra = EXTRAS.get(top)
            hint = f"pip install 'prepaid-meter-gateway[{extra}]'" if extra else "an optional dependency"
            raise MissingExtra(f"this command needs the Python package '{top}', which is not installed: {hint}") from None
        except Exception as exc:  # a ValueError at import must not reach the CLI's bad-input backstop:
            # an ImportError is none of the classes it maps, so a broken module is a traceback
            raise ImportError(f"{self.target}: {type(exc).__name__}: {exc}") from exc
        command = found if isinstance(found, click.Command) else found()
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.target} is not a click command")
        return command


class LazyGroup(click.Group):
    """Commands from a table of ``LazyCommand`` rows, each imported the first time it is asked for."""

    def __init__(
        self, *args: Any, lazy_commands: Mapping[str, LazyCommand] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands: dict[str, LazyCommand] = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = self.commands.get(cmd_name)
        if command is None and cmd_name in self.lazy_commands:
            command = self.lazy_commands[cmd_name].load()
            self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Click's own listing, with the table's help for a command not imported yet (the same text:
        a test holds them equal), so ``pmg --help`` imports nothing."""
        rows: list[tuple[str, str | None]] = []  # help None: the command is loaded, ask it
        for name in self.list_commands(ctx):
            loaded = self.commands.get(name)
            if loaded is not None and loaded.hidden:
                continue
            rows.append((name, None if loaded is not None else self.lazy_commands[name].help))
        if not rows:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in rows)
        listing = [
            (name, self.commands[name].get_short_help_str(limit) if text is None else _short(text, limit))
            for name, text in rows
        ]
        with formatter.section("Commands"):
            formatter.write_dl(listing)


def _short(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` exactly as click cuts a command's help (its first sentence, "...")."""
    return click.Command(None, help=text).get_short_help_str(limit)
