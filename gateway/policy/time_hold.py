"""The gateway-wide hold while the gateway's clock is doubted, as the policy reads it.

The time guard (``gateway.runtime.timeguard``) stores its verdict in the ``meta`` row ``META_KEY``;
while it says "untrusted", ``time_holds`` gives the policy one hold that blocks every cut
(docs/enforcement.md).  It lives here, beside the engine that reads it, so the policy never
imports the runtime.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime

from gateway.policy.inputs import Hold

META_KEY = "time.trust"
HOLD_KIND = "time_untrusted"
_SINCE_EVER = datetime(1970, 1, 1, tzinfo=UTC)  # the hold is in force whatever the doubted clock says

def time_holds(conn: sqlite3.Connection) -> list[Hold]:
    """The policy's gateway-wide hold while time is untrusted (none otherwise)."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (META_KEY,)).fetchone()
    return time_holds_from(None if row is None else row[0])


def time_holds_from(value: str | None) -> list[Hold]:
    """``time_holds`` of the ``META_KEY`` row's value as read (None: no row), for a caller that read it
    with its own query (the engine reads it in its one query per decision)."""
    if value is None:
        return []
    state = json.loads(value)
    if state.get("trusted", True):
        return []
    reasons = "; ".join(state.get("reasons", {}).values()) or "untrusted"
    return [Hold(HOLD_KIND, f"gateway clock untrusted: {reasons}", "gateway", _SINCE_EVER, None)]
