"""The independent oracle of the stateful enforcement model.

Written from the rules' *text* — the preset TOML read as data and docs/enforcement.md — never by
calling ``gateway.policy`` or any gateway decision code.  It sees what a customer and an auditor
see: relay frames the meter accepted (with the true time they happened at), audit events (tagged
with the true time of the step that wrote them), balances and registers in the database.  Every
violation names a *class*; the test lists the classes of known, open defects so the model runs
green on today's code and fails on anything new (or on a known defect coming back after its fix).

Classes:
  protected_cut, keep_power_cut      an automatic cut of a protected customer / keep-power meter
  window                             a cut inside a protected window (local hours, weekend, holiday)
  hold                               a cut during an active head-office hold
  untrusted_clock                    a cut unlawful by true time but lawful by the gateway's wrong clock,
                                     or made within a day after the clock was stepped
  unknown_calendar_year              a cn cut in a year whose official calendar (调休) is not published
  cn_working_hours                   a cn cut outside 08:00-17:00 on a working day
  no_notice, notice_period           a cut without notice / before the notice period ran
  notice_from_decision               a cut counted from the notice's decision, not a confirmed delivery
  stale_notice                       a cn cut more than 7 days after its notice (art. 67: 3-7 days)
  reminder                           a cut without a fresh reminder (cn: 30 min before, valid 2 h)
  cut_with_credit                    a cut while the balance is above the disconnect level
  chatter / uk_emergency_chatter     more than 2 relay operations on one meter within an hour
  late_reconnect / cash_payment_late a restoring payment not followed by a close within 1 s
  close_without_credit               a payment that does not restore credit closed the relay
  ec_zero_offer, ec_relent           emergency credit offered with amount 0 / lent again before repaid
  quarantine                         a plausible reading quarantined as impossible power (a clock step)
  reading_refused                    a good reading the gateway did not record (its clock went back)
  energy, ledger_verify              Wh charged not exactly once / ``pmg ledger verify`` not clean
"""

from __future__ import annotations

import json
import re
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import holidays

from gateway.core.timeutil import parse_iso

REPO = Path(__file__).resolve().parents[2]
LOADS_W = (0, 300, 500, 1_500, 5_000)  # what the walk's households draw (below every meter's max_power_w)
CHATTER_LIMIT = 2  # relay operations per meter per rolling hour (docs/enforcement.md "no chatter")
RECONNECT_BOUND = timedelta(seconds=1)
# The gateway trusts a clock within [time] reference_tolerance_s (300 s, docs/enforcement.md,
# "Untrusted time"): no clock is exact, and a cut within that margin of a window's edge is the margin's.
CLOCK_TOLERANCE = timedelta(seconds=300)
CLOCK_AFTERMATH = timedelta(days=1)
CN_NOTICE_MAX = timedelta(days=7)  # 供电营业规则 art. 67: written notice 3-7 days before the cut
CN_WORKING_HOURS = (time(8), time(17))
NOTICE_DELIVERY_KINDS = ("notice_delivered", "notice_delivery_confirmed")  # the signed confirmation
_ISO_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")
_SUBSTITUTED = re.compile(r"substituted from (\d{2})/(\d{2})/(\d{4})")


def duration(text: str) -> timedelta:
    m = _ISO_DURATION.match(text)
    if not m:
        raise ValueError(f"unsupported duration {text!r}")
    d, h, mi, s = (int(x or 0) for x in m.groups())
    return timedelta(days=d, hours=h, minutes=mi, seconds=s)


@dataclass(frozen=True)
class RuleText:
    """The preset's rules as its TOML states them."""

    name: str
    tz: ZoneInfo
    country: str | None
    subdiv: str | None
    hours: tuple[tuple[time, time], ...]
    weekends: bool
    public_holidays: bool
    notice_required: bool
    notice_period: timedelta
    reminder_before: timedelta
    reminder_valid_for: timedelta | None
    disconnect_at_or_below: int
    reconnect_threshold: int
    reconnect_mode: str
    on_emergency_credit: bool
    ec_enabled: bool
    categories: tuple[str, ...]

    @classmethod
    def load(cls, preset: str, tz: str) -> RuleText:
        t = tomllib.loads((REPO / "gateway" / "presets" / f"{preset}.toml").read_text())
        notice, win, rec = t.get("notice", {}), t.get("windows", {}), t.get("reconnect", {})

        def hm(s: str) -> time:
            h, m = s.split(":")
            return time(int(h), int(m))

        return cls(
            name=preset,
            tz=ZoneInfo(tz),
            country=t.get("country"),
            subdiv=t.get("subdiv"),
            hours=tuple((hm(w["start"]), hm(w["end"])) for w in win.get("hours", [])),
            weekends=bool(win.get("weekends", False)),
            public_holidays=bool(win.get("public_holidays", False)),
            notice_required=bool(notice.get("required", False)),
            notice_period=duration(notice.get("period", "PT0S")),
            reminder_before=duration(notice.get("reminder_before", "PT0S")),
            reminder_valid_for=duration(notice["reminder_valid_for"]) if "reminder_valid_for" in notice else None,
            disconnect_at_or_below=int(t.get("disconnect", {}).get("at_or_below_minor", 0)),
            reconnect_threshold=int(rec.get("threshold_minor", 1)),
            reconnect_mode=str(rec.get("mode", "direct_close")),
            on_emergency_credit=bool(rec.get("on_emergency_credit", False)),
            ec_enabled=bool(t.get("emergency_credit", {}).get("enabled", False)),
            categories=tuple(t.get("protected", {}).get("categories", [])),
        )


class Calendar:
    """Weekends, public holidays and China's adjusted working days, from ``holidays`` directly."""

    def __init__(self, rules: RuleText) -> None:
        self.rules = rules
        self._years: dict[int, tuple[set[date], set[date], bool]] = {}

    def _year(self, y: int) -> tuple[set[date], set[date], bool]:
        if y not in self._years:
            if self.rules.country is None:
                self._years[y] = (set(), set(), True)
            else:
                table = holidays.country_holidays(
                    self.rules.country, subdiv=self.rules.subdiv, years=y, language="en_US"
                )
                days = set(table)
                adjusted = {
                    date(int(yy), int(mm), int(dd))
                    for name in table.values()
                    for mm, dd, yy in _SUBSTITUTED.findall(str(name))
                }
                # China publishes each year's schedule (with its 调休 swaps) in the November before;
                # a year without any swap in the table is a guess, not the official calendar.
                known = self.rules.country != "CN" or bool(adjusted)
                self._years[y] = (days, adjusted, known)
        return self._years[y]

    def holiday(self, d: date) -> bool:
        return d in self._year(d.year)[0]

    def workday_swap(self, d: date) -> bool:
        return any(d in self._year(y)[1] for y in (d.year - 1, d.year, d.year + 1))

    def known_year(self, y: int) -> bool:
        return self._year(y)[2]

    def weekend(self, d: date) -> bool:
        return d.weekday() >= 5 and not self.workday_swap(d)


@dataclass
class Violation:
    cls: str
    step: int
    at: datetime
    meter_or_account: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.cls}] step {self.step} at {self.at:%Y-%m-%d %H:%M:%S}Z {self.meter_or_account}: {self.detail}"


@dataclass
class Oracle:
    rules: RuleText
    step: int = 0
    violations: list[Violation] = field(default_factory=list)
    last_event: int = 0
    notices: dict[str, list[tuple[datetime, datetime]]] = field(default_factory=lambda: defaultdict(list))
    deliveries: dict[str, list[datetime]] = field(default_factory=lambda: defaultdict(list))
    reminders: dict[str, list[datetime]] = field(default_factory=lambda: defaultdict(list))
    offers: dict[str, list[datetime]] = field(default_factory=lambda: defaultdict(list))
    restored_at: dict[str, datetime] = field(default_factory=dict)  # balance last seen ≥ threshold
    restored_by: dict[str, str | None] = field(default_factory=dict)  # the payment channel that did it
    below: dict[str, bool] = field(default_factory=dict)
    channel: str | None = None  # the channel of the payment being applied, while its step runs
    holds: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)  # id -> (from, until)
    hold_skewed: dict[str, bool] = field(default_factory=dict)  # set while the gateway clock was wrong
    ops_seen: int = 0
    ops_by_meter: dict[str, list[datetime]] = field(default_factory=lambda: defaultdict(list))
    refused_seen: int = 0
    quarantines_seen: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.cal = Calendar(self.rules)

    def flag(self, cls: str, at: datetime, who: str, detail: str) -> None:
        self.violations.append(Violation(cls, self.step, at, who, detail))

    # -- the rules' windows, at a given instant ---------------------------------------------------------
    def window_reasons(self, at: datetime) -> list[str]:
        local = at.astimezone(self.rules.tz)
        out = []
        for start, end in self.rules.hours:
            t = local.time()
            inside = (start <= t < end) if start < end else (t >= start or t < end)
            if inside:
                out.append(f"{local:%H:%M} local inside {start:%H:%M}-{end:%H:%M}")
        if self.rules.weekends and self.cal.weekend(local.date()):
            out.append(f"{local:%a %Y-%m-%d} is a weekend day")
        if self.rules.public_holidays and self.cal.holiday(local.date()):
            out.append(f"{local:%Y-%m-%d} is a public holiday")
        return out

    def hold_active(self, at: datetime) -> str | None:
        for hid, (start, until) in self.holds.items():
            if start <= at < until:
                return hid
        return None

    # -- observations --------------------------------------------------------------------------------
    def observe(self, rig: Any) -> None:
        """After every tick: new events (tagged with true time), new relay operations, balances."""
        now = rig.clock.true
        for ev in rig.conn().execute(
            "SELECT id, kind, account_id, meter_id, detail_json, at FROM events WHERE id > ? ORDER BY id",
            (self.last_event,),
        ).fetchall():
            self.last_event = ev[0]
            kind, aid = ev[1], ev[2]
            if kind == "policy_serve_notice":
                self.notices[aid].append((now, parse_iso(ev[5])))  # (true time, the gateway's time)
            elif kind in NOTICE_DELIVERY_KINDS:
                self.deliveries[aid].append(now)
            elif kind == "policy_send_reminder":
                self.reminders[aid].append(now)
            elif kind == "policy_offer_emergency_credit":
                self._check_offer(rig, aid, now, json.loads(ev[4]))
        for aid, bal in rig.conn().execute("SELECT id, balance_minor FROM accounts").fetchall():
            if bal >= self.rules.reconnect_threshold:
                if self.below.get(aid, True):
                    self.restored_by[aid] = self.channel
                self.restored_at[aid] = now
            self.below[aid] = bal < self.rules.reconnect_threshold
        for at, mid, why in rig.refused[self.refused_seen :]:
            self.flag("reading_refused", at, mid, why)
        self.refused_seen = len(rig.refused)
        for op in rig.ops[self.ops_seen :]:
            self._check_op(rig, op)
        self.ops_seen = len(rig.ops)

    def _check_offer(self, rig: Any, aid: str, now: datetime, detail: dict[str, Any]) -> None:
        granted = rig.conn().execute("SELECT emergency_credit_minor FROM accounts WHERE id = ?", (aid,)).fetchone()[0]
        if not detail.get("level") or not granted:
            self.flag("ec_zero_offer", now, aid, f"emergency credit offered (amount {detail.get('level')}, "
                      f"account's emergency credit {granted})")
        prev = self.offers[aid][-1] if self.offers[aid] else None
        if prev is not None and self.restored_at.get(aid, prev) <= prev:
            self.flag("ec_relent", now, aid, f"offered again; the one of {prev:%Y-%m-%d %H:%M}Z was never "
                      f"repaid to the reconnect threshold")
        self.offers[aid].append(now)

    def _check_op(self, rig: Any, op: Any) -> None:
        mid = op.meter_id
        aid = rig.account_of(mid)
        if op.opened or op.closed or op.action.value == "close_permitted":
            hour_ago = op.true_at - timedelta(hours=1)
            recent = [t for t in self.ops_by_meter[mid] if t > hour_ago]
            recent.append(op.true_at)
            self.ops_by_meter[mid] = recent
            if len(recent) > CHATTER_LIMIT:
                ec = rig.conn().execute("SELECT emergency_credit_minor FROM accounts WHERE id = ?", (aid,)).fetchone()[0]
                cls = "uk_emergency_chatter" if self.rules.name == "uk" and ec else "chatter"
                self.flag(cls, op.true_at, mid, f"{len(recent)} relay operations within an hour (last {op.action.value})")
        if op.opened and op.actor == "policy":
            self._check_cut(rig, op, aid)

    def _check_cut(self, rig: Any, op: Any, aid: str) -> None:
        at, gw_at, mid = op.true_at, op.gateway_at, op.meter_id
        r = self.rules
        # The clock is to blame while it is wrong and for a day after it was stepped: what the gateway
        # planned and queued under the wrong time (retries, review times, holds) runs on after the step.
        stepped = rig.skew_changed_at is not None and at - rig.skew_changed_at < CLOCK_AFTERMATH
        clock = gw_at != at or stepped
        if rig.protected[aid]:
            self.flag("protected_cut", at, mid, "automatic cut of a protected customer")
        if rig.keep_power[mid]:
            self.flag("keep_power_cut", at, mid, "automatic cut of a keep-power meter")
        reasons = self.window_reasons(at)
        if reasons and abs(gw_at - at) <= CLOCK_TOLERANCE and not self.window_reasons(gw_at):
            reasons = []  # a clock within the gateway's documented tolerance is a trusted clock
        if reasons:
            lawful_by_gateway = not self.window_reasons(gw_at)
            self.flag("untrusted_clock" if (lawful_by_gateway and gw_at != at) or stepped else "window", at, mid,
                      f"cut in a protected window: {'; '.join(reasons)} (gateway clock {gw_at:%Y-%m-%d %H:%M}Z)")
        hid = self.hold_active(at)
        if hid and abs(gw_at - at) <= CLOCK_TOLERANCE and not self.hold_active(gw_at):
            hid = None  # the hold's end seen by a clock within the gateway's tolerance
        if hid:
            # A hold is stored from the gateway's clock when it arrives: set while that clock was wrong,
            # or judged by a wrong clock, it is the untrusted clock's doing.
            self.flag("untrusted_clock" if clock or self.hold_skewed.get(hid, False) else "hold", at, mid, f"cut during hold {hid}")
        local = at.astimezone(r.tz)
        if r.name == "cn":
            if not self.cal.known_year(local.year):
                self.flag("unknown_calendar_year", at, mid, f"cut in {local.year}, whose official calendar is unknown")
            gw_local = gw_at.astimezone(r.tz)
            within = abs(gw_at - at) <= CLOCK_TOLERANCE and CN_WORKING_HOURS[0] <= gw_local.time() < CN_WORKING_HOURS[1]
            if not within and not (CN_WORKING_HOURS[0] <= local.time() < CN_WORKING_HOURS[1]):
                self.flag("cn_working_hours", at, mid, f"cut at {local:%H:%M} local, outside 08:00-17:00")
        balance = rig.conn().execute("SELECT balance_minor FROM accounts WHERE id = ?", (aid,)).fetchone()[0]
        if balance > r.disconnect_at_or_below:
            self.flag("cut_with_credit", at, mid, f"cut with balance {balance} > {r.disconnect_at_or_below}")
        if r.notice_required:
            self._check_notice(at, gw_at, mid, aid, stepped)

    def _check_notice(self, at: datetime, gw_at: datetime, mid: str, aid: str, stepped: bool) -> None:
        r = self.rules
        since = self.restored_at.get(aid)
        notices = [n for n in self.notices[aid] if n[0] <= at and (since is None or n[0] >= since)]
        if not notices:
            # A cashier's payment restored credit without the daemon noticing: the old notice stood.
            cash = self.restored_by.get(aid) == "cash"
            self.flag("cash_payment_late" if cash else "no_notice", at, mid,
                      "cut without a notice served since credit was last restored"
                      + (" (by a cash payment the daemon never re-decided)" if cash else ""))
            return
        notice, notice_gw = notices[-1]
        if at - notice + (CLOCK_TOLERANCE if abs(gw_at - at) <= CLOCK_TOLERANCE else timedelta(0)) < r.notice_period:
            skewed = gw_at - notice_gw >= r.notice_period or stepped
            self.flag("untrusted_clock" if skewed else "notice_period", at, mid,
                      f"cut {at - notice} after the notice (period {r.notice_period})")
        margin = CLOCK_TOLERANCE if abs(gw_at - at) <= CLOCK_TOLERANCE else timedelta(0)  # a trusted clock's
        delivered = [t for t in self.deliveries[aid] if notice <= t <= at - r.notice_period + margin]
        if not delivered:
            self.flag("notice_from_decision", at, mid, "no confirmed delivery of the notice a full period before")
        # Art. 67 counts the 3-7 days from the notice's delivery to the customer, not from its issue.
        served = max((t for t in self.deliveries[aid] if notice <= t <= at), default=notice)
        if r.name == "cn" and at - served > CN_NOTICE_MAX:
            self.flag("stale_notice", at, mid, f"cut {at - served} after the notice was delivered (at most 7 days)")
        if r.reminder_before:
            reminders = [t for t in self.reminders[aid] if notice <= t <= at]
            if not reminders:
                self.flag("untrusted_clock" if stepped else "reminder", at, mid, "cut without a reminder")
            else:
                last = reminders[-1]
                if at - last < r.reminder_before or (r.reminder_valid_for and at - last > r.reminder_valid_for):
                    self.flag("untrusted_clock" if stepped else "reminder", at, mid, f"cut {at - last} after the reminder "
                              f"(at least {r.reminder_before}, at most {r.reminder_valid_for})")

    # -- payments --------------------------------------------------------------------------------------
    def after_payment(self, rig: Any, aid: str, channel: str, before: tuple[bool, bool], ops_before: int) -> None:
        """``before`` = (relay closed, close permitted) of the meter just before the payment; the
        enforcer has run at the payment's instant and the rig has let one more second pass."""
        mid = rig.meter_of(aid)
        model = rig.models[mid]
        balance = rig.conn().execute("SELECT balance_minor FROM accounts WHERE id = ?", (aid,)).fetchone()[0]
        r = self.rules
        now = rig.clock.true
        if balance >= r.reconnect_threshold:
            if r.reconnect_mode == "direct_close":
                ok = model.relay_closed
            else:
                ok = model.relay_closed or not model.relay_command_trip
            if not ok and not rig.keep_power[mid]:
                cls = "cash_payment_late" if channel == "cash" else (
                    "untrusted_clock" if rig.clock.skew else "late_reconnect")
                self.flag(cls, now, mid, f"balance {balance} ≥ {r.reconnect_threshold} after a {channel} payment "
                          f"but no close {RECONNECT_BOUND} later (relay closed={model.relay_closed}, "
                          f"command trip={model.relay_command_trip})")
            return
        closes = [
            op
            for op in rig.ops[ops_before:]
            if op.meter_id == mid and (op.closed or op.action.value in ("direct_close", "close_permitted"))
        ]
        ec = rig.conn().execute("SELECT emergency_credit_minor FROM accounts WHERE id = ?", (aid,)).fetchone()[0]
        on_ec = r.on_emergency_credit and ec > 0 and balance > -ec
        if closes and not on_ec and not before[0]:
            self.flag("close_without_credit", now, mid,
                      f"balance {balance} < {r.reconnect_threshold} after a payment, yet {closes[0].action.value} sent")

    # -- money and energy ------------------------------------------------------------------------------
    def check_ledger(self, rig: Any, *, final: bool = False) -> None:
        from gateway.ledger.verify import verify  # the auditor's own tool: `pmg ledger verify`

        now = rig.clock.true
        for m in verify(rig.store):
            self.flag("ledger_verify", now, "ledger", str(m))
        conn = rig.conn()
        for mid in rig.models:
            base = conn.execute(
                "SELECT register_wh FROM readings WHERE meter_id = ? AND outcome = 'baseline' ORDER BY id LIMIT 1",
                (mid,),
            ).fetchone()
            if base is None:
                continue
            charged = conn.execute(
                "SELECT COALESCE(SUM(energy_wh), 0) FROM entries WHERE meter_id = ? AND kind = 'charge'", (mid,)
            ).fetchone()[0]
            last = conn.execute("SELECT last_register_wh FROM meters WHERE id = ?", (mid,)).fetchone()[0]
            if charged != last - base[0]:
                self.flag("energy", now, mid, f"charged {charged} Wh, register advanced {last - base[0]} Wh")
            held = conn.execute("SELECT quarantined_reading_id FROM meters WHERE id = ?", (mid,)).fetchone()[0]
            if held is not None and held not in self.quarantines_seen:
                self.quarantines_seen.add(held)
                why = conn.execute("SELECT detail FROM readings WHERE id = ?", (held,)).fetchone()[0]
                self.flag("quarantine", now, mid, f"reading {held} quarantined ({why}); the household never drew "
                          f"more than {max(LOADS_W)} W: billing and enforcement stop until a technician acts")
            if final and held is None:
                true_wh = (rig.models[mid].energy_import_wh // 10) * 10  # the register's 0.01 kWh steps
                if charged != true_wh - base[0]:
                    self.flag("energy", now, mid, f"at the end: charged {charged} Wh, the meter's register "
                              f"advanced {true_wh - base[0]} Wh")
