"""`gateway serve`: start-up failures and edge settings, as a subprocess on a real Redis."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from gateway.cli.common import STARTUP_FAILURE
from tests.helpers.support import KEK, REPO


def test_serve_refuses_invalid_settings_naming_the_variable(redis_url: str) -> None:
    env = {**os.environ, "GATEWAY_REDIS_URL": redis_url, "GATEWAY_KEK": KEK, "GATEWAY_MAX_BODY_BYTES": "huge"}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", "0"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == STARTUP_FAILURE
    assert "GATEWAY_MAX_BODY_BYTES" in result.stderr
    assert "Traceback" not in result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(("setting", "opening"), [("GATEWAY_HEAD_TIMEOUT_S", b""), ("GATEWAY_BODY_TIMEOUT_S", None)])
def test_serve_applies_the_edge_deadline_settings(redis_url: str, setting: str, opening: bytes | None) -> None:
    """`gateway serve` with a 0.5 s deadline closes a stalled connection in well under the 10 s default."""
    port = _free_port()
    env = {**os.environ, "GATEWAY_REDIS_URL": redis_url, "GATEWAY_KEK": KEK, setting: "0.5", "GATEWAY_PORT": str(port)}
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                probe = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "gateway serve did not start"
                time.sleep(0.1)
        probe.close()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            if opening is None:  # a head, then a body that never comes
                sock.sendall(b"POST /plivo/status/ph_x HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nab")
            started = time.monotonic()
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            waited = time.monotonic() - started
        assert waited < 3.0, f"{setting}=0.5 not applied: held {waited:.1f} s"
        if opening is None:
            assert answer.startswith(b"HTTP/1.1 408 ")
        else:
            assert answer == b""  # a connection that never sent a byte is closed silently
    finally:
        server.terminate()
        server.communicate(timeout=30)
