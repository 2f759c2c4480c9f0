"""KeyStore against hostile or damaged state (issue 14): what unauthenticated input can pin in memory
(item 6), stored records that are not what the admin API wrote (item 8), keyed fingerprints (item 10)."""

from __future__ import annotations

import hashlib

import orjson
import pytest
from redis.asyncio import Redis

from gateway.keystore import FINGERPRINT_KEY_OWNER, FingerprintKeyError, KeyStore
from gateway.phone_records import InvalidRecord
from gateway.providers import KeyKind
from gateway.redis_keys import KeyNames
from gateway.sealing import Sealer
from tests.helpers.replies import maybe_bytes
from tests.helpers.support import Clock

pytestmark = pytest.mark.anyio

TOKEN = "Tok3n-for-tests-0123456789abcdefghij"
NEW_TOKEN = "N3w-token-for-tests-0123456789abcdefg"
NAMES = KeyNames()
KEK = b"k" * 32


def make_store(client: Redis, sealer: Sealer | None = None, **options: object) -> KeyStore:
    return KeyStore(
        client,
        sealer or Sealer(KEK),
        NAMES,
        cache_ttl_s=60,
        negative_ttl_s=60,
        clock=Clock(),
        **options,  # type: ignore[arg-type]
    )


def plivo_body(token: str = TOKEN, **extra: object) -> dict[str, object]:
    return {"provider": "plivo", "credentials": {"auth_id": "MAEXAMPLE000000000", "auth_token": token}, **extra}


def unkeyed(secret: str) -> str:
    """The fingerprint as it was before issue 14: anyone could compute it from a guess."""
    return "fp_" + hashlib.blake2b(secret.encode(), digest_size=8, person=b"gw-key-fp").hexdigest()


# ---- item 6: no memory for unauthenticated input -----------------------------------------------


async def test_a_flood_of_invalid_ids_leaves_the_caches_empty(redis_client: Redis) -> None:
    store = make_store(redis_client)
    hostile = ["x" * 16_000 + str(i) for i in range(300)]  # 16 KB ids pinned 47 MiB for 4,500 of them
    hostile += [f"ph_{i}\n" for i in range(100)]  # a trailing newline: `$` accepted it
    hostile += [f"-{i}" for i in range(100)] + [f"ph {i}" for i in range(100)] + [""]
    for phone_id in hostile:
        assert await store.credentials(phone_id) is None
    assert store.cache_usage()["absent"] == (0, 0)
    assert store.cache_usage()["phones"] == (0, 0)


async def test_invalid_numbers_are_neither_looked_up_nor_cached(redis_client: Redis) -> None:
    store = make_store(redis_client)
    for number in ["+1415555" + "0" * 16_000, "+14155550100\n", "14155550100", "+0123", "x" * 5000]:
        assert await store.phone_for_number(number) is None
    assert store.cache_usage()["numbers"] == (0, 0)
    assert await store.phone_for_number("+14155550100") is None  # a valid one is cached as absent
    assert store.cache_usage()["numbers"][0] == 1


async def test_unknown_valid_ids_are_bounded_by_bytes(redis_client: Redis) -> None:
    store = make_store(redis_client, negative_max_bytes=20_000)
    for index in range(1000):
        assert await store.credentials(f"ph_{'a' * 120}_{index}") is None
    entries, size = store.cache_usage()["absent"]
    assert size <= 20_000
    assert 0 < entries < 1000


async def test_cached_phones_are_bounded_by_bytes(redis_client: Redis) -> None:
    """Answer templates make a phone up to ~32 KiB in memory: the entry count alone is no bound."""
    store = make_store(redis_client, max_bytes=100_000)
    template = "<Response>" + "x" * 16_000 + "</Response>"
    for index in range(20):
        await store.put(f"ph_{index}", plivo_body(config={"answer_template": template}))
        assert await store.credentials(f"ph_{index}") is not None
    entries, size = store.cache_usage()["phones"]
    assert size <= 100_000
    assert entries < 20


# ---- item 8: phone ids and records ------------------------------------------------------------


@pytest.mark.parametrize("phone_id", ["abc\n", "ph_1\n", "ph_1\r\n", "ph\n1"])
async def test_an_id_with_a_newline_is_refused(redis_client: Redis, phone_id: str) -> None:
    store = make_store(redis_client)
    with pytest.raises(InvalidRecord, match="phone_id"):
        await store.put(phone_id, plivo_body())
    assert await redis_client.keys("gateway:phone:*") == []


async def test_a_record_copied_to_another_id_does_not_verify_there(redis_client: Redis) -> None:
    store = make_store(redis_client)
    await store.put("ph_a", plivo_body())
    await redis_client.set(NAMES.phone("ph_b"), await redis_client.get(NAMES.phone("ph_a")) or b"")
    await redis_client.sadd(NAMES.phone_index, "ph_b")
    assert await store.credentials("ph_b") is None  # fail closed, like an unknown phone
    assert await store.credentials("ph_a") is not None
    listing = await store.listing()
    assert [p["phone_id"] for p in listing["phones"]] == ["ph_a"]
    assert listing["invalid"] == ["ph_b"]


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'"a string"',
        b"{}",
        b'{"phone_id": "ph_bad", "provider": "plivo"}',  # no keys
        b'{"phone_id": "ph_bad", "provider": "carrier-x", "keys": []}',
        b'{"phone_id": "ph_bad", "provider": "plivo", "keys": [{"kind": "auth_token"}]}',
        b'{"phone_id": "ph_bad", "provider": "plivo", "keys": [{"kind": "nope", "fingerprint": "fp_1"}]}',
        b'{"phone_id": "ph_bad", "provider": "telnyx", "keys": [{"kind": "public_key", "fingerprint": "f",'
        b' "public": "c2hvcnQ="}]}',
        b'{"phone_id": "ph_bad", "provider": "plivo", "keys": [], "config": []}',
        b'{"phone_id": "ph_bad", "provider": "plivo", "keys": [], "sealed": {"auth_id": 1}}',
    ],
)
async def test_an_invalid_record_fails_closed_and_is_reported(redis_client: Redis, raw: bytes) -> None:
    store = make_store(redis_client)
    await store.put("ph_good", plivo_body())
    await redis_client.set(NAMES.phone("ph_bad"), raw)
    await redis_client.sadd(NAMES.phone_index, "ph_bad")
    assert await store.credentials("ph_bad") is None
    listing = await store.listing()
    assert [p["phone_id"] for p in listing["phones"]] == ["ph_good"]
    assert listing["invalid"] == ["ph_bad"]
    assert [p["phone_id"] for p in await store.list()] == ["ph_good"]
    report = await store.reseal()
    assert report["invalid"] == ["ph_bad"] and report["failed"] == []
    assert await redis_client.get(NAMES.phone("ph_bad")) == raw  # left as it is
    # The operator repairs it with a PUT, or removes it.
    await store.put("ph_bad", plivo_body(NEW_TOKEN))
    assert await store.credentials("ph_bad") is not None
    assert await store.delete("ph_bad")


async def test_an_invalid_record_can_be_deleted_with_its_number(redis_client: Redis) -> None:
    store = make_store(redis_client)
    await redis_client.set(NAMES.phone("ph_bad"), b'{"phone_id": "ph_bad", "config": {"number": "+14155550100"}}')
    await redis_client.set(NAMES.number("+14155550100"), "ph_bad")
    await redis_client.sadd(NAMES.phone_index, "ph_bad")
    assert await store.delete("ph_bad")
    assert await redis_client.get(NAMES.number("+14155550100")) is None
    assert await redis_client.smembers(NAMES.phone_index) == set()


async def test_unknown_config_fields_are_refused_by_name(redis_client: Redis) -> None:
    store = make_store(redis_client)
    with pytest.raises(InvalidRecord, match="webhook_secret"):
        await store.put("ph_1", plivo_body(config={"webhook_secret": "hunter2-hunter2-hunter2"}))
    assert await redis_client.get(NAMES.phone("ph_1")) is None
    with pytest.raises(InvalidRecord, match=r"unknown config fields: \?\?\?"):
        await store.put("ph_1", plivo_body(config={"\n\r\x00": 1}))
    view = await store.put(
        "ph_1", plivo_body(config={"number": "+14155550100", "answer_template": "<Response/>", "call_aware": True})
    )
    assert set(view["config"]) == {"number", "answer_template", "call_aware"}


async def test_every_secret_config_field_is_sealed(redis_client: Redis) -> None:
    store = make_store(redis_client)
    token = "exotel-url-token-abcdefgh"
    body = {
        "provider": "exotel",
        "credentials": {"api_key": "exotel-api-key-1234", "api_token": "exotel-api-token-5678"},
        "config": {"exotel_webhook_token": token},
    }
    view = await store.put("ph_e", body)
    assert token.encode() not in (await redis_client.get(NAMES.phone("ph_e")) or b"")
    assert view["config"]["exotel_webhook_token"]["fingerprint"].startswith("fp_")


# ---- item 10: keyed fingerprints ------------------------------------------------------------------


async def test_fingerprints_cannot_be_computed_from_a_guess(redis_client: Redis) -> None:
    store = make_store(redis_client)
    view = await store.put("ph_1", plivo_body())
    shown = view["credentials"]["auth_token"]["fingerprint"]
    assert shown.startswith("fp_") and len(shown) == 19
    assert shown != unkeyed(TOKEN)
    stored = maybe_bytes(await redis_client.get(NAMES.fingerprint_key))
    assert stored is not None and stored.startswith(b"v1:")  # sealed under the KEK, not plain


async def test_two_deployments_fingerprint_the_same_token_differently(redis_client: Redis) -> None:
    other = KeyStore(redis_client, Sealer(KEK), KeyNames(prefix="elsewhere"), clock=Clock())
    one = await make_store(redis_client).put("ph_1", plivo_body())
    two = await other.put("ph_1", plivo_body())
    assert one["credentials"]["auth_token"] != two["credentials"]["auth_token"]
    # Within one deployment it is stable: the key is created once (SET NX) and reused.
    again = await make_store(redis_client).put("ph_2", plivo_body())
    assert again["credentials"]["auth_token"] == one["credentials"]["auth_token"]


async def test_the_fingerprint_key_survives_kek_rotation(redis_client: Redis) -> None:
    old, new = b"o" * 32, b"n" * 32
    before = await make_store(redis_client, Sealer(old)).put("ph_1", plivo_body())
    rotated = make_store(redis_client, Sealer(new, (old,)))
    report = await rotated.reseal()
    assert report == {"resealed": 1, "unchanged": 0, "failed": [], "raced": []}
    sealed_key = maybe_bytes(await redis_client.get(NAMES.fingerprint_key))
    assert sealed_key is not None and not Sealer(new).needs_reseal(sealed_key.decode())
    after = await make_store(redis_client, Sealer(new)).put("ph_2", plivo_body())  # old KEK gone
    assert after["credentials"]["auth_token"] == before["credentials"]["auth_token"]


async def test_an_unopenable_fingerprint_key_fails_puts_and_is_reported_by_reseal(redis_client: Redis) -> None:
    await make_store(redis_client, Sealer(b"o" * 32)).put("ph_1", plivo_body())
    stranger = make_store(redis_client, Sealer(b"n" * 32))
    with pytest.raises(FingerprintKeyError) as raised:
        await stranger.put("ph_2", plivo_body())
    assert TOKEN not in str(raised.value)
    report = await stranger.reseal()
    assert report["failed"] == [FINGERPRINT_KEY_OWNER, "ph_1"]


async def test_old_fingerprints_are_recomputed_by_reseal_and_verification_ignores_them(redis_client: Redis) -> None:
    store = make_store(redis_client)
    await store.put("ph_1", plivo_body())
    record = orjson.loads(await redis_client.get(NAMES.phone("ph_1")) or b"{}")
    keyed = record["keys"][0]["fingerprint"]
    record["keys"][0]["fingerprint"] = unkeyed(TOKEN)  # as stored before the fingerprint key existed
    await redis_client.set(NAMES.phone("ph_1"), orjson.dumps(record))
    store.forget("ph_1")
    creds = await store.credentials("ph_1")
    assert creds is not None and [k.material for k in creds.keys[KeyKind.AUTH_TOKEN]] == [TOKEN.encode()]
    assert (await store.reseal())["resealed"] == 1
    record = orjson.loads(await redis_client.get(NAMES.phone("ph_1")) or b"{}")
    assert record["keys"][0]["fingerprint"] == keyed
    assert (await store.reseal())["unchanged"] == 1


async def test_rotation_recognises_the_same_key_whatever_its_stored_fingerprint(redis_client: Redis) -> None:
    """Re-sending the current token with a rotation must not keep a second copy of it as 'previous'."""
    store = make_store(redis_client)
    await store.put("ph_1", plivo_body())
    record = orjson.loads(await redis_client.get(NAMES.phone("ph_1")) or b"{}")
    record["keys"][0]["fingerprint"] = unkeyed(TOKEN)
    await redis_client.set(NAMES.phone("ph_1"), orjson.dumps(record))
    view = await store.put("ph_1", plivo_body(rotation={"keep_previous_s": 600}))
    assert len(view["keys"]) == 1
    view = await store.put("ph_1", plivo_body(NEW_TOKEN, rotation={"keep_previous_s": 600}))
    assert len(view["keys"]) == 2  # a different token: the old one is kept for the overlap


def test_the_fingerprint_key_name_is_under_the_prefix() -> None:
    assert KeyNames(prefix="tenant").fingerprint_key == "tenant:fingerprint-key"
