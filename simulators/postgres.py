"""A private PostgreSQL server for tests and the benches: own data directory, free port, always stopped.

Like the private Mosquitto (``simulators.mosquitto``), tests never use a server the machine may run on
5432.  ``initdb`` and ``pg_ctl`` refuse to run as root, so as root they run as the ``postgres`` user
(``runuser``) on a data directory that user owns; the Unix socket lives in the same private directory.
Authentication is ``trust`` on 127.0.0.1 only: a throwaway server for one test session.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

_CANDIDATE_BINDIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl (Debian keeps them out of PATH), or None."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    return next((Path(d) for d in _CANDIDATE_BINDIRS if Path(d, "initdb").exists()), None)


@dataclass
class PostgresServer:
    """``start()`` then ``dsn(dbname)``; ``stop()`` stops it and removes its directory."""

    port: int = field(default_factory=free_port)
    settings: dict[str, str] = field(default_factory=dict)
    root: Path | None = None
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    def start(self) -> PostgresServer:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (make setup installs Debian's postgresql)")
        self.root = Path(tempfile.mkdtemp(prefix="pmg-pg-"))
        data, sock = self.root / "data", self.root / "sock"
        sock.mkdir()
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for p in (self.root, sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            self._as_owner([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                            "--no-sync", "--locale=C"]),
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        opts = {"listen_addresses": "127.0.0.1", "port": str(self.port), "unix_socket_directories": str(sock),
                "max_connections": "100", **self.settings}
        with open(data / "postgresql.conf", "a") as conf:  # owned by postgres; root may append
            conf.writelines(f"{k} = '{v}'\n" for k, v in opts.items())
        subprocess.run(
            self._as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(self.root / "log"), "-w", "-t", "60",
                            "start"]),
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        return self

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def new_database(self, prefix: str = "t") -> str:
        """A fresh empty database; its DSN."""
        import psycopg  # the hq extra: only the head office's tests and bench need it

        name = f"{prefix}_{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        if self.root is None:
            return
        bindir = postgres_bindir()
        data = self.root / "data"
        if bindir is not None and (data / "postmaster.pid").exists():
            subprocess.run(
                self._as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
            )
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
