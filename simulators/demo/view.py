"""The demo's live terminal view (rich), or plain lines when the output is not a terminal."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from gateway.core.money import format_money

if TYPE_CHECKING:
    from gateway.runtime.daemon import Gateway
    from simulators.demo.app import Story
    from simulators.model import MeterModel

TZ = ZoneInfo("Asia/Shanghai")
STATE_STYLE = {
    "normal": "green",
    "warning_1": "yellow",
    "warning_2": "dark_orange",
    "warning_3": "red",
    "notice_served": "bold red",
    "load_limited": "magenta",
    "disconnected": "bold white on red",
    "reconnection_pending": "cyan",
}


class DemoView:
    def __init__(self, *, plain: bool, broker: bool, workdir: Path) -> None:
        self.console = Console()
        self.plain = plain or not self.console.is_terminal
        self.broker = broker
        self.workdir = workdir
        self._live: Live | None = None
        self._last_event = 0

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        if self.plain:
            self.console.print(
                f"pmg demo: working directory {self.workdir}; broker "
                f"{'on' if self.broker else 'absent (outbox buffers)'}"
            )
            yield
            return
        with Live(console=self.console, refresh_per_second=4, transient=False) as live:
            self._live = live
            yield
        self._live = None

    def render(self, gateway: Gateway, models: dict[str, MeterModel], story: Story, now: datetime) -> None:
        store = gateway.store
        events = store.all(
            "SELECT id, at, kind, severity, meter_id, detail_json FROM events WHERE id > ? ORDER BY id",
            self._last_event if self.plain else max(0, self._max_event(gateway) - 10),
        )
        if self.plain:
            for e in events:
                self.console.print(self._event_line(e), highlight=False, soft_wrap=True)
                self._last_event = e["id"]
            return
        if self._live is None:
            return
        table = Table(
            title=f"pmg demo — simulated time {now.astimezone(TZ):%a %Y-%m-%d %H:%M} (Asia/Shanghai)",
            header_style="bold",
        )
        for col in ("meter", "customer", "proto", "balance ¥", "state", "relay", "register kWh", "load W"):
            table.add_column(col)
        rows = store.all(
            "SELECT m.id, a.name, m.protocol, a.balance_minor, a.policy_state, m.relay, "
            "m.last_register_wh FROM meters m JOIN accounts a ON a.id = m.account_id ORDER BY m.id"
        )
        for r in rows:
            model = models.get(r["id"])
            style = STATE_STYLE.get(r["policy_state"], "")
            relay = r["relay"] or "?"
            table.add_row(
                r["id"],
                r["name"] or "",
                r["protocol"],
                format_money(r["balance_minor"]),
                f"[{style}]{r['policy_state']}[/]",
                f"[{'green' if relay == 'closed' else 'red'}]{relay}[/]",
                f"{(r['last_register_wh'] or 0) / 1000:.2f}",
                str(model.power_w() if model else ""),
            )
        backlog = store.scalar("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL")
        mqtt = gateway.mqtt.stats if gateway.mqtt else None
        status = (
            f"MQTT: {'connected' if mqtt and mqtt.connected else 'not connected'}; outbox backlog {backlog}; "
            f"delivered {mqtt.acknowledged if mqtt else 0}"
        )
        log_lines = "\n".join(self._event_line(e) for e in events[-10:])
        story_lines = "\n".join(story.log[-6:]) or "credit is running down…"
        self._live.update(
            Group(
                table,
                Panel(status, title="head office link"),
                Panel(log_lines or "—", title="audit log (latest)"),
                Panel(story_lines, title="story"),
            )
        )

    @staticmethod
    def _max_event(gateway: Gateway) -> int:
        return int(gateway.store.scalar("SELECT COALESCE(MAX(id), 0) FROM events"))

    @staticmethod
    def _event_line(e: Any) -> str:
        detail = json.loads(e["detail_json"])
        at = datetime.fromisoformat(e["at"].replace("Z", "+00:00")).astimezone(TZ)
        summary = (
            detail.get("message") or detail.get("action") or detail.get("to") or detail.get("amount") or ""
        )
        return f"{at:%a %H:%M} {e['severity']:7} {e['kind']:26} {e['meter_id'] or '':5} {summary}"[:150]

    def summary(self, cfg_path: Path, story: Story) -> None:
        self.console.print()
        for line in story.log:
            self.console.print(f"  • {line}", highlight=False, soft_wrap=True)
        self.console.print(
            f"\nThe demo's database and configuration are in {cfg_path.parent}; try:\n"
            f"  pmg meters -c {cfg_path}\n  pmg events -c {cfg_path} --limit 50\n"
            f"  pmg ledger verify -c {cfg_path}",
            highlight=False,
        )
