"""Log lines as ``key=value`` pairs, one event per line, for the journal and for grep.

A technician's first question is "what happened to meter M-0042" — ``journalctl -u pmg | grep
meter=M-0042`` must answer it, so the identifying keys (meter, bus, account, action) are always
``key=value`` fields: taken from ``extra={...}`` when the caller gives them, else lifted out of the
message text (most messages already say ``meter=%s``).  A traceback is folded into one quoted field so
one event stays one journal entry.  Under systemd (``$JOURNAL_STREAM`` set) each line starts with the
``<N>`` syslog priority prefix, which journald turns into the entry's priority (``journalctl -p err``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import IO

FIELDS = ("meter", "bus", "account", "action")
_IN_MESSAGE = re.compile(r"(?<![\w.])(meter|bus|account|action)=([^\s,;]+)")
_BARE = re.compile(r"^[A-Za-z0-9_.:/@+\-]+$")
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def quote(value: object) -> str:
    """A value as logfmt: bare when safe, otherwise double-quoted with escapes (never a raw newline)."""
    text = "" if value is None else str(value)
    if text and _BARE.match(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


class KeyValueFormatter(logging.Formatter):
    """``level=info logger=pmg.bus msg="…" meter=M1 bus=b1`` (with ``<6>`` first under journald)."""

    def __init__(self, *, journal: bool = False, timestamps: bool = False) -> None:
        super().__init__()
        self.journal = journal
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        fields: dict[str, str] = {}
        for key in FIELDS:
            given = getattr(record, key, None)
            if given is not None:
                fields[key] = str(given)
        for key, value in _IN_MESSAGE.findall(message):
            fields.setdefault(key, value)
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
