"""Read requests from any process: the daemon reads the meter now and records the outcome.

``pmg meter read-now`` and the web console cannot open a line the daemon owns; they write a
``read_requests`` row (``gateway.store.read_requests``).  The payment watch's look at ``PRAGMA
data_version`` (``gateway.runtime.payment_watch``) already notices, every ``WATCH_POLL_S``, that
another connection committed; it calls ``ReadWatch.drain`` then, so read requests cost no poll loop
of their own.  ``drain``:

* finishes as ``expired`` a request older than ``MAX_AGE_S`` when the daemon first sees it (a person
  gave up long ago; at start, everything left from before a long stop), and as ``failed`` one for a
  meter this gateway does not poll;
* submits the others to their bus worker at ``PRIORITY_READ_NOW``: behind relay commands, ahead of
  routine polls.  The reading is charged like any poll's (the daemon's ``charge`` flushes its batch at
  once, so the request learns its reading's id) and the request is finished ``done`` with that id,
  or ``failed`` with the meter's error or after ``READ_TIMEOUT_S`` without a turn on the bus.

A request stays ``pending`` until it is finished: a daemon stopped or killed while serving it serves it
again at its next start, or expires it.  Measured figures: docs/operations.md ("Read a meter now").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from gateway.core.logfields import kv
from gateway.ledger.charging import ChargeOutcome
from gateway.store import read_requests
from gateway.store.db import Store, StoreError
from gateway.store.read_requests import Final, ReadRequest

log = logging.getLogger("pmg.read_watch")

MAX_AGE_S = 60.0  # a request older than this when the daemon sees it is expired, not served
READ_TIMEOUT_S = 60.0  # from submitting to the bus to the reading (a queue of relay commands, retries)


@dataclass(frozen=True)
class Served:
    """What ``charge`` says of a reading taken for a request."""

    ok: bool  # the meter answered with a usable reading
    reading_id: int | None  # the reading's row (None when it could not be recorded)
    result: str  # the outcome ("charged", "baseline", ...) or the error


# Submit a read of a meter, charged on its bus's turn; or say (a line of text) why it cannot be read.
Submit = Callable[[str], "asyncio.Future[Served] | str"]


class ReadWatch:
    def __init__(
        self,
        store: Store,
        submit: Submit,
        clock: Callable[[], datetime],
        stopping: Callable[[], bool],
        *,
        max_age_s: float = MAX_AGE_S,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.store = store
        self.submit = submit
        self.clock = clock
        self.stopping = stopping
        self.max_age_s = max_age_s
        self.read_timeout_s = read_timeout_s
        self._serving: dict[int, asyncio.Task[None]] = {}

    def drain(self) -> int:
        """Expire, fail or submit every pending request not already being served; returns how many
        were taken.  A cheap indexed look when there are none."""
        conn = self.store.conn
        if conn.execute("SELECT 1 FROM read_requests WHERE status = 'pending' LIMIT 1").fetchone() is None:
            return 0
        taken = read_requests.take(conn, exclude=self._serving.keys())
        if not taken:
            return 0
        now = self.clock()
        finished: list[tuple[ReadRequest, Final, str]] = []
        for req in taken:
            age = (now - req.requested_at).total_seconds()
            if age > self.max_age_s:
                finished.append((req, "expired", f"not seen by the daemon within {self.max_age_s:g} s ({age:.0f} s old)"))
                continue
            fut = self.submit(req.meter_id)
            if isinstance(fut, str):
                finished.append((req, "failed", fut))
                continue
            self._serving[req.id] = asyncio.get_running_loop().create_task(
                self._serve(req, fut), name=f"read-request-{req.id}"
            )
        if finished:
            with self.store.tx() as tx:
                for req, status, why in finished:
                    read_requests.finish(tx, req.id, status, now, why)
            for req, status, why in finished:
                log.info("read request %s: %s", status, why, extra=kv(request=req.id, meter=req.meter_id))
        return len(taken)

    async def _serve(self, req: ReadRequest, fut: asyncio.Future[Served]) -> None:
        try:
            done, _ = await asyncio.wait({fut}, timeout=self.read_timeout_s)
            if not done:
                fut.cancel()  # the bus skips it when its turn comes
                self._finish(req, "failed", f"the bus gave no turn within {self.read_timeout_s:g} s")
            elif fut.cancelled():  # the bus stopped before the read: left pending if we are stopping
                if not self.stopping():
                    self._finish(req, "failed", "the bus stopped before the read")
            elif (exc := fut.exception()) is not None:
                self._finish(req, "failed", str(exc) or type(exc).__name__)
            else:
                served = fut.result()
                self._finish(req, "done" if served.ok else "failed", served.result, served.reading_id)
        finally:
            self._serving.pop(req.id, None)

    def _finish(self, req: ReadRequest, status: Final, result: str, reading_id: int | None = None) -> None:
        try:
            with self.store.tx() as tx:
                read_requests.finish(tx, req.id, status, self.clock(), result, reading_id=reading_id)
        except StoreError as exc:  # left pending: served again (or expired) on the next start
            log.error("read request outcome could not be recorded: %s", exc, extra=kv(request=req.id))
            return
        log.info("read request %s: %s", status, result, extra=kv(request=req.id, meter=req.meter_id))

    async def stop(self) -> None:
        """Requests still being served stay pending (the next start serves or expires them)."""
        tasks = list(self._serving.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def serving(self) -> int:
        return len(self._serving)


def served_of(outcome: ChargeOutcome | None, quality_ok: bool, error: str | None) -> Served:
    """A ``Served`` from the ledger's outcome of the reading (None: it was not recorded).  Done means
    the meter answered and its reading was recorded; a quarantined one is done too, and says so."""
    if outcome is None:
        return Served(False, None, "the reading could not be recorded (see the daemon's log)")
    if not quality_ok:
        return Served(False, outcome.reading_id, error or "the meter did not answer")
    if outcome.outcome == "quarantined":
        return Served(True, outcome.reading_id, f"quarantined: {outcome.reason}")
    return Served(True, outcome.reading_id, outcome.outcome)
