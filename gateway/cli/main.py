"""``pmg``: the daemon and the technician's commands.

Every command prints a one-line error and a meaningful exit status for a user mistake — never a
traceback.  Exit statuses: 0 success; 1 the operation failed (a meter did not answer, a check found a
problem); 2 bad input (arguments, configuration, a file); 3 another pmg already runs on the database.
"""

from __future__ import annotations

import sqlite3
import sys
from typing import Any, NoReturn

import click

from drivers.base import DriverError
from drivers.tomlsource import TomlError
from gateway import __version__
from gateway.cli.common import utc_option
from gateway.cli.lazy import LazyCommand, LazyGroup
from gateway.core.errors import PmgError
from gateway.core.textsafe import one_line
from gateway.store.db import StoreError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3  # gateway.runtime.service.AlreadyRunning.exit_status


class PmgGroup(LazyGroup):
    """Turns the product's errors into one line on stderr and an exit status."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:  # ``pmg``'s own options (``pmg --nope``) are parsed here, before ``invoke``
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            _fail(exc.format_message(), EXIT_USAGE)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise  # ``pmg ledger`` alone: click prints the group's help
        except click.UsageError as exc:  # a malformed argument: one line, not click's usage block
            _fail(exc.format_message(), EXIT_USAGE)
        except click.ClickException as exc:  # an unreadable file argument (click.File)
            _fail(exc.format_message(), EXIT_USAGE)
        except StoreError as exc:
            _fail(f"database: {exc}", exc.exit_status)
        except PmgError as exc:  # by class: UserError 2, OperationFailed 1, AlreadyRunning 3
            _fail(str(exc), exc.exit_status)
        # ``drivers`` sits below ``gateway`` and has its own roots (docs/architecture.md, "Errors").
        except TomlError as exc:
            _fail(str(exc), EXIT_USAGE)
        except DriverError as exc:
            _fail(str(exc), EXIT_FAILED)
        except sqlite3.DatabaseError as exc:
            _fail(f"database: {exc}", EXIT_FAILED)
        # Backstop, not the rule: a ValueError/LookupError from a library (json, tomllib, Decimal,
        # ipaddress, a dict lookup on input) that no layer wrapped is still bad input — exit 2, one
        # line.  Our own errors derive from PmgError and are mapped above.
        except (ValueError, LookupError) as exc:
            _fail(str(exc), EXIT_USAGE)
        except RecursionError:  # 100,000 nested brackets in a JSON or TOML input
            _fail("input is nested too deeply", EXIT_USAGE)
        except ArithmeticError as exc:  # OverflowError, decimal.InvalidOperation: a value out of range
            _fail(f"a value is out of range ({exc or type(exc).__name__})", EXIT_USAGE)
        except OSError as exc:
            _fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", EXIT_FAILED)


def _fail(message: str, status: int) -> NoReturn:
    # One line whatever the message carries (an id with a newline, a file's content): escaped.
    click.echo(f"pmg: error: {one_line(message, 1000)}", err=True)
    sys.exit(status)


_C = "gateway.cli.commands."

# Every command of ``pmg``: name -> where it lives and the one line ``pmg --help`` shows for it.  A
# command's module is imported only when that command runs (gateway.cli.lazy: the daemon stays
# small); tests/unit/cli/test_lazy_commands.py holds this table equal to the commands themselves.
COMMANDS: dict[str, LazyCommand] = {
    "audit": LazyCommand(
        _C + "field:audit", "The audit log: every relay action, blocked action, notice, override and alarm."
    ),
    "balance": LazyCommand(
        _C + "ledger:balance",
        "Show an account's balance (derived from its entries) and its recent entries, newest first.",
    ),
    "command": LazyCommand(_C + "hq:command_group", "Head-office commands to gateways."),
    "demo": LazyCommand(
        _C + "run:demo",
        "Run the whole flow on simulated meters: credit runs down, warnings, notice, cut, top-up, power back.",
    ),
    "doctor": LazyCommand(
        _C + "ops:doctor_cmd",
        "Check the installation: database integrity, disk, clock sync, serial permissions, buses, broker.",
    ),
    "events": LazyCommand(
        _C + "ops:events_cmd", "The audit log, newest first (--reverse: oldest first; --json: an array)."
    ),
    "explain": LazyCommand(
        _C + "field:explain_cmd",
        "Why ACCOUNT's power is (not) off: state, the rules that apply, what happens next and when.",
    ),
    "hq": LazyCommand(
        _C + "hq_ingest:hq_group", "The head office's side: a reference consumer and an operator's top-up."
    ),
    "install-config": LazyCommand(
        _C + "install:install_config",
        "Write /etc/pmg/gateway.toml and /etc/pmg/tariffs/ from the shipped examples; existing files are kept.",
    ),
    "keys": LazyCommand(_C + "hq:keys", "Head-office command signing keys."),
    "ledger": LazyCommand(_C + "ledger:ledger", "Check the ledger."),
    "meter": LazyCommand(
        _C + "meter:meter",
        "One meter: its detail, and resolving a quarantined reading or a replaced meter (audited).",
    ),
    "meters": LazyCommand(
        _C + "ops:meters",
        "Table of meters (by id): account, balance, state, relay, last reading, comms health.",
    ),
    "notice": LazyCommand(_C + "notice:notice", "Disconnection notices: record their delivery to the customer."),
    "payment": LazyCommand(_C + "ledger:payment", "Record payments taken locally (cash at a mini-grid office)."),
    "read": LazyCommand(
        _C + "tech:read",
        "Read a meter live: energy (total, import, export, per tariff), V, I, P, clock, relay, status.",
    ),
    "relay": LazyCommand(
        _C + "field:relay_cmd",
        "A technician's manual order to open (trip) or close METER's relay, through the daemon's queue.",
    ),
    "report": LazyCommand(
        _C + "reports:report",
        "Energy, charges, payments and closing balance per account and period, in local time: newest period "
        "first, each period's accounts by id (--json wins over --format).",
    ),
    "run": LazyCommand(_C + "run:run", "Run the gateway daemon (under systemd: Type=notify, watchdog)."),
    "scan": LazyCommand(
        _C + "scan:scan", "Find the meters on a bus and identify them, with progress and the count found so far."
    ),
    "sim": LazyCommand(_C + "sim:sim", "Serve simulated meters that speak the real protocols (with faults)."),
    "status": LazyCommand(
        _C + "ops:status_cmd",
        "Gateway health at a glance: daemon, buses, unreachable meters, outbox, broker, settlement.",
    ),
    "web": LazyCommand(
        _C + "web:web", "Serve the web console (default 127.0.0.1:8080; [web] in the configuration)."
    ),
}


@click.group(
    cls=PmgGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.version_option(__version__, "--version", prog_name="pmg")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@utc_option
def cli(verbose: int) -> None:
    """pmg — the prepaid meter gateway.

    Polls DL/T 645 and Modbus meters, keeps an exact prepaid ledger, enforces pay-before-use within
    the law, and syncs with the head office over MQTT.  `pmg demo` shows it all on simulated meters.

    Times are shown in the configured timezone with its offset (--utc: in UTC); --json prints
    ISO 8601 UTC.  Lists are newest first (--reverse: oldest first).
    """
    from gateway.runtime.logfmt import setup_logging

    setup_logging(verbose)  # key=value lines; under systemd with journald priorities


def main() -> None:
    cli(prog_name="pmg")


if __name__ == "__main__":
    main()
