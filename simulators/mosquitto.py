"""A private Mosquitto broker for tests and the demo: free port, own config, own directory, always stopped.

Tests never use the machine's broker on 1883: each one that needs MQTT starts its own with exactly
the configuration it needs (plain, TLS, credentials, ACLs), so CI is hermetic.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
    )


# A persistent session's offline queue without Mosquitto's default cap of 1,000 messages: past the cap
# the broker drops QoS 1 messages for an offline subscriber although it acknowledged them to the
# publisher (log: "Outgoing messages are being dropped for client ...").  A head-office broker must
# be configured this way (or with a cap above the longest backlog it may hold); so must a test whose
# subscriber is offline while the gateway drains a backlog.
UNCAPPED_OFFLINE_QUEUE = "max_queued_messages 0\n"


@dataclass
class Mosquitto:
    """``start()`` then use ``host``/``port``; ``stop()`` kills it.  ``extra`` is appended to the config."""

    workdir: Path
    port: int = field(default_factory=free_port)
    extra: str = "allow_anonymous true\n"
    listener_extra: str = ""
    proc: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"

    def start(self, timeout: float = 10.0) -> Mosquitto:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (make setup installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        # As root, Mosquitto drops to the "mosquitto" user, which cannot read a private temp directory
        # (certificates, log file): stay root for these throwaway brokers.
        user = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(
            f"{user}per_listener_settings false\npersistence false\nlog_dest file {self.workdir / 'mosquitto.log'}\n"
            f"log_type error\nlog_type warning\nlog_type notice\n"
            f"listener {self.port} {self.host}\n{self.listener_extra}{self.extra}"
        )
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                log = self.workdir / "mosquitto.log"
                raise RuntimeError(f"mosquitto exited: {err} {log.read_text() if log.exists() else ''}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
