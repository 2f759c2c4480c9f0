"""`gateway serve`: start-up failures and edge settings, as a subprocess on a real Redis."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from gateway.cli.common import STARTUP_FAILURE
from tests.helpers.support import KEK, REPO, spawn_gateway

TERMINATED = 128 + signal.SIGTERM


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


# ---- several workers (issue 13 items 3, 4, 10) ---------------------------------------------

LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) \[(?P<pid>\d+)\] (?P<name>\S+) (?P<msg>.*)$"
)


def log_records(text: str) -> list[re.Match[str]]:
    """Every line of a `gateway serve` log: formatted records, or its own `gateway: ...` lines."""
    records = []
    for line in text.splitlines():
        match = LOG_LINE.match(line)
        assert match or not line or line.startswith("gateway: "), f"unformatted log line: {line!r}"
        if match:
            records.append(match)
    return records


def knock(base_url: str, count: int) -> list[int]:
    """`count` unsigned callbacks, each on a fresh connection (so the kernel spreads them)."""
    statuses = []
    for _ in range(count):
        with httpx.Client(base_url=base_url, timeout=10) as client:
            statuses.append(client.post("/plivo/status/ph_unknown", content=b"CallUUID=x").status_code)
    return statuses


def worker_pids(parent: int) -> list[int]:
    """uvicorn workers of `parent` (not multiprocessing's resource tracker)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                command = (entry / "cmdline").read_bytes()
            except (OSError, IndexError):
                continue
            if ppid == parent and b"resource_tracker" not in command:
                pids.append(int(entry.name))
    return pids


def test_two_workers_log_like_one(redis_url: str, tmp_path: Path) -> None:
    """Every worker logs through the gateway's configuration: its warnings and access lines formatted."""
    with spawn_gateway(redis_url, tmp_path, GATEWAY_WORKERS="2", EXOTEL_ALLOWED_IPS="") as gateway:
        assert set(knock(gateway.base_url, 40)) == {400}
        assert gateway.terminate() == TERMINATED
    records = log_records(gateway.log())
    warned = {r["pid"] for r in records if r["level"] == "WARNING" and "Exotel allowlist is empty" in r["msg"]}
    assert len(warned) == 2, gateway.log()  # each worker, formatted
    access = [r for r in records if r["name"] == "gateway.access"]
    assert len(access) == 40
    assert len({r["pid"] for r in access}) == 2  # both workers served (a socket each)
    assert all('"POST /plivo/status/ph_unknown" 400' in r["msg"] for r in access)


def test_a_dead_worker_is_restarted_and_the_metrics_directory_removed(redis_url: str, tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with spawn_gateway(redis_url, tmp_path, GATEWAY_WORKERS="2", TMPDIR=str(scratch)) as gateway:
        assert [p.name for p in scratch.iterdir() if p.name.startswith("gateway-metrics-")]
        first = worker_pids(gateway.process.pid)
        assert len(first) == 2, first
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "restarting it" not in gateway.log():
            assert time.monotonic() < deadline, gateway.log()
            time.sleep(0.1)
        assert set(knock(gateway.base_url, 20)) == {400}
        assert len(set(worker_pids(gateway.process.pid)) - set(first)) == 1
        assert gateway.terminate() == TERMINATED
    assert f"[{first[0]}] died (exit code -9): restarting it" in gateway.log()
    assert "Traceback" not in gateway.log()
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("gateway-metrics-")]


# ---- where it listens; bind failures; development mode (items 6, 9) ----------------------


def serve_once(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "EXOTEL_"))}
    environment.update(EXOTEL_ALLOWED_IPS="203.0.113.0/24", **env)
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve"],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_says_where_it_listens(redis_url: str, tmp_path: Path) -> None:
    with spawn_gateway(redis_url, tmp_path, admin_port=True) as gateway:
        log = gateway.log()
        assert gateway.terminate() == TERMINATED
    assert f"gateway: listening on http://127.0.0.1:{gateway.port} (webhooks, /healthz, /readyz)" in log
    assert f"gateway: admin on http://127.0.0.1:{gateway.admin_port} (/admin, /metrics)" in log


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_address_in_use_is_named_and_nothing_is_started(tmp_path: Path, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve_once(tmp_path, GATEWAY_PORT=str(port), GATEWAY_WORKERS=workers)  # development mode
    assert result.returncode == STARTUP_FAILURE
    assert result.stderr == f"gateway: cannot listen on 127.0.0.1:{port}: address in use\n"
    assert not (tmp_path / ".gateway" / "redis" / "redis.sock").exists()  # no embedded server was started
    assert not (tmp_path / ".gateway" / "kek").exists()


def test_invalid_settings_in_development_mode_start_nothing(tmp_path: Path) -> None:
    result = serve_once(tmp_path, GATEWAY_PORT="0", GATEWAY_MAX_BODY_BYTES="huge")
    assert result.returncode == STARTUP_FAILURE
    assert result.stderr.startswith("gateway: invalid setting: GATEWAY_MAX_BODY_BYTES")
    assert "development mode" not in result.stderr and "GATEWAY_ADMIN_TOKEN" not in result.stderr
    assert not (tmp_path / ".gateway" / "kek").exists()
    assert not (tmp_path / ".gateway" / "redis" / "redis.sock").exists()


def test_development_mode_in_an_unwritable_place_says_what_to_set(tmp_path: Path) -> None:
    """A container's read-only WORKDIR, say: no traceback, the settings that fix it (exit 3).
    The tests run as root, whom permissions do not stop: a path under a regular file cannot be created by anyone."""
    (tmp_path / "a-file").write_text("not a directory\n")
    result = serve_once(tmp_path, GATEWAY_PORT="0", GATEWAY_EMBEDDED_DIR=str(tmp_path / "a-file" / "state"))
    assert result.returncode == STARTUP_FAILURE
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("gateway: GATEWAY_REDIS_URL is not set, and development mode cannot keep")
    assert "set GATEWAY_REDIS_URL (production)" in result.stderr and "GATEWAY_EMBEDDED_DIR" in result.stderr
    assert "development mode ***" not in result.stderr  # the banner only once a server runs


def embedded_server_pid(directory: Path) -> int:
    client = redis.Redis(unix_socket_path=str(directory / ".gateway" / "redis" / "redis.sock"))
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def test_development_kek_generated_then_reused(tmp_path: Path) -> None:
    with spawn_gateway("", tmp_path, GATEWAY_KEK="") as gateway:
        assert gateway.terminate() == TERMINATED
    assert "GATEWAY_KEK generated and kept in .gateway/kek" in gateway.log()
    kek = (tmp_path / ".gateway" / "kek").read_text()
    with spawn_gateway("", tmp_path, GATEWAY_KEK="") as again:
        assert again.terminate() == TERMINATED
    assert "GATEWAY_KEK reused from .gateway/kek" in again.log()
    assert "GATEWAY_KEK generated" not in again.log()
    assert (tmp_path / ".gateway" / "kek").read_text() == kek
    assert again.log().index("development mode") < again.log().index("gateway: listening on")


def test_a_second_serve_in_the_same_directory_is_refused(tmp_path: Path) -> None:
    with spawn_gateway("", tmp_path) as first:
        server = embedded_server_pid(tmp_path)
        started = time.monotonic()
        second = serve_once(tmp_path, GATEWAY_PORT="0")
        assert time.monotonic() - started < 30  # at once: no wait for the other to stop
        assert second.returncode == STARTUP_FAILURE
        socket_path = (tmp_path / ".gateway" / "redis" / "redis.sock").resolve()
        assert f"gateway pid {first.process.pid}, server pid {server}, socket unix://{socket_path}" in second.stderr
        assert "Traceback" not in second.stderr
        assert embedded_server_pid(tmp_path) == server  # still the first one's, still answering
        assert first.terminate() == TERMINATED


def test_a_stale_lock_after_a_crash_is_taken_over(tmp_path: Path) -> None:
    with spawn_gateway("", tmp_path) as crashed:
        orphan = embedded_server_pid(tmp_path)
        client = redis.Redis(unix_socket_path=str(tmp_path / ".gateway" / "redis" / "redis.sock"))
        client.set("written-before-the-crash", "1")
        client.close()
        crashed.process.kill()  # SIGKILL: no cleanup; its Valkey lives on, holding the lock
        crashed.process.wait()
    assert _alive(orphan)
    with spawn_gateway("", tmp_path) as successor:
        assert not _alive(orphan)  # stopped, not joined by a second server on the same AOF
        assert embedded_server_pid(tmp_path) != orphan
        client = redis.Redis(unix_socket_path=str(tmp_path / ".gateway" / "redis" / "redis.sock"))
        try:
            assert client.get("written-before-the-crash") == b"1"
        finally:
            client.close()
        assert successor.terminate() == TERMINATED


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
