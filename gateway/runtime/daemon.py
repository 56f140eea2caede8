"""The daemon: wires buses, ledger, policy, enforcer and head-office sync into one asyncio process.

Data flows one way (README, "How it is built"): a bus worker's reading is charged, the account re-decided and any
relay command queued — all in one transaction — then the enforcer and the MQTT link are woken.
Timed work (policy reviews for notices and windows, daily settlement, housekeeping) runs on
apscheduler; the systemd watchdog is fed from the bus workers' heartbeats.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from drivers.backoff import Backoff
from drivers.base import Quality, Reading
from drivers.factory import Link, LinkSettings, make_link, make_meter
from gateway import __version__
from gateway.config import GatewayConfig, load_config, resolve
from gateway.core.logfields import kv
from gateway.core.timeutil import Clock, iso, system_clock
from gateway.ledger.accounts import seed_from_config
from gateway.ledger.charging import ChargeOutcome, record_reading
from gateway.ledger.payments import PaymentResult, apply_payment
from gateway.policy.calendar_sources import report_stale
from gateway.runtime import timeguard
from gateway.runtime.bus import BusWorker, PolledMeter
from gateway.runtime.components import Components, build_components
from gateway.runtime.inbox import BatchInbox
from gateway.runtime.metrics import GatewayMetrics, observe_relay_outcome
from gateway.runtime.payment_watch import PaymentWatch
from gateway.runtime.payment_watch import clear as clear_decision_mark
from gateway.runtime.read_watch import ReadWatch, Served, served_of
from gateway.runtime.relay import Enforcer, RelayCommand
from gateway.runtime.service import InstanceLock, sd_notify, watchdog_interval_s
from gateway.runtime.timetrust import NtpProbe, TimeTrust
from gateway.store import events
from gateway.store.db import Store, StoreError, open_store
from gateway.store.pins import check_money_pins
from gateway.store.snapshots import state_snapshot
from gateway.sync.mqtt import MqttLink

log = logging.getLogger("pmg.daemon")

POLICY_REVIEW_S = 30.0  # a slice of the accounts is re-decided this often ...
POLICY_SWEEP_S = 600.0  # ... so that every account is re-decided at least this often
REVIEW_POLL_S = 1.0  # how often accounts whose next_review_at has come are looked for
# The meters whose account's next review has come.  Accounts first (CROSS JOIN fixes SQLite's join
# order): otherwise it walks every meter and looks its account up, once a second — 1 ms at 2,000
# meters on the development machine, ten times that on a concentrator's core; this way it reads the
# accounts table once (0.1 ms) and seeks the meters of the few that are due.
DUE_FOR_REVIEW = (
    "SELECT m.id FROM accounts a CROSS JOIN meters m ON m.account_id = a.id "
    "WHERE a.next_review_at <= ? ORDER BY m.id"
)
UNREACHABLE_AFTER = 3  # failed polls in a row before a meter is reported unreachable
STATE_EVERY = timedelta(minutes=15)  # at least this often a meter's retained state is refreshed
STOP_FLUSH_DEADLINE_S = 5.0
DEFAULT_WATCHDOG_PERIOD_S = 60.0  # systemd/pmg.service's WatchdogSec, for health when no watchdog runs
BUS_OPEN_GRACE_S = 5.0  # a read request waits this long for a bus's line to open, then fails at once
READING_BATCH_S = 0.25  # readings of all buses are charged together, at most this long after they arrive


# How long systemd is asked to wait for one schema step (it kills a daemon that is not ready in
# TimeoutStartSec, 90 s by default; an index rebuilt over months of entries takes minutes).
MIGRATION_STEP_TIMEOUT_S = 3600


def _announce_migration(current: int, target: int) -> None:
    log.warning("database schema %d -> %d: migrating; on a large database this takes minutes", current, target)
    sd_notify(
        f"EXTEND_TIMEOUT_USEC={MIGRATION_STEP_TIMEOUT_S * 1_000_000}\n"
        f"STATUS=migrating the database schema {current} -> {target}"
    )


@dataclass
class Gateway:
    """One running gateway.  ``start`` then ``wait``; ``stop`` from a signal or a test."""

    config_path: Path
    cfg: GatewayConfig
    clock: Clock = system_clock
    monotonic: Callable[[], float] = time.monotonic
    # Untrusted time (gateway.runtime.timeguard): a monotonic clock at the wall clock's rate, an NTP probe.
    time_monotonic: Callable[[], float] | None = None
    ntp_probe: NtpProbe | None = None
    timetrust: TimeTrust | None = None
    store: Store = field(init=False)
    parts: Components = field(init=False)
    workers: dict[str, BusWorker] = field(default_factory=dict)
    links: dict[str, Link] = field(default_factory=dict)
    mqtt: MqttLink | None = None
    enforcer: Enforcer | None = None
    payment_watch: PaymentWatch | None = None
    read_watch: ReadWatch | None = None
    on_event: Callable[[str, dict[str, Any]], None] | None = None
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _worker_tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _scheduler: AsyncIOScheduler | None = None
    _lock: InstanceLock | None = None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    _meter_cfg: dict[str, Any] = field(default_factory=dict)
    _published: dict[str, tuple[tuple[Any, ...], Any]] = field(default_factory=dict)
    _failing: dict[str, int] = field(default_factory=dict)
    _sweep_next: int = 0
    inbox: BatchInbox[tuple[str, Reading, float]] = field(init=False)
    _calendar_stale: set[int] = field(default_factory=set)  # years reported stale since start
    stopping: bool = False

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        db_path = resolve(self.config_path, self.cfg.database)
        self._lock = InstanceLock(db_path)
        self._lock.acquire()
        try:
            self.store = open_store(db_path, on_migrate=_announce_migration)
            check_money_pins(self.store, self.cfg.currency, self.cfg.minor_digits)
            self.parts = build_components(self.cfg, self.config_path, self.store)
            seed_from_config(self.store, self.cfg, self.clock())
            with self.store.tx() as conn:
                self._check_calendar(conn)
            self.timetrust = timeguard.build(self)
            if self.cfg.metrics.listen:
                self.metrics.serve(self.cfg.metrics.listen)
        except BaseException:
            self._lock.release()
            raise
        self._meter_cfg = {m.id: m for m in self.cfg.meters}
        self.inbox = BatchInbox(asyncio.get_running_loop(), self._flush_readings, READING_BATCH_S)
        self._start_buses()
        self.enforcer = Enforcer(
            self.store,
            self.workers,
            {m.id: m.bus for m in self.cfg.meters},
            self.clock,
            on_outcome=self._on_relay_outcome,
            notify_outbox=self.notify_outbox,
            minor_digits=self.cfg.minor_digits,
        )
        self._resume_commands()
        self._start_payment_watch()
        self._tasks.append(asyncio.create_task(self.enforcer.run(), name="enforcer"))
        if self.cfg.mqtt is not None:
            from gateway.sync.commands.processor import CommandProcessor

            processor = CommandProcessor(self)
            self.mqtt = MqttLink(
                self.cfg.mqtt,
                self.cfg.gateway_id,
                self.store,
                self.clock,
                on_command=processor.handle,
                config_dir=self.config_path.resolve().parent,
                version=__version__,
            )
            self._tasks.append(asyncio.create_task(self.mqtt.run(), name="mqtt"))
        self._start_scheduler()
        self._tasks.append(asyncio.create_task(self._watchdog(), name="watchdog"))
        self._tasks.append(asyncio.create_task(self._review_when_due(), name="due-reviews"))
        from gateway.runtime.status import status_loop

        self._tasks.append(asyncio.create_task(status_loop(self), name="status"))
        self._install_signals()
        sd_notify("READY=1\nSTATUS=polling")
        log.info(
            "started",
            extra=kv(gateway=self.cfg.gateway_id, buses=len(self.workers), meters=len(self.cfg.meters), version=__version__),
        )

    def _start_buses(self) -> None:
        for bus in self.cfg.buses:
            link = make_link(
                LinkSettings(
                    bus.protocol,
                    bus.url,
                    bus.line_baud,
                    bus.line_parity,
                    bus.timeout_s,
                    bus.retries,
                    bus.frame_gap_s,
                    bus.opening,
                )
            )
            polled = [
                PolledMeter(
                    m.id,
                    make_meter(bus.protocol, link, m.address, self.cfg.profile_file(m), tz=self.cfg.tz, clock=self.clock, options=self.cfg.meter_options(m)),
                    m.poll_interval_s or bus.poll_interval_s,
                )
                for m in self.cfg.meters_on(bus.id)
            ]
            worker = BusWorker(
                bus.id,
                link,
                polled,
                self._on_reading,
                clock=self.clock,
                monotonic=self.monotonic,
                observe=self.metrics.observe_read,
                unhealthy_after_s=bus.unhealthy_after_s,
            )
            self.links[bus.id] = link
            self.workers[bus.id] = worker
            self._worker_tasks[bus.id] = asyncio.create_task(self._run_worker(worker), name=f"bus-{bus.id}")

    async def _run_worker(self, worker: BusWorker) -> None:
        """Keep a bus worker alive: a link that cannot open is retried (on the links' own backoff
        schedule, ``drivers.backoff``), never fatal to other buses.  Once open, the link reopens
        itself after a failure; this loop only covers the first open."""
        backoff = Backoff(monotonic=self.monotonic)
        try:
            while True:
                try:
                    await worker.run()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    delay = backoff.failed()
                    log.error("bus stopped: %s; retrying in %.1f s", exc, delay, extra=kv(bus=worker.bus_id))
                    await asyncio.sleep(delay)
                    if worker.stopping:
                        return
        finally:
            # Work submitted to a bus that never opened (or was cancelled) must not leave its submitter
            # waiting forever: the enforcer's relay job would hold up the gateway's stop.
            worker.abandon_queued()

    def _start_payment_watch(self) -> None:
        """Payments committed by other processes, or while the daemon was down, reach the relay within
        a second (docs/enforcement.md, "Payment to power"): the backlog now, the rest as committed.
        Read requests ride on the same watch (gateway.runtime.read_watch): at start the stale ones
        expire and the fresh ones go to their bus, which serves them once its line is open."""
        self.read_watch = ReadWatch(self.store, self._submit_read, self.clock, lambda: self.stopping)
        self.payment_watch = PaymentWatch(
            self.store, self._decide_marked, self.wake, check_time=self._check_time, on_commit=self.read_watch.drain
        )
        try:
            self.payment_watch.drain_all()
        except StoreError as exc:  # the marks stay: the watcher's first tick tries again
            log.error("payments waiting for a decision could not be processed at start: %s", exc)
        try:
            self.read_watch.drain()
        except StoreError as exc:  # they stay pending: the watcher tries again on the next commit
            log.error("read requests could not be processed at start: %s", exc)
        self._tasks.append(asyncio.create_task(self.payment_watch.run(), name="payment-watch"))

    def _submit_read(self, meter_id: str) -> asyncio.Future[Served] | str:
        """A read request's read, at the head of its bus's queue; or why it cannot be read."""
        mcfg = self._meter_cfg.get(meter_id)
        worker = None if mcfg is None else self.workers.get(mcfg.bus)
        if mcfg is None or worker is None or meter_id not in worker.meters:
            return f"no meter '{meter_id}' is polled by this gateway"
        if not worker.running and self.monotonic() - worker.started_at > BUS_OPEN_GRACE_S:
            # its line did not open: the request would only wait out its time (at start it is queued,
            # and served as soon as the line opens)
            return f"bus {mcfg.bus} is not open (see pmg status)"
        return worker.read_now(meter_id, then=self._charge_now)

    def _charge_now(self, reading: Reading) -> Served:
        """Charge a requested reading at once (with the batch it joined) rather than at the batch's
        timer, so that its request is finished with the reading's id; runs on the bus's turn."""
        for _meter_id, charged, _latency, outcome in self._flush_readings():
            if charged is reading:
                return served_of(outcome, reading.quality is Quality.OK, reading.error)
        return served_of(None, reading.quality is Quality.OK, reading.error)

    def _decide_marked(self, conn: Any, account_id: str, payment_id: str | None) -> None:
        self.parts.policy.evaluate_account(conn, account_id, self.clock(), payment_id=payment_id)

    def _start_scheduler(self) -> None:
        scheduler = AsyncIOScheduler(timezone="UTC")
        scheduler.add_job(
            self.review_slice,
            "interval",
            seconds=POLICY_REVIEW_S,
            id="policy_review",
            misfire_grace_time=int(POLICY_REVIEW_S),
            coalesce=True,
            max_instances=1,
        )
        from gateway.runtime.jobs import register_jobs

        register_jobs(scheduler, self)
        scheduler.start()
        self._scheduler = scheduler

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(self.stop()))
            loop.add_signal_handler(signal.SIGINT, lambda: asyncio.ensure_future(self.stop()))
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        except (NotImplementedError, RuntimeError):  # not the main thread (tests): no signals
            pass

    async def wait(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        """Graceful stop: finish frames in flight, commit, flush what the broker takes, close."""
        if self._stopped.is_set() or self.stopping:
            return
        self.stopping = True
        sd_notify("STOPPING=1")
        log.info("stopping", extra=kv(gateway=self.cfg.gateway_id))
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        await self._stop_buses()
        if self.read_watch is not None:  # requests still being served stay pending for the next start
            await self.read_watch.stop()
        self._flush_readings()  # the readings of the last moments are charged before the store closes
        self.inbox.close()
        if self.enforcer is not None:
            self.enforcer.stop()
        if self.mqtt is not None:
            await self.mqtt.stop(STOP_FLUSH_DEADLINE_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.metrics.stop()
        from gateway.runtime.status import clear_snapshot

        try:
            clear_snapshot(self.store, self.clock())
        except StoreError as exc:
            log.error("could not mark the status snapshot stopped: %s", exc)
        self.store.close()
        if self._lock is not None:
            self._lock.release()
        self._stopped.set()

    async def _stop_buses(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        tasks = list(self._worker_tasks.values())
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=10)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.workers.clear()
        self._worker_tasks.clear()
        self.links.clear()

    async def reload(self) -> bool:
        """SIGHUP: apply a new configuration if it is valid, keep the old one otherwise."""
        try:
            cfg = load_config(self.config_path)
            if cfg.database != self.cfg.database or cfg.gateway_id != self.cfg.gateway_id:
                raise ValueError("gateway_id and database cannot change on reload (restart instead)")
            check_money_pins(self.store, cfg.currency, cfg.minor_digits)
            parts = build_components(cfg, self.config_path, self.store)
            seed_from_config(self.store, cfg, self.clock())
        except Exception as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            self._emit("reload_refused", {"error": str(exc)})
            return False
        topology_changed = (cfg.buses, cfg.meters) != (self.cfg.buses, self.cfg.meters)
        self._flush_readings()  # charged under the configuration they were read under
        self.cfg, self.parts = cfg, parts
        if self.timetrust is not None:
            self.timetrust.settings = timeguard.settings(cfg)
        self._meter_cfg = {m.id: m for m in cfg.meters}
        if topology_changed:
            await self._stop_buses()
            self._start_buses()
            if self.enforcer is not None:
                self.enforcer.workers = self.workers
                self.enforcer.meter_bus = {m.id: m.bus for m in cfg.meters}
        else:
            self.reopen_links()
        log.info("reloaded configuration", extra=kv(buses=len(cfg.buses), meters=len(cfg.meters)))
        # New rules, flags (keep-power, protected) and calendar apply at once: a trip queued under the
        # old ones is withdrawn now, not at the next sweep (found by the stateful model).
        await self.review_policy()
        self._emit("reloaded", {})
        return True

    # -- the data path -----------------------------------------------------------------------------
    def _on_reading(self, meter_id: str, reading: Reading, latency_s: float) -> None:
        """A bus worker's reading (from its link thread or the loop): queued, and charged with the
        others of the next ``READING_BATCH_S``.

        Every bus delivers a reading every few tens of milliseconds at capacity; charging each in a
        durable transaction of its own cost an fsync (and a WAL write of the same hot pages) per
        reading.  The batch is one transaction with a savepoint per reading, so one bad reading
        cannot undo the others; nothing acts on a reading before its commit, and a crash before the
        commit loses no energy (the register is cumulative: the next reading charges the delta)."""
        if meter_id not in self._meter_cfg:
            return
        self.inbox.put((meter_id, reading, latency_s))

    def _flush_readings(self) -> list[tuple[str, Reading, float, ChargeOutcome]]:
        """Charge and decide the queued readings in one transaction (also on stop and reload, and for
        a read request); returns those recorded with their outcomes."""
        batch = self.inbox.take()
        if not batch:
            return []
        self._check_time()
        done: list[tuple[str, Reading, float, ChargeOutcome]] = []
        relay_queued = False
        try:
            with self.store.tx() as conn:
                for meter_id, reading, latency_s in batch:
                    conn.execute("SAVEPOINT reading")
                    try:
                        outcome, queued = self._charge_and_decide(conn, meter_id, reading)
                    except Exception:
                        conn.execute("ROLLBACK TO reading")
                        conn.execute("RELEASE reading")
                        log.exception("reading could not be recorded", extra=kv(meter=meter_id))
                        continue
                    conn.execute("RELEASE reading")
                    relay_queued = relay_queued or queued
                    done.append((meter_id, reading, latency_s, outcome))
        except StoreError as exc:
            log.error("%d readings could not be recorded: %s", len(batch), exc)
            return []
        for meter_id, reading, latency_s, outcome in done:
            log.debug(
                "reading",
                extra=kv(
                    meter=meter_id,
                    outcome=outcome.outcome,
                    delta_wh=outcome.delta_wh,
                    charge_minor=outcome.charge_minor,
                    latency_ms=round(latency_s * 1000),
                ),
            )
            self._track_comms(meter_id, reading)
            self._emit("reading", {"meter_id": meter_id, "outcome": outcome.outcome, "reading": reading})
        self.wake(enforcer=relay_queued)
        return done

    def _charge_and_decide(self, conn: Any, meter_id: str, reading: Reading) -> tuple[ChargeOutcome, bool]:
        """Record (and charge) one reading and re-decide its account when money or the relay moved;
        returns the outcome and whether the decision queued a relay command."""
        mcfg = self._meter_cfg.get(meter_id)
        if mcfg is None:
            raise LookupError(f"meter '{meter_id}' is no longer configured")
        now = reading.taken_at
        outcome = record_reading(
            conn,
            meter_id,
            reading,
            self.parts.book.pricer(conn),
            max_power_w=mcfg.max_power_w,
            register_modulus_wh=mcfg.register_modulus_wh,
            minor_digits=self.cfg.minor_digits,
        )
        if outcome.outcome == "quarantined":  # held, with an alarm event; one line, not a traceback per poll
            log.warning("reading quarantined: %s", outcome.reason, extra=kv(meter=meter_id))
        relay_moved = reading.relay is not None and outcome.relay_before != reading.relay.value
        # Re-decide when money or the relay moved; time alone is the due-review task's business.
        if outcome.outcome == "baseline" or (outcome.outcome == "charged" and outcome.charge_minor) or relay_moved:
            decision = self.parts.policy.evaluate_meter(conn, meter_id, now)
            self._publish_state(conn, meter_id, now, (decision.state.value, reading.relay))
            return outcome, any(a.relay_action is not None for a in decision.actions)
        return outcome, False

    def _track_comms(self, meter_id: str, reading: Reading) -> None:
        """Alarm once when a meter stops answering (UNREACHABLE_AFTER failed polls in a row), and say
        so when it answers again: a silent meter is neither billed nor controllable."""
        failures = self._failing.get(meter_id, 0)
        if reading.quality is Quality.OK:
            if failures >= UNREACHABLE_AFTER:
                with self.store.tx() as conn:
                    events.record(
                        conn,
                        "comms_restored",
                        reading.taken_at,
                        meter_id=meter_id,
                        detail={"failed_polls": failures},
                    )
            self._failing.pop(meter_id, None)
            return
        self._failing[meter_id] = failures + 1
        if failures + 1 == UNREACHABLE_AFTER:
            with self.store.tx() as conn:
                events.record(
                    conn,
                    "meter_unreachable",
                    reading.taken_at,
                    severity="alarm",
                    meter_id=meter_id,
                    detail={
                        "quality": reading.quality.value,
                        "error": reading.error,
                        "failed_polls": failures + 1,
                    },
                )

    def _publish_state(self, conn: Any, meter_id: str, now: Any, key: tuple[Any, ...]) -> None:
        """Queue the retained state snapshot when the state or relay changed, or every STATE_EVERY:
        the balance itself travels with every usage message, so a snapshot per poll would double the
        outbox for nothing."""
        last = self._published.get(meter_id)
        if last is not None and last[0] == key and now - last[1] < STATE_EVERY:
            return
        state_snapshot(conn, meter_id, now, minor_digits=self.cfg.minor_digits)
        self._published[meter_id] = (key, now)

    def apply_payment(
        self, payment_id: str, account_id: str, amount_minor: int, *, source: str
    ) -> PaymentResult:
        """Apply a payment and re-decide the account in the same transaction (reconnect first)."""
        self._check_time()  # a decision follows: is the clock still to be believed?
        now = self.clock()
        with self.store.tx() as conn:
            result = apply_payment(
                conn,
                payment_id,
                account_id,
                amount_minor,
                now,
                source=source,
                minor_digits=self.cfg.minor_digits,
            )
            if not result.replayed:
                self.parts.policy.evaluate_account(conn, account_id, now, payment_id=payment_id)
                clear_decision_mark(conn, account_id)  # decided here: nothing left for the watcher
        self.wake()
        return result

    def _check_calendar(self, conn: Any) -> None:
        """``calendar_stale`` for the current or next year without official data (once per year and
        start); checked at start and with every review slice, so the turn of the year is noticed."""
        for year in report_stale(conn, self.parts.calendar, self.clock(), self._calendar_stale):
            log.warning("calendar stale: days of %d are protected until official data arrives "
                        "(calendar command or [policy] calendar_file)", year,
                        extra=kv(event="calendar_stale", year=year, country=self.parts.calendar.country))

    async def review_policy(self) -> None:
        """Re-decide every account: notices mature, windows end, holds expire without new input."""
        self._check_time()
        now = self.clock()
        try:
            with self.store.tx() as conn:
                for (meter_id,) in conn.execute("SELECT id FROM meters ORDER BY id").fetchall():
                    if meter_id in self._meter_cfg:
                        self.parts.policy.evaluate_meter(conn, meter_id, now)
        except StoreError as exc:
            log.error("policy review failed: %s", exc)
        self.wake()

    async def review_meters(self, meter_ids: Iterable[str]) -> None:
        """Re-decide these meters only: an input of their account changed (an override), so the
        other accounts' decisions stand."""
        self._check_time()
        now = self.clock()
        try:
            with self.store.tx() as conn:
                for meter_id in sorted(set(meter_ids)):
                    if meter_id in self._meter_cfg:
                        self.parts.policy.evaluate_meter(conn, meter_id, now)
        except StoreError as exc:
            log.error("policy review failed: %s", exc)
        self.wake()

    def ended_now(self) -> datetime:
        """Up to when days may be settled (a wall clock a day fast must not end today early)."""
        return timeguard.ended_now(self)

    def witness_time(self, issued: datetime) -> None:
        """A signed command's ``issued_at`` is a witness on our clock (gateway.runtime.timetrust)."""
        if self.timetrust is not None:
            timeguard.observed(self, self.timetrust.command_observed(issued))

    @property
    def meter_ids(self) -> frozenset[str]:
        """The meters of the running configuration (a database row may outlive its meter)."""
        return frozenset(self._meter_cfg)

    async def review_slice(self) -> None:
        """The safety net, spread out: re-decide the next slice of the meters, in id order, so every
        account is re-decided within ``POLICY_SWEEP_S`` even if nothing else asked for it.

        Decisions are already re-made whenever their inputs change (a charged reading, a payment, a
        command, a settled standing charge) and when their own ``next_review_at`` comes; the sweep only
        guards against an input this list misses.  Sweeping 2,000 accounts in one transaction every
        30 s cost a busy gateway more CPU than polling them and stalled the loop for a second."""
        meters = sorted(self._meter_cfg)
        if not meters:
            return
        per_tick = -(-len(meters) // max(1, round(POLICY_SWEEP_S / POLICY_REVIEW_S)))
        start = self._sweep_next if self._sweep_next < len(meters) else 0
        chunk = meters[start : start + per_tick]
        self._sweep_next = start + per_tick
        self._check_time()
        now = self.clock()
        try:
            with self.store.tx() as conn:
                self._check_calendar(conn)
                for meter_id in chunk:
                    self.parts.policy.evaluate_meter(conn, meter_id, now)
        except StoreError as exc:
            log.error("policy review failed: %s", exc)
        self.wake()

    async def _review_when_due(self) -> None:
        """Re-decide an account as soon as its decision said it may change (``next_review_at``): the
        end of a notice period or a protected window, a reminder time, a hold's expiry.  The periodic
        review is the safety net; this makes a lawful cut or a reminder happen on time."""
        while True:
            await asyncio.sleep(REVIEW_POLL_S)
            self._check_time()  # also the once-a-second look for a wall-clock step
            now = self.clock()
            try:
                with self.store.tx() as conn:
                    due = conn.execute(DUE_FOR_REVIEW, (iso(now),)).fetchall()
                    for (meter_id,) in due:
                        if meter_id in self._meter_cfg:
                            self.parts.policy.evaluate_meter(conn, meter_id, now)
            except StoreError as exc:
                log.error("due policy review failed: %s", exc)
                continue
            if due:
                self.wake()

    def _resume_commands(self) -> None:
        """After a restart: re-decide every account so a stale pending command is cancelled."""
        now = self.clock()
        with self.store.tx() as conn:
            for (meter_id,) in conn.execute(
                "SELECT DISTINCT meter_id FROM relay_commands WHERE status IN ('pending', 'sending')"
            ).fetchall():
                if meter_id in self._meter_cfg:
                    self.parts.policy.evaluate_meter(conn, meter_id, now)

    def _on_relay_outcome(self, cmd: RelayCommand, status: str, state: Any) -> None:
        observe_relay_outcome(
            self.metrics, self.store, cmd.action.value, status, cmd.payment_id, self.clock()
        )
        if status in ("confirmed", "cancelled"):  # the relay moved, or a guarded command was not sent
            with self.store.tx() as conn:
                self.parts.policy.evaluate_meter(conn, cmd.meter_id, self.clock())
        self._emit(
            "relay", {"meter_id": cmd.meter_id, "action": cmd.action.value, "status": status, "relay": state}
        )
        self.wake()

    def _check_time(self) -> None:
        """Before a decision reads the clock: is it still to be believed (gateway.runtime.timeguard)?"""
        try:
            timeguard.observe(self)
        except StoreError as exc:
            log.error("time check failed: %s", exc)

    def notify_outbox(self) -> None:
        if self.mqtt is not None:
            self.mqtt.notify()

    def wake(self, *, enforcer: bool = True) -> None:
        """Tell the outbox pump (and the enforcer, when a relay command may have been queued) that
        something was committed; a routine reading queues no command, so the enforcer is left asleep."""
        if enforcer and self.enforcer is not None:
            self.enforcer.notify()
        self.notify_outbox()

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, data)
            except Exception:
                log.exception("event listener failed")

    # -- links and watchdog ---------------------------------------------------------------------------
    def reopen_links(self) -> None:
        """SIGHUP: every link closes and reopens before its next request, whatever its backoff says
        (an operator who fixed a cable or a device server should not wait out a 60 s step)."""
        for worker in self.workers.values():
            worker.reopen_link()

    def healthy(self, now_mono: float | None = None) -> bool:
        """What the systemd watchdog is fed on: no frame stuck past its budget, no bus loop hung, and
        meters still answering somewhere (docs/operations.md, "Links that drop").

        Progress is counted in meter answers, not loop ticks: a bus whose link died ticks on.  When
        no bus has had an answer for ``watchdog_period_s`` the watchdog is starved and systemd
        restarts the daemon — but only if some bus had answered since this process started.  A site
        whose meters are all legitimately unreachable (a feeder outage, a site not yet
        commissioned) therefore gets one restart per outage, not a restart loop: after the restart
        nothing has answered, the daemon stays up (payments, head-office sync and ``pmg status``
        keep working), reports the buses unhealthy, and the links keep reopening on their backoff."""
        now_mono = self.monotonic() if now_mono is None else now_mono
        period = self.watchdog_period_s()
        polled = [w for w in self.workers.values() if w.meters]
        for bus in self.cfg.buses:
            worker = self.workers.get(bus.id)
            if worker is None:
                continue
            budget = (bus.timeout_s * (bus.retries + 1) + bus.frame_gap_s) * 3 + 5
            busy_since = worker.busy_since  # read once: the link thread sets and clears it
            if busy_since is not None and now_mono - busy_since > budget:
                return False
            if worker.running and busy_since is None and now_mono - worker.heartbeat > max(budget, 2.0):
                return False
        answered = [w.last_answer for w in polled if w.last_answer is not None]
        return not answered or now_mono - max(answered) <= period

    def watchdog_period_s(self) -> float:
        """systemd's WatchdogSec (twice the interval it asks us to ping at), 60 s without one."""
        interval = watchdog_interval_s()
        return 2 * interval if interval else DEFAULT_WATCHDOG_PERIOD_S

    async def _watchdog(self) -> None:
        interval = watchdog_interval_s()
        while True:
            await asyncio.sleep(interval or 5.0)
            if interval and self.healthy():
                sd_notify("WATCHDOG=1")


async def run_daemon(config_path: Path, cfg: GatewayConfig, clock: Clock = system_clock) -> None:
    gateway = Gateway(config_path, cfg, clock=clock)
    await gateway.start()
    await gateway.wait()
