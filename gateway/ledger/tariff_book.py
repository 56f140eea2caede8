"""The ledger's view of tariffs: which tariff an account is on, and how much of its block it used.

Tariffs come from files under ``tariff_dir`` and from head-office ``tariff`` commands (stored in the
``tariffs`` table, so they survive restarts).  The pricing itself is ``gateway.tariffs.pricing`` —
pure; this module only supplies the account's tariff, the calendar's day types and the cycle usage.

The cycle usage (the account's position in its inclining blocks) is a running counter on the account
(``cycle_start``, ``cycle_used_wh``): the energy of every priced line that starts in the current cycle.
The pricer returns it moved forward and the charge stores it with the balance; a counter for another
cycle falls back to summing the entries once (``cycle_usage_wh``).  ``verify`` recomputes it from the
charge lines.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path

from gateway.core.calendar import WorkCalendar
from gateway.core.timeutil import iso, parse_iso
from gateway.ledger.charging import AccountPosition, Priced
from gateway.ledger.records import new_record
from gateway.tariffs.model import Tariff, load_tariff_dir, tariff_from_dict
from gateway.tariffs.pricing import ChargeLine, cycle_start, price_interval
from gateway.tariffs.timeline import wall_to_instant
from gateway.tariffs.values import TariffVersion

_DAY = timedelta(days=1)
_CYCLE_DAYS_KEPT = 64  # versions whose current day is remembered (a gateway prices under a handful)


class TariffBook:
    """All tariffs the gateway knows, by id."""

    def __init__(self, tariffs: Mapping[str, Tariff], calendar: WorkCalendar) -> None:
        self.tariffs = dict(tariffs)
        self.calendar = calendar
        # id(version) -> (version, local day's first instant, next day's, cycle start, its text)
        self._cycle_days: dict[int, tuple[TariffVersion, datetime, datetime, datetime | None, str | None]] = {}
        self._pricer: _Pricer | None = None  # the last one handed out (``pricer``)

    @classmethod
    def load(cls, directory: Path, conn: sqlite3.Connection | None, calendar: WorkCalendar) -> TariffBook:
        tariffs = load_tariff_dir(directory) if directory.is_dir() else {}
        book = cls(tariffs, calendar)
        if conn is not None:
            for row in conn.execute("SELECT id, body_json FROM tariffs ORDER BY id, version"):
                book.tariffs[row[0]] = tariff_from_dict(json.loads(row[1]), f"database tariff {row[0]}")
        return book

    def get(self, tariff_id: str) -> Tariff:
        try:
            return self.tariffs[tariff_id]
        except KeyError:
            known = ", ".join(sorted(self.tariffs)) or "none loaded"
            raise LookupError(f"no tariff '{tariff_id}' (known: {known})") from None

    def day_type(self, local_day: date) -> str:
        return str(self.calendar.day_type(local_day))

    def cycle_of(self, version: TariffVersion, instant: datetime) -> tuple[datetime | None, str | None]:
        """``cycle_start(version, instant)`` and its instant text, remembered for the local day.

        A block cycle starts at a local midnight, so every instant of one local day has the same
        cycle start; readings come minutes apart, so the day's answer serves the next reading too.
        Only a day of constant UTC offset is remembered (its instants all have that local date)."""
        memo = self._cycle_days.get(id(version))
        if memo is not None and memo[0] is version and memo[1] <= instant < memo[2]:
            return memo[3], memo[4]
        begins = cycle_start(version, instant)
        text = iso(begins) if begins is not None else None
        zone = version.zone
        day = instant.astimezone(zone).date()
        lo, hi = wall_to_instant(day, 0, zone), wall_to_instant(day + _DAY, 0, zone)
        if hi - lo == _DAY and lo.astimezone(zone).utcoffset() == hi.astimezone(zone).utcoffset() and lo <= instant < hi:
            if len(self._cycle_days) >= _CYCLE_DAYS_KEPT:
                self._cycle_days.clear()
            self._cycle_days[id(version)] = (version, lo, hi, begins, text)
        return begins, text

    def pricer(self, conn: sqlite3.Connection) -> _Pricer:
        """A pricer for one transaction (it reads past entries only when a block position is stale).

        The same one again while the connection is the same: it holds only the book and the
        connection, and the daemon asks for one per reading."""
        pricer = self._pricer
        if pricer is None or pricer.conn is not conn:  # one per connection: it holds nothing else
            pricer = self._pricer = _Pricer(self, conn)
        return pricer


class _Pricer:
    """A ``gateway.ledger.charging.Pricer`` bound to one open transaction.

    It writes nothing: it returns the lines and the account's block position after them, and the
    charge that posts the lines stores that position with the balance (a forecast just ignores it).
    """

    def __init__(self, book: TariffBook, conn: sqlite3.Connection) -> None:
        self.book = book
        self.conn = conn

    def __call__(
        self,
        account: AccountPosition,
        start: datetime,
        end: datetime,
        energy_wh: int,
        register_split: Mapping[str, int] | None,
    ) -> Priced:
        book = self.book
        tariff = book.tariffs.get(account.tariff_id) or book.get(account.tariff_id)  # get() explains a miss
        version = tariff.versions[tariff.version_index(start)]  # version_at, without its frame
        begins, begins_text = book.cycle_of(version, start)
        if begins is None:
            used = 0
        elif account.cycle_start == begins_text:
            used = account.cycle_used_wh
        else:
            used = cycle_usage_wh(self.conn, account.id, begins, start)
        lines = price_interval(
            tariff,
            start,
            end,
            energy_wh,
            day_type=book.day_type,
            cycle_usage_wh=used,
            register_split_wh=register_split if version.tou is not None else None,
        )
        return new_record(Priced, (lines, _advanced(account, lines, begins, used) if lines else None))


def _advanced(
    account: AccountPosition, lines: Sequence[ChargeLine], begins: datetime | None, used: int
) -> tuple[str, int] | None:
    """The account's cycle position moved forward by these lines (never back to an older cycle)."""
    key = lines[-1].cycle
    if key is None:
        return None
    if len(lines) == 1:  # the usual reading: its one line starts in its own cycle
        since = lines[0].energy_wh if lines[0].start >= key else 0
    else:
        since = sum(line.energy_wh for line in lines if line.start >= key)
    key_text = iso(key)
    if account.cycle_start == key_text:  # same cycle: the counter holds its energy before these lines
        return key_text, account.cycle_used_wh + since
    if account.cycle_start and key < parse_iso(account.cycle_start):
        return None  # a late interval of an older cycle: it does not move the current position
    # a new cycle: its energy before these lines came from the entries (``used``), or there was none
    return key_text, (used if begins == key else 0) + since


def cycle_usage_wh(conn: sqlite3.Connection, account_id: str, since: datetime, until: datetime) -> int:
    """Energy the account was charged for between ``since`` and ``until`` (block position).

    Entries wholly inside count whole; an entry straddling ``since`` counts the lines that start at or
    after it (each charge entry keeps its priced lines).  A charge entry is posted at its period's end
    (``created_at == period_end``), so both questions are bounded by ``created_at`` too: they read
    the cycle's entries through ``entries_account``, not every entry the account ever had (this runs
    for every account in the first minutes of a new cycle, when a year of history lies before it).
    """
    whole = conn.execute(
        "SELECT COALESCE(SUM(energy_wh), 0) FROM entries WHERE account_id = ? AND created_at > ? "
        "AND created_at <= ? AND kind = 'charge' AND period_start >= ? AND period_end <= ?",
        (account_id, iso(since), iso(until), iso(since), iso(until)),
    ).fetchone()[0]
    partial = 0
    for (detail,) in conn.execute(
        "SELECT detail_json FROM entries WHERE account_id = ? AND created_at > ? AND kind = 'charge' "
        "AND period_start < ? AND period_end > ?",
        (account_id, iso(since), iso(since), iso(since)),
    ):
        for line in json.loads(detail).get("lines", []):
            if "start" in line and parse_iso(line["start"]) >= since:
                partial += int(line["energy_wh"])
    return int(whole) + partial
