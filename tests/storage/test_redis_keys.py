"""Every Redis key name comes from gateway/redis_keys.py, and the names never change
(a changed name would orphan every nonce, idempotency key, call and phone record in Redis)."""

from __future__ import annotations

import pytest

from gateway.consumer import Consumer
from gateway.redis_keys import KeyNames, slot
from tests.helpers.support import make_settings

DIGEST_NONCE = "aacd1053d3357c89fbb8ec4d"  # blake2b-96 of "n-1"
DIGEST_IDEM = "96c1348f6f5429e97c123f352a5be66b"  # blake2b-128 of "CA1:completed"
DIGEST_CALL = "e6a6bca2753a5be149e96b7d5c4365c6"  # blake2b-128 of "call-1"


@pytest.mark.parametrize(
    ("prefix", "stream", "tag"),
    [
        ("gateway", "gateway:events", "{gateway:events}"),
        ("acme", "{tenant-a}:events", "{tenant-a}"),  # the stream's own cluster hash tag
        ("gateway", "a}b", "{ab~19650}"),  # cannot be written between braces: a searched tag, same slot
    ],
)
def test_key_names_are_unchanged(prefix: str, stream: str, tag: str) -> None:
    names = KeyNames(prefix=prefix, stream=stream)
    assert names.phone("ph_1") == f"{prefix}:phone:ph_1"
    assert names.phone_index == f"{prefix}:phones"
    assert names.number("+14155550100") == f"{prefix}:number:+14155550100"
    assert names.changes_channel == f"{prefix}:changes"
    assert names.dead_letter == KeyNames.dead_letter_of(stream) == f"{stream}:dead"
    assert names.nonce("ph_1", "n-1") == f"{tag}:nonce:ph_1:{DIGEST_NONCE}"
    assert names.idempotency("ph_1", "CA1:completed") == f"{tag}:idem:ph_1:{DIGEST_IDEM}"
    assert names.signed_content("ph_1", bytes.fromhex("00ff" * 8)) == f"{tag}:signed:ph_1:{'00ff' * 8}"
    assert names.readiness == f"{tag}:ready"
    assert names.unused == f"{tag}:unused"
    state = f"{tag}:call:ph_1:{DIGEST_CALL}"
    assert names.call("ph_1", "call-1") == state
    assert names.call_keys("ph_1", "call-1") == (state, f"{state}:timeline", f"{state}:held")
    for key in (*names.call_keys("ph_1", "call-1"), names.nonce("ph_1", "n-1"), names.unused):
        assert slot(key) == slot(stream), key  # written by the same script as the XADD


def test_the_consumer_dead_letters_to_the_key_names_stream() -> None:
    worker = Consumer(None, "{tenant-a}:events", "dispatch", "c1", _never)  # type: ignore[arg-type]
    assert worker.dead_letter_stream == "{tenant-a}:events:dead"
    explicit = Consumer(None, "s", "g", "c", _never, dead_letter_stream="elsewhere")  # type: ignore[arg-type]
    assert explicit.dead_letter_stream == "elsewhere"


async def _never(_delivery: object) -> None:
    raise AssertionError("not called")


def test_from_settings() -> None:
    names = KeyNames.from_settings(
        make_settings("redis://127.0.0.1:6379/0", GATEWAY_KEY_PREFIX="acme", GATEWAY_STREAM="{tenant-a}:events")
    )
    assert names == KeyNames(prefix="acme", stream="{tenant-a}:events")
    assert KeyNames.from_settings(make_settings("redis://127.0.0.1:6379/0")) == KeyNames()
