"""The head office's replicated ledger against the gateway's own figures (``pmg hq reconcile``).

Three sources are compared, per gateway:

- **Reports** (``pmg.report/1`` on ``reports``): for every account of every report received, the
  energy, charges and payments the head office holds for the report's period (usage by
  ``interval_end``, payments by ``at``, in ``[period_start, period_end)``) and the balance after the
  head office's last entry before ``period_end`` must equal the gateway's figures.  Money compares as
  exact decimals (PostgreSQL ``numeric``).
- **Chain heads** (``chain_head``/``chain_length`` of ``status``; docs/ledger.md, "Tamper evidence"):
  within one epoch, two different heads for the same length mean the history was rewritten, and a
  length that shrinks over time means links were removed.  The heads kept here are what
  ``pmg ledger verify --expect-head HASH:LENGTH`` checks on the gateway.
- **Completeness**: a gap still open means the head office lacks messages, so its figures cannot
  agree; it is listed as a mismatch of its own (``pmg hq gaps`` has the detail).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hq.ingest.gaps import open_gaps


@dataclass(frozen=True)
class Mismatch:
    gateway_id: str
    what: str  # energy_wh, charges, payments, closing_balance, chain, gap, missing_account
    where: str  # e.g. "report day 2027-03-01T00:00:00+00:00 account a1"
    head_office: str
    gateway: str

    def line(self) -> str:
        return f"{self.gateway_id}: {self.what} {self.where}: head office {self.head_office}, gateway {self.gateway}"


def reconcile(conn: Any, gateway_id: str | None = None) -> tuple[list[Mismatch], dict[str, int]]:
    """Mismatches, and what was compared (reports, accounts, chain heads, gateways)."""
    out: list[Mismatch] = []
    counts = {"gateways": 0, "reports": 0, "accounts": 0, "chain_heads": 0}
    gw_filter = {"gw": gateway_id}
    counts["gateways"] = int(conn.execute(
        "SELECT count(DISTINCT gateway_id) FROM (SELECT gateway_id FROM received UNION SELECT gateway_id FROM gateways) g "
        "WHERE %(gw)s::text IS NULL OR gateway_id = %(gw)s", gw_filter,
    ).fetchone()[0])
    reports = conn.execute(
        "SELECT gateway_id, epoch, seq, body FROM received WHERE kind = 'report' "
        "AND (%(gw)s::text IS NULL OR gateway_id = %(gw)s) ORDER BY gateway_id, body->>'period_start', seq",
        gw_filter,
    ).fetchall()
    for gw, _epoch, _seq, body in reports:
        counts["reports"] += 1
        start, end = body["period_start"], body["period_end"]
        where_report = f"report {body.get('period')} {start}"
        for acc in body.get("accounts", []):
            counts["accounts"] += 1
            account = acc["account_id"]
            energy, charges = conn.execute(
                "SELECT coalesce(sum(energy_wh), 0), coalesce(sum(charge), 0) FROM usage WHERE gateway_id = %s "
                "AND account_id = %s AND interval_end >= %s AND interval_end < %s",
                (gw, account, start, end),
            ).fetchone()
            payments = conn.execute(
                "SELECT coalesce(sum(amount), 0) FROM payments WHERE gateway_id = %s AND account_id = %s "
                "AND at >= %s AND at < %s",
                (gw, account, start, end),
            ).fetchone()[0]
            closing = conn.execute(
                "SELECT balance FROM ledger WHERE gateway_id = %s AND account_id = %s AND at < %s "
                "ORDER BY at DESC, seq DESC LIMIT 1",
                (gw, account, end),
            ).fetchone()
            where = f"{where_report} account {account}"
            if int(energy) != int(acc["energy_wh"]):
                out.append(Mismatch(gw, "energy_wh", where, str(int(energy)), str(acc["energy_wh"])))
            for what, ours, theirs in (
                ("charges", charges, acc["charges"]),
                ("payments", payments, acc["payments"]),
            ):
                if Decimal(ours) != Decimal(theirs):
                    out.append(Mismatch(gw, what, where, _money(ours), theirs))
            if closing is None:
                if Decimal(acc["closing_balance"]) != 0 or int(acc["energy_wh"]) or Decimal(acc["payments"]):
                    out.append(Mismatch(gw, "closing_balance", where, "no entry", acc["closing_balance"]))
            elif Decimal(closing[0]) != Decimal(acc["closing_balance"]):
                out.append(Mismatch(gw, "closing_balance", where, _money(closing[0]), acc["closing_balance"]))
    out.extend(_chains(conn, gateway_id, counts))
    for g in open_gaps(conn, gateway_id):
        out.append(Mismatch(g.gateway_id, "gap", f"epoch {g.epoch} seq {g.from_seq}-{g.to_seq}",
                            "missing", f"{g.size} message(s) sent"))
    return out, counts


def _chains(conn: Any, gateway_id: str | None, counts: dict[str, int]) -> list[Mismatch]:
    out: list[Mismatch] = []
    rows = conn.execute(
        "SELECT gateway_id, epoch, chain_length, chain_head, seen_at FROM chain_heads "
        "WHERE %(gw)s::text IS NULL OR gateway_id = %(gw)s ORDER BY gateway_id, epoch, seen_at, chain_length",
        {"gw": gateway_id},
    ).fetchall()
    heads: dict[tuple[str, str, int], str] = {}
    longest: dict[tuple[str, str], int] = {}
    for gw, epoch, length, head, _seen in rows:
        counts["chain_heads"] += 1
        known = heads.setdefault((gw, epoch, int(length)), head)
        if known != head:
            out.append(Mismatch(gw, "chain", f"epoch {epoch or '-'} length {length}", known[:16], head[:16]))
        top = longest.get((gw, epoch), 0)
        if int(length) < top:
            out.append(Mismatch(gw, "chain", f"epoch {epoch or '-'} length shrank", str(top), str(length)))
        longest[(gw, epoch)] = max(top, int(length))
    return out


def _money(value: Any) -> str:
    return str(Decimal(value))
