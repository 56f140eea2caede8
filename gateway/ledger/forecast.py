"""Days of credit left: recent daily consumption priced by the account's own tariff, plus standing charge.

The policy's first version (``gateway.policy.engine.days_of_credit_left``) divides the balance by the
money charged in the last week.  That answer is wrong exactly when it matters: after a tariff change
(old prices), when the customer crosses into a dearer block (cheaper past), or when the week was
partly spent disconnected (no charges, so "infinite" days).  Here the forecast is:

    energy per day  = energy charged over the window ÷ the part of the window the meters were read
    cost per day    = price_interval(tariff, now, now + 1 day, energy per day, block position now)
                      + the standing charge of today under the tariff in force
    days left       = credit ÷ cost per day, rounded *down* to 0.1 day (never promise too much)

Pricing a day from now forward uses the current tariff version, time-of-use windows by time, and the
account's real position in its block cycle (so a customer about to cross into block 2 sees fewer days).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal

from gateway.ledger.charging import account_position
from gateway.ledger.consumption import charged_energy_wh, first_read_at
from gateway.ledger.tariff_book import TariffBook
from gateway.tariffs.pricing import standing_charge

DEFAULT_WINDOW = timedelta(days=7)
MIN_OBSERVED = timedelta(hours=6)  # less history than this says nothing about a day
_DAY = timedelta(days=1)


def daily_energy_wh(
    conn: sqlite3.Connection, account_id: str, now: datetime, window: timedelta = DEFAULT_WINDOW
) -> Decimal | None:
    """Average Wh per day over ``window`` before ``now``, over the time the meters were actually read."""
    since = now - window
    first = first_read_at(conn, account_id, since, now)
    if first is None:
        return None
    observed = now - max(first, since)
    if observed < MIN_OBSERVED:
        return None
    energy = charged_energy_wh(conn, account_id, since, now)
    return Decimal(energy) * Decimal(86400) / Decimal(int(observed.total_seconds()) or 1)


def cost_per_day(
    conn: sqlite3.Connection, book: TariffBook, account_id: str, now: datetime, energy_per_day_wh: Decimal
) -> Decimal:
    """Exact cost (major units) of one more day at this consumption, from ``now``, plus today's standing."""
    account = account_position(conn, account_id)
    tariff = book.get(account.tariff_id)
    wh = int(energy_per_day_wh.to_integral_value(rounding=ROUND_HALF_EVEN))
    lines = book.pricer(conn)(account, now, now + _DAY, wh, None).lines if wh > 0 else []
    cost = sum((line.amount for line in lines), Decimal(0))
    try:
        standing = standing_charge(tariff, now.astimezone(tariff.version_at(now).zone).date())
    except LookupError:
        standing = None
    return cost + (standing.amount if standing is not None else Decimal(0))


def days_of_credit_left(
    conn: sqlite3.Connection,
    book: TariffBook,
    account_id: str,
    credit_minor: int,
    now: datetime,
    *,
    minor_digits: int = 2,
    window: timedelta = DEFAULT_WINDOW,
) -> Decimal | None:
    """Days ``credit_minor`` lasts at recent consumption under the current tariff (None: no basis)."""
    energy = daily_energy_wh(conn, account_id, now, window)
    per_day = cost_per_day(conn, book, account_id, now, energy if energy is not None else Decimal(0))
    return days_for(per_day, credit_minor, minor_digits)


class DailyCostCache:
    """Cost per day by account, recomputed at most once an hour of gateway time.

    The daemon re-decides an account on every reading; pricing a whole day of time-of-use for each
    would cost more than the reading itself, and the daily figure moves slowly.  Only the credit (which
    changes with every charge) is applied fresh each time.
    """

    def __init__(self, window: timedelta = DEFAULT_WINDOW) -> None:
        self.window = window
        self._cost: dict[str, tuple[datetime, Decimal]] = {}

    def days_left(
        self,
        conn: sqlite3.Connection,
        book: TariffBook,
        account_id: str,
        credit_minor: int,
        now: datetime,
        *,
        minor_digits: int = 2,
    ) -> Decimal | None:
        hour = now.replace(minute=0, second=0, microsecond=0)
        cached = self._cost.get(account_id)
        if cached is None or cached[0] != hour:
            energy = daily_energy_wh(conn, account_id, now, self.window)
            per_day = cost_per_day(conn, book, account_id, now, energy if energy is not None else Decimal(0))
            self._cost[account_id] = cached = (hour, per_day)
        return days_for(cached[1], credit_minor, minor_digits)

    def forget(self, account_id: str | None = None) -> None:
        """Drop cached figures (after a tariff change or a configuration reload)."""
        if account_id is None:
            self._cost.clear()
        else:
            self._cost.pop(account_id, None)


def days_for(per_day: Decimal, credit_minor: int, minor_digits: int) -> Decimal | None:
    """Credit ÷ cost per day, rounded down to 0.1 day (None when a day costs nothing)."""
    if per_day <= 0:
        return None
    if credit_minor <= 0:
        return Decimal(0)
    credit = Decimal(credit_minor).scaleb(-minor_digits)
    return (credit / per_day).quantize(Decimal("0.1"), rounding=ROUND_DOWN)
