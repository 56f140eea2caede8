"""When a dropped bus link may be opened again: bounded exponential backoff with jitter.

A serial device server that reboots, a USB adapter that re-enumerates or a Modbus TCP gateway that
restarts drops the link; every request until it is back fails.  Reopening on every request would
hammer a peer that is still booting (and, on a real RS-485 converter, flood its log); never
reopening leaves the bus dead until the daemon restarts.  So a link that failed waits 1 s, then 2 s,
4 s … up to 60 s between attempts, and the wait is drawn from the upper half of that step
(``[d/2, d]``) so that the links of a site that lost power together do not all knock at the same
instant.  The random source and the clock are injected: tests replay exact schedules.

An exchange that completes without a link error resets the schedule; a reopen that succeeds does
not (a peer that accepts then drops at once must still be backed off).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

FIRST_S = 1.0
MAX_S = 60.0


@dataclass
class Backoff:
    """Consecutive link failures and the earliest time the next reopen may be tried."""

    first_s: float = FIRST_S
    max_s: float = MAX_S
    monotonic: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0
    next_at: float = 0.0
    last_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s:
            raise ValueError(f"backoff needs 0 < first_s <= max_s (got {self.first_s}, {self.max_s})")

    def step_s(self, failures: int) -> float:
        """The un-jittered wait after ``failures`` failures in a row: 1, 2, 4 … capped at ``max_s``."""
        if failures <= 0:
            return 0.0
        return min(self.max_s, self.first_s * 2 ** min(failures - 1, 32))

    def failed(self) -> float:
        """Count a failure (an I/O error or a reopen that did not work); returns the wait before the
        next reopen, a draw from ``[step/2, step]``."""
        self.failures += 1
        step = self.step_s(self.failures)
        self.last_delay_s = step * (0.5 + 0.5 * self.rng.random())
        self.next_at = self.monotonic() + self.last_delay_s
        return self.last_delay_s

    def succeeded(self) -> None:
        """An exchange went through: the next failure starts the schedule from the first step."""
        self.failures = 0
        self.next_at = 0.0
        self.last_delay_s = 0.0

    def due(self) -> bool:
        return self.monotonic() >= self.next_at

    def wait_s(self) -> float:
        """Seconds until a reopen may be tried (0 when it may be tried now)."""
        return max(0.0, self.next_at - self.monotonic())

    def reset(self) -> None:
        """An operator asked for a reopen now (SIGHUP): forget the schedule."""
        self.succeeded()
