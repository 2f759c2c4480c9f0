"""A write on a Redis connection the server closed is a ConnectionError under uvloop too.

uvloop, the event loop `gateway serve` runs on, raises RuntimeError ("... the handler is
closed") when a command is written to a transport that saw the server's FIN; redis-py lets
it through, and a webhook got an unexpected error while a Redis Cluster node was killed
(CI, tests/test_cluster_failover.py). Here the transport is closed the way uvloop closes it
on EOF, against the real server; the write must be an outage, and the gateway's client
must carry on on a fresh connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import redis.exceptions as rx
from redis.asyncio.cluster import ClusterNode

from gateway.redis_client import (
    GatewayRedisCluster,
    PackedConnection,
    PackedSSLConnection,
    connect,
)
from gateway.redis_errors import OUTAGES
from tests.helpers.support import make_settings

uvloop = pytest.importorskip("uvloop")  # uvicorn[standard]'s loop: what production runs on

T = TypeVar("T")


def on_uvloop(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(make())


def close_transport(connection: Any) -> None:
    """What uvloop does itself once the server's FIN arrives (a killed or restarted server)."""
    connection._writer.transport.close()


def test_a_write_on_a_closed_transport_is_a_connection_error(redis_url: str) -> None:
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")

    async def write_after_close() -> BaseException | None:
        connection = PackedConnection(host=host, port=int(port), socket_timeout=1)
        await connection.send_command("PING")  # connects
        assert await connection.read_response() == b"PONG"
        close_transport(connection)
        await asyncio.sleep(0.05)
        try:
            await connection.send_command("PING")
        except BaseException as exc:
            return exc
        finally:
            await connection.disconnect()
        return None

    error = on_uvloop(write_after_close)
    assert isinstance(error, rx.ConnectionError), repr(error)
    assert isinstance(error, OUTAGES)


def test_the_gateway_client_carries_on_on_a_fresh_connection(redis_url: str) -> None:
    async def ping_after_close() -> list[bool]:
        client = connect(make_settings(redis_url))
        try:
            answers = [bool(await client.ping())]
            pool = client.connection_pool
            (idle,) = pool._available_connections  # the one connection the first PING used
            close_transport(idle)
            await asyncio.sleep(0.05)
            answers.append(bool(await client.ping()))  # retried once (on connection errors) on a new one
            return answers
        finally:
            await client.aclose()

    assert on_uvloop(ping_after_close) == [True, True]


@pytest.mark.parametrize(("tls", "expected"), [(False, PackedConnection), (True, PackedSSLConnection)])
def test_cluster_nodes_use_the_gateway_connections(tls: bool, expected: type) -> None:
    cluster = GatewayRedisCluster(startup_nodes=[ClusterNode("127.0.0.1", 7000)], ssl=tls)
    assert cluster.connection_kwargs["connection_class"] is expected  # every node it discovers later
    assert all(node.connection_class is expected for node in cluster.nodes_manager.startup_nodes.values())
