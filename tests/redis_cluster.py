"""A Redis Cluster of the tests' own: real redis-server processes on free ports.

Never the machine's shared Redis: tests kill, restart and reshard this one. Three
masters, each with one replica by default (a killed master fails over to its
replica within a few seconds), started with ``--cluster-enabled yes`` in a temporary
folder and joined by ``redis-cli --cluster create``.

Stable API (other test modules build fixtures on it):

* ``RedisCluster(server, cli, masters=3, replicas=1)``; ``.url`` is the
  ``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...`` URL (every node a seed), ``.ports``
  the nodes' ports (node ``i`` listens on ``ports[i]``).
* ``start()``, ``stop()``; ``heal()`` restarts killed nodes and waits until every slot
  is served; ``flush()`` empties every master (FLUSHALL).
* ``alive(i)`` (node ``i`` is running), ``masters()`` (indexes of the live nodes that
  are masters now), ``slot_of(key)``, ``master_of(key)`` (index of the master serving
  the key's slot), ``node_id(i)``, ``client(i)`` (a synchronous ``redis.Redis`` on
  node ``i``, to close after use).
* Faults: ``kill_node(i)`` (SIGKILL), ``restart_node(i)`` (same port and cluster
  identity: a killed master comes back as a replica of the one that took over),
  ``wait_healthy()``, ``move_slot(slot, to)`` (migrate a slot and its keys to master
  ``to``, as ``redis-cli --cluster reshard`` does).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

SLOTS = 16384


_taken: set[int] = set()
"""Ports handed out in this process: two nodes must not get the same one."""


def _free_port() -> int:
    """A port free on 127.0.0.1 now, as the kernel picks it for a bind (Linux prefers
    other ports for outgoing connections: a killed node's port stays free for its
    restart)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _taken:
            _taken.add(port)
            return port


def _wait(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass  # a node still starting or just killed: ask again
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis Cluster: timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class RedisCluster:
    """``masters`` masters with ``replicas`` replicas each, all on 127.0.0.1."""

    def __init__(
        self,
        server: str = "redis-server",
        cli: str = "redis-cli",
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
    ) -> None:
        self.server = server
        self.cli = cli
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        count = masters * (1 + replicas)
        self.ports = [_free_port() for _ in range(count)]
        # The cluster bus has ports of its own (cluster-port), also free ones.
        self._bus_ports = [_free_port() for _ in range(count)]
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)
        self._root: Path | None = None
        self._processes: list[subprocess.Popen[bytes] | None] = [None] * count

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start every node, create the cluster, and wait until it serves every slot."""
        self._root = Path(tempfile.mkdtemp(prefix="tidings-redis-cluster-"))
        try:
            self._create()
        except BaseException:
            self.stop()
            raise

    def _create(self) -> None:
        for i in range(len(self.ports)):
            self._spawn(i)
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        self.wait_healthy()

    def stop(self) -> None:
        """Kill every node and remove their folders."""
        for i in range(len(self.ports)):
            self.kill_node(i)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def heal(self) -> None:
        """Restart the nodes a test killed; wait until every slot is served again."""
        for i, process in enumerate(self._processes):
            if process is None:
                self._spawn(i)
        self.wait_healthy()

    def flush(self) -> None:
        """FLUSHALL on every master (replicas follow)."""
        for i in self.masters():
            with self.client(i) as client:
                client.flushall()

    # --- nodes -------------------------------------------------------------------

    def client(self, i: int) -> redis.Redis:
        """A synchronous client of node ``i`` alone (not cluster-aware)."""
        return redis.Redis(host="127.0.0.1", port=self.ports[i], socket_timeout=5)

    def node_id(self, i: int) -> str:
        with self.client(i) as client:
            return str(client.execute_command("CLUSTER MYID").decode())

    def alive(self, i: int) -> bool:
        return self._processes[i] is not None

    def masters(self) -> list[int]:
        """Indexes of the live nodes that are masters now."""
        found = []
        for i in range(len(self.ports)):
            if not self.alive(i):
                continue
            with self.client(i) as client:
                if client.execute_command("ROLE")[0] == b"master":
                    found.append(i)
        return found

    @staticmethod
    def slot_of(key: str) -> int:
        return key_slot(key.encode())

    def master_of(self, key: str) -> int:
        """Index of the master that serves ``key``'s slot now."""
        return self._owner(self.slot_of(key))

    def _owner(self, slot: int) -> int:
        for i in self.masters():
            with self.client(i) as client:
                ranges = _own_ranges(client)
            if any(start <= slot <= end for start, end in ranges):
                return i
        raise RuntimeError(f"no live master serves slot {slot}")

    # --- faults ------------------------------------------------------------------

    def kill_node(self, i: int) -> None:
        """SIGKILL node ``i`` (no goodbye to its clients or the cluster)."""
        process = self._processes[i]
        if process is not None:
            process.kill()
            process.wait()
            self._processes[i] = None

    def restart_node(self, i: int) -> None:
        """Start node ``i`` again with its cluster identity (it rejoins the cluster)."""
        self.kill_node(i)
        self._spawn(i)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every live node says cluster_state:ok, they agree that live masters
        serve all slots, and every live replica is in sync with its master."""
        _wait(self._healthy, "a healthy cluster", timeout)

    def move_slot(self, slot: int, to: int) -> None:
        """Migrate ``slot`` with its keys to master ``to`` (SETSLOT and MIGRATE)."""
        source = self._owner(slot)
        if source == to:
            return
        source_id, target_id = self.node_id(source), self.node_id(to)
        with self.client(source) as src, self.client(to) as dst:
            dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
                src.execute_command(
                    "MIGRATE", "127.0.0.1", self.ports[to], "", 0, 5000, "KEYS", *keys
                )
            # The target first, then the source, then the others (redis-cli's order).
            dst.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
            src.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        for i in self.masters():
            if i not in (source, to):
                with self.client(i) as client:
                    client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        _wait(lambda: self._owner(slot) == to, f"slot {slot} on node {to} everywhere")

    # --- internals ---------------------------------------------------------------

    def _spawn(self, i: int) -> None:
        assert self._root is not None, "start() first"
        folder = self._root / str(self.ports[i])
        folder.mkdir(exist_ok=True)
        self._processes[i] = subprocess.Popen(
            [
                self.server,
                "--port",
                str(self.ports[i]),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(folder),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                str(self._bus_ports[i]),
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--save",
                "",
                "--appendonly",
                "no",
                # A replica syncs at once, not after the default 5 s wait for others.
                "--repl-diskless-sync-delay",
                "0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def answers() -> bool:
            with self.client(i) as client:
                return bool(client.ping())

        _wait(answers, f"node {i} (port {self.ports[i]}) to answer", timeout=10)

    def _healthy(self) -> bool:
        live = [i for i in range(len(self.ports)) if self.alive(i)]
        live_ids = {self.node_id(i) for i in live}
        for i in live:
            with self.client(i) as client:
                info = client.cluster("info")
                if info["cluster_state"] != "ok":
                    return False
                served = _served_slots(client, live_ids)
                if served != SLOTS:
                    return False
                replication = client.info("replication")
                if replication["role"] == "slave" and replication["master_link_status"] != "up":
                    return False
        return True


def _nodes(client: redis.Redis) -> list[dict[str, Any]]:
    """CLUSTER NODES as node ``i`` sees it (redis-py parses it into a dict by address)."""
    return list(client.cluster("nodes").values())


def _ranges(node: dict[str, Any]) -> list[tuple[int, int]]:
    return [(int(slots[0]), int(slots[-1])) for slots in node["slots"]]


def _own_ranges(client: redis.Redis) -> list[tuple[int, int]]:
    """The slot ranges the node of ``client`` serves itself."""
    for node in _nodes(client):
        flags = node["flags"].split(",")
        if "myself" in flags and "master" in flags:
            return _ranges(node)
    return []


def _served_slots(client: redis.Redis, live_ids: set[str]) -> int:
    """How many slots the node of ``client`` sees served by live, non-failing masters."""
    count = 0
    for node in _nodes(client):
        flags = node["flags"].split(",")
        if "master" not in flags or "fail" in flags or node["node_id"] not in live_ids:
            continue
        count += sum(end - start + 1 for start, end in _ranges(node))
    return count
