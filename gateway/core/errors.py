"""One root for the gateway's own errors, so the CLI maps them by class, not by guesswork.

* ``UserError`` — the input is wrong (an argument, the configuration, a file, an HQ command):
  the operator fixes the input; the CLI exits 2.
* ``OperationFailed`` — the input was fine but the operation could not be done (a database, a
  backup, a meter, a lock): the CLI exits 1 (or the class's own ``exit_status``).

Classes that were ``ValueError`` or ``RuntimeError`` keep that base too, so existing ``except``
clauses keep working.  ``drivers/`` sits below ``gateway`` and cannot import this module: its
errors have their own root, ``drivers.base.DriverError`` (and ``drivers.tomlsource.TomlError``),
which the CLI maps explicitly (docs/architecture.md, "Errors").
"""

from __future__ import annotations


class PmgError(Exception):
    """Base of every error the gateway raises on purpose; ``exit_status`` is the CLI's exit."""

    exit_status: int = 1


class UserError(PmgError):
    """Bad input: one clear line, nothing changed, exit status 2."""

    exit_status = 2


class OperationFailed(PmgError):
    """A sound request that could not be carried out: exit status 1."""

    exit_status = 1
