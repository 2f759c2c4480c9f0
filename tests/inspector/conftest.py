"""The real app behind two real uvicorn sockets (public and admin port), as `gateway serve` binds them."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from gateway.app import GatewayApp
from gateway.embedded_redis import free_port
from tests.helpers.support import ADMIN_TOKEN, Clock, as_carrier, make_settings, serve_in_thread

INSPECTOR = "/admin/inspector"


class TwoPorts:
    """A running gateway: `public` (webhooks) and `admin` (admin API, inspector) clients."""

    def __init__(self, app: GatewayApp, port: int, admin_port: int) -> None:
        self.app = app
        self.port = port
        self.admin_port = admin_port
        self.public = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0)
        self.admin = httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", timeout=10.0)
        self.admin_url = f"http://127.0.0.1:{admin_port}"

    def put_phone(self, phone: dict[str, Any]) -> None:
        body = {k: phone[k] for k in ("provider", "credentials", "config") if k in phone}
        response = self.admin.put(
            f"/admin/phones/{phone['id']}", json=body, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert response.status_code in (200, 201), response.text

    def send(self, request: dict[str, Any], **extra_headers: str) -> httpx.Response:
        """A vector-style request through the 'trusted proxy' (127.0.0.1) to the public port."""
        method, target, headers, content = as_carrier(request)
        return self.public.request(method, target, headers={**headers, **extra_headers}, content=content)

    def login(self, client: httpx.Client | None = None) -> httpx.Response:
        client = client or self.admin
        response = client.post(f"{INSPECTOR}/login", data={"token": ADMIN_TOKEN})
        assert response.status_code == 303, response.text
        return response

    def close(self) -> None:
        self.public.close()
        self.admin.close()


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


@contextmanager
def two_ports(redis_url: str, **env: str) -> Iterator[TwoPorts]:
    port, admin_port = free_port(), free_port()
    settings = make_settings(redis_url, GATEWAY_ADMIN_PORT=str(admin_port), GATEWAY_PORT=str(port), **env)
    app = GatewayApp(settings, clock=Clock())
    sockets = [_listen(port), _listen(admin_port)]
    config = uvicorn.Config(
        app, lifespan="on", log_level="warning", proxy_headers=False, access_log=False, http="httptools", loop="asyncio"
    )
    server, thread = serve_in_thread(config, sockets)
    running = TwoPorts(app, port, admin_port)
    try:
        yield running
    finally:
        running.close()
        server.should_exit = True
        thread.join(timeout=15)
        for sock in sockets:
            sock.close()


@pytest.fixture
def gateway_factory(redis_url: str) -> Callable[..., AbstractContextManager[TwoPorts]]:
    """`with gateway_factory(GATEWAY_X="...") as gw:` a gateway with its own settings."""

    def make(**env: str) -> AbstractContextManager[TwoPorts]:
        return two_ports(redis_url, **env)

    return make


@pytest.fixture
def gw(redis_url: str) -> Iterator[TwoPorts]:
    """Public base https://hooks.example.com, so a request signed for http:// is a scheme mismatch."""
    with two_ports(redis_url, GATEWAY_PUBLIC_BASE_URL="https://hooks.example.com") as running:
        yield running
