"""`gateway phones ...`, `gateway genkey` and `gateway serve` start-up failures, against a real Redis."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

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
