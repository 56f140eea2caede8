"""A close that failed is asked again: the account never waits for a relay nobody asks to close.

Found by the stateful model (docs/enforcement.md, "Stateful model"): a close sent while the gateway's
clock was three hours slow carried a validity deadline the meter saw as past; it was refused five times
and ended ``failed``, and the account stayed in ``reconnection_pending`` for good, even after the clock
was put right and the customer paid again.  Two changes: the policy re-issues the close once the
failed-command backoff has passed (``MeterView.close_failed``), and a close carries a day of validity
(``store.relay_queue.CLOSE_VALIDITY``).
"""

from __future__ import annotations

from test_policy_scenarios import LONDON, UK, account, meter, utc

from drivers.base import RelayAction, RelayState
from gateway.policy.decide import decide
from gateway.policy.state import ActionKind as K
from gateway.policy.state import EnforcementState as S
from gateway.store.relay_queue import CLOSE_VALIDITY, RELAY_VALIDITY

NOW = utc(2026, 12, 21, 14)  # Monday 14:00 GMT


def test_a_failed_close_is_asked_again_once_its_backoff_passed() -> None:
    paid = account(1_000, state=S.RECONNECTION_PENDING, state_since=utc(2026, 12, 21, 6))
    failed = decide(paid, meter(relay=RelayState.OPEN, close_failed=True), NOW, LONDON, UK)
    closes = [a for a in failed.actions if a.kind is K.RECONNECT]
    assert [a.relay_action for a in closes] == [RelayAction.DIRECT_CLOSE]
    assert "relay.close_failed" in [c.rule for c in closes[0].trace]
    # Still within the backoff (the failed row counts as pending) or simply waiting: nothing new.
    waiting = decide(paid, meter(relay=RelayState.OPEN, pending_relay_action=RelayAction.DIRECT_CLOSE),
                     NOW, LONDON, UK)
    assert not [a for a in waiting.actions if a.kind is K.RECONNECT]
    confirmed = decide(paid, meter(relay=RelayState.OPEN), NOW, LONDON, UK)  # a 1B permission waits for the press
    assert not [a for a in confirmed.actions if a.kind is K.RECONNECT]


def test_no_close_is_asked_again_without_the_credit_for_it() -> None:
    short = account(50, state=S.RECONNECTION_PENDING, state_since=utc(2026, 12, 21, 6))
    d = decide(short, meter(relay=RelayState.OPEN, close_failed=True), NOW, LONDON, UK)
    assert not [a for a in d.actions if a.kind is K.RECONNECT]


def test_a_close_outlives_a_slow_clock() -> None:
    assert CLOSE_VALIDITY >= RELAY_VALIDITY * 24  # hours of slow clock, not minutes
