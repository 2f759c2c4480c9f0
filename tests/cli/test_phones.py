"""`gateway phones put|get|list|delete|reseal` on a real Redis."""

from __future__ import annotations

import base64
import json
import sys

import pytest
import redis

from gateway.cli import main
from tests.helpers.support import KEK

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
    assert code == 3 and err.startswith("gateway: invalid setting: GATEWAY_REDIS_URL")


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
