"""Head-office commands arriving over MQTT (authenticated, idempotent): see ``CommandProcessor``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.daemon import Gateway

log = logging.getLogger("pmg.commands")


class CommandProcessor:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def handle(self, kind: str, payload: bytes) -> None:
        log.warning("command type=%s ignored: command processing is not built yet", kind)
