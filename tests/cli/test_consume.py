"""`gateway consume` in development mode: it finds the embedded server `gateway serve` started here.

The server runs in a directory laid out as `gateway serve` lays it out (GATEWAY_EMBEDDED_DIR:
redis/redis.sock, the data beside it); the command runs as a subprocess from the directory
holding it, with no GATEWAY_REDIS_URL and no GATEWAY_KEK. The rest of `gateway consume` is
tested in tests/test_consumer.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from gateway.cli.common import DevelopmentMode
from gateway.embedded_redis import EmbeddedRedis

STREAM = "gateway:events"


@pytest.fixture
def development_dir() -> Iterator[Path]:
    """A working directory with .gateway/ as `gateway serve` leaves it while it runs (a short path: unix sockets)."""
    with tempfile.TemporaryDirectory(prefix="gw-dev-") as work:
        server = EmbeddedRedis(DevelopmentMode(Path(work) / ".gateway").redis_dir, unix_socket=True, appendonly=False)
        server.start()
        try:
            yield Path(work)
        finally:
            server.stop()


def test_the_embedded_server_is_found_by_its_absolute_socket_path(
    development_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(development_dir)
    found = DevelopmentMode(Path(".gateway")).redis_url()  # as configured: relative to the working directory
    assert found == f"unix://{(development_dir / '.gateway' / 'redis' / 'redis.sock').resolve()}"
    assert DevelopmentMode(Path("elsewhere")).redis_url() is None


def test_consume_in_development_mode(development_dir: Path) -> None:
    """No GATEWAY_REDIS_URL, no GATEWAY_KEK: it reads the stream of the embedded server (was: "redis unavailable")."""
    event = orjson.dumps({"schema_version": 1, "id": "0" * 32, "provider": "plivo", "phone_id": "ph_dev"})
    client = redis.Redis(unix_socket_path=str(development_dir / ".gateway" / "redis" / "redis.sock"))
    client.xadd(STREAM, {"event": event})
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}  # development mode
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "consume", "--group", "dispatch", "--consumer", "c", "--once"],
        cwd=development_dir,
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert orjson.loads(done.stdout) == orjson.loads(event)
    assert int(client.xpending(STREAM, "dispatch")["pending"]) == 0
    client.close()
