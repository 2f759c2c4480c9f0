"""Test support: a real uvicorn server in a thread, a fixed clock, admin helpers, vectors."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import uvicorn

from gateway.embedded_redis import free_port
from gateway.settings import Settings, from_env

REPO = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "test-admin-token-" + "x" * 16
KEK = base64.b64encode(b"k" * 32).decode()


def vectors_path() -> Path:
    override = os.environ.get("GATEWAY_VECTORS")
    if override:
        return Path(override)
    return REPO / "tests" / "vectors" / "carriers.json"


def load_vectors() -> dict[str, Any]:
    vectors: dict[str, Any] = json.loads(vectors_path().read_text(encoding="utf-8"))
    return vectors


class Clock:
    """A settable clock; None means the real time."""

    def __init__(self, now: float | None = None) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now if self.now is not None else time.time()


def make_settings(redis_url: str, **env: str) -> Settings:
    base = {
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_KEK": KEK,
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "GATEWAY_TRUSTED_PROXIES": "127.0.0.1/32",
        "EXOTEL_ALLOWED_IPS": "203.0.113.0/24,2001:db8::/32",
        "GATEWAY_REDIS_TIMEOUT_S": "0.5",
        "GATEWAY_REDIS_CONNECT_TIMEOUT_S": "0.3",
        "GATEWAY_ACCESS_LOG": "all",  # every request's line goes through the no-secret-in-logs checks
    }
    base.update(env)
    return from_env(base, toml_path=None)


class RunningGateway:
    def __init__(self, app: Any, server: uvicorn.Server, port: int) -> None:
        self.app = app
        self.server = server
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.base_url, timeout=10.0)

    def admin(self, method: str, path: str, body: Any = None, token: str | None = ADMIN_TOKEN) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        return self.client.request(method, path, json=body, headers=headers)

    def put_phone(self, phone: dict[str, Any]) -> dict[str, Any]:
        body = {k: phone[k] for k in ("provider", "credentials", "config") if k in phone}
        response = self.admin("PUT", f"/admin/phones/{phone['id']}", body)
        assert response.status_code in (200, 201), response.text
        return dict(response.json())


@contextmanager
def run_gateway(
    settings: Settings, *, clock: Clock | None = None, http: Any = "httptools", **uvicorn_options: Any
) -> Iterator[RunningGateway]:
    """The real app behind a real uvicorn socket, in a background thread.

    `http` is a uvicorn protocol name or class; `uvicorn_options` override the Config defaults.
    """
    from gateway.app import GatewayApp

    app = GatewayApp(settings, clock=clock or Clock())
    port = free_port()
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "lifespan": "on",
        "log_level": "warning",
        "proxy_headers": False,
        "access_log": False,
        "http": http,
        "loop": "asyncio",
        "timeout_graceful_shutdown": 5,
    }
    options.update(uvicorn_options)
    server, thread = serve_in_thread(uvicorn.Config(app, **options))
    running = RunningGateway(app, server, port)
    # Wait until the key-change subscription is live so invalidation tests are deterministic.
    components = app.components
    deadline = time.monotonic() + 5
    while components is not None and not components.keystore.subscribed.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield running
    finally:
        running.client.close()
        server.should_exit = True
        thread.join(timeout=15)


def serve_in_thread(
    config: uvicorn.Config, sockets: list[socket.socket] | None = None
) -> tuple[uvicorn.Server, threading.Thread]:
    """A real uvicorn server on its own thread, returned once it accepts connections."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("gateway did not start")
        time.sleep(0.01)
    return server, thread


def forwarded_headers(url: str, client_ip: str) -> dict[str, str]:
    """What a TLS-terminating proxy in front of the gateway adds."""
    parts = urlsplit(url)  # not httpx.URL: it drops an explicit default port, which signatures cover
    return {"x-forwarded-proto": parts.scheme, "x-forwarded-host": parts.netloc, "x-forwarded-for": client_ip}


def as_carrier(request: dict[str, Any]) -> tuple[str, str, dict[str, str], bytes]:
    """(method, target, headers, body) of a vector-style request sent through the 'trusted proxy'."""
    url = httpx.URL(request["url"])
    target = url.raw_path.decode()  # path + raw query, byte for byte
    headers = dict(request.get("headers", {}))
    headers.update(forwarded_headers(request["url"], request.get("client_ip", "192.0.2.1")))
    body = request.get("body", "")
    content = body.encode("utf-8") if isinstance(body, str) else body
    return request["method"], target, headers, content


def send_as_carrier(gw: RunningGateway, request: dict[str, Any]) -> httpx.Response:
    """Send a vector-style request (full public URL) through the 'trusted proxy' (127.0.0.1)."""
    method, target, headers, content = as_carrier(request)
    return gw.client.request(method, target, headers=headers, content=content)


class GatewayProcess:
    """A real `gateway serve` subprocess; its stderr (all its logging) goes to `log_path`."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, admin_port: int | None, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.admin_port = admin_port
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gateway not ready:\n{self.log()}")

    def terminate(self, timeout_s: float = 40.0) -> int:
        """SIGTERM, then wait for the graceful shutdown; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


@contextmanager
def spawn_gateway(
    redis_url: str, tmp_path: Path, *, admin_port: bool = False, wait: bool = True, **env: str
) -> Iterator[GatewayProcess]:
    """`python -m gateway serve` on a free port (and a free admin port), against `redis_url`."""
    port = free_port()
    admin = free_port() if admin_port else None
    environment = {
        **os.environ,
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_KEK": KEK,
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "GATEWAY_TRUSTED_PROXIES": "127.0.0.1/32",
        "EXOTEL_ALLOWED_IPS": "203.0.113.0/24,2001:db8::/32",
        "GATEWAY_PORT": str(port),
        "GATEWAY_LOG_LEVEL": "info",
        "GATEWAY_ACCESS_LOG": "all",
        **({"GATEWAY_ADMIN_PORT": str(admin)} if admin else {}),
        **env,
    }
    log_path = tmp_path / f"gateway-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"],
            env=environment,
            cwd=tmp_path,  # no config/gateway.toml or .gateway/ of the repository is picked up
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    running = GatewayProcess(process, port, admin, log_path)
    try:
        if wait:
            running.wait_ready()
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def random_id(prefix: str = "ph_test") -> str:
    return f"{prefix}_{secrets.token_hex(4)}"
