"""``[metrics] listen`` ("host:port") parsed once, for the config check and the daemon's bind alike,
so ``run --check`` refuses exactly what ``run`` would."""

from __future__ import annotations

from gateway.core.errors import UserError


class MetricsError(UserError, ValueError):
    """The ``[metrics] listen`` address is malformed or cannot be bound."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:9108"`` for IPv6) into its parts; a clear error otherwise."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise MetricsError(f"metrics.listen: expected host:port like 127.0.0.1:9108 (got {listen!r})")
    return host or "127.0.0.1", int(port)
