"""The reference dispatch consumer (gateway/consumer.py) against a real Redis.

Success acknowledges; failure leaves the entry pending and it is delivered again; a dead
consumer's entries are claimed by another; after N deliveries an entry goes to the
dead-letter stream and is acknowledged; the POST handler's requests verify with
standard_webhooks.verify at a real HTTP server. `gateway consume` itself (SIGTERM, --once,
bad settings): tests/test_consumer.py.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import standard_webhooks
from gateway.consumer import Consumer, Delivery, HandlerError, PostHandler, PrintHandler
from gateway.dispatch import DispatchClient
from gateway.embedded_redis import free_port
from tests.helpers.replies import as_bytes, stream_entries

pytestmark = pytest.mark.anyio

STREAM = "gateway:events"
DEAD = "gateway:events:dead"
GROUP = "dispatch"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    connection = Redis.from_url(redis_url)
    try:
        yield connection
    finally:
        await connection.aclose()


def envelope(n: int, idempotency_key: str | None = "status:call-{n}:ringing") -> bytes:
    return orjson.dumps(
        {
            "schema_version": 1,
            "id": f"{n:032x}",
            "received_at": 1_700_000_000.0 + n,
            "provider": "plivo",
            "phone_id": "ph_1",
            "kind": "status",
            "method": "POST",
            "path": "/plivo/status/ph_1",
            "query": "",
            "content_type": "application/x-www-form-urlencoded",
            "body": f"CallUUID=call-{n}&CallStatus=ringing",
            "body_base64": None,
            "params": {"CallUUID": f"call-{n}", "CallStatus": "ringing"},
            "source_ip": "198.51.100.20",
            "idempotency_key": idempotency_key.format(n=n) if idempotency_key else None,
            "key_fingerprint": "fp_0123456789abcdef",
        }
    )


async def add(client: Redis, count: int) -> list[str]:
    return [as_bytes(await client.xadd(STREAM, {"event": envelope(n)})).decode() for n in range(count)]


class Recorder:
    """A handler that records deliveries and fails the ones it is told to."""

    def __init__(self, fail: int = 0, fail_always: bool = False) -> None:
        self.fail = fail  # fail this many calls first
        self.fail_always = fail_always
        self.seen: list[Delivery] = []

    async def __call__(self, delivery: Delivery) -> None:
        self.seen.append(delivery)
        if self.fail_always or len(self.seen) <= self.fail:
            raise HandlerError("dispatch said no")


async def pending(client: Redis) -> int:
    info = await client.xpending(STREAM, GROUP)
    return int(info["pending"])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def consumer(client: Redis, handler: Any, name: str = "c1", **options: Any) -> Consumer:
    options.setdefault("block_ms", 0)
    return Consumer(client, STREAM, GROUP, name, handler, **options)


# ---- the core contract ------------------------------------------------------------------


async def test_success_acknowledges_and_the_group_is_created_at_the_start(client: Redis) -> None:
    ids = await add(client, 3)  # written before any consumer existed: not skipped
    handler = Recorder()
    worker = consumer(client, handler)
    assert await worker.run_once() == 3
    assert [d.entry_id for d in handler.seen] == ids
    assert [d.deliveries for d in handler.seen] == [1, 1, 1]
    assert handler.seen[0].event["params"]["CallUUID"] == "call-0"
    assert handler.seen[0].raw == envelope(0)
    assert await pending(client) == 0
    assert worker.stats.acked == 3
    assert await worker.run_once() == 0  # nothing new


async def test_failure_leaves_the_entry_pending_and_it_is_delivered_again(client: Redis) -> None:
    (entry,) = await add(client, 1)
    handler = Recorder(fail=1)
    worker = consumer(client, handler, claim_idle_ms=50)
    await worker.run_once()
    assert await pending(client) == 1  # not acknowledged
    await worker.run_once()
    assert len(handler.seen) == 1  # not idle long enough yet: not taken again at once
    await asyncio.sleep(0.08)
    await worker.run_once()
    assert [(d.entry_id, d.deliveries) for d in handler.seen] == [(entry, 1), (entry, 2)]
    assert await pending(client) == 0
    assert await client.xlen(DEAD) == 0


async def test_a_dead_consumers_entries_are_claimed_by_another(client: Redis) -> None:
    ids = await add(client, 2)
    await client.xgroup_create(STREAM, GROUP, id="0")
    # "ghost" reads both, then dies without acknowledging.
    await client.xreadgroup(GROUP, "ghost", {STREAM: ">"}, count=10)
    patient = Recorder()
    assert await consumer(client, patient, name="c2", claim_idle_ms=60_000).run_once() == 0  # ghost may be alive
    handler = Recorder()
    worker = consumer(client, handler, name="c2", claim_idle_ms=50)
    await asyncio.sleep(0.08)
    assert await worker.run_once() == 2
    assert [(d.entry_id, d.deliveries) for d in handler.seen] == [(ids[0], 2), (ids[1], 2)]
    assert worker.stats.claimed == 2
    assert await pending(client) == 0
    consumers = {_text(c["name"]): c["pending"] for c in await client.xinfo_consumers(STREAM, GROUP)}
    assert consumers == {"ghost": 0, "c2": 0}


async def test_after_n_deliveries_the_entry_is_dead_lettered_and_acknowledged(client: Redis) -> None:
    (entry,) = await add(client, 1)
    handler = Recorder(fail_always=True)
    worker = consumer(client, handler, max_deliveries=3, claim_idle_ms=0)
    for _ in range(5):
        await worker.run_once()
    assert [d.deliveries for d in handler.seen] == [1, 2, 3]  # never a 4th time
    assert await pending(client) == 0
    ((dead_id, fields),) = stream_entries(await client.xrange(DEAD))
    assert fields[b"event"] == envelope(0)
    assert fields[b"entry_id"].decode() == entry
    assert fields[b"stream"] == STREAM.encode() and fields[b"group"] == GROUP.encode()
    assert fields[b"deliveries"] == b"3" and fields[b"reason"] == b"handler_failed"
    assert fields[b"error"] == b"dispatch said no"
    assert worker.stats.dead_lettered == 1


async def test_an_entry_that_cannot_be_decoded_is_dead_lettered_at_once(client: Redis) -> None:
    await client.xadd(STREAM, {"event": b"{not json"})
    await client.xadd(STREAM, {"something": b"else"})
    handler = Recorder()
    await consumer(client, handler).run_once()
    assert handler.seen == []
    assert [f[b"reason"] for _, f in stream_entries(await client.xrange(DEAD))] == [b"malformed", b"malformed"]
    assert await pending(client) == 0


async def test_a_poison_entry_that_kept_killing_consumers_is_not_handled_again(client: Redis) -> None:
    """Delivered more than N times without a clean failure (each consumer died in the handler)."""
    await add(client, 1)
    await client.xgroup_create(STREAM, GROUP, id="0")
    for _ in range(4):
        await client.xreadgroup(GROUP, "crashed", {STREAM: "0" if _ else ">"}, count=1)
    handler = Recorder()
    worker = consumer(client, handler, max_deliveries=3, claim_idle_ms=0)
    await worker.run_once()
    assert handler.seen == []
    ((_, fields),) = stream_entries(await client.xrange(DEAD))
    assert fields[b"reason"] == b"too_many_deliveries" and fields[b"deliveries"] == b"5"
    assert await pending(client) == 0


async def test_a_restarted_consumer_first_finishes_what_it_had_in_hand(client: Redis) -> None:
    ids = await add(client, 3)
    await client.xgroup_create(STREAM, GROUP, id="0")
    await client.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=2)  # then c1 crashed
    handler = Recorder()
    worker = consumer(client, handler, name="c1", claim_idle_ms=60_000)
    await worker.run_once()  # its own history first
    assert [(d.entry_id, d.deliveries) for d in handler.seen] == [(ids[0], 2), (ids[1], 2)]
    await worker.run_once()
    await worker.run_once()
    assert [d.entry_id for d in handler.seen] == ids
    assert await pending(client) == 0


async def test_a_failure_during_the_restart_history_waits_for_the_claim(client: Redis) -> None:
    """A failed entry from the history is not re-read at once (which would burn its deliveries)."""
    await add(client, 1)
    await client.xgroup_create(STREAM, GROUP, id="0")
    await client.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=1)
    handler = Recorder(fail_always=True)
    worker = consumer(client, handler, name="c1", max_deliveries=3, claim_idle_ms=60_000)
    for _ in range(4):
        await worker.run_once()
    assert [d.deliveries for d in handler.seen] == [2]
    assert await pending(client) == 1


async def test_stop_finishes_the_entry_in_hand(client: Redis) -> None:
    await add(client, 5)
    seen: list[str] = []

    async def slow(delivery: Delivery) -> None:
        seen.append(delivery.entry_id)
        worker.stop()
        await asyncio.sleep(0.01)

    worker = consumer(client, slow, block_ms=200)
    await asyncio.wait_for(worker.run(), 5)
    assert len(seen) == 1
    assert await pending(client) == 4  # delivered in the batch, not handled: claimable later
    assert worker.stats.acked == 1


async def test_print_handler_writes_the_envelope_as_one_json_line(client: Redis) -> None:
    await add(client, 2)
    out = io.StringIO()
    await consumer(client, PrintHandler(out)).run_once()
    lines = out.getvalue().splitlines()
    assert [line.encode() for line in lines] == [envelope(0), envelope(1)]


# ---- POST handler against a real HTTP server ----------------------------------------------------


class Receiver:
    """A tiny dispatch endpoint: records each request; answers `status` after `delay_s`."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 204
        self.delay_s = 0.0
        app = Starlette(routes=[Route("/events", self._events, methods=["POST"])])
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def _events(self, request: Request) -> Response:
        body = await request.body()
        self.requests.append((dict(request.headers), body))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return Response(status_code=self.status)

    def __enter__(self) -> Receiver:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "receiver did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


KEY = standard_webhooks.generate_key()
OLD_KEY = standard_webhooks.generate_key()


async def test_post_handler_signs_with_standard_webhooks(client: Redis, receiver: Receiver) -> None:
    await add(client, 1)
    await client.xadd(STREAM, {"event": envelope(7, idempotency_key=None)})
    keys = [standard_webhooks.decode_key(KEY), standard_webhooks.decode_key(OLD_KEY)]  # rotation: both
    handler = PostHandler(receiver.url, keys, timeout_s=2)
    try:
        assert await consumer(client, handler).run_once() == 2
    finally:
        await handler.aclose()
    assert await pending(client) == 0
    (headers, body), (headers_no_key, body_no_key) = receiver.requests
    assert body == envelope(0) and headers["content-type"] == "application/json"
    for key in (KEY, OLD_KEY):  # either key verifies, like the reference library would
        standard_webhooks.verify(key, body, headers)
    with pytest.raises(standard_webhooks.WebhookVerificationError):
        standard_webhooks.verify(standard_webhooks.generate_key(), body, headers)
    with pytest.raises(standard_webhooks.WebhookVerificationError):
        standard_webhooks.verify(KEY, body + b" ", headers)
    assert headers["webhook-id"] == "status:call-0:ringing"  # the idempotency key: receivers de-duplicate
    assert headers_no_key["webhook-id"] == f"{7:032x}"  # none: the event id
    standard_webhooks.verify(KEY, body_no_key, headers_no_key)


@pytest.mark.parametrize("status", [500, 429, 302, 404])
async def test_post_handler_non_2xx_is_a_failure(client: Redis, receiver: Receiver, status: int) -> None:
    await add(client, 1)
    receiver.status = status
    handler = PostHandler(receiver.url, [standard_webhooks.decode_key(KEY)], timeout_s=2)
    worker = consumer(client, handler, claim_idle_ms=0, max_deliveries=2)
    try:
        await worker.run_once()
        assert await pending(client) == 1 and worker.stats.failed == 1
        receiver.status = 200
        await worker.run_once()
    finally:
        await handler.aclose()
    assert await pending(client) == 0 and worker.stats.acked == 1
    assert len(receiver.requests) == 2


async def test_post_handler_timeout_is_a_failure(client: Redis, receiver: Receiver) -> None:
    await add(client, 1)
    receiver.delay_s = 1.0
    handler = PostHandler(receiver.url, [standard_webhooks.decode_key(KEY)], timeout_s=0.2)
    worker = consumer(client, handler, claim_idle_ms=0, max_deliveries=1)
    try:
        await worker.run_once()
    finally:
        await handler.aclose()
    assert worker.stats.failed == 1
    ((_, fields),) = stream_entries(await client.xrange(DEAD))  # max_deliveries=1: dead at once
    assert fields[b"error"] == b"timeout"


async def test_post_handler_unreachable_is_a_failure(client: Redis) -> None:
    await add(client, 1)
    handler = PostHandler(f"http://127.0.0.1:{free_port()}/events", [standard_webhooks.decode_key(KEY)])
    worker = consumer(client, handler)
    try:
        await worker.run_once()
    finally:
        await handler.aclose()
    assert worker.stats.failed == 1 and await pending(client) == 1


# ---- one outbound HTTP policy (issue 14, item 12) --------------------------------------------------


@pytest.fixture
def hostile_proxy_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Proxies that do not exist and a .netrc with credentials for the receiver's host: neither may be used."""
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, dead)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-password-0123456789\n", encoding="utf-8")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))


@pytest.mark.usefixtures("hostile_proxy_environment")
async def test_post_handler_ignores_proxies_and_netrc_from_the_environment(client: Redis, receiver: Receiver) -> None:
    await add(client, 1)
    handler = PostHandler(receiver.url, [standard_webhooks.decode_key(KEY)], timeout_s=2)
    try:
        assert await consumer(client, handler).run_once() == 1
    finally:
        await handler.aclose()
    ((headers, _),) = receiver.requests  # straight to the receiver, not to the dead proxy
    assert "authorization" not in headers


@pytest.mark.usefixtures("hostile_proxy_environment")
async def test_dispatch_client_ignores_proxies_and_netrc_from_the_environment(receiver: Receiver) -> None:
    receiver.status = 200
    dispatch = DispatchClient(receiver.url, [standard_webhooks.decode_key(KEY)], timeout_s=2, max_connections=1)
    try:
        reply = await dispatch.request_answer(envelope(0), "msg-1")
    finally:
        await dispatch.aclose()
    assert reply.ok, reply
    ((headers, _),) = receiver.requests
    assert "authorization" not in headers
