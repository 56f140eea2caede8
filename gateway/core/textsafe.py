"""Untrusted text made safe for one log or error line.

A command id, an account name or a file's content may carry a newline or an ANSI escape; printed
raw it would forge a second log line or repaint the operator's terminal.  ``one_line`` escapes every
control character (C0, DEL, C1, and the Unicode line/paragraph separators) the way Python's
``repr`` does and bounds the length, so what an attacker sent is still readable but inert.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
DEFAULT_LIMIT = 300


def _escape(m: re.Match[str]) -> str:
    ch = m.group(0)
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch) or (
        f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"
    )


def one_line(text: object, limit: int = DEFAULT_LIMIT) -> str:
    """``text`` with control characters escaped, cut to ``limit`` characters (marked with "…")."""
    s = _CONTROL.sub(_escape, str(text))
    return s if len(s) <= limit else s[: limit - 1] + "…"
