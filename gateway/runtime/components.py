"""What the daemon builds from its configuration: rules, calendar, tariffs, the policy engine.

Everything here can fail on a bad file, with a one-line error; it is built at start and again on a
SIGHUP reload (the running set is kept when the new one fails), and by ``pmg run --check``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.config import GatewayConfig, MeterConfig, resolve
from gateway.core.calendar import WorkCalendar
from gateway.ledger.tariff_book import TariffBook
from gateway.policy.calendar_sources import install as install_official
from gateway.policy.engine import MeterCaps, PolicyEngine
from gateway.policy.rules import Rules, load_preset
from gateway.store.db import Store


@dataclass
class Components:
    """What is rebuilt from configuration (on start and on a safe SIGHUP reload)."""

    cfg: GatewayConfig
    book: TariffBook
    policy: PolicyEngine
    rules: Rules
    calendar: WorkCalendar


def build_components(cfg: GatewayConfig, config_path: Path, store: Store | None) -> Components:
    """Everything derived from the configuration that can fail; raises one-line errors."""
    # The site's currency, not the preset's default: every reader of these rules (explain, the
    # customer texts of a ``decide`` called without the engine) then states the configured money.
    rules = load_preset(cfg.policy.preset, cfg.policy.overrides).model_copy(update={"currency": cfg.currency})
    country = cfg.policy.country or rules.country
    calendar = WorkCalendar(cfg.timezone, country, cfg.policy.subdiv or rules.subdiv)
    calendar_file = resolve(config_path, cfg.policy.calendar_file) if cfg.policy.calendar_file else None
    install_official(calendar, store.conn if store else None, calendar_file)
    book = TariffBook.load(resolve(config_path, cfg.tariff_dir), store.conn if store else None, calendar)
    for meter in cfg.meters:
        tariff = book.get(meter.tariff)  # a meter on an unknown tariff is a configuration error
        if tariff.currency != cfg.currency:  # its prices would be posted as the gateway's money
            raise ValueError(
                f"meter '{meter.id}': tariff '{tariff.id}' is in {tariff.currency}, the gateway keeps "
                f"accounts in {cfg.currency}"
            )
    caps = {m.id: _caps(cfg, m) for m in cfg.meters}
    policy = PolicyEngine(rules, calendar, caps, book=book, minor_digits=cfg.minor_digits,
                          currency=cfg.currency)
    return Components(cfg, book, policy, rules, calendar)


def _caps(cfg: GatewayConfig, meter: MeterConfig) -> MeterCaps:
    protocol = cfg.bus(meter.bus).protocol
    if protocol == "dlt645":
        return MeterCaps(controllable=True, supports_load_limit=False, supports_keep_power=True)
    if protocol == "dlms":  # class 70 has no keep-power; the profile says whether there is a relay
        from drivers.dlms.profile import load_profile as load_dlms_profile

        return MeterCaps(controllable=load_dlms_profile(cfg.profile_file(meter) or "generic").relay is not None)
    from drivers.modbus.profile import load_profile

    profile = load_profile(cfg.profile_file(meter) or "")
    return MeterCaps(controllable=profile.relay is not None)
