"""A private three-node NATS cluster with JetStream and MQTT (3.1.1) for the broker-cluster experiment.

Every node listens on 127.0.0.1 only, on free ports, with its own JetStream directory; nothing of the
machine's own services is used.  See docs/broker-cluster.md.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from support.broker import free_port

# Straight to 127.0.0.1 whatever http_proxy says: a proxy would answer for the node, or not at all.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def nats_binary() -> str | None:
    return shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
    )


def nats_version() -> tuple[int, ...] | None:
    """(major, minor, patch) of the installed nats-server; MQTT needs 2.2 or later."""
    binary = nats_binary()
    if binary is None:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    digits = out.strip().rsplit("v", 1)[-1]
    try:
        return tuple(int(p) for p in digits.split("."))
    except ValueError:
        return None


@dataclass
class Node:
    name: str
    client_port: int = field(default_factory=free_port)
    route_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)  # monitoring: /healthz
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class NatsCluster:
    """``start()``; ``stop_node(i)`` / ``start_node(i)`` mid-run; ``stop()`` ends every node."""

    workdir: Path
    size: int = 3
    replicas: int = 3  # MQTT streams' replicas (the $MQTT_* JetStream streams)
    ack_wait: str = "30s"
    """How long NATS waits for a subscriber's PUBACK before it sends the message again (its MQTT
    default, 30 s): also how long a message in flight to a node that died takes to come again."""
    nodes: list[Node] = field(default_factory=list)
    healthy_after_s: float = 0.0
    """How long the cluster took, after its start, until every node answered ``/healthz`` with 200."""

    def __post_init__(self) -> None:
        self.nodes = [Node(f"n{i + 1}") for i in range(self.size)]

    def _config(self, node: Node) -> Path:
        routes = ", ".join(f"nats-route://127.0.0.1:{n.route_port}" for n in self.nodes)
        store = self.workdir / node.name / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        path = self.workdir / node.name / "nats.conf"
        path.write_text(
            f"server_name: {node.name}\nlisten: 127.0.0.1:{node.client_port}\n"
            f"http: 127.0.0.1:{node.http_port}\n"
            f'jetstream {{ store_dir: "{store}", max_memory_store: 64MB, max_file_store: 1GB }}\n'
            f"cluster {{ name: pmg, listen: 127.0.0.1:{node.route_port}, routes: [ {routes} ] }}\n"
            f"mqtt {{ listen: 127.0.0.1:{node.mqtt_port}, stream_replicas: {self.replicas}, "
            f'ack_wait: "{self.ack_wait}" }}\n'
        )
        return path

    def start_node(self, index: int) -> None:
        binary = nats_binary()
        if binary is None:
            raise RuntimeError("nats-server is not installed")
        node = self.nodes[index]
        config = self._config(node)
        log = (self.workdir / node.name / "nats.log").open("ab")
        node.proc = subprocess.Popen([binary, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                node.proc = None
                raise RuntimeError(f"nats-server {node.name} exited: {self.log(index)[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", node.mqtt_port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop_node(index, kill=True)  # nothing left running behind a failed start
        raise RuntimeError(f"nats-server {node.name} did not listen for MQTT within 10 s")

    def stop_node(self, index: int, *, kill: bool = False) -> None:
        """SIGTERM (nats-server shuts down cleanly) or, with ``kill``, SIGKILL (a crash)."""
        proc = self.nodes[index].proc
        if proc is not None and proc.poll() is None:
            if kill:
                proc.kill()
            else:
                proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.nodes[index].proc = None

    def start(self) -> NatsCluster:
        for i in range(self.size):
            self.start_node(i)
        return self

    def healthy(self, index: int) -> bool:
        """The node's ``/healthz``: 200 once it knows JetStream's meta leader and its streams and consumers
        have caught up.  A node listening for MQTT before that refuses the subscriptions an MQTT session
        needs (SUBACK 0x80): what a restarted node does while it replays its store."""
        url = f"http://127.0.0.1:{self.nodes[index].http_port}/healthz"
        try:
            with _DIRECT.open(url, timeout=2) as answer:  # 503 raises HTTPError, an OSError
                return bool(answer.status == 200)
        except (OSError, http.client.HTTPException):
            return False

    def wait_healthy(self, timeout_s: float = 45.0) -> float:
        """Wait until every running node is healthy; the seconds it took.  Raises with the logs' tails,
        at once when a node's process has exited."""
        started = time.monotonic()
        while True:
            running = [i for i, node in enumerate(self.nodes) if node.proc is not None]
            dead = [i for i, n in enumerate(self.nodes) if n.proc is not None and n.proc.poll() is not None]
            if dead:
                raise RuntimeError(f"nats-server exited\n{self.log_tails(dead)}")
            if all(self.healthy(i) for i in running):
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(
                    f"the NATS cluster was not healthy within {timeout_s:g} s\n{self.log_tails(running)}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """Every node, even when stopping one of them fails (the first failure is raised at the end)."""
        failure: BaseException | None = None
        for i in range(self.size):
            try:
                self.stop_node(i)
            except BaseException as exc:  # the other nodes must still stop
                self.nodes[i].proc = None
                failure = failure or exc
        if failure is not None:
            raise failure

    def log_tails(self, indices: list[int] | None = None) -> str:
        """The end of each node's log (every node's by default), under its name: for a failure message."""
        chosen = range(self.size) if indices is None else indices
        return "\n".join(f"--- {self.nodes[i].name}\n{self.log(i)[-1500:]}" for i in chosen)

    def log(self, index: int) -> str:
        path = self.workdir / self.nodes[index].name / "nats.log"
        return path.read_text(errors="replace") if path.exists() else ""
