"""Missing sequence numbers per gateway and epoch, and the signed ``resend`` that asks for them.

Per ``(gateway_id, epoch)`` the database keeps a floor (every seq at or below it is accounted for) and
the open gaps above it.  A scan merges what arrived since (``received``) with the seqs that are not
gaps (``seq_skips``: coalesced snapshots announced by ``outbox_coalesced``, ranges a gateway answered
``gone``), and rewrites the gaps of each epoch; a gap keeps the time it was first seen open, so the
delay before a ``resend`` runs from then even when a gap splits as parts of it arrive.

Snapshots (``"snapshot": true``) and retained deliveries are stored but never counted (docs/mqtt.md):
they fill their own seq but never prove that the seqs below them were sent, so they open no gap.  A
new epoch's floor is set after ``settle`` (stragglers from other workers arrive first) at its lowest
counted seq: what came before it was before the head office's time.

One scan at a time across all workers: the scan holds a transaction-scoped advisory lock, and a
worker that finds it taken skips its turn.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.core.timeutil import iso
from gateway.sync.signing import sign_command

SCAN_LOCK = 0x504D4753  # "PMGS"
MAX_RESEND = 10_000  # the contract: to_seq - from_seq < 10,000
_ids = itertools.count(1)

_HOLES = """
WITH iv AS (
    SELECT e.gateway_id, e.epoch, r.seq AS lo, r.seq AS hi
      FROM epochs e JOIN received r ON r.gateway_id = e.gateway_id AND r.epoch = e.epoch AND r.seq > e.floor_seq
     WHERE e.floor_seq IS NOT NULL
    UNION ALL
    SELECT e.gateway_id, e.epoch, greatest(s.from_seq, e.floor_seq + 1), s.to_seq
      FROM epochs e JOIN seq_skips s ON s.gateway_id = e.gateway_id AND s.epoch = e.epoch AND s.to_seq > e.floor_seq
     WHERE e.floor_seq IS NOT NULL
    UNION ALL
    SELECT gateway_id, epoch, floor_seq, floor_seq FROM epochs WHERE floor_seq IS NOT NULL
), o AS (
    SELECT gateway_id, epoch, lo, hi,
           max(hi) OVER (PARTITION BY gateway_id, epoch ORDER BY lo, hi
                         ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_hi
      FROM iv
), high AS (
    SELECT e.gateway_id, e.epoch, max(r.seq) AS high
      FROM epochs e JOIN received r ON r.gateway_id = e.gateway_id AND r.epoch = e.epoch AND r.seq > e.floor_seq
     WHERE e.floor_seq IS NOT NULL AND r.counted
  GROUP BY e.gateway_id, e.epoch
)
SELECT h.gateway_id, h.epoch, h.high, o.prev_hi + 1, o.lo - 1
  FROM high h LEFT JOIN o ON o.gateway_id = h.gateway_id AND o.epoch = h.epoch
                          AND o.lo > o.prev_hi + 1 AND o.lo <= h.high
 ORDER BY 1, 2, 4
"""


@dataclass(frozen=True)
class Gap:
    gateway_id: str
    epoch: str
    from_seq: int
    to_seq: int
    opened_at: datetime
    resend_at: datetime | None
    resends: int

    @property
    def size(self) -> int:
        return self.to_seq - self.from_seq + 1


def scan(conn: Any, now: datetime, settle: timedelta = timedelta(seconds=5)) -> bool:
    """Bring ``epochs.floor_seq`` and ``gaps`` up to date; False if another worker is scanning."""
    with conn.transaction():
        if not conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (SCAN_LOCK,)).fetchone()[0]:
            return False
        conn.execute("UPDATE epochs SET first_seen = %s WHERE first_seen IS NULL", (now,))
        conn.execute(
            "UPDATE epochs e SET floor_seq = m.low - 1 FROM ("
            "  SELECT gateway_id, epoch, min(seq) AS low FROM received WHERE counted GROUP BY gateway_id, epoch"
            ") m WHERE e.floor_seq IS NULL AND e.first_seen <= %s AND m.gateway_id = e.gateway_id "
            "AND m.epoch = e.epoch",
            (now - settle,),
        )
        found: dict[tuple[str, str], tuple[int, list[tuple[int, int]]]] = {}
        for gw, ep, high, lo, hi in conn.execute(_HOLES).fetchall():
            entry = found.setdefault((gw, ep), (int(high), []))
            if lo is not None:
                entry[1].append((int(lo), int(hi)))
        old: dict[tuple[str, str], list[Gap]] = {}
        for g in _open(conn, None):
            old.setdefault((g.gateway_id, g.epoch), []).append(g)
        for (gw, ep), (high, holes) in found.items():
            floor = holes[0][0] - 1 if holes else high
            conn.execute(
                "UPDATE epochs SET floor_seq = %s WHERE gateway_id = %s AND epoch = %s AND floor_seq < %s",
                (floor, gw, ep, floor),
            )
            before = old.pop((gw, ep), [])
            if [(g.from_seq, g.to_seq) for g in before] == holes:
                continue
            conn.execute("DELETE FROM gaps WHERE gateway_id = %s AND epoch = %s", (gw, ep))
            for lo, hi in holes:
                over = [g for g in before if g.from_seq <= hi and lo <= g.to_seq]
                sent = [g.resend_at for g in over if g.resend_at is not None]
                conn.execute(
                    "INSERT INTO gaps (gateway_id, epoch, from_seq, to_seq, opened_at, resend_at, resends) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (gw, ep, lo, hi, min((g.opened_at for g in over), default=now),
                     max(sent, default=None), max((g.resends for g in over), default=0)),
                )
        for gw, ep in old:  # epochs whose gaps all closed (no row above the floor any more)
            conn.execute("DELETE FROM gaps WHERE gateway_id = %s AND epoch = %s", (gw, ep))
    return True


def _open(conn: Any, gateway_id: str | None) -> list[Gap]:
    rows = conn.execute(
        "SELECT gateway_id, epoch, from_seq, to_seq, opened_at, resend_at, resends FROM gaps "
        "WHERE %(gw)s::text IS NULL OR gateway_id = %(gw)s ORDER BY gateway_id, epoch, from_seq",
        {"gw": gateway_id},
    ).fetchall()
    return [Gap(r[0], r[1], int(r[2]), int(r[3]), r[4], r[5], int(r[6])) for r in rows]


def open_gaps(conn: Any, gateway_id: str | None = None) -> list[Gap]:
    """What is still missing (``pmg hq gaps``)."""
    return _open(conn, gateway_id)


def lost(conn: Any, gateway_id: str | None = None) -> list[tuple[str, str, int, int]]:
    """Ranges a gateway answered ``gone`` to a resend: missing for good."""
    rows = conn.execute(
        "SELECT gateway_id, epoch, from_seq, to_seq FROM seq_skips WHERE reason = 'gone' "
        "AND (%(gw)s::text IS NULL OR gateway_id = %(gw)s) ORDER BY 1, 2, 3",
        {"gw": gateway_id},
    ).fetchall()
    return [(r[0], r[1], int(r[2]), int(r[3])) for r in rows]


def resend_command(
    gateway_id: str, epoch: str, from_seq: int, to_seq: int, now: datetime,
    key: Ed25519PrivateKey, key_id: str, lifetime: timedelta = timedelta(hours=1),
) -> dict[str, Any]:
    """The signed ``resend`` (docs/mqtt.md), shaped as gateway/sync/commands/schema.py expects."""
    if not 1 <= from_seq <= to_seq or to_seq - from_seq >= MAX_RESEND:
        raise ValueError(f"resend range {from_seq}-{to_seq} is not 1 <= a <= b < a + {MAX_RESEND}")
    command = {
        "id": f"resend-{epoch[:8]}-{from_seq}-{to_seq}-{int(now.timestamp())}-{next(_ids)}",
        "type": "resend",
        "gateway_id": gateway_id,
        "issued_at": iso(now),
        "expires_at": iso(now + lifetime),
        "epoch": epoch,
        "from_seq": from_seq,
        "to_seq": to_seq,
    }
    return sign_command(command, key, key_id)


def request_resends(
    conn: Any,
    now: datetime,
    publish: Callable[[str, dict[str, Any]], None],
    key: Ed25519PrivateKey,
    key_id: str,
    *,
    delay: timedelta,
    retry: timedelta,
    limit: int = 100,
) -> int:
    """Sign and publish a ``resend`` for each gap open longer than ``delay`` (again after ``retry``).

    ``publish(gateway_id, command)`` sends it.  The request is recorded (``resends``) in the same
    transaction that marks the gap, committed before the publish: a crash in between leaves a gap
    marked as asked, asked again after ``retry`` — never a storm of duplicates.
    """
    sent: list[tuple[str, dict[str, Any]]] = []
    with conn.transaction():
        if not conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (SCAN_LOCK,)).fetchone()[0]:
            return 0
        due = conn.execute(
            "SELECT gateway_id, epoch, from_seq, to_seq FROM gaps WHERE opened_at <= %s "
            "AND (resend_at IS NULL OR resend_at <= %s) ORDER BY opened_at LIMIT %s",
            (now - delay, now - retry, limit),
        ).fetchall()
        for gw, ep, lo, hi in due:
            first = None
            for a in range(int(lo), int(hi) + 1, MAX_RESEND):
                b = min(int(hi), a + MAX_RESEND - 1)
                cmd = resend_command(gw, ep, a, b, now, key, key_id)
                first = first or cmd["id"]
                conn.execute(
                    "INSERT INTO resends (command_id, gateway_id, epoch, from_seq, to_seq, sent_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    (cmd["id"], gw, ep, a, b, now),
                )
                sent.append((gw, cmd))
            conn.execute(
                "UPDATE gaps SET resend_at = %s, resends = resends + 1, command_id = %s "
                "WHERE gateway_id = %s AND epoch = %s AND from_seq = %s",
                (now, first, gw, ep, lo),
            )
    for gw, cmd in sent:
        publish(gw, cmd)
    return len(sent)
