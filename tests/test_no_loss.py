"""No loss, no duplicates: every 2xx is in the stream exactly once, every other answer is retryable.

Slow (thousands of requests, a real `gateway serve` process, Redis SIGKILLed and
restarted; the gateway SIGTERMed mid-load). Run with:

    python -m pytest -m slow -s tests/test_no_loss.py

(`-s` prints the figures). Redis runs with AOF and `appendfsync always`, so a write
Redis acknowledged survives the SIGKILL. A carrier is simulated: each webhook is sent
once under load; anything but a 2xx is retried (the same signed request, as carriers
retry) until it gets one. The checks:
  - first pass: every answer is 2xx, or 503 (+ Retry-After), or - only while the gateway
    shuts down - a connection error;
  - every request answered 2xx on the first pass is in the stream exactly once;
  - after the retries, every request is in the stream exactly once. A retry of a Plivo
    request whose first attempt timed out *after* Redis ran its script (the ambiguous
    case, docs/threat-model.md) is refused 403 (its nonce is spent): it counts as
    delivered only because its event is found in the stream.

The default run has the replay-window test (TTLs honoured) and nothing slow.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
import redis
from nacl.signing import SigningKey

from gateway.embedded_redis import EmbeddedRedis
from gateway.providers import telnyx, twilio
from tests.helpers.builders import new_token, plivo_phone, plivo_request
from tests.helpers.replies import stream_entries
from tests.helpers.support import ADMIN_TOKEN, as_carrier, make_settings, run_gateway, spawn_gateway

STREAM = "gateway:events"
PUBLIC = "https://hooks.example.com"


# ---- a carrier's worth of distinct, validly signed webhooks ----------------------------------------


@dataclass
class Fleet:
    """Three phones (Plivo: nonce + idempotency; Twilio: idempotency; Telnyx: data.id)."""

    plivo_token: str = field(default_factory=new_token)
    twilio_token: str = field(default_factory=lambda: secrets.token_hex(16))
    telnyx_seed: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def admin_bodies(self) -> dict[str, dict[str, Any]]:
        public = base64.b64encode(bytes(SigningKey(self.telnyx_seed).verify_key)).decode()
        plivo = plivo_phone("ph_nl_plivo", self.plivo_token)
        return {
            "ph_nl_plivo": {"provider": "plivo", "credentials": plivo["credentials"]},
            "ph_nl_twilio": {
                "provider": "twilio",
                "credentials": {"account_sid": "AC" + "1" * 32, "auth_token": self.twilio_token},
            },
            "ph_nl_telnyx": {"provider": "telnyx", "credentials": {"public_key": public}},
        }

    def request(self, index: int) -> tuple[str, dict[str, Any]]:
        """(identity, vector-style request): the identity is what the event carries."""
        ident = f"call-{index:06d}-{secrets.token_hex(3)}"
        kind = index % 3
        if kind == 0:
            params = [("CallUUID", ident), ("CallStatus", "ringing"), ("From", "+14155550100"), ("To", "+1415555")]
            return ident, plivo_request(self.plivo_token, "ph_nl_plivo", params=params)
        if kind == 1:
            url = f"{PUBLIC}/twilio/status/ph_nl_twilio"
            params = [("CallSid", ident), ("CallStatus", "completed")]
            headers = {
                "X-Twilio-Signature": twilio.sign(self.twilio_token, url, params),
                "Content-Type": "application/x-www-form-urlencoded",
            }
            return ident, {"method": "POST", "url": url, "headers": headers, "body": urlencode(params)}
        body = orjson.dumps({"data": {"id": ident, "event_type": "call.hangup", "payload": {}}})
        stamp = str(int(time.time()))
        headers = {
            "telnyx-signature-ed25519": telnyx.sign(self.telnyx_seed, stamp, body),
            "telnyx-timestamp": stamp,
            "content-type": "application/json",
        }
        url = f"{PUBLIC}/webhooks/telnyx/voice/ph_nl_telnyx"
        return ident, {"method": "POST", "url": url, "headers": headers, "body": body.decode()}


def identity(event: dict[str, Any]) -> str:
    params = event.get("params") or {}
    if "CallUUID" in params:
        return str(params["CallUUID"])
    if "CallSid" in params:
        return str(params["CallSid"])
    return str(orjson.loads(event["body"])["data"]["id"])


def stream_identities(url: str) -> collections.Counter[str]:
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        counts: collections.Counter[str] = collections.Counter()
        last = "-"
        while True:
            batch = stream_entries(client.xrange(STREAM, min=last, count=5000))
            if last != "-":
                batch = batch[1:]
            if not batch:
                return counts
            for _entry_id, fields in batch:
                counts[identity(orjson.loads(fields[b"event"]))] += 1
            last = batch[-1][0].decode()
    finally:
        client.close()


# ---- the carrier ---------------------------------------------------------------------------------------


@dataclass
class Tally:
    first: dict[str, str] = field(default_factory=dict)  # identity -> "200" / "503" / "ConnectError"...
    final: dict[str, str] = field(default_factory=dict)
    retries: int = 0
    spent_nonce: int = 0  # retries refused 403 because the first attempt had in fact landed

    def summary(self, stream: collections.Counter[str]) -> str:
        first = collections.Counter(self.first.values())
        return (
            f"requests={len(self.first)} first_pass={dict(sorted(first.items()))} retries={self.retries} "
            f"retried_requests={sum(1 for v in self.first.values() if v != '200')} "
            f"403_on_retry_already_in_stream={self.spent_nonce} stream_entries={sum(stream.values())} "
            f"distinct={len(stream)} duplicates={sum(c - 1 for c in stream.values() if c > 1)}"
        )


async def send(client: httpx.AsyncClient, base_url: str, request: dict[str, Any]) -> str:
    method, target, headers, content = as_carrier(request)
    try:
        response = await client.request(method, base_url + target, headers=headers, content=content)
    except httpx.TransportError as exc:
        return type(exc).__name__
    if response.status_code == 503:
        assert response.headers.get("retry-after") == "1"
    return str(response.status_code)


async def drive(
    requests: list[tuple[str, dict[str, Any]]],
    base_url: str,
    tally: Tally,
    concurrency: int = 64,
    milestone: tuple[int, asyncio.Event] | None = None,
) -> None:
    """Send each request once; `milestone` (n, event): set the event once n have been answered."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=15) as client:

        async def one(ident: str, request: dict[str, Any]) -> None:
            async with gate:
                tally.first[ident] = await send(client, base_url, request)
            if milestone is not None and len(tally.first) >= milestone[0]:
                milestone[1].set()

        await asyncio.gather(*(one(ident, request) for ident, request in requests))


async def retry_all(
    requests: list[tuple[str, dict[str, Any]]], base_url: str, tally: Tally, redis_url: str, deadline_s: float = 60
) -> None:
    """The carrier's retries: the same signed request again until it is accepted."""
    pending = [(ident, request) for ident, request in requests if tally.first[ident] != "200"]
    deadline = time.monotonic() + deadline_s
    async with httpx.AsyncClient(timeout=15) as client:
        while pending:
            assert time.monotonic() < deadline, f"{len(pending)} requests never accepted"
            in_stream = stream_identities(redis_url)
            still: list[tuple[str, dict[str, Any]]] = []
            for ident, request in pending:
                tally.retries += 1
                outcome = await send(client, base_url, request)
                if outcome == "200":
                    tally.final[ident] = outcome
                elif outcome == "403" and ident in in_stream:
                    tally.final[ident] = "already delivered"
                    tally.spent_nonce += 1
                else:
                    still.append((ident, request))
            pending = still
            if pending:
                await asyncio.sleep(0.5)


def check(tally: Tally, requests: list[tuple[str, dict[str, Any]]], redis_url: str, allowed: set[str]) -> str:
    stream = stream_identities(redis_url)
    summary = tally.summary(stream)
    print(f"\nno-loss: {summary}")
    unexpected = {ident: outcome for ident, outcome in tally.first.items() if outcome not in allowed}
    assert not unexpected, f"answers that are neither 2xx nor retryable: {list(unexpected.items())[:10]}"
    acknowledged = [ident for ident, outcome in tally.first.items() if outcome == "200"]
    lost = [ident for ident in acknowledged if stream[ident] == 0]
    assert not lost, f"{len(lost)} requests answered 2xx are not in the stream: {lost[:10]}"
    missing = [ident for ident, _ in requests if stream[ident] == 0]
    assert not missing, f"{len(missing)} requests never landed: {missing[:10]}"
    duplicated = {ident: count for ident, count in stream.items() if count > 1}
    assert not duplicated, f"duplicates in the stream: {list(duplicated.items())[:10]}"
    assert set(stream) == {ident for ident, _ in requests}  # and nothing else
    return summary


def register(base_url: str, fleet: Fleet) -> None:
    for phone_id, body in fleet.admin_bodies().items():
        response = httpx.put(
            f"{base_url}/admin/phones/{phone_id}", json=body, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert response.status_code in (200, 201), response.text


@pytest.fixture
def durable_redis() -> Iterator[EmbeddedRedis]:
    """AOF with fsync on every write: what Redis acknowledged survives a SIGKILL."""
    with EmbeddedRedis(appendonly=True, extra_args=("--appendfsync", "always")) as server:
        yield server


# ---- Redis SIGKILLed and restarted under load -------------------------------------------------------------

REQUESTS = 3000


@pytest.mark.slow
def test_no_loss_no_duplicates_while_redis_is_killed(durable_redis: EmbeddedRedis, tmp_path: Path) -> None:
    fleet = Fleet()
    requests = [fleet.request(i) for i in range(REQUESTS)]
    tally = Tally()
    kills = 0
    with spawn_gateway(durable_redis.url, tmp_path) as gateway:
        register(gateway.base_url, fleet)

        async def chaos(done: asyncio.Event) -> None:
            nonlocal kills
            await asyncio.sleep(0.3)
            while not done.is_set():
                durable_redis.stop(kill=True)  # SIGKILL: no shutdown, no final fsync
                kills += 1
                await asyncio.sleep(0.7)
                await asyncio.to_thread(durable_redis.start)  # replays the AOF
                await asyncio.sleep(0.8)

        async def run() -> None:
            done = asyncio.Event()
            monkey = asyncio.create_task(chaos(done))
            try:
                await drive(requests, gateway.base_url, tally)
            finally:
                done.set()
                await monkey
            if durable_redis.process is None:
                durable_redis.start()
            await retry_all(requests, gateway.base_url, tally, durable_redis.url)

        asyncio.run(run())
        log = gateway.log()
    assert kills >= 1
    summary = check(tally, requests, durable_redis.url, allowed={"200", "503"})
    print(f"no-loss (redis SIGKILLed {kills}x): {summary}")
    assert collections.Counter(tally.first.values())["503"] > 0, "the faults never hit a request"
    assert "Traceback" not in log


# ---- the gateway SIGTERMed under load, a replacement takes over -----------------------------------------


@pytest.mark.slow
def test_no_loss_no_duplicates_when_the_gateway_is_terminated(durable_redis: EmbeddedRedis, tmp_path: Path) -> None:
    fleet = Fleet()
    requests = [fleet.request(i) for i in range(REQUESTS)]
    tally = Tally()
    with spawn_gateway(durable_redis.url, tmp_path) as old:
        register(old.base_url, fleet)

        async def run() -> None:
            third = asyncio.Event()  # a third answered: well into the load

            async def terminate_soon() -> None:
                await third.wait()
                old.process.send_signal(signal.SIGTERM)

            killer = asyncio.create_task(terminate_soon())
            await drive(requests, old.base_url, tally, milestone=(REQUESTS // 3, third))
            await killer

        asyncio.run(run())
        exit_code = old.process.wait(timeout=40)
        old_log = old.log()
    assert exit_code == 128 + signal.SIGTERM
    # The load balancer now sends the carriers' retries to another gateway process.
    with spawn_gateway(durable_redis.url, tmp_path) as new:
        asyncio.run(retry_all(requests, new.base_url, tally, durable_redis.url))
    connection_errors = {"ConnectError", "RemoteProtocolError", "ReadError", "WriteError", "ConnectTimeout"}
    summary = check(tally, requests, durable_redis.url, allowed={"200", "503"} | connection_errors)
    print(f"no-loss (gateway SIGTERMed mid-load): {summary}")
    first = collections.Counter(tally.first.values())
    assert first["200"] > 0 and sum(first[e] for e in connection_errors) > 0, first
    assert "Traceback" not in old_log


# ---- replay windows: the configured TTLs are the ones written (default run) -----------------------------


def test_nonce_and_idempotency_keys_carry_the_configured_ttls(redis_url: str) -> None:
    settings = make_settings(redis_url, GATEWAY_NONCE_TTL_S="3600", GATEWAY_IDEMPOTENCY_TTL_S="7200")
    fleet = Fleet()
    with run_gateway(settings) as gw:
        for phone_id, body in fleet.admin_bodies().items():
            assert gw.admin("PUT", f"/admin/phones/{phone_id}", body).status_code == 201
        for index in range(3):  # one Plivo, one Twilio, one Telnyx
            _, request = fleet.request(index)
            method, target, headers, content = as_carrier(request)
            assert gw.client.request(method, target, headers=headers, content=content).status_code == 200
    client = redis.Redis.from_url(redis_url)
    try:
        nonces = [k for k in client.scan_iter(match="*:nonce:*")]
        idems = [k for k in client.scan_iter(match="*:idem:*")]
        assert len(nonces) == 1  # Plivo's; Twilio and Telnyx have no nonce
        assert len(idems) == 3
        for key in nonces:
            assert 3600 - 60 < client.ttl(key) <= 3600
        for key in idems:
            assert 7200 - 60 < client.ttl(key) <= 7200
        assert client.ttl(STREAM) == -1  # the stream itself never expires
    finally:
        client.close()


def test_default_replay_windows_are_a_day(redis_url: str) -> None:
    settings = make_settings(redis_url)
    assert settings.nonce_ttl_s == 86_400 and settings.idempotency_ttl_s == 86_400
    token = new_token()
    with run_gateway(settings) as gw:
        gw.put_phone(plivo_phone("ph_ttl", token))
        request = plivo_request(token, "ph_ttl")
        method, target, headers, content = as_carrier(request)
        assert gw.client.request(method, target, headers=headers, content=content).status_code == 200
    client = redis.Redis.from_url(redis_url)
    try:
        ttls = [client.ttl(k) for k in client.scan_iter(match="*:nonce:*")]
        ttls += [client.ttl(k) for k in client.scan_iter(match="*:idem:*")]
        assert len(ttls) == 2 and all(86_400 - 60 < ttl <= 86_400 for ttl in ttls)
    finally:
        client.close()
