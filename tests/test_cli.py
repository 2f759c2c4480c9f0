"""`gateway phones ...`, `gateway genkey`, `gateway serve` start-up failures and edge settings, on a real Redis."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import redis

from gateway.cli import STARTUP_FAILURE, main
from tests.support import KEK, REPO

TOKEN = "cli-secret-auth-token-0123456789abcdef"


@pytest.fixture
def cli_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("GATEWAY_REDIS_URL", redis_url)
    monkeypatch.setenv("GATEWAY_KEK", KEK)
    monkeypatch.setenv("PLIVO_TOKEN", TOKEN)
    return redis_url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_put_get_list_delete_show_fingerprints_only(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "phones",
        "put",
        "ph_cli",
        "--provider",
        "plivo",
        "--credential",
        "auth_id=MAEXAMPLE",
        "--credential",
        "auth_token=env:PLIVO_TOKEN",
    )
    assert code == 0
    view = json.loads(out)
    assert view["credentials"]["auth_token"]["fingerprint"].startswith("fp_")
    raw = redis.Redis.from_url(cli_env).get("gateway:phone:ph_cli")
    assert raw is not None and TOKEN.encode() not in raw

    for argv in (("phones", "get", "ph_cli"), ("phones", "list")):
        code, out, _ = run(capsys, *argv)
        assert code == 0 and "ph_cli" in out and TOKEN not in out

    code, out, _ = run(capsys, "phones", "delete", "ph_cli")
    assert code == 0
    code, _, err = run(capsys, "phones", "get", "ph_cli")
    assert code == 1 and "no such phone" in err


def test_put_from_json_stdin(cli_env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    body = {"provider": "twilio", "credentials": {"account_sid": "AC1", "auth_token": TOKEN}}
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(json.dumps(body).encode())))
    code, out, _ = run(capsys, "phones", "put", "ph_json", "--json", "-")
    assert code == 0 and TOKEN not in out and json.loads(out)["provider"] == "twilio"


def test_invalid_put_is_a_clear_error(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "phones", "put", "ph_bad", "--provider", "plivo", "--credential", "auth_id=MA")
    assert code == 2 and "auth_token" in err
    code, _, err = run(
        capsys, "phones", "put", "ph_bad", "--provider", "plivo", "--credential", "auth_token=env:NOT_SET_ANYWHERE"
    )
    assert code == 2 and "NOT_SET_ANYWHERE" in err


def test_missing_redis_url_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.delenv("GATEWAY_REDIS_URL", raising=False)
    monkeypatch.chdir(str(tmp_path))
    code, _, err = run(capsys, "phones", "list")
    assert code == 2 and "GATEWAY_REDIS_URL" in err


def test_genkey(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "genkey")
    assert code == 0 and len(base64.b64decode(out.strip())) == 32


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


def test_kek_rotation_with_reseal(
    cli_env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rotate GATEWAY_KEK: old values open via GATEWAY_KEK_PREVIOUS, `phones reseal` moves them to the new KEK."""
    from gateway.sealing import Sealer

    old_kek, new_kek = b"o" * 32, b"n" * 32
    monkeypatch.setenv("GATEWAY_KEK", base64.b64encode(old_kek).decode())
    body = ["--provider", "plivo", "--credential", "auth_id=MA", "--credential", "auth_token=env:PLIVO_TOKEN"]
    assert run(capsys, "phones", "put", "ph_rot", *body)[0] == 0

    monkeypatch.setenv("GATEWAY_KEK", base64.b64encode(new_kek).decode())
    assert run(capsys, "phones", "reseal")[0] == 1  # old KEK not configured: reported, left as it is
    monkeypatch.setenv("GATEWAY_KEK_PREVIOUS", base64.b64encode(old_kek).decode())
    code, out, _ = run(capsys, "phones", "reseal")
    assert code == 0 and json.loads(out)["resealed"] == 1
    code, out, _ = run(capsys, "phones", "reseal")
    assert code == 0 and json.loads(out) == {"resealed": 0, "unchanged": 1, "failed": [], "raced": []}

    record = json.loads(redis.Redis.from_url(cli_env).get("gateway:phone:ph_rot") or b"{}")
    sealed = record["keys"][0]["sealed"]
    assert Sealer(new_kek).open("ph_rot", sealed) == TOKEN  # the old KEK is no longer needed


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
