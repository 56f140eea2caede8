"""What a service needs from its host: one instance per database, and systemd's notify protocol.

sd_notify is a datagram to ``$NOTIFY_SOCKET``; it is a few lines, so no dependency is taken for it.
The watchdog is fed only while every bus worker's heartbeat is fresh: a stuck bus stops the feed and
systemd restarts the daemon.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import IO

from gateway.core.errors import OperationFailed


class AlreadyRunning(OperationFailed, RuntimeError):
    """Another pmg holds this database."""

    exit_status = 3  # another pmg already runs on the database


class InstanceLock:
    """An exclusive ``flock`` on ``<database>.lock``, held for the life of the daemon."""

    def __init__(self, database: Path) -> None:
        # The lock file sits beside the *real* database file: the same database reached through a
        # symlink, a relative path or ``..`` must meet the same lock, or two daemons would charge
        # every reading twice.
        self.path = Path(os.path.realpath(database) + ".lock")
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held open for the daemon's lifetime
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise AlreadyRunning(
                f"another pmg (pid {holder}) is already running on {str(self.path)[:-5]}"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def sd_notify(message: str) -> bool:
    """Send a notification to systemd; False when not under a notify-type unit or it was not taken."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        # Never block the event loop on systemd: a full queue (unix datagram queues hold ~10
        # messages) drops this notification instead of freezing polling and the graceful stop.
        sock.setblocking(False)
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:  # includes BlockingIOError
            return False
    return True


def watchdog_interval_s() -> float | None:
    """Half the watchdog timeout systemd gave us, or None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2
