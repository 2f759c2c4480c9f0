"""Fixtures: a private real Redis server for the whole run, flushed before each test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from gateway.embedded_redis import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """GATEWAY_TEST_REDIS_URL if given, else a private server from the bundled binary."""
    url = os.environ.get("GATEWAY_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = EmbeddedRedis(appendonly=False)
    server.start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    try:
        yield redis_server
    finally:
        client.close()


@pytest.fixture
def redis_sync(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def private_redis() -> Iterator[EmbeddedRedis]:
    """A server of this test's own, which the test may stop, kill or wipe."""
    server = EmbeddedRedis(appendonly=True)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()
