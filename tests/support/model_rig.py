"""The rig of the stateful enforcement model: the real gateway's parts on a real SQLite file, driven
step by step with an injected clock against simulated DL/T 645 meters whose relays stop consumption.

What is real: the configuration file and its loader, ``build_components`` (rules, calendar, tariffs,
``PolicyEngine``), ``seed_from_config``, the ``Gateway`` object's own data path
(``_flush_readings`` → ``record_reading`` → ``evaluate_meter``, ``apply_payment``, ``review_slice``,
``reload``, ``_resume_commands``, ``_on_relay_outcome``), the head office's ``hold`` and ``account``
command handlers, the ``Enforcer`` (``due`` and ``_execute``: sending, read-back, retries), the
DL/T 645 driver (frames built and parsed by ``drivers.dlt645``) and the simulated meter
(``simulators.model.MeterModel`` answered by ``simulators.dlt645.responder``).

What stands in: the serial line (``FrameLink`` hands the request frame to the responder in memory),
the bus worker's queue (``BusStandIn.submit`` runs the job at once) and the daemon's timers
(``Rig.advance`` runs what the scheduler and the due-review task would run, at the instants they
would run it).  Two clocks: *true* time drives the meters' consumption and is what the customer
lives by; the *gateway* clock is true time plus a skew that the walk steps forwards and back.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from drivers.base import BILLING_POINTS, DriverError, RelayAction
from drivers.dlt645 import commands
from drivers.dlt645.frame import Frame, Function
from drivers.dlt645.meter import Dlt645Meter
from gateway.config import load_config
from gateway.core.timeutil import iso, parse_iso
from gateway.ledger.payments import apply_payment
from gateway.policy.notices import notice_id
from gateway.runtime import timeguard
from gateway.runtime.daemon import DUE_FOR_REVIEW, READING_BATCH_S, Gateway
from gateway.runtime.inbox import BatchInbox
from gateway.runtime.payment_watch import PaymentWatch
from gateway.runtime.relay import Enforcer
from gateway.store.db import Store, open_store
from gateway.store.relay_queue import RelayCommand
from gateway.sync.commands import handlers as command_types
from gateway.sync.commands.schema import AccountCmd, HoldCmd, MeterAssignment, NoticeCmd
from gateway.tariffs.model import example_dir
from simulators.dlt645.responder import respond
from simulators.model import LoadProfile, MeterModel

REPO = Path(__file__).resolve().parents[2]
TARIFFS = example_dir()  # the example tariffs shipped in the wheel


@dataclass(frozen=True)
class PresetSetup:
    """How a preset is deployed in the model: zone, tariff and the meters' fixed UTC offset."""

    tz: str
    tariff: str
    currency: str
    meter_utc_offset_h: int  # the simulated meter keeps standard local time (no DST), like real ones
    emergency_credit: tuple[str, ...]  # per account, in the currency's major unit


SETUPS: dict[str, PresetSetup] = {
    "cn": PresetSetup("Asia/Shanghai", "flat-cn", "CNY", 8, ("0", "0", "0")),
    "uk": PresetSetup("Europe/London", "uk-standard", "GBP", 0, ("5.00", "5.00", "0")),
    "generic": PresetSetup("Europe/Berlin", "flat-cn", "CNY", 1, ("0", "0", "0")),
    "us-tx": PresetSetup("America/Chicago", "flat-cn", "CNY", -6, ("0", "0", "0")),
}
METERS = ("m0", "m1", "m2")
ACCOUNTS = ("a0", "a1", "a2")


class Killed(BaseException):
    """Raised inside a relay job to model ``kill -9`` after the frame went out, before the outcome
    was recorded (not an ``Exception``: nothing in the enforcer may catch it)."""


@dataclass
class ModelClock:
    """True time (the meters', the customer's) and the gateway's view of it (true + skew)."""

    true: datetime
    skew: timedelta = timedelta(0)

    def gateway(self) -> datetime:
        return self.true + self.skew

    def epoch(self) -> float:
        return self.true.timestamp()


@dataclass
class RelayOp:
    """A relay frame the meter accepted: what the oracle counts and judges."""

    true_at: datetime
    gateway_at: datetime
    meter_id: str
    action: RelayAction
    opened: bool  # the relay went from closed to open
    closed: bool  # the relay went from open to closed
    actor: str | None  # the relay_commands row's actor (None for a button press)
    command_id: int | None


class FrameLink:
    """The serial line in memory: every request frame goes to the addressed meter's responder."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _one(self, frame: Frame) -> Frame:
        model = self.rig.by_address[frame.address]
        before = model.relay_closed
        replies = respond(model, frame)
        if frame.function == Function.RELAY and replies and not replies[0].is_abnormal:
            self.rig.on_relay_frame(model, commands.parse_relay_request(frame).action, before)
        return replies[0]

    async def request(self, frame: Frame, *, retries: int | None = None) -> Frame:
        return self._one(frame)

    async def request_many(self, frames: Sequence[Frame], *, retries: int | None = None) -> list[Any]:
        return [self._one(f) for f in frames]


class BusStandIn:
    """The bus worker as the enforcer sees it: ``meter(id)`` and ``submit(priority, job)``."""

    def __init__(self, meters: dict[str, Dlt645Meter], rig: Rig) -> None:
        self.meters = meters
        self.rig = rig

    def meter(self, meter_id: str) -> Dlt645Meter:
        return self.meters[meter_id]

    def reopen_link(self) -> None:
        """SIGHUP: the line in memory has nothing to reopen."""

    async def submit(self, _priority: int, job: Callable[[], Any]) -> Any:
        result = await job()
        if self.rig.kill_after_frame:
            raise Killed()
        return result


class ModelGateway(Gateway):
    """The daemon object with its buses replaced by the in-memory stand-in (start and reload alike:
    a reload that changes the meters' lines restarts the buses, and must get the stand-in again)."""

    rig: Rig | None = None

    def _start_buses(self) -> None:
        assert self.rig is not None
        self.workers["b1"] = BusStandIn(self.rig.drivers, self.rig)  # type: ignore[assignment]

    async def _stop_buses(self) -> None:
        self.workers.clear()


@dataclass
class Rig:
    """One gateway (3 meters, 3 accounts) under one preset, in a temporary directory."""

    preset: str
    start: datetime
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pmg-model-", dir=_tmp_root())))
    clock: ModelClock = field(init=False)
    models: dict[str, MeterModel] = field(default_factory=dict)
    by_address: dict[str, MeterModel] = field(default_factory=dict)
    protected: dict[str, bool] = field(default_factory=dict)  # in force (the last change from either channel)
    keep_power: dict[str, bool] = field(default_factory=dict)
    file_protected: dict[str, bool] = field(default_factory=dict)  # what the configuration file says
    file_keep_power: dict[str, bool] = field(default_factory=dict)
    gw: Gateway | None = None
    enforcer: Enforcer | None = None
    payment_watch: PaymentWatch | None = None
    clock_checked: datetime | None = None
    drivers: dict[str, Dlt645Meter] = field(default_factory=dict)
    ops: list[RelayOp] = field(default_factory=list)
    kill_after_frame: bool = False
    current_cmd: RelayCommand | None = None
    seq: int = 0
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    observers: list[Callable[[Rig], None]] = field(default_factory=list)
    skew_changed_at: datetime | None = None  # true time of the last clock step
    refused: list[tuple[datetime, str, str]] = field(default_factory=list)  # (true time, meter, why)

    def __post_init__(self) -> None:
        self.clock = ModelClock(self.start)
        setup = SETUPS[self.preset]
        for i, mid in enumerate(METERS):
            model = MeterModel(
                f"{i + 1:012d}",
                clock=self.clock.epoch,
                profile=LoadProfile((500,)),
                utc_offset_hours=setup.meter_utc_offset_h,
            )
            model.advance()
            self.models[mid] = model
            self.by_address[model.address] = model
            self.protected[ACCOUNTS[i]] = self.file_protected[ACCOUNTS[i]] = False
            self.keep_power[mid] = self.file_keep_power[mid] = False
        self.config_path = self.workdir / "gw.toml"
        self.write_config()
        self.boot()

    # -- configuration and lifecycle -----------------------------------------------------------------
    def category(self) -> str:
        """A protected category of this preset (the first one the TOML lists)."""
        return self.gw.parts.rules.protected.categories[0] if self.gw else "medical_equipment"

    def write_config(self) -> None:
        s = SETUPS[self.preset]
        body = (
            f'gateway_id = "gw-model"\ntimezone = "{s.tz}"\ndatabase = "{self.workdir / "pmg.db"}"\n'
            f'currency = "{s.currency}"\ntariff_dir = "{TARIFFS}"\n'
            f'[policy]\npreset = "{self.preset}"\n'
            f'[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "{self.workdir / "no-such-port"}"\n'
        )
        for i, mid in enumerate(METERS):
            aid = ACCOUNTS[i]
            body += (
                f'[[meters]]\nid = "{mid}"\nbus = "b1"\naddress = "{i + 1:012d}"\naccount = "{aid}"\n'
                f'tariff = "{s.tariff}"\nkeep_power = {str(self.file_keep_power[mid]).lower()}\n'
            )
            body += f'[[accounts]]\nid = "{aid}"\nemergency_credit = "{s.emergency_credit[i]}"\n'
            if self.file_protected[aid]:
                body += f'protected = true\nprotected_category = "{self._category_text()}"\n'
        self.config_path.write_text(body)

    def _category_text(self) -> str:
        import tomllib

        text = (REPO / "gateway" / "presets" / f"{self.preset}.toml").read_text()
        return str(tomllib.loads(text)["protected"]["categories"][0])

    def boot(self) -> None:
        """Start as ``Gateway.start`` does, minus the buses' serial ports and the timers."""
        cfg = load_config(self.config_path)
        gw = ModelGateway(self.config_path, cfg, clock=self.clock.gateway)
        gw.rig = self
        gw.store = open_store(self.workdir / "pmg.db")
        from gateway.ledger.accounts import seed_from_config
        from gateway.runtime.components import build_components

        gw.parts = build_components(cfg, self.config_path, gw.store)
        seed_from_config(gw.store, cfg, self.clock.gateway())
        gw._meter_cfg = {m.id: m for m in cfg.meters}
        gw.inbox = BatchInbox(self.loop, gw._flush_readings, READING_BATCH_S)
        # The daemon's own view of time: a monotonic clock that runs with true time (the process's
        # CLOCK_MONOTONIC; a restart begins a new one, so a step across a restart is not seen) and
        # the verdict keeper built on it, as Gateway.start does.
        true_at_start = self.clock.true
        gw.time_monotonic = lambda: (self.clock.true - true_at_start).total_seconds()
        gw.timetrust = timeguard.build(gw)
        self.drivers = {
            mid: Dlt645Meter(FrameLink(self), self.models[mid].address, tz=cfg.tz, clock=self.clock.gateway)  # type: ignore[arg-type]
            for mid in METERS
        }
        gw._start_buses()
        gw.enforcer = Enforcer(
            gw.store,
            gw.workers,
            {m.id: m.bus for m in cfg.meters},
            self.clock.gateway,
            on_outcome=gw._on_relay_outcome,
            minor_digits=cfg.minor_digits,
        )
        gw._resume_commands()
        # The watch on payments other processes commit (the daemon runs it every 0.1 s): the backlog at
        # start, then a pass at every tick and right after a cashier's payment.
        self.payment_watch = PaymentWatch(gw.store, gw._decide_marked, gw.wake, check_time=gw._check_time)
        assert self.payment_watch is not None
        self.payment_watch.drain_all()
        self.gw, self.enforcer = gw, gw.enforcer
        self.clock_checked = None
        self.clock_check()  # the daemon's clock job runs 2 s after start, then hourly

    def clock_check(self) -> None:
        """The hourly clock job (gateway.runtime.clocksync) as a witness on the gateway's clock: the
        simulated meters keep true time, so each reads (true - gateway clock) seconds of drift."""
        assert self.gw is not None and self.gw.timetrust is not None
        drift = (self.clock.true - self.clock.gateway()).total_seconds()
        timeguard.observed(self.gw, self.gw.timetrust.meters_observed({mid: drift for mid in METERS}))
        timeguard.observe(self.gw)
        self.clock_checked = self.clock.true

    def kill(self) -> None:
        """``kill -9``: the connection goes away with nothing flushed (commits are already durable)."""
        assert self.gw is not None
        self.gw.inbox.take()  # queued, never charged
        self.gw.store.conn.close()
        self.gw = self.enforcer = None

    def restart(self) -> None:
        self.kill()
        self.boot()

    def kill_mid_command(self) -> bool:
        """Kill right after a relay frame went out, before its outcome was recorded; then restart."""
        assert self.enforcer is not None
        due = self.enforcer.due(self.clock.gateway())
        if not due:
            return False
        self.kill_after_frame = True
        try:
            self._execute(due[0])
        except Killed:
            pass
        finally:
            self.kill_after_frame = False
        self.restart()
        return True

    def set_flags_file(self, aid: str, *, protected: bool | None = None, keep_power: bool | None = None) -> None:
        """Edit the configuration file and SIGHUP.  The file wins only where it *changed* a value since
        the last start or reload (``seed_from_config``): writing back what it already said leaves a head
        office decision in force (docs: README, accounts)."""
        mid = self.meter_of(aid)
        if protected is not None and protected != self.file_protected[aid]:
            self.file_protected[aid] = self.protected[aid] = protected
        if keep_power is not None and keep_power != self.file_keep_power[mid]:
            self.file_keep_power[mid] = self.keep_power[mid] = keep_power
        self.reload()

    def reload(self) -> None:
        """SIGHUP with the current file."""
        assert self.gw is not None
        self.write_config()
        self.loop.run_until_complete(self.gw.reload())

    # -- the data path ---------------------------------------------------------------------------
    def read_all(self) -> None:
        """One poll of every meter through the DL/T 645 driver, charged as the daemon charges a batch."""
        assert self.gw is not None
        for mid in METERS:
            try:
                reading = self.loop.run_until_complete(self.drivers[mid].read(BILLING_POINTS))
            except DriverError:
                continue
            self.gw.inbox.put((mid, reading, 0.0))
        taken = {mid: iso(r.taken_at) for mid, r, _ in self.gw.inbox.pending()}

        def rows(mid: str) -> int:
            return int(self.gw.store.scalar("SELECT COUNT(*) FROM readings WHERE meter_id = ?", mid))

        before = {mid: rows(mid) for mid in taken}
        self.gw._flush_readings()
        for mid, at in taken.items():
            # Recorded under its own time or, when the clock went back, just after the meter's last
            # reading (docs/ledger.md): either way one more row.  None: rolled back, nothing recorded.
            if rows(mid) <= before[mid]:
                self.refused.append((self.clock.true, mid, f"reading taken at {at} (gateway clock) not recorded"))

    def run_enforcer(self, *, rounds: int = 8) -> None:
        """What ``Enforcer.run`` does while it is woken: execute every due command, and again for the
        commands the outcomes queued (an outcome re-decides the meter and wakes the enforcer at once).
        ``rounds`` bounds a gateway that would chatter for ever within one instant."""
        assert self.enforcer is not None
        done: set[int] = set()
        for _ in range(rounds):
            due = [
                c
                for c in self.enforcer.due(self.clock.gateway())
                if c.meter_id in self.enforcer.meter_bus and c.id not in done
            ]
            if not due:
                return
            for cmd in due:
                done.add(cmd.id)
                self._execute(cmd)

    def _execute(self, cmd: RelayCommand) -> None:
        assert self.enforcer is not None
        self.current_cmd = cmd
        try:
            self.loop.run_until_complete(self.enforcer._execute(cmd))
        finally:
            self.current_cmd = None

    def on_relay_frame(self, model: MeterModel, action: RelayAction, closed_before: bool) -> None:
        mid = next(m for m, mm in self.models.items() if mm is model)
        cmd = self.current_cmd
        self.ops.append(
            RelayOp(
                self.clock.true,
                self.clock.gateway(),
                mid,
                action,
                opened=closed_before and not model.relay_closed,
                closed=not closed_before and model.relay_closed,
                actor=cmd.actor if cmd else None,
                command_id=cmd.id if cmd else None,
            )
        )

    def press_button(self, mid: str) -> None:
        model = self.models[mid]
        before = model.relay_closed
        model.press_button()
        if model.relay_closed != before:
            self.ops.append(
                RelayOp(self.clock.true, self.clock.gateway(), mid, RelayAction.DIRECT_CLOSE, False, True, None, None)
            )

    def due_review(self) -> None:
        """The daemon's ``_review_when_due`` body: re-decide accounts whose next review has come."""
        assert self.gw is not None
        now = self.clock.gateway()
        with self.gw.store.tx() as conn:
            due = conn.execute(DUE_FOR_REVIEW, (iso(now),)).fetchall()
            for (meter_id,) in due:
                if meter_id in self.gw._meter_cfg:
                    self.gw.parts.policy.evaluate_meter(conn, meter_id, now)

    def next_review_true(self) -> datetime | None:
        assert self.gw is not None
        row = self.gw.store.conn.execute("SELECT MIN(next_review_at) FROM accounts").fetchone()
        if row is None or row[0] is None:
            return None
        return parse_iso(row[0]) - self.clock.skew

    def tick(self) -> None:
        """One moment of a running daemon: poll, due reviews, a slice of the sweep, the enforcer."""
        assert self.gw is not None
        if self.clock_checked is None or self.clock.true - self.clock_checked >= timedelta(hours=1):
            self.clock_check()
        self.read_all()
        assert self.payment_watch is not None
        self.payment_watch.drain_all()
        self.due_review()
        self.loop.run_until_complete(self.gw.review_slice())
        self.run_enforcer()
        self.observe()

    def observe(self) -> None:
        for fn in self.observers:
            fn(self)

    def advance(self, span: timedelta, *, max_ticks: int = 12) -> None:
        """Let ``span`` of true time pass with the daemon running: a tick at every due review (the
        daemon looks every second) and at least every ``span / max_ticks`` (the meters' polls)."""
        target = self.clock.true + span
        every = max(timedelta(hours=1), span / max_ticks)
        guard = 0
        while self.clock.true < target and guard < 4 * max_ticks:
            guard += 1
            nxt = min(target, self.clock.true + every)
            review = self.next_review_true()
            if review is not None and self.clock.true < review + timedelta(seconds=1) < nxt:
                nxt = review + timedelta(seconds=1)
            self.clock.true = nxt
            self.tick()
        if self.clock.true < target:
            self.clock.true = target
            self.tick()

    # -- what head office and the customers do -------------------------------------------------------
    def _envelope(self, kind: str) -> dict[str, Any]:
        self.seq += 1
        now = self.clock.true  # head office's clock is right
        return {
            "id": f"c{self.seq}",
            "type": kind,
            "gateway_id": "gw-model",
            "issued_at": iso(now),
            "expires_at": iso(now + timedelta(hours=1)),
            "key_id": "hq",
            "sig": "model",
        }

    def _apply(self, applied: command_types.Applied) -> None:
        assert self.gw is not None
        if applied.write is not None:
            with self.gw.store.tx() as conn:
                applied.write(conn)
        if applied.after is not None:
            out = applied.after()
            if out is not None:
                self.loop.run_until_complete(out)  # type: ignore[arg-type]
        self.gw.wake()

    def pay(self, aid: str, amount_minor: int, channel: str) -> str:
        """A top-up: ``hq`` through the daemon (``Gateway.apply_payment``, as the ``topup`` command
        does), ``cash`` written by ``pmg ledger payment add`` into the same file from another process
        (its own connection, the daemon not told)."""
        assert self.gw is not None
        self.seq += 1
        pid = f"p{self.seq}"
        if channel == "hq":
            self.gw.apply_payment(pid, aid, amount_minor, source="hq:model")
        else:
            other = open_store(self.workdir / "pmg.db")
            try:
                with other.tx() as conn:
                    apply_payment(conn, pid, aid, amount_minor, self.clock.true, source="cli:cashier")
            finally:
                other.close()
            assert self.payment_watch is not None
            self.payment_watch.drain_all()  # within 0.1 s in the daemon: before the enforcer runs
        return pid

    def deliver_notice(self, aid: str) -> bool:
        """The head office confirms (signed ``notice`` command) that the account's outstanding notice
        reached the customer, by SMS, at the true time.  False when there is nothing to confirm."""
        assert self.gw is not None
        row = self.gw.store.conn.execute(
            "SELECT notice_served_at, notice_delivered_at FROM accounts WHERE id = ?", (aid,)
        ).fetchone()
        if row is None or row[0] is None or row[1] is not None:
            return False
        issued = parse_iso(row[0])
        delivered = self.clock.true  # the head office's clock is right; a gateway far behind refuses it
        if delivered < issued:
            return False
        cmd = NoticeCmd(**self._envelope("notice"), account_id=aid, notice_id=notice_id(aid, issued),
                        channel="sms", delivered_at=iso(delivered))
        try:
            self._apply(self.loop.run_until_complete(command_types.notice(self.gw, cmd, self.clock.gateway())))  # type: ignore[arg-type]
        except command_types.CommandRejected:
            return False
        return True

    def set_hold(self, hours: float) -> tuple[str, datetime] | None:
        body = self._envelope("hold")
        until = self.clock.true + timedelta(hours=hours)
        cmd = HoldCmd(**body, op="set", hold_id=f"h{self.seq}", kind="weather", reason="storm", until=iso(until))
        try:
            self._apply(self.loop.run_until_complete(command_types.hold(self.gw, cmd, self.clock.gateway())))  # type: ignore[arg-type]
        except command_types.CommandRejected:
            return None
        return cmd.hold_id, until

    def clear_hold(self, hold_id: str) -> bool:
        cmd = HoldCmd(**self._envelope("hold"), op="clear", hold_id=hold_id)
        try:
            self._apply(self.loop.run_until_complete(command_types.hold(self.gw, cmd, self.clock.gateway())))  # type: ignore[arg-type]
        except command_types.CommandRejected:
            return False
        return True

    def set_flags_hq(self, aid: str, *, protected: bool | None = None, keep_power: bool | None = None) -> None:
        """Head office's ``account`` command (flags stand across restarts until the file changes them)."""
        mid = METERS[ACCOUNTS.index(aid)]
        cmd = AccountCmd(
            **self._envelope("account"),
            account_id=aid,
            protected=protected,
            protected_category=(self._category_text() if protected else None) if protected is not None else None,
            meters=[MeterAssignment(meter_id=mid, keep_power=keep_power)],
        )
        self._apply(self.loop.run_until_complete(command_types.account(self.gw, cmd, self.clock.gateway())))  # type: ignore[arg-type]
        if protected is not None:
            self.protected[aid] = protected
        if keep_power is not None:
            self.keep_power[mid] = keep_power

    def account_of(self, mid: str) -> str:
        return ACCOUNTS[METERS.index(mid)]

    def meter_of(self, aid: str) -> str:
        return METERS[ACCOUNTS.index(aid)]

    # -- observation -----------------------------------------------------------------------------
    def conn(self) -> sqlite3.Connection:
        assert self.gw is not None
        return self.gw.store.conn

    @property
    def store(self) -> Store:
        assert self.gw is not None
        return self.gw.store

    def close(self) -> None:
        if self.gw is not None:
            self.gw.store.close()
            self.gw = None
        self.loop.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _tmp_root() -> str | None:
    """Real SQLite files on a RAM disk when there is one (the model commits thousands of times)."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]
