"""The gateway's Redis connections encode commands with hiredis: same bytes on the wire, same replies."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection

from gateway import redis_client
from gateway.forwarder import FORWARD_SCRIPT, FORWARD_SHA, Forwarder, Outcome
from gateway.redis_keys import KeyNames
from tests.helpers.replies import stream_entries
from tests.helpers.support import make_settings

COMMANDS = [
    ("SET", "k", "v"),
    ("CONFIG GET", "maxmemory"),  # a two-word command name is split, as redis-py does
    ("EVALSHA", FORWARD_SHA, 3, "{s}:stream", b"{s}:n:\xff", "ä\tö", 300, 0, -1),
    ("XADD", "s", "*", "event", b"x" * 70_000),  # past redis-py's chunking cutoff
    ("HSET", "h", "f", ""),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_wire_bytes_equal_redis_py_encoder(command: tuple[object, ...]) -> None:
    ours = b"".join(redis_client.PackedConnection().pack_command(*command))
    theirs = b"".join(Connection().pack_command(*command))  # type: ignore[arg-type]
    assert ours == theirs


def test_every_standalone_scheme_gets_the_packing_connection(redis_url: str) -> None:
    settings = make_settings(redis_url)
    expected = {
        "redis://127.0.0.1:6379/0": (redis_client.PackedConnection, Connection),
        "rediss://127.0.0.1:6380/0": (redis_client.PackedSSLConnection, SSLConnection),
        "unix:///tmp/gateway-test.sock": (redis_client.PackedUnixConnection, UnixDomainSocketConnection),
    }
    for url, (packed, base) in expected.items():
        client = redis_client.connect(settings, url)
        cls = client.connection_pool.connection_class
        assert cls is packed and issubclass(cls, base), url
    assert issubclass(redis_client.GatewaySentinelConnection, redis_client.HiredisPacking)


def test_forwarder_round_trip_through_packed_connection(redis_url: str) -> None:
    async def scenario() -> list[tuple[Outcome, str]]:
        client = redis_client.connect(make_settings(redis_url))
        assert client.connection_pool.connection_class is redis_client.PackedConnection
        forwarder = Forwarder(client, KeyNames(), nonce_ttl_s=60, idempotency_ttl_s=60)
        try:
            await client.script_load(FORWARD_SCRIPT)
            first = await forwarder.forward("ph_1", "événement".encode(), nonce="n1", idempotency_key="k1")
            replay = await forwarder.forward("ph_1", b"other", nonce="n1", idempotency_key="k2")
            dup = await forwarder.forward("ph_1", b"again", nonce="n2", idempotency_key="k1")
            entries = stream_entries(await client.xrange(KeyNames().stream))
            assert [fields[b"event"] for _, fields in entries] == ["événement".encode()]
            return [first, replay, dup]
        finally:
            await client.aclose()

    first, replay, dup = asyncio.run(scenario())
    assert first[0] is Outcome.FORWARDED
    assert replay[0] is Outcome.REPLAY
    assert dup == (Outcome.DUPLICATE, first[1])
