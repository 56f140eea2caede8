"""Log lines as ``key=value`` pairs, one event per line, for the journal and for grep.

A technician's first question is "what happened to meter M-0042" — ``journalctl -u pmg | grep
meter=M-0042`` must answer it, so the identifying keys (meter, bus, account, action) and the figures
of an event are ``key=value`` fields that the log call passes explicitly::

    log.info("relay not sent", extra=kv(meter=cmd.meter_id, action="trip", why=why))

``msg`` says what happened in words; every field is a scalar (a mapping is flattened to
``drift_s.M-01=-316.7``, a sequence joined with commas, an absent value left out), so no Python
representation (``None``, ``{'M-01': …}``) reaches the journal.  A traceback is folded into one quoted
field so one event stays one journal entry.  Under systemd (``$JOURNAL_STREAM`` set) each line starts
with the ``<N>`` syslog priority prefix, which journald turns into the entry's priority
(``journalctl -p err``).
"""

from __future__ import annotations

import enum
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from datetime import datetime
from decimal import Decimal
from typing import IO

from gateway.core.logfields import EXTRA, kv

__all__ = ["KeyValueFormatter", "flatten", "kv", "quote", "setup_logging"]

FIELDS = ("meter", "bus", "account", "action")
_BARE = re.compile(r"^[A-Za-z0-9_.:/@+\-]+$")
_KEY = re.compile(r"[^A-Za-z0-9_.\-]")
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def quote(value: object) -> str:
    """A value as logfmt: bare when safe, otherwise double-quoted with escapes (never a raw newline)."""
    text = "" if value is None else str(value)
    if text and _BARE.match(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def flatten(key: str, value: object) -> Iterator[tuple[str, str]]:
    """``key=value`` pairs of scalars: a mapping becomes ``key.sub``, a sequence a comma list, a
    float its shortest text; ``None`` is left out (an absent value is no field)."""
    if value is None:
        return
    if isinstance(value, Mapping):
        for sub, inner in value.items():
            yield from flatten(f"{key}.{_KEY.sub('_', str(sub))}", inner)
    elif isinstance(value, list | tuple | set | frozenset):
        yield key, ",".join(str(v) for v in value)
    elif isinstance(value, bool):
        yield key, "true" if value else "false"
    elif isinstance(value, float):
        yield key, f"{value:.6g}"
    elif isinstance(value, enum.Enum):
        yield key, str(value.value)
    elif isinstance(value, datetime):
        yield key, value.isoformat()
    elif isinstance(value, int | Decimal | str):
        yield key, str(value)
    else:
        yield key, str(value)


class KeyValueFormatter(logging.Formatter):
    """``level=info logger=pmg.bus msg="…" meter=M1 bus=b1`` (with ``<6>`` first under journald)."""

    def __init__(self, *, journal: bool = False, timestamps: bool = False) -> None:
        super().__init__()
        self.journal = journal
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        fields: dict[str, str] = {}
        for key in FIELDS:  # ``extra={"meter": …}`` as a plain attribute, as logging allows
            for name, text in flatten(key, getattr(record, key, None)):
                fields[name] = text
        for key, value in (getattr(record, EXTRA, None) or {}).items():
            for name, text in flatten(key, value):
                fields[name] = text
        parts = []
        if self.timestamps:
            parts.append(f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}")
        parts += [f"level={record.levelname.lower()}", f"logger={record.name}", f"msg={quote(message)}"]
        parts += [f"{k}={quote(v)}" for k, v in fields.items()]
        if record.exc_info:
            parts.append(f"exc={quote(self.formatException(record.exc_info))}")
        line = " ".join(parts)
        if self.journal:
            line = f"<{_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


def setup_logging(verbose: int = 0, *, stream: IO[str] | None = None, daemon: bool = False) -> None:
    """Configure the root logger once: key=value lines on stderr.

    ``verbose``: 0 warnings, 1 info, 2 debug.  A daemon logs at least info.  Under journald the
    timestamp is the journal's; elsewhere (a terminal, a test) each line carries its own.
    """
    level = logging.WARNING - 10 * min(max(verbose, 0), 2)
    if daemon:
        level = min(level, logging.INFO)
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter(journal=journal, timestamps=not journal))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_pmg", False):
            root.removeHandler(old)
    handler._pmg = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # apscheduler narrates every job run at INFO; the jobs log their own outcome.
    logging.getLogger("apscheduler").setLevel(max(level, logging.WARNING))
    # pymodbus logs every timeout and refused connection as an error of its own; our driver turns
    # each into a reading's quality or a one-line error, so its chatter is only shown with -vv.
    logging.getLogger("pymodbus").setLevel(logging.DEBUG if verbose >= 2 else logging.CRITICAL)
