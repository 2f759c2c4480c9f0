"""Real multi-server Redis topologies for tests: a 3-master Cluster and a Sentinel-watched master/replica.

Everything is started from the same server binary the embedded mode uses
(`find_server_binary()`: the bundled valkey-server, else redis-server/valkey-server
on PATH), listening on 127.0.0.1 only, with data in a private temporary directory.
Cluster slots are assigned with CLUSTER ADDSLOTSRANGE + CLUSTER MEET, so no
redis-cli/valkey-cli is needed.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from gateway.embedded_redis import find_server_binary, free_port, stop_process

SLOTS = 16384


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if predicate():
                return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


class Node:
    """One server process (data node or sentinel) on 127.0.0.1:port."""

    def __init__(self, root: Path, name: str, args: list[str], *, sentinel: bool = False) -> None:
        self.port = free_port()
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.sentinel = sentinel
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Node:
        base = ["--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir)]
        base += ["--logfile", str(self.dir / "server.log"), "--save", "", "--appendonly", "no"]
        if self.sentinel:
            conf = self.dir / "sentinel.conf"
            conf.write_text("\n".join(self.args) + "\n")
            argv = [find_server_binary(), str(conf), "--sentinel", *base[:6], "--logfile", str(self.dir / "server.log")]
        else:
            argv = [find_server_binary(), *base, *self.args]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(self._ping, 10, f"{'sentinel' if self.sentinel else 'server'} on port {self.port}")
        return self

    def _ping(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"server exited at start, see {self.dir / 'server.log'}")
        with self.client() as client:
            return bool(client.ping())

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=1)

    def stop(self, *, kill: bool = False) -> None:
        if self.process is not None:
            stop_process(self.process, kill=kill)
        self.process = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class LocalCluster:
    """N masters (no replicas), all 16384 slots assigned, cluster_state:ok."""

    def __init__(self, masters: int = 3) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="gateway-cluster-"))
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"]
        # An explicit bus port: the default (port + 10000) overflows for ephemeral ports above 55535.
        self.bus_ports = [free_port() for _ in range(masters)]
        self.nodes = [
            Node(self.root, f"node{i}", [*args, "--cluster-port", str(self.bus_ports[i])]) for i in range(masters)
        ]

    @property
    def url(self) -> str:
        return f"redis://{self.nodes[0].address}/0"

    def start(self) -> LocalCluster:
        try:
            for node in self.nodes:
                node.start()
            per_node = SLOTS // len(self.nodes)
            for index, node in enumerate(self.nodes):
                first = index * per_node
                last = SLOTS - 1 if index == len(self.nodes) - 1 else first + per_node - 1
                with node.client() as client:
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            with self.nodes[0].client() as client:
                for other, bus_port in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
                    client.execute_command("CLUSTER", "MEET", "127.0.0.1", other.port, bus_port)
            _wait(self._converged, 20, "cluster_state:ok on every node")
        except BaseException:
            self.cleanup()
            raise
        return self

    def _converged(self) -> bool:
        for node in self.nodes:
            with node.client() as client:
                info = client.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
                if fields.get("cluster_state") != "ok" or fields.get("cluster_known_nodes") != str(len(self.nodes)):
                    return False
                if fields.get("cluster_slots_ok") != str(SLOTS):
                    return False
        return True

    def node_for_slot(self, slot: int) -> Node:
        per_node = SLOTS // len(self.nodes)
        return self.nodes[min(slot // per_node, len(self.nodes) - 1)]

    def cleanup(self) -> None:
        for node in self.nodes:
            node.stop(kill=True)
        shutil.rmtree(self.root, ignore_errors=True)


class LocalSentinel:
    """One master, `replicas` replicas and `sentinels` sentinels watching service `service`.

    Two replicas by default: with GATEWAY_REDIS_WAIT_REPLICAS=1 the new master needs a
    replica of its own right after a failover (the old master may be dead, or is only
    turned into a replica by Sentinel several seconds later).
    """

    def __init__(self, sentinels: int = 3, replicas: int = 2, service: str = "gwmaster") -> None:
        self.root = Path(tempfile.mkdtemp(prefix="gateway-sentinel-"))
        self.service = service
        # No diskless-sync delay (default 5 s): a replica syncs at once, and after a failover too.
        quick_sync = ["--repl-diskless-sync-delay", "0"]
        self.master = Node(self.root, "master", quick_sync)
        self.replicas = [Node(self.root, f"replica{i}", list(quick_sync)) for i in range(replicas)]
        self.sentinels: list[Node] = []
        self._count = sentinels

    @property
    def url(self) -> str:
        hosts = ",".join(s.address for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    @property
    def data_nodes(self) -> list[Node]:
        return [self.master, *self.replicas]

    def start(self) -> LocalSentinel:
        try:
            self.master.start()
            for replica in self.replicas:
                replica.args += ["--replicaof", "127.0.0.1", str(self.master.port)]
                replica.start()
            _wait(self._replicas_linked, 10, "the replicas to sync")
            # A replica gets the write stream only after its first REPLCONF ACK (up to 1 s after the
            # sync); until then a promoted replica would come up empty. WAIT proves every one streams.
            with self.master.client() as client:
                client.set("topology:ready", "1")
                acked = client.execute_command("WAIT", len(self.replicas), 10_000)
            if int(acked) < len(self.replicas):
                raise TimeoutError(f"only {acked} of {len(self.replicas)} replicas acknowledged a write")
            quorum = max(1, self._count // 2 + 1)
            for index in range(self._count):
                conf = [
                    f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} {quorum}",
                    # 2 s, not less: a sentinel that has just switched gives the new master this long
                    # to answer its first PING, and on a loaded test machine 1 s caused a second failover.
                    f"sentinel down-after-milliseconds {self.service} 2000",
                    f"sentinel failover-timeout {self.service} 4000",
                    f"sentinel parallel-syncs {self.service} {len(self.replicas)}",
                ]
                self.sentinels.append(Node(self.root, f"sentinel{index}", conf, sentinel=True).start())
            _wait(self._sentinels_see_replicas, 15, "every sentinel to know every replica")
        except BaseException:
            self.cleanup()
            raise
        return self

    def _replicas_linked(self) -> bool:
        for replica in self.replicas:
            with replica.client() as client:
                if client.info("replication").get("master_link_status") != "up":
                    return False
        with self.master.client() as client:  # the master counts a replica for WAIT once it is "online"
            info = client.info("replication")
        states = [info.get(f"slave{i}", {}).get("state") for i in range(len(self.replicas))]
        return states == ["online"] * len(self.replicas)

    def _sentinels_see_replicas(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                known = client.sentinel_slaves(self.service)
                healthy = [r for r in known if not r["is_sdown"] and not r["is_disconnected"]]
                if len(healthy) < len(self.replicas):
                    return False
        return True

    def master_address(self, sentinel_index: int = 0) -> tuple[str, int]:
        with self.sentinels[sentinel_index].client() as client:
            host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return host.decode(), int(port)

    def node(self, port: int) -> Node:
        return next(n for n in self.data_nodes if n.port == port)

    def wait_new_master(self, old_port: int, timeout_s: float = 20) -> Node:
        """Wait until every live sentinel reports a master other than `old_port`, then return it."""
        _wait(
            lambda: all(self.master_address(i)[1] != old_port for i in range(len(self.sentinels))),
            timeout_s,
            "every sentinel to report the new master",
        )
        return self.node(self.master_address()[1])

    def failover(self, timeout_s: float = 20) -> Node:
        """SENTINEL FAILOVER; returns the node that is master once every sentinel agrees."""
        old = self.master_address()[1]
        with self.sentinels[0].client() as client:
            client.execute_command("SENTINEL", "FAILOVER", self.service)
        return self.wait_new_master(old, timeout_s)

    def cleanup(self) -> None:
        for node in (*self.sentinels, *self.replicas, self.master):
            node.stop(kill=True)
        shutil.rmtree(self.root, ignore_errors=True)
