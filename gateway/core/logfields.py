"""The fields of a log event, passed explicitly: ``log.info("settled", extra=kv(days=3))``.

Every layer logs, and only ``gateway.runtime.logfmt`` (above them all) writes the lines, so the one
name they share lives here, below every layer.  The formatter writes each field as ``key=value``
after ``msg``; ``msg`` itself stays words, never ``key=%s`` for a program to dig out again.
"""

from __future__ import annotations

from typing import Any

EXTRA = "pmg_fields"


def kv(**fields: object) -> dict[str, Any]:
    """``extra=`` for a log call: the event's fields (scalars; a mapping or a list is flattened)."""
    return {EXTRA: fields}
