"""A Redis Cluster of N masters (+ replicas) on loopback, formed with CLUSTER ADDSLOTS/MEET.

Forming the cluster ourselves (instead of ``redis-cli --cluster create``) avoids redis-cli's
fixed one-second sleeps and needs no redis-cli at all; it is what redis-cli does underneath.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from tiercache._localstack.binaries import RedisBinaries
from tiercache._localstack.procs import (
    LocalStackError,
    free_port,
    spawn_server,
    stop_group,
    stop_groups,
    wait_until,
)

log = logging.getLogger("tiercache.local")

SLOTS = 16384
NODE_TIMEOUT_MS = 2000  # short, so failures are detected (and healed) quickly in tests


@dataclass
class RedisNode:
    index: int
    port: int
    dir: Path
    replica_of: int | None  # index of the master, None for a master
    proc: subprocess.Popen[bytes] | None = None
    node_id: str = ""

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout,
                           socket_connect_timeout=timeout, decode_responses=True)


def _info(node: RedisNode, section: str) -> dict[str, str]:
    """``CLUSTER INFO`` (section ``"cluster"``) or ``INFO <section>`` of one node, as a dict.

    Parsed by hand when redis-py hands back the raw text (it does for CLUSTER INFO).
    """
    with node.client() as client:
        raw = client.execute_command("CLUSTER", "INFO") if section == "cluster" else \
            client.execute_command("INFO", section)
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


class RedisClusterServers:
    """The Redis half of a LocalStack: owns the redis-server processes and their directories."""

    def __init__(self, binaries: RedisBinaries, root: Path, masters: int, replicas: int) -> None:
        if masters < 1:
            raise ValueError("a Redis Cluster needs at least one master")
        self.binaries = binaries
        self.nodes: list[RedisNode] = []
        for i in range(masters * (1 + replicas)):
            replica_of = None if i < masters else (i - masters) % masters
            node_dir = root / f"redis-{i}"
            self.nodes.append(RedisNode(i, free_port(with_bus=True), node_dir, replica_of))

    @property
    def masters(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.replica_of is None]

    def _write_config(self, node: RedisNode) -> Path:
        node.dir.mkdir(parents=True, exist_ok=True)
        conf = node.dir / "redis.conf"
        conf.write_text(
            f"port {node.port}\n"
            "bind 127.0.0.1\n"
            "protected-mode no\n"
            "daemonize no\n"
            f"dir {node.dir}\n"
            f"logfile {node.log_path}\n"
            "cluster-enabled yes\n"
            "cluster-config-file nodes.conf\n"
            f"cluster-node-timeout {NODE_TIMEOUT_MS}\n"
            # no persistence: a test stack must be fast, and a restart keeps nodes.conf only
            "appendonly no\n"
            'save ""\n'
        )
        return conf

    def _spawn(self, node: RedisNode) -> None:
        conf = node.dir / "redis.conf"
        node.proc = spawn_server([str(self.binaries.server), str(conf)],
                                 log_path=node.log_path, run_as=None, cwd=node.dir)

    def _wait_ping(self, node: RedisNode, timeout: float = 15.0) -> None:
        def ping() -> bool:
            with node.client(timeout=0.5) as client:
                return bool(client.ping())
        wait_until(ping, timeout, f"redis-server :{node.port}", node.proc, node.log_path)

    def start(self, progress: Callable[[str], None]) -> None:
        """Start every node and form the cluster; returns once cluster_state is ok everywhere."""
        for node in self.nodes:
            self._write_config(node)
            self._spawn(node)
        for node in self.nodes:
            self._wait_ping(node)
        progress(f"redis: {len(self.nodes)} servers up, forming the cluster")
        self._form()
        progress("redis: cluster_state ok on every node")

    def _form(self) -> None:
        masters = self.masters
        for i, node in enumerate(self.nodes):
            with node.client() as client:
                node.node_id = str(client.execute_command("CLUSTER", "MYID"))
                # distinct epochs up front: no epoch-collision resolution round later
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        bounds = [SLOTS * i // len(masters) for i in range(len(masters) + 1)]
        for i, node in enumerate(masters):
            with node.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTS", *range(bounds[i], bounds[i + 1]))
        # every pair meets directly: waiting for gossip to introduce third parties costs seconds
        for i, node in enumerate(self.nodes):
            with node.client() as client:
                for other in self.nodes[i + 1:]:
                    client.execute_command("CLUSTER", "MEET", "127.0.0.1", other.port)
        wait_until(self._all_know_each_other, 30, "redis cluster nodes to meet")
        for node in self.nodes:
            if node.replica_of is not None:
                with node.client() as client:
                    client.execute_command("CLUSTER", "REPLICATE",
                                           self.nodes[node.replica_of].node_id)
        self.wait_healthy(30)

    def _all_know_each_other(self) -> bool:
        for node in self.nodes:
            with node.client() as client:
                lines = str(client.execute_command("CLUSTER", "NODES")).strip().splitlines()
            if len(lines) != len(self.nodes) or any("handshake" in ln for ln in lines):
                return False
        return True

    def _healthy(self) -> bool:
        for node in self.nodes:
            if node.proc is None:
                continue
            info = _info(node, "cluster")
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                return False
            if info.get("cluster_known_nodes") != str(len(self.nodes)):
                return False
            # by role now, not as configured: a failover may have swapped master and replica
            replication = _info(node, "replication")
            if replication.get("role") == "slave" and \
                    replication.get("master_link_status") != "up":
                return False
        return True

    def wait_healthy(self, timeout: float) -> None:
        wait_until(self._healthy, timeout, "redis cluster_state:ok on every node",
                   interval=0.05)

    def kill(self, index: int) -> None:
        """SIGKILL node *index*; its replica (if any) is promoted after the node timeout."""
        node = self.nodes[index]
        if node.proc is None:
            raise LocalStackError(f"redis node {index} is not running")
        stop_group(node.proc, signal.SIGKILL, 10)
        node.proc = None
        log.info("redis node %d (:%d) killed", index, node.port)

    def restart(self, index: int, timeout: float = 30.0) -> None:
        """Start a killed node again on its port with its nodes.conf; it rejoins the cluster."""
        node = self.nodes[index]
        if node.proc is not None:
            raise LocalStackError(f"redis node {index} is still running")
        started = time.monotonic()
        self._spawn(node)
        self._wait_ping(node)
        wait_until(self._all_know_each_other, timeout, "restarted redis node to rejoin",
                   node.proc, node.log_path)
        self.wait_healthy(max(1.0, timeout - (time.monotonic() - started)))
        log.info("redis node %d (:%d) restarted", index, node.port)

    def stop(self) -> None:
        """Stop every running node (nothing is persisted, so SIGTERM exits at once)."""
        stop_groups([n.proc for n in self.nodes if n.proc is not None], signal.SIGTERM, 5)
        for node in self.nodes:
            node.proc = None

    def pids(self) -> list[int]:
        return [n.proc.pid for n in self.nodes if n.proc is not None]
