"""Event ids: 128 random bits each, one getrandom() per block, never shared with a forked child."""

from __future__ import annotations

import base64
import os

import orjson
import pytest

from gateway import random_ids
from gateway.events import build_event
from gateway.inbound import InboundRequest


def test_ids_are_32_hex_chars_and_distinct() -> None:
    ids = random_ids.RandomIds(block_ids=8)
    seen = [ids.next_hex() for _ in range(5000)]
    assert all(len(value) == 32 and int(value, 16) >= 0 for value in seen)
    assert len(set(seen)) == len(seen)


def test_one_urandom_call_per_block(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.urandom

    def counting(size: int) -> bytes:
        calls.append(size)
        return real(size)

    monkeypatch.setattr("gateway.random_ids.os.urandom", counting)
    ids = random_ids.RandomIds(block_ids=256)
    for _ in range(256 * 3 + 1):
        ids.next_hex()
    assert calls == [256 * 16] * 4


def test_forked_child_does_not_reuse_the_parents_block() -> None:
    random_ids.event_ids.next_hex()  # the parent now holds a partly used block
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next id, then leave without running pytest's teardown
        os.close(read_end)
        os.write(write_end, random_ids.event_ids.next_hex().encode())
        os._exit(0)
    os.close(write_end)
    child_id = os.read(read_end, 64).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    parent_next = [random_ids.event_ids.next_hex() for _ in range(300)]
    assert len(child_id) == 32
    assert child_id not in parent_next


def test_events_carry_distinct_ids() -> None:
    inbound = InboundRequest("POST", "https", "hooks.example.com", "/plivo/status/ph_1", "", {}, b"", "192.0.2.1")
    events = [
        orjson.loads(
            build_event(
                inbound,
                provider="plivo",
                phone_id="ph_1",
                kind="status",
                received_at=0.0,
                idempotency_key=None,
                key_fingerprint=None,
            )
        )
        for _ in range(600)
    ]
    assert len({event["id"] for event in events}) == 600


def test_new_key_is_fresh_base64_of_the_asked_size() -> None:
    keys = {random_ids.new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(len(base64.b64decode(key, validate=True)) == 32 for key in keys)
    assert len(base64.b64decode(random_ids.new_key(24))) == 24
