"""Starting the console: the checks that come before binding, then uvicorn.

It refuses to start (exit status 2, one line) when it would listen beyond the loopback interface
without accounts, when the users file is unreadable or malformed, or when a TLS file is missing.
Cookies get ``Secure`` whenever TLS is on; over plain HTTP the console only makes sense on loopback.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from pathlib import Path

from gateway.config import GatewayConfig, resolve
from gateway.core.errors import UserError
from gateway.core.listen import parse_listen
from gateway.store.db import open_store
from gateway.store.pins import check_money_pins
from gateway.web import auth
from gateway.web.app import Console, create_app

log = logging.getLogger("pmg.web")


class WebConfigError(UserError, ValueError):
    """The console cannot start as configured; nothing was bound."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def prepare(cfg: GatewayConfig, config_path: Path) -> tuple[Console, str, int, tuple[Path, Path] | None]:
    """Every check that can refuse, before anything listens."""
    host, port = parse_listen(cfg.web.listen)
    users = None
    if cfg.web.users_file is not None:
        users = auth.load_users(resolve(config_path, cfg.web.users_file))
        if not users:
            raise WebConfigError(f"web.users_file {cfg.web.users_file} has no accounts (pmg web passwd adds one)")
    elif not is_loopback(host):
        raise WebConfigError(
            f"web.listen {cfg.web.listen} is not a loopback address: set web.users_file (pmg web passwd) "
            "so that only known people log in"
        )
    tls = None
    if cfg.web.tls_cert is not None and cfg.web.tls_key is not None:
        tls = (resolve(config_path, cfg.web.tls_cert), resolve(config_path, cfg.web.tls_key))
        for f in tls:
            if not f.is_file():
                raise WebConfigError(f"web TLS file not found: {f}")
    store = open_store(resolve(config_path, cfg.database), readonly=True)  # it must exist already
    console = Console(cfg, config_path, users, secure_cookies=tls is not None)
    try:
        check_money_pins(store, cfg.currency, cfg.minor_digits, write=False)
        console.parts(store)  # tariffs, rules, calendar: a bad file stops the start, not a page
    finally:
        store.close()
    return console, host, port, tls


def serve(cfg: GatewayConfig, config_path: Path) -> None:
    import uvicorn

    console, host, port, tls = prepare(cfg, config_path)
    stop = threading.Event()
    threading.Thread(target=console.verify_forever, args=(stop,), name="pmg-web-verify", daemon=True).start()
    config = uvicorn.Config(
        create_app(console),
        host=host,
        port=port,
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
    )
    log.warning(
        "pmg web on %s://%s:%d (%s)", "https" if tls else "http", host, port,
        "accounts from " + str(cfg.web.users_file) if console.users is not None else "read-only, no login",
    )
    try:
        uvicorn.Server(config).run()
    finally:
        stop.set()
