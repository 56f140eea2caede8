"""Configuration for a gateway under test against simulated meters (the test suite, the benchmarks).

A rig measures mechanisms, not law: with this policy a zero balance disconnects at once (no notice,
no protected hours or days) and a payment closes the relay directly.  Never for real customers — the
presets under ``gateway/presets`` carry the rules a utility must follow.
"""

from __future__ import annotations

IMMEDIATE_POLICY_TOML = """
[policy]
preset = "generic"
[policy.overrides.notice]
required = false
period = "PT0S"
reminder_before = "PT0S"
[policy.overrides.windows]
hours = []
weekends = false
public_holidays = false
[policy.overrides.reconnect]
mode = "direct_close"
"""
