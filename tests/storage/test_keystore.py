"""KeyStore against a real Redis: sealing at rest, cache, invalidation, rotation, number index."""

from __future__ import annotations

import asyncio
import base64

import pytest
from nacl.signing import SigningKey
from redis.asyncio import Redis

from gateway.keystore import Conflict, KeyStore
from gateway.phone_records import InvalidRecord
from gateway.providers import KeyKind
from gateway.redis_keys import KeyNames
from gateway.sealing import Sealer
from tests.helpers.support import Clock

pytestmark = pytest.mark.anyio

TOKEN = "Tok3n-for-tests-0123456789abcdefghij"
NEW_TOKEN = "N3w-token-for-tests-0123456789abcdefg"
NAMES = KeyNames()


def make_store(client: Redis, clock: Clock | None = None, ttl: float = 60.0) -> KeyStore:
    return KeyStore(client, Sealer(b"k" * 32), NAMES, cache_ttl_s=ttl, negative_ttl_s=ttl, clock=clock or Clock())


def plivo_body(token: str = TOKEN, **extra: object) -> dict[str, object]:
    return {"provider": "plivo", "credentials": {"auth_id": "MAEXAMPLE000000000", "auth_token": token}, **extra}


async def test_sealed_at_rest_and_round_trip(redis_client: Redis) -> None:
    store = make_store(redis_client)
    view = await store.put("ph_1", plivo_body())
    raw = await redis_client.get(NAMES.phone("ph_1"))
    assert raw is not None and TOKEN.encode() not in raw
    assert TOKEN not in str(view)
    assert view["credentials"]["auth_token"]["fingerprint"].startswith("fp_")
    creds = await store.credentials("ph_1")
    assert creds is not None
    assert [k.material for k in creds.keys[KeyKind.AUTH_TOKEN]] == [TOKEN.encode()]


async def test_list_and_get_show_fingerprints_only(redis_client: Redis) -> None:
    store = make_store(redis_client)
    await store.put("ph_1", plivo_body())
    await store.put(
        "ph_2",
        {
            "provider": "exotel",
            "credentials": {"api_key": "exotel-api-key-1234", "api_token": "exotel-api-token-5678"},
            "config": {"exotel_webhook_token": "exotel-url-token-abcdefgh"},
        },
    )
    listing = await store.list()
    text = str(listing) + str(await store.get("ph_2"))
    for secret in (TOKEN, "exotel-api-key-1234", "exotel-api-token-5678", "exotel-url-token-abcdefgh"):
        assert secret not in text
    assert [p["phone_id"] for p in listing] == ["ph_1", "ph_2"]


async def test_unknown_phone_is_none_and_cached_negative(redis_client: Redis) -> None:
    store = make_store(redis_client)
    assert await store.credentials("ph_missing") is None
    assert await store.credentials("not a valid id!") is None


async def test_put_invalidates_negative_entry(redis_client: Redis) -> None:
    store = make_store(redis_client)
    assert await store.credentials("ph_1") is None
    await store.put("ph_1", plivo_body())
    assert await store.credentials("ph_1") is not None


async def test_delete_propagates_to_other_process_cache(redis_url: str) -> None:
    writer_client, reader_client = Redis.from_url(redis_url), Redis.from_url(redis_url)
    writer, reader = make_store(writer_client), make_store(reader_client)
    reader.start_invalidation()
    try:
        await asyncio.wait_for(reader.subscribed.wait(), 5)
        await writer.put("ph_1", plivo_body())
        assert await reader.credentials("ph_1") is not None  # now cached for 60 s
        await writer.delete("ph_1")
        for _ in range(100):  # within one second
            if await reader.credentials("ph_1") is None:
                break
            await asyncio.sleep(0.01)
        assert await reader.credentials("ph_1") is None
    finally:
        await reader.stop_invalidation()
        await writer_client.aclose()
        await reader_client.aclose()


async def test_rotation_keeps_old_key_until_expiry(redis_client: Redis) -> None:
    clock = Clock(1_800_000_000.0)
    store = make_store(redis_client, clock, ttl=0)
    await store.put("ph_1", plivo_body())
    view = await store.put("ph_1", plivo_body(NEW_TOKEN, rotation={"keep_previous_s": 3600}))
    assert len(view["keys"]) == 2
    creds = await store.credentials("ph_1")
    assert creds is not None
    active = {k.material for k in creds.active_keys(KeyKind.AUTH_TOKEN, clock())}
    assert active == {TOKEN.encode(), NEW_TOKEN.encode()}
    later = clock() + 3601
    assert {k.material for k in creds.active_keys(KeyKind.AUTH_TOKEN, later)} == {NEW_TOKEN.encode()}


async def test_replace_without_rotation_drops_old_key(redis_client: Redis) -> None:
    store = make_store(redis_client, ttl=0)
    await store.put("ph_1", plivo_body())
    await store.put("ph_1", plivo_body(NEW_TOKEN))
    creds = await store.credentials("ph_1")
    assert creds is not None
    assert [k.material for k in creds.keys[KeyKind.AUTH_TOKEN]] == [NEW_TOKEN.encode()]


async def test_number_index(redis_client: Redis) -> None:
    store = make_store(redis_client, ttl=0)
    public = base64.b64encode(bytes(SigningKey.generate().verify_key)).decode()
    body = {"provider": "telnyx", "credentials": {"public_key": public}, "config": {"number": "+14155550100"}}
    await store.put("ph_t", body)
    assert await store.phone_for_number("+14155550100") == "ph_t"
    with pytest.raises(Conflict):
        await store.put("ph_other", body)
    await store.put("ph_t", {**body, "config": {"number": "+14155550101"}})
    assert await store.phone_for_number("+14155550100") is None
    assert await store.phone_for_number("+14155550101") == "ph_t"
    await store.delete("ph_t")
    assert await store.phone_for_number("+14155550101") is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"provider": "nokia", "credentials": {}}, "provider"),
        ({"provider": "plivo", "credentials": {"auth_id": "MA"}}, "auth_token"),
        ({"provider": "plivo", "credentials": {"auth_id": "MA", "auth_token": 5}}, "auth_token"),
        ({"provider": "telnyx", "credentials": {"public_key": "c2hvcnQ="}}, "32 bytes"),
        ({"provider": "telnyx", "credentials": {"public_key": "%%%"}}, "base64"),
        ({"provider": "twilio", "credentials": {"account_sid": "AC", "auth_token": "x", "extra": "y"}}, "extra"),
        (
            {"provider": "plivo", "credentials": {"auth_id": "MA", "auth_token": "t"}, "config": {"number": "555"}},
            "E.164",
        ),
        (
            {
                "provider": "exotel",
                "credentials": {"api_key": "k", "api_token": "t"},
                "config": {"exotel_webhook_token": "short"},
            },
            "exotel_webhook_token",
        ),
        ([], "object"),
    ],
)
async def test_invalid_bodies(redis_client: Redis, body: object, message: str) -> None:
    store = make_store(redis_client)
    with pytest.raises(InvalidRecord, match=message) as excinfo:
        await store.put("ph_1", body)
    assert "short" not in str(excinfo.value)  # the rejected secret is never echoed
    assert await redis_client.get(NAMES.phone("ph_1")) is None


async def test_invalid_phone_id(redis_client: Redis) -> None:
    with pytest.raises(InvalidRecord, match="phone_id"):
        await make_store(redis_client).put("../etc", plivo_body())


async def test_concurrent_puts_cannot_both_claim_a_number(redis_url: str) -> None:
    clients = [Redis.from_url(redis_url) for _ in range(8)]
    try:
        public = base64.b64encode(bytes(SigningKey.generate().verify_key)).decode()

        async def claim(index: int, client: Redis) -> str:
            body = {"provider": "telnyx", "credentials": {"public_key": public}, "config": {"number": "+14155550199"}}
            try:
                await make_store(client).put(f"ph_{index}", body)
            except Conflict:
                return "conflict"
            return f"ph_{index}"

        results = await asyncio.gather(*(claim(i, c) for i, c in enumerate(clients)))
        winners = [r for r in results if r != "conflict"]
        assert len(winners) == 1
        assert await make_store(clients[0], ttl=0).phone_for_number("+14155550199") == winners[0]
    finally:
        for client in clients:
            await client.aclose()


@pytest.mark.parametrize("token", ["has space in it 12345", "plus+sign+in+token+x", "percent%20token%20xx", "a" * 15])
async def test_exotel_token_must_survive_url_decoding(redis_client: Redis, token: str) -> None:
    body = {
        "provider": "exotel",
        "credentials": {"api_key": "k", "api_token": "t"},
        "config": {"exotel_webhook_token": token},
    }
    with pytest.raises(InvalidRecord, match="exotel_webhook_token") as excinfo:
        await make_store(redis_client).put("ph_1", body)
    assert token not in str(excinfo.value)


async def test_sixteen_digit_number_is_not_e164(redis_client: Redis) -> None:
    public = base64.b64encode(bytes(SigningKey.generate().verify_key)).decode()
    body = {"provider": "telnyx", "credentials": {"public_key": public}, "config": {"number": "+1234567890123456"}}
    with pytest.raises(InvalidRecord, match="E.164"):
        await make_store(redis_client).put("ph_1", body)
