"""Real multi-server Redis topologies for tests: a Cluster (3 masters, optionally with replicas) and a
Sentinel-watched master/replica.

Everything is started from the same server binary the embedded mode uses
(`find_server_binary()`: the bundled valkey-server, else redis-server/valkey-server
on PATH), listening on 127.0.0.1 only, with data in a private temporary directory.
Cluster slots are assigned with CLUSTER ADDSLOTSRANGE + CLUSTER MEET, and replicas
attached with CLUSTER REPLICATE, so no redis-cli/valkey-cli is needed.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from gateway.embedded_redis import find_server_binary, free_port, stop_process
from gateway.redis_keys import slot

SLOTS = 16384


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if predicate():
                return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


class ServerExited(RuntimeError):
    """The server process ended before it answered (its log says why)."""


def key_in_slot_range(first: int, last: int) -> str:
    """A key whose cluster slot is in [first, last]."""
    for index in range(1_000_000):
        key = f"topology:{{{index}}}"
        if first <= slot(key) <= last:
            return key
    raise LookupError(f"no key found for slots {first}-{last}")


class Node:
    """One server process (data node or sentinel) on 127.0.0.1:port (and bus_port, a cluster node)."""

    def __init__(
        self, root: Path, name: str, args: list[str], *, sentinel: bool = False, cluster_bus: bool = False
    ) -> None:
        self.port = free_port()
        # An explicit bus port: the default (port + 10000) may be out of range or taken.
        self.bus_port = free_port() if cluster_bus else None
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.sentinel = sentinel
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self.started_once = False

    def start(self) -> Node:
        """Start the server; a first start whose port was taken meanwhile is retried on new ports
        (a restart keeps its ports: the cluster knows the node by them)."""
        attempts = 1 if self.started_once else 3
        for attempt in range(1, attempts + 1):
            log_size = self._log_size()
            self.process = subprocess.Popen(self._argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                _wait(self._ping, 10, f"{'sentinel' if self.sentinel else 'server'} on port {self.port}")
                break
            except ServerExited:
                self.stop(kill=True)
                if attempt == attempts or not self._port_was_taken(log_size):
                    raise
                self.port = free_port()
                self.bus_port = free_port() if self.bus_port is not None else None
        self.started_once = True
        return self

    def _argv(self) -> list[str]:
        base = ["--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir)]
        base += ["--logfile", str(self.dir / "server.log"), "--save", "", "--appendonly", "no"]
        if self.sentinel:
            conf = self.dir / "sentinel.conf"
            conf.write_text("\n".join(self.args) + "\n")
            return [find_server_binary(), str(conf), "--sentinel", *base[:6], "--logfile", str(self.dir / "server.log")]
        bus = ["--cluster-port", str(self.bus_port)] if self.bus_port is not None else []
        return [find_server_binary(), *base, *self.args, *bus]

    def _log_size(self) -> int:
        path = self.dir / "server.log"
        return path.stat().st_size if path.exists() else 0

    def _port_was_taken(self, log_size: int) -> bool:
        with (self.dir / "server.log").open("rb") as log_file:
            log_file.seek(log_size)
            return b"Address already in use" in log_file.read()

    def _ping(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise ServerExited(f"server exited at start, see {self.dir / 'server.log'}")
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
    """N masters, all 16384 slots assigned, cluster_state:ok; with `replicas`, that many replicas per master.

    `nodes` lists every data node, masters first (`masters` and `replicas_of` as started;
    after a failover ask the cluster: `master_of_slot`, `role`). `node_timeout_ms` is
    cluster-node-timeout: how long a silent master is given before its replica takes over.
    """

    def __init__(self, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 2000) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="gateway-cluster-"))
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-node-timeout", str(node_timeout_ms)]
        # No diskless-sync delay (default 5 s): a replica syncs at once, and again after a failover.
        args += ["--repl-diskless-sync-delay", "0"]
        total = masters * (1 + replicas)
        self.nodes = [Node(self.root, f"node{i}", list(args), cluster_bus=True) for i in range(total)]
        self.masters = self.nodes[:masters]
        # replicas_of[m] = the replicas started for master m (in `nodes` after every master).
        self.replicas_of = {
            m: [self.nodes[masters + m * replicas + r] for r in range(replicas)] for m in range(masters)
        }

    @property
    def url(self) -> str:
        return f"redis://{self.nodes[0].address}/0"

    def live_nodes(self) -> list[Node]:
        return [node for node in self.nodes if node.process is not None]

    def seeds_url(self) -> str:
        """GATEWAY_REDIS_URL with every node as a seed (GATEWAY_REDIS_CLUSTER=true)."""
        return "redis://" + ",".join(node.address for node in self.nodes) + "/0"

    def start(self) -> LocalCluster:
        try:
            for node in self.nodes:
                node.start()
            per_node = SLOTS // len(self.masters)
            for index, node in enumerate(self.masters):
                first = index * per_node
                last = SLOTS - 1 if index == len(self.masters) - 1 else first + per_node - 1
                with node.client() as client:
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            with self.nodes[0].client() as client:
                for other in self.nodes[1:]:
                    client.execute_command("CLUSTER", "MEET", "127.0.0.1", other.port, other.bus_port)
            _wait(self._converged, 20, "cluster_state:ok on every node")
            if any(self.replicas_of.values()):
                for index, master in enumerate(self.masters):
                    master_id = self.node_id(master)
                    for replica in self.replicas_of[index]:
                        # A replica must have heard of its master over the bus first: retried until then.
                        _wait(
                            functools.partial(self._replicate, replica, master_id),
                            10,
                            f"{replica.address} to replicate {master.address}",
                        )
                _wait(self._replicas_linked, 20, "every replica to sync")
                _wait(self._everyone_sees_replicas, 20, "every node to see every replica")
                # A replica gets the write stream only after its first REPLCONF ACK (up to 1 s after the
                # sync); until then WAIT does not count it. One WAIT per master proves every one streams.
                per_node = SLOTS // len(self.masters)
                for index, master in enumerate(self.masters):
                    with master.client() as client:
                        client.set(key_in_slot_range(index * per_node, index * per_node + per_node - 1), "1", ex=60)
                        acked = int(client.execute_command("WAIT", len(self.replicas_of[index]), 10_000))
                    if acked < len(self.replicas_of[index]):
                        raise TimeoutError(f"only {acked} replicas of {master.address} acknowledged a write")
        except BaseException:
            self.cleanup()
            raise
        return self

    @staticmethod
    def _replicate(replica: Node, master_id: str) -> bool:
        with replica.client() as client:
            client.execute_command("CLUSTER", "REPLICATE", master_id)
        return True

    def _replicas_linked(self) -> bool:
        for index, master in enumerate(self.masters):
            for replica in self.replicas_of[index]:
                with replica.client() as client:
                    if client.info("replication").get("master_link_status") != "up":
                        return False
            with master.client() as client:  # a master counts a replica for WAIT once it is "online"
                info = client.info("replication")
            states = [info.get(f"slave{i}", {}).get("state") for i in range(len(self.replicas_of[index]))]
            if states != ["online"] * len(self.replicas_of[index]):
                return False
        return True

    def _everyone_sees_replicas(self) -> bool:
        expected = sum(len(r) for r in self.replicas_of.values())
        for node in self.nodes:
            table = self.cluster_nodes(node)
            if sum(1 for entry in table if "slave" in entry["flags"]) != expected:
                return False
        return self._converged()

    def _converged(self) -> bool:
        for node in self.live_nodes():
            with node.client() as client:
                info = client.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
                if fields.get("cluster_state") != "ok" or fields.get("cluster_known_nodes") != str(len(self.nodes)):
                    return False
                if fields.get("cluster_slots_ok") != str(SLOTS):
                    return False
        return True

    @staticmethod
    def cluster_nodes(node: Node) -> list[dict[str, str]]:
        """`CLUSTER NODES` as seen by `node`: id, address (host:port), flags, master (id or -), slots."""
        with node.client() as client:
            raw = client.execute_command("CLUSTER", "NODES")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        table = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 8:
                continue
            table.append(
                {
                    "id": parts[0],
                    "address": parts[1].split("@", 1)[0],
                    "flags": parts[2],
                    "master": parts[3],
                    "slots": " ".join(parts[8:]),
                }
            )
        return table

    def node_id(self, node: Node) -> str:
        with node.client() as client:
            raw = client.execute_command("CLUSTER", "MYID")
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def node_at(self, address: str) -> Node:
        return next(node for node in self.nodes if node.address == address)

    def role(self, node: Node) -> str:
        """'master' or 'slave', as the node itself says (INFO replication)."""
        with node.client() as client:
            return str(client.info("replication")["role"])

    def master_of_slot(self, slot: int, *, via: Node | None = None) -> Node:
        """The node serving `slot` now, as `via` (default: the first live node) sees the cluster."""
        observer = via or self.live_nodes()[0]
        for entry in self.cluster_nodes(observer):
            if "master" not in entry["flags"] or "fail" in entry["flags"]:
                continue
            for spec in entry["slots"].split():
                if spec.startswith("["):  # a slot being migrated/imported: not ours to use
                    continue
                first, _, last = spec.partition("-")
                if int(first) <= slot <= int(last or first):
                    return self.node_at(entry["address"])
        raise LookupError(f"no master serves slot {slot} according to {observer.address}")

    def node_for_slot(self, slot: int) -> Node:
        """The node serving `slot` (the initial layout's master until a failover moves it)."""
        return self.master_of_slot(slot)

    def replicas_of_node(self, master: Node) -> list[Node]:
        """The replicas `master` has now, as it says itself (INFO replication, online ones)."""
        with master.client() as client:
            info = client.info("replication")
        found = []
        for index in range(int(info.get("connected_slaves", 0))):
            entry = info.get(f"slave{index}", {})
            if entry.get("state") == "online":
                found.append(self.node_at(f"{entry['ip']}:{entry['port']}"))
        return found

    def wait_promoted(self, slot: int, old: Node, timeout_s: float = 20) -> Node:
        """Wait until every live node agrees that a node other than `old` serves `slot`, and it says master."""

        def moved() -> bool:
            try:
                owners = {self.master_of_slot(slot, via=node).address for node in self.live_nodes()}
            except LookupError:  # the old master is marked failed and nobody took over yet
                return False
            if len(owners) != 1 or old.address in owners:
                return False
            return self.role(self.node_at(owners.pop())) == "master"

        _wait(moved, timeout_s, f"a new master for slot {slot}")
        return self.master_of_slot(slot)

    def manual_failover(self, replica: Node, timeout_s: float = 20) -> None:
        """`CLUSTER FAILOVER` on `replica`: its master pauses writes, the replica catches up, then takes over."""
        with replica.client() as client:
            client.execute_command("CLUSTER", "FAILOVER")
        _wait(lambda: self.role(replica) == "master", timeout_s, f"{replica.address} to be promoted")

    def wait_replicated(self, master: Node, count: int = 1, timeout_s: float = 20) -> None:
        """Wait until `master` has `count` online replicas that acknowledge its writes (a real WAIT)."""
        probe = key_in_slot_range(*self._slot_range(master))

        def streaming() -> bool:
            if len(self.replicas_of_node(master)) < count:
                return False
            with master.client() as client:
                client.set(probe, "1", ex=60)
                return int(client.execute_command("WAIT", count, 200)) >= count

        _wait(streaming, timeout_s, f"{count} replica(s) of {master.address} to stream its writes")

    def _slot_range(self, master: Node) -> tuple[int, int]:
        entry = next(e for e in self.cluster_nodes(master) if e["address"] == master.address)
        first, _, last = entry["slots"].split()[0].partition("-")
        return int(first), int(last or first)

    def wait_healthy(self, timeout_s: float = 30) -> None:
        """cluster_state:ok everywhere (a dead node still counts as known)."""
        _wait(self._converged, timeout_s, "cluster_state:ok on every live node")

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
