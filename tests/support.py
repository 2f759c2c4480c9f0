"""Test support: a real uvicorn server in a thread, a fixed clock, admin helpers, vectors."""

from __future__ import annotations

import base64
import json
import os
import secrets
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

REPO = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token-" + "x" * 16
KEK = base64.b64encode(b"k" * 32).decode()


def vectors_path() -> Path:
    override = os.environ.get("GATEWAY_VECTORS")
    if override:
        return Path(override)
    return REPO.parent / "shared" / "vectors" / "carriers.json"


def load_vectors() -> dict[str, Any]:
    return json.loads(vectors_path().read_text(encoding="utf-8"))


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
    config = uvicorn.Config(app, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("gateway did not start")
        time.sleep(0.01)
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


def forwarded_headers(url: str, client_ip: str) -> dict[str, str]:
    """What a TLS-terminating proxy in front of the gateway adds."""
    parts = urlsplit(url)  # not httpx.URL: it drops an explicit default port, which signatures cover
    return {"x-forwarded-proto": parts.scheme, "x-forwarded-host": parts.netloc, "x-forwarded-for": client_ip}


def send_as_carrier(gw: RunningGateway, request: dict[str, Any]) -> httpx.Response:
    """Send a vector-style request (full public URL) through the 'trusted proxy' (127.0.0.1)."""
    url = httpx.URL(request["url"])
    target = url.raw_path.decode()  # path + raw query, byte for byte
    headers = dict(request.get("headers", {}))
    headers.update(forwarded_headers(request["url"], request.get("client_ip", "192.0.2.1")))
    body = request.get("body", "")
    content = body.encode("utf-8") if isinstance(body, str) else body
    return gw.client.request(request["method"], target, headers=headers, content=content)


def random_id(prefix: str = "ph_test") -> str:
    return f"{prefix}_{secrets.token_hex(4)}"
