"""``pmg demo``: the whole story on simulated meters, in a few minutes of fast clock.

Five households on real pseudo-terminals — three DL/T 645 meters on one bus, a relay-capable Modbus
meter on another and a DLMS/COSEM meter (HDLC, the Gurux peer) on a third — are polled by the real daemon under the ``cn`` rules (notice shortened to one day
so the story fits).  Credit runs down; warnings go out; a notice is issued on Friday evening and
counts only once the head office confirms its delivery (a signed ``notice`` command over MQTT; with no
broker the operator records a hand delivery locally); the weekend is protected and cuts start in
working hours, so the cut waits for Monday morning; the clinic (medical equipment) and the keep-power
(保电) meter are never cut; then the head office publishes a signed top-up over MQTT (or, with no
broker, the operator takes it locally) and power comes back, confirmed by read-back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.config import load_config
from gateway.core.errors import OperationFailed
from gateway.core.timeutil import ScaledClock, iso, parse_iso
from gateway.runtime.daemon import Gateway
from gateway.tariffs.model import example_dir
from simulators.demo.view import DemoView
from simulators.model import FastClock, LoadProfile, MeterModel

log = logging.getLogger("pmg.demo")

TZ = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 12, 4, 8, 0, tzinfo=TZ)  # a Friday morning


@dataclass(frozen=True)
class Household:
    meter_id: str
    account: str
    name: str
    protocol: str
    address: str
    credit: int  # minor units paid at the start
    watts: int
    protected: bool = False
    keep_power: bool = False


HOUSEHOLDS = (
    Household("M-01", "A-01", "Wang household", "dlt645", "000000000001", 500, 900),
    Household("M-02", "A-02", "Village clinic (medical)", "dlt645", "000000000002", 300, 700, protected=True),
    Household(
        "M-03", "A-03", "Grain mill (保电 keep-power)", "dlt645", "000000000003", 200, 1500, keep_power=True
    ),
    Household("M-04", "A-04", "Li shop (Modbus DDS238)", "modbus", "1", 6000, 400),
    Household("M-05", "A-05", "Zhao workshop (DLMS/COSEM)", "dlms", "17", 6000, 300),
)
BUSES = {"dlt645": "rs485-1", "modbus": "rs485-2", "dlms": "rs485-3"}
TOPUP = ("A-01", "pay-demo-0001", "50.00")
TOPUP_AFTER_CUT = timedelta(hours=2)  # simulated time the Wang household stays off before paying


def _config(
    workdir: Path, dlt_port: str, modbus_port: str, mqtt_port: int | None, keys: str, dlms_port: str
) -> str:
    mqtt = ""
    if mqtt_port:
        mqtt = (
            f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\ntls = false\nallow_plaintext = true\n'
            f'topic_prefix = "pmg"\n{keys}\n'
        )
    lines = [
        'gateway_id = "gw-demo"',
        'timezone = "Asia/Shanghai"',
        f'database = "{workdir / "pmg.db"}"',
        'currency = "CNY"',
        f'tariff_dir = "{example_dir()}"',  # shipped in the wheel
        "",
        mqtt,
        '[policy]\npreset = "cn"\n[policy.overrides.notice]\nperiod = "P1D"\n'
        '[policy.overrides.reconnect]\nmode = "direct_close"\n',
        f'[[buses]]\nid = "rs485-1"\nprotocol = "dlt645"\nurl = "{dlt_port}"\nbaud = 9600\npoll_interval_s = 1\n',
        f'[[buses]]\nid = "rs485-2"\nprotocol = "modbus"\nurl = "{modbus_port}"\nbaud = 9600\nparity = "N"\n'
        "poll_interval_s = 1\n",
        f'[[buses]]\nid = "rs485-3"\nprotocol = "dlms"\nurl = "{dlms_port}"\nbaud = 9600\nparity = "N"\n'
        "poll_interval_s = 1\n",
    ]
    for h in HOUSEHOLDS:
        lines.append(
            f'[[accounts]]\nid = "{h.account}"\nname = "{h.name}"\nprotected = {str(h.protected).lower()}\n'
            + ('protected_category = "medical_equipment"\n' if h.protected else "")
        )
        bus = BUSES[h.protocol]
        lines.append(
            f'[[meters]]\nid = "{h.meter_id}"\nbus = "{bus}"\naddress = "{h.address}"\naccount = "{h.account}"\n'
            f'tariff = "flat-cn"\nkeep_power = {str(h.keep_power).lower()}\n'
            + ('profile = "dds238"\n' if h.protocol == "modbus" else "")
        )
    return "\n".join(lines)


@dataclass
class Story:
    """What the demo waits for, and what it has seen."""

    cut_at: datetime | None = None
    topup_sent: bool = False
    restored_at: datetime | None = None
    log: list[str] = field(default_factory=list)


def run_demo(*, speed: float, minutes: float, workdir: Path | None, broker: bool, plain: bool) -> int:
    """Run the demo; returns the exit status (0 when the story reached its end)."""
    from drivers.modbus.profile import load_profile
    try:  # the fifth household's meter is built on Gurux (the dlms extra, installed by `make demo`)
        from simulators.dlms_line import DlmsLine
        from simulators.dlms_meter import DlmsMeterModel
    except ModuleNotFoundError as exc:
        raise OperationFailed(
            f"the demo's DLMS meter needs {(exc.name or '').partition('.')[0]!r}, which is not installed: "
            "pip install 'prepaid-meter-gateway[dlms]'"
        ) from None
    from simulators.dlt645 import SimulatedDlt645Bus
    from simulators.modbus import SimulatedModbusBus

    workdir = workdir or Path(tempfile.mkdtemp(prefix="pmg-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    clock = ScaledClock(speed, START)
    sim_clock = FastClock(speed, start=clock.epoch())
    models = {
        h.meter_id: MeterModel(h.address, clock=sim_clock, profile=LoadProfile((h.watts,)))
        for h in HOUSEHOLDS
        if h.protocol != "dlms"
    }
    dlms = DlmsLine(
        {
            int(h.address): DlmsMeterModel(
                power_w=Decimal(h.watts), now=lambda: datetime.fromtimestamp(sim_clock(), UTC)
            )
            for h in HOUSEHOLDS
            if h.protocol == "dlms"
        }
    )
    dlt = SimulatedDlt645Bus(
        [models[h.meter_id] for h in HOUSEHOLDS if h.protocol == "dlt645"], baud=9600, response_delay_s=0.01
    )
    modbus = SimulatedModbusBus(
        {
            int(h.address): (models[h.meter_id], load_profile("dds238"))
            for h in HOUSEHOLDS
            if h.protocol == "modbus"
        }
    )
    mosquitto = None
    hq = None
    try:
        dlt_port = dlt.start_pty()
        modbus_port = modbus.start_pty()
        dlms_port = dlms.start_pty()
        if broker:
            mosquitto = _start_broker(workdir)
        keys = ""
        if mosquitto is not None:
            hq = _HeadOffice.create(workdir, mosquitto.port)
            keys = hq.config_keys() if hq is not None else ""
        cfg_path = workdir / "gateway.toml"
        cfg_path.write_text(
            _config(workdir, dlt_port, modbus_port, mosquitto.port if mosquitto else None, keys, dlms_port)
        )
        view = DemoView(plain=plain, broker=mosquitto is not None, workdir=workdir)
        return asyncio.run(_run(cfg_path, clock, models, view, minutes, hq))
    finally:
        if hq is not None:
            hq.close()
        dlt.stop()
        modbus.stop()
        dlms.stop()
        if mosquitto is not None:
            mosquitto.stop()


def _start_broker(workdir: Path) -> Any:
    from simulators.mosquitto import Mosquitto, mosquitto_binary

    if mosquitto_binary() is None:
        return None
    try:
        return Mosquitto(workdir / "broker").start()
    except RuntimeError as exc:
        log.warning("no broker for the demo (%s); the outbox will buffer", exc)
        return None


async def _run(
    cfg_path: Path,
    clock: ScaledClock,
    models: dict[str, MeterModel],
    view: DemoView,
    minutes: float,
    hq: _HeadOffice | None,
) -> int:
    gateway = Gateway(cfg_path, load_config(cfg_path), clock=clock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await gateway.start()
    story = Story()
    try:
        for h in HOUSEHOLDS:
            gateway.apply_payment(f"opening-{h.account}", h.account, h.credit, source="demo:opening-balance")
        deadline = loop.time() + minutes * 60 if minutes > 0 else None
        with view.live():
            while not stop.is_set():
                _advance_story(gateway, story, clock, hq)
                view.render(gateway, models, story, clock())
                if story.restored_at is not None and clock() - story.restored_at > timedelta(hours=4):
                    story.log.append("the story is complete")
                    view.render(gateway, models, story, clock())
                    break
                if deadline is not None and loop.time() > deadline:
                    story.log.append("time is up (--minutes)")
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.25)
    finally:
        await gateway.stop()
        view.summary(cfg_path, story)
    return 0 if story.restored_at is not None else 1


def _confirm_notices(gateway: Gateway, story: Story, now: datetime, hq: _HeadOffice | None) -> None:
    """The head office delivers each notice (by SMS) and confirms it, so its period starts."""
    if hq is not None:
        for account, nid in hq.take_notices():
            hq.send_notice(account, nid, "sms", now)
            story.log.append(f"{now.astimezone(TZ):%a %H:%M} head office confirms the notice to {account} (SMS, signed)")
        return
    from gateway.policy import notices

    with gateway.store.tx() as conn:
        waiting = conn.execute(
            "SELECT id, notice_served_at FROM accounts WHERE notice_served_at IS NOT NULL "
            "AND notice_delivered_at IS NULL ORDER BY id"
        ).fetchall()
        for account, issued in waiting:
            nid = notices.notice_id(account, parse_iso(issued))
            notices.confirm_delivery(conn, account, nid, "in_person", now, now, actor="demo:counter")
            gateway.parts.policy.evaluate_account(conn, account, now)
            story.log.append(f"{now.astimezone(TZ):%a %H:%M} notice to {account} handed over (no broker)")


def _advance_story(gateway: Gateway, story: Story, clock: ScaledClock, hq: _HeadOffice | None) -> None:
    store = gateway.store
    now = clock()
    _confirm_notices(gateway, story, now, hq)
    relay = store.scalar("SELECT relay FROM meters WHERE id = 'M-01'")
    if story.cut_at is None and relay == "open":
        story.cut_at = now
        story.log.append(f"{now.astimezone(TZ):%a %H:%M} M-01 cut after notice, outside protected days")
    if story.cut_at is not None and not story.topup_sent and now - story.cut_at >= TOPUP_AFTER_CUT:
        account, payment_id, amount = TOPUP
        if hq is not None:
            hq.send_topup(account, payment_id, amount, now)
            story.log.append(
                f"{now.astimezone(TZ):%a %H:%M} head office publishes a signed top-up of ¥{amount}"
            )
        else:
            from gateway.core.money import parse_money

            gateway.apply_payment(payment_id, account, parse_money(amount), source="demo:counter")
            story.log.append(
                f"{now.astimezone(TZ):%a %H:%M} cash top-up of ¥{amount} at the counter (no broker)"
            )
        story.topup_sent = True
    if story.topup_sent and story.restored_at is None and relay == "closed":
        story.restored_at = now
        story.log.append(f"{now.astimezone(TZ):%a %H:%M} M-01 power restored, confirmed by read-back")


class _HeadOffice:
    """The demo's head office: signs top-ups with its Ed25519 key and publishes them over MQTT."""

    def __init__(self, port: int, key: Any, key_id: str) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.key = key
        self.key_id = key_id
        self._lock = threading.Lock()
        self._notices: list[tuple[str, str]] = []  # (account, notice id) issued, not yet confirmed
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="demo-hq", protocol=paho.MQTTv5)
        self.client.on_connect = lambda client, *_: client.subscribe("pmg/gw-demo/events", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        import json

        try:
            event = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(event, dict) and event.get("kind") == "policy_serve_notice":
            nid = (event.get("detail") or {}).get("notice_id")
            if event.get("account_id") and nid:
                with self._lock:
                    self._notices.append((event["account_id"], nid))

    def take_notices(self) -> list[tuple[str, str]]:
        with self._lock:
            taken, self._notices = self._notices, []
        return taken

    def send_notice(self, account: str, notice_id: str, channel: str, now: datetime) -> None:
        """Confirm that the notice reached the customer (here: at once, by SMS)."""
        self._publish(
            "notice",
            {
                "id": f"cmd-delivered-{notice_id.replace(':', '-')}",
                "account_id": account,
                "notice_id": notice_id,
                "channel": channel,
                "delivered_at": iso(now),
            },
            now,
        )

    @classmethod
    def create(cls, workdir: Path, port: int) -> _HeadOffice | None:
        try:
            from gateway.sync import signing
        except ImportError:
            return None
        key = signing.generate_key()
        return cls(port, key, signing.key_id_for(key.public_key()))

    def config_keys(self) -> str:
        from gateway.sync import signing

        return f'[mqtt.command_keys]\n"{self.key_id}" = "{signing.public_key_b64(self.key.public_key())}"\n'

    def send_topup(self, account: str, payment_id: str, amount: str, now: datetime) -> None:
        self._publish(
            "topup", {"id": f"cmd-{payment_id}", "account_id": account, "payment_id": payment_id, "amount": amount}, now
        )

    def _publish(self, kind: str, fields: dict[str, Any], now: datetime) -> None:
        import json

        from gateway.sync import signing

        command = {
            "gateway_id": "gw-demo",
            "type": kind,
            "issued_at": iso(now),
            "expires_at": iso(now + timedelta(days=1)),
            **fields,
        }
        signed = signing.sign_command(command, self.key, self.key_id)
        self.client.publish(f"pmg/gw-demo/commands/{kind}", json.dumps(signed), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
