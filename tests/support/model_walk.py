"""Seeded random walks through the enforcement model, their replay, and a shrinker for reproductions.

A walk is a start instant and a list of plain tuples (steps), so a failing walk prints as a
reproduction that can be pasted into a test.  A seeded ``random.Random`` walk rather than
Hypothesis's ``RuleBasedStateMachine``: thousands of steps a second, no database of examples, the
same walk on every machine; the shrinker below does the part of Hypothesis that matters here.

Steps:
  ("wait", minutes)                  time passes with the daemon running (polls, reviews, enforcer)
  ("load", i, watts)                 meter i's household draws this much while its relay is closed
  ("pay", i, minor, "hq"|"cash")     a top-up through head office (the daemon) or a cashier's CLI
  ("hold", hours) / ("unhold",)      head office sets / clears a weather hold on automatic cuts
  ("protect", i, on, "hq"|"file")    account i becomes protected or not (command, or config + SIGHUP)
  ("keep", i, on, "hq"|"file")       meter i's keep-power (保电) flag
  ("skew", minutes)                  the gateway clock is stepped to true time + minutes (0 = fixed)
  ("reload",) ("restart",)           SIGHUP; kill -9 and start again on the same database
  ("crash",)                         kill -9 right after a relay frame went out, then start again
  ("press", i)                       the customer presses the meter's reclose button
  ("deliver", i)                     head office confirms account i's notice reached the customer
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from simulators.model import LoadProfile
from support.model_oracle import LOADS_W, Oracle, RuleText, Violation
from support.model_rig import ACCOUNTS, METERS, SETUPS, Rig, utc

Step = tuple[Any, ...]

# Interesting starts: DST changes (uk), bank holidays and Easter, Spring Festival and Golden Week,
# year ends (next year's official calendar), ordinary weeks.
STARTS = (
    utc(2026, 3, 26, 8),  # the Thursday before BST begins (29 March 2026)
    utc(2026, 10, 22, 8),  # before BST ends (25 October 2026)
    utc(2026, 4, 1, 9),  # Good Friday 3 April, Easter Monday 6 April 2026
    utc(2026, 12, 21, 9),  # Christmas, Boxing Day, New Year
    utc(2026, 2, 11, 1),  # 春节 2026 (from 15 February), with its adjusted working days
    utc(2026, 9, 28, 1),  # 国庆节 2026
    utc(2026, 5, 20, 12),
    utc(2026, 7, 6, 3),
    utc(2027, 1, 25, 2),  # a year whose cn calendar may not be published yet
    utc(2026, 11, 23, 14),  # Thanksgiving (us-tx)
)
OPENING = (0, 500, 3_000)
AMOUNTS = (1, 50, 99, 100, 300, 1_000, 5_000)
LOADS = LOADS_W
FINAL_WAIT = timedelta(days=2, hours=1)  # the largest forward skew a walk makes, and then some


def generate(rng: random.Random, n: int) -> list[Step]:
    """``n`` steps; waits dominate, so credit runs out and cuts, notices and windows all happen."""
    out: list[Step] = []
    for _ in range(n):
        x = rng.random()
        i = rng.randrange(len(METERS))
        if x < 0.22:
            out.append(("wait", rng.choice((1, 5, 20, 45, 90))))
        elif x < 0.40:
            out.append(("wait", rng.randint(2, 12) * 60))
        elif x < 0.47:
            out.append(("wait", rng.randint(1, 3) * 24 * 60))
        elif x < 0.48:
            out.append(("wait", rng.randint(4, 9) * 24 * 60))
        elif x < 0.55:
            out.append(("load", i, rng.choice(LOADS)))
        elif x < 0.66:
            out.append(("pay", i, rng.choice(AMOUNTS), "hq"))
        elif x < 0.70:
            out.append(("pay", i, rng.choice(AMOUNTS), "cash"))
        elif x < 0.73:
            out.append(("hold", rng.choice((1, 6, 30, 72))))
        elif x < 0.75:
            out.append(("unhold",))
        elif x < 0.78:
            out.append(("protect", i, rng.random() < 0.4, rng.choice(("hq", "file"))))
        elif x < 0.81:
            out.append(("keep", i, rng.random() < 0.4, rng.choice(("hq", "file"))))
        elif x < 0.85:
            out.append(("skew", rng.choice((0, 0, 5, -5, 60, -60, 180, -180, 1440, -1440, 2880))))
        elif x < 0.87:
            out.append(("reload",))
        elif x < 0.90:
            out.append(("restart",))
        elif x < 0.93:
            out.append(("crash",))
        elif x < 0.96:
            out.append(("press", i))
        else:
            out.append(("deliver", i))
    return out


@dataclass
class Walk:
    preset: str
    start: datetime
    opening: tuple[int, ...]
    steps: list[Step]

    @classmethod
    def seeded(cls, preset: str, seed: int, n: int) -> Walk:
        rng = random.Random(f"{preset}:{seed}")
        return cls(preset, rng.choice(STARTS), tuple(rng.choice(OPENING) for _ in ACCOUNTS), generate(rng, n))

    def repro(self) -> str:
        return f"Walk({self.preset!r}, {self.start!r}, {self.opening!r}, {self.steps!r})"


def run(walk: Walk) -> list[Violation]:
    """Replay a walk on a fresh rig; every violation the oracle saw, in order."""
    rig = Rig(walk.preset, walk.start)
    oracle = Oracle(RuleText.load(walk.preset, SETUPS[walk.preset].tz))
    rig.observers.append(oracle.observe)
    try:
        for aid, amount in zip(ACCOUNTS, walk.opening, strict=True):
            if amount:
                rig.pay(aid, amount, "hq")
        rig.tick()
        for n, step in enumerate(walk.steps):
            oracle.step = n
            apply(rig, oracle, step)
            oracle.check_ledger(rig)
        oracle.step = len(walk.steps)
        if rig.clock.skew:
            rig.skew_changed_at = rig.clock.true
        rig.clock.skew = timedelta(0)
        rig.advance(FINAL_WAIT)  # longer than any skew: a gateway whose clock went back catches up
        oracle.check_ledger(rig, final=True)
    finally:
        rig.close()
    return oracle.violations


def apply(rig: Rig, oracle: Oracle, step: Step) -> None:
    kind = step[0]
    if kind == "wait":
        rig.advance(timedelta(minutes=step[1]))
    elif kind == "load":
        model = rig.models[METERS[step[1]]]
        model.advance()  # energy so far at the old power
        model.profile = LoadProfile((step[2],))
    elif kind == "pay":
        aid, mid = ACCOUNTS[step[1]], METERS[step[1]]
        model = rig.models[mid]
        before = (model.relay_closed, not model.relay_command_trip)
        ops_before = len(rig.ops)
        oracle.channel = step[3]
        rig.pay(aid, step[2], step[3])
        rig.run_enforcer()  # woken at once: by the top-up's decision, or by the payment watch
        rig.observe()
        rig.advance(timedelta(seconds=1))
        oracle.after_payment(rig, aid, step[3], before, ops_before)
        oracle.channel = None
    elif kind == "hold":
        held = rig.set_hold(step[1])
        if held is not None:
            oracle.holds[held[0]] = (rig.clock.true, held[1])
            oracle.hold_skewed[held[0]] = bool(rig.clock.skew)
        rig.run_enforcer()
        rig.observe()
    elif kind == "unhold":
        for hid, (start, until) in list(oracle.holds.items()):
            if until > rig.clock.true and rig.clear_hold(hid):
                oracle.holds[hid] = (start, rig.clock.true)
                break
        rig.run_enforcer()
        rig.observe()
    elif kind in ("protect", "keep"):
        i, on, channel = step[1], step[2], step[3]
        aid = ACCOUNTS[i]
        if channel == "hq":
            if kind == "protect":
                rig.set_flags_hq(aid, protected=on)
            else:
                rig.set_flags_hq(aid, keep_power=on)
        elif kind == "protect":
            rig.set_flags_file(aid, protected=on)
        else:
            rig.set_flags_file(aid, keep_power=on)
        rig.run_enforcer()
        rig.observe()
    elif kind == "skew":
        if rig.clock.skew != timedelta(minutes=step[1]):
            rig.skew_changed_at = rig.clock.true
        rig.clock.skew = timedelta(minutes=step[1])
    elif kind == "reload":
        rig.reload()
        rig.run_enforcer()
        rig.observe()
    elif kind == "restart":
        rig.restart()
        rig.run_enforcer()
        rig.observe()
    elif kind == "crash":
        rig.kill_mid_command()
        rig.run_enforcer()
        rig.observe()
    elif kind == "press":
        rig.press_button(METERS[step[1]])
        rig.observe()
    elif kind == "deliver":
        rig.deliver_notice(ACCOUNTS[step[1]])
        rig.run_enforcer()
        rig.observe()
    else:
        raise ValueError(f"unknown step {step!r}")


def unexpected(violations: Iterable[Violation], known: Iterable[str]) -> list[Violation]:
    known = set(known)
    return [v for v in violations if v.cls not in known]


def shrink(walk: Walk, cls: str, *, budget: int = 200) -> Walk:
    """The shortest walk found (chunks, then single steps removed) that still shows ``cls``."""

    def shows(steps: Sequence[Step]) -> bool:
        return any(v.cls == cls for v in run(Walk(walk.preset, walk.start, walk.opening, list(steps))))

    steps = list(walk.steps)
    # Nothing after the first occurrence matters.
    first = next((v.step for v in run(walk) if v.cls == cls), None)
    if first is None:
        return walk
    steps = steps[: first + 1]
    runs = 0
    chunk = max(1, len(steps) // 2)
    while chunk >= 1 and runs < budget:
        i = 0
        while i < len(steps) and runs < budget:
            candidate = steps[:i] + steps[i + chunk :]
            runs += 1
            if candidate != steps and shows(candidate):
                steps = candidate
            else:
                i += chunk
        chunk //= 2
    return Walk(walk.preset, walk.start, walk.opening, steps)
