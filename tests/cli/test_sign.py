"""`gateway sign`: what it prints is accepted by the running gateway, for every carrier.

The requests are really sent: the curl format with the system's curl, the raw HTTP
format over a socket, to a real uvicorn-served gateway (tests/helpers/support.py run_gateway).
"""

from __future__ import annotations

import base64
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from nacl.signing import SigningKey
from prometheus_client import REGISTRY

from gateway.cli import main
from gateway.diagnostics.explainer import MismatchExplainer
from tests.helpers.replies import stream_entries
from tests.helpers.support import KEK, REPO, RunningGateway, make_settings, random_id, run_gateway

PUBLIC = "https://hooks.example.com"
STREAM = "gateway:events"
EXOTEL_IP = "203.0.113.7"  # in make_settings' EXOTEL_ALLOWED_IPS

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.fixture(scope="module")
def gw(redis_server: str) -> Iterator[RunningGateway]:
    with run_gateway(make_settings(redis_server)) as running:
        yield running


@pytest.fixture
def env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The CLI's view of Redis (same server as the gateway); no public base configured."""
    monkeypatch.setenv("GATEWAY_REDIS_URL", redis_url)
    monkeypatch.setenv("GATEWAY_KEK", KEK)
    for name in ("GATEWAY_PUBLIC_BASE_URL", "GATEWAY_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return redis_url


# ---- phones -------------------------------------------------------------------------------


def phone(gw: RunningGateway, provider: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Register a phone of `provider`; its secret is also put in the environment for --token-env/--seed-env."""
    phone_id = random_id()
    token = secrets.token_urlsafe(30)
    record: dict[str, Any] = {"id": phone_id, "provider": provider, "config": {}}
    if provider in ("plivo", "vobiz"):
        record["credentials"] = {"auth_id": "MAEXAMPLE0000000000", "auth_token": token}
    elif provider == "twilio":
        record["credentials"] = {
            "account_sid": "AC" + "0" * 32,
            "auth_token": token,
            "webhook_signing_key": "shared-" + secrets.token_urlsafe(24),
        }
        monkeypatch.setenv("SIGN_TEST_SHARED_KEY", record["credentials"]["webhook_signing_key"])
    elif provider == "telnyx":
        seed = secrets.token_bytes(32)
        public = SigningKey(seed).verify_key.encode()
        record["credentials"] = {"public_key": base64.b64encode(public).decode()}
        monkeypatch.setenv("SIGN_TEST_SEED", base64.b64encode(seed).decode())
    elif provider == "exotel":
        record["credentials"] = {"api_key": "key", "api_token": "api-" + token}
        record["config"] = {"exotel_webhook_token": token}
    monkeypatch.setenv("SIGN_TEST_TOKEN", token)
    gw.put_phone(record)
    record["token"] = token
    return record


def route(provider: str, phone_id: str, kind: str = "status") -> str:
    if provider == "telnyx":
        return f"{PUBLIC}/webhooks/telnyx/voice/{phone_id}"
    family = "plivo" if provider == "vobiz" else provider
    return f"{PUBLIC}/{family}/{kind}/{phone_id}"


# ---- running the CLI and sending what it printed ------------------------------------------


def sign(capsysbinary: pytest.CaptureFixture[bytes], *argv: str) -> tuple[bytes, str]:
    code = main(["sign", *argv])
    out, err = capsysbinary.readouterr()
    assert code == 0, err.decode()
    return out, err.decode()


def run_curl(command: str) -> int:
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[0] == "curl"
    done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr.decode()
    status_line = done.stdout.split(b"\r\n", 1)[0]
    return int(status_line.split()[1])


def send_raw(gw: RunningGateway, data: bytes) -> int:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b"\r\n", 1)[0].split()[1])


def send(gw: RunningGateway, fmt: str, output: bytes) -> int:
    return run_curl(output.decode()) if fmt == "curl" else send_raw(gw, output)


def events(redis_sync: redis.Redis) -> list[dict[str, Any]]:
    return [orjson.loads(fields[b"event"]) for _id, fields in stream_entries(redis_sync.xrange(STREAM))]


# ---- every carrier, both formats ---------------------------------------------------------

# (case id, provider, extra CLI arguments; SIGN_TEST_* variables are set by phone())
CASES: list[tuple[str, str, list[str]]] = [
    ("plivo", "plivo", ["--token-env", "SIGN_TEST_TOKEN"]),
    ("plivo GET", "plivo", ["--token-env", "SIGN_TEST_TOKEN", "--method", "GET"]),
    ("plivo params", "plivo", ["--token-env", "SIGN_TEST_TOKEN", "--param", "CallUUID=abc-1", "--param", "A=x y&z"]),
    ("vobiz", "vobiz", ["--token-env", "SIGN_TEST_TOKEN"]),
    ("twilio", "twilio", ["--token-env", "SIGN_TEST_TOKEN"]),
    ("twilio GET", "twilio", ["--token-env", "SIGN_TEST_TOKEN", "--method", "GET"]),
    ("twilio JSON", "twilio", ["--token-env", "SIGN_TEST_TOKEN", "--json", '{"CallSid":"CA1","CallStatus":"ringing"}']),
    ("twilio shared key", "twilio", ["--token-env", "SIGN_TEST_SHARED_KEY", "--algorithm", "HMAC_SHA256"]),
    ("telnyx", "telnyx", ["--seed-env", "SIGN_TEST_SEED"]),
    ("exotel", "exotel", ["--phone", "{phone_id}", "--client-ip", EXOTEL_IP]),
]


@pytest.mark.parametrize("fmt", ["curl", "http"])
@pytest.mark.parametrize(("provider", "extra"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_signed_request_is_accepted_by_the_gateway(
    gw: RunningGateway,
    env: str,
    redis_sync: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
    provider: str,
    extra: list[str],
    fmt: str,
) -> None:
    if fmt == "curl" and shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    record = phone(gw, provider, monkeypatch)
    args = [a.replace("{phone_id}", record["id"]) for a in extra]
    out, _err = sign(
        capsysbinary,
        "--provider",
        provider,
        "--url",
        route(provider, record["id"]),
        "--target",
        gw.base_url,
        "--format",
        fmt,
        *args,
    )
    assert send(gw, fmt, out) == 200
    forwarded = events(redis_sync)
    assert len(forwarded) == 1
    assert forwarded[0]["phone_id"] == record["id"]
    assert forwarded[0]["provider"] == provider
    # The signature is single-use where the carrier's is: sending it again is not a second event.
    assert send(gw, fmt, out) in (200, 403)
    assert len(events(redis_sync)) == 1
    if provider != "exotel":  # an Exotel URL carries its token by design (and says so)
        assert record["token"].encode() not in out


@needs_curl
@pytest.mark.parametrize("provider", ["plivo", "vobiz", "twilio"])
def test_key_from_the_phone_record_in_redis(
    gw: RunningGateway,
    env: str,
    redis_sync: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
    provider: str,
) -> None:
    record = phone(gw, provider, monkeypatch)
    monkeypatch.delenv("SIGN_TEST_TOKEN")
    # --provider is optional: the record names it.
    out, _ = sign(
        capsysbinary, "--phone", record["id"], "--url", route(provider, record["id"]), "--target", gw.base_url
    )
    assert run_curl(out.decode()) == 200
    assert record["token"].encode() not in out
    assert [e["phone_id"] for e in events(redis_sync)] == [record["id"]]


@needs_curl
def test_as_a_subprocess(
    gw: RunningGateway, env: str, redis_sync: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = phone(gw, "plivo", monkeypatch)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "sign", "--provider", "plivo", "--url", route("plivo", record["id"])]
        + ["--token-env", "SIGN_TEST_TOKEN", "--target", gw.base_url],
        capture_output=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={**os.environ, "SIGN_TEST_TOKEN": record["token"]},
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"X-Forwarded-Proto" in done.stderr  # the note on how the target must be set up
    assert run_curl(done.stdout.decode()) == 200
    assert len(events(redis_sync)) == 1


@needs_curl
def test_public_base_url_instead_of_trusting_the_sender(
    redis_url: str, env: str, redis_sync: redis.Redis, monkeypatch: pytest.MonkeyPatch, capsysbinary: Any
) -> None:
    settings = make_settings(redis_url, GATEWAY_TRUSTED_PROXIES="", GATEWAY_PUBLIC_BASE_URL=PUBLIC)
    with run_gateway(settings) as based:
        record = phone(based, "twilio", monkeypatch)
        out, _ = sign(
            capsysbinary,
            "--provider",
            "twilio",
            "--url",
            route("twilio", record["id"]),
            "--token-env",
            "SIGN_TEST_TOKEN",
            "--target",
            based.base_url,
        )
        assert run_curl(out.decode()) == 200
    assert len(events(redis_sync)) == 1


@needs_curl
def test_neither_trusted_nor_public_base_is_rejected_and_diagnosed(
    redis_url: str, env: str, redis_sync: redis.Redis, monkeypatch: pytest.MonkeyPatch, capsysbinary: Any
) -> None:
    def scheme_host() -> float:
        labels = {"provider": "plivo", "mismatch": "scheme"}
        return REGISTRY.get_sample_value("gateway_signature_mismatch_total", labels) or 0.0

    # What is asserted is the diagnosis, not its CPU budget: give it room on a loaded CI machine.
    import functools

    import gateway.app

    generous = functools.partial(MismatchExplainer, max_diagnosis_s=1.0, cpu_burst_s=10.0)
    monkeypatch.setattr(gateway.app, "MismatchExplainer", generous)
    with run_gateway(make_settings(redis_url, GATEWAY_TRUSTED_PROXIES="")) as untrusting:
        record = phone(untrusting, "plivo", monkeypatch)
        out, _ = sign(
            capsysbinary,
            "--provider",
            "plivo",
            "--url",
            route("plivo", record["id"]),
            "--token-env",
            "SIGN_TEST_TOKEN",
            "--target",
            untrusting.base_url,
        )
        before = scheme_host()
        assert run_curl(out.decode()) == 403  # X-Forwarded-* from an untrusted sender are ignored
        assert scheme_host() == before + 1  # ...and the operator is told which variant would match
    assert events(redis_sync) == []


def test_round_trip_through_explain(
    gw: RunningGateway, env: str, monkeypatch: pytest.MonkeyPatch, capsysbinary: Any, tmp_path: Path
) -> None:
    record = phone(gw, "plivo", monkeypatch)
    out, _ = sign(
        capsysbinary,
        "--url",
        route("plivo", record["id"]),
        "--phone",
        record["id"],
        "--target",
        "http://127.0.0.1:8080",
        "--format",
        "http",
    )
    capture = tmp_path / "request.http"
    capture.write_bytes(out)
    assert main(["explain", record["id"], str(capture)]) == 0
    text = capsysbinary.readouterr().out.decode()
    assert "signature as captured: MATCHES" in text
    assert record["token"] not in text


# ---- refusals ---------------------------------------------------------------------------


def refused(capsysbinary: pytest.CaptureFixture[bytes], *argv: str) -> str:
    assert main(["sign", *argv]) == 2
    out, err = capsysbinary.readouterr()
    assert out == b""
    return err.decode()


def test_secrets_never_come_from_argv(env: str, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    secret = "s3cret-token-value-0123456789"
    for option in ("--token", "--token-e", "--auth-token", "--seed", "--secret"):  # no option, no abbreviation
        with pytest.raises(SystemExit) as info:
            main(["sign", "--provider", "plivo", "--url", f"{PUBLIC}/plivo/status/ph_1", option, secret])
        assert info.value.code == 2
    capsysbinary.readouterr()
    # The token given where the variable's name belongs is refused without being echoed.
    for option in ("--token-env", "--seed-env"):
        provider = "telnyx" if option == "--seed-env" else "plivo"
        err = refused(capsysbinary, "--provider", provider, "--url", f"{PUBLIC}/x", option, secret + "/+=")
        assert "NAME of an environment variable" in err
        assert secret not in err


def test_refusals_name_the_problem_not_the_secret(
    gw: RunningGateway, env: str, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    url = f"{PUBLIC}/plivo/status/ph_1"
    monkeypatch.delenv("SIGN_TEST_UNSET", raising=False)
    assert "SIGN_TEST_UNSET" in refused(
        capsysbinary, "--provider", "plivo", "--url", url, "--token-env", "SIGN_TEST_UNSET"
    )
    assert "needs a key" in refused(capsysbinary, "--provider", "plivo", "--url", url)
    monkeypatch.setenv("SIGN_TEST_TOKEN", "a-secret-token-0123456789")
    err = refused(capsysbinary, "--provider", "plivo", "--url", url, "--token-env", "SIGN_TEST_TOKEN", "--json", "{}")
    assert "form parameters" in err and "a-secret-token" not in err
    err = refused(
        capsysbinary, "--provider", "plivo", "--url", url, "--token-env", "SIGN_TEST_TOKEN", "--target", "http://h/x"
    )
    assert "--target" in err
    err = refused(capsysbinary, "--provider", "telnyx", "--url", url, "--token-env", "SIGN_TEST_TOKEN")
    assert "--seed-env" in err
    monkeypatch.setenv("SIGN_TEST_SEED", "not-a-seed")
    assert "32-byte" in refused(capsysbinary, "--provider", "telnyx", "--url", url, "--seed-env", "SIGN_TEST_SEED")
    telnyx = phone(gw, "telnyx", monkeypatch)
    err = refused(capsysbinary, "--phone", telnyx["id"], "--url", route("telnyx", telnyx["id"]))
    assert "public key" in err
    assert "no such phone" in refused(capsysbinary, "--phone", "ph_nobody", "--url", url)
    plivo = phone(gw, "plivo", monkeypatch)
    assert "not twilio" in refused(capsysbinary, "--phone", plivo["id"], "--provider", "twilio", "--url", url)


def test_exotel_output_warns_that_it_carries_the_token(
    gw: RunningGateway, env: str, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    record = phone(gw, "exotel", monkeypatch)
    out, err = sign(capsysbinary, "--phone", record["id"], "--url", route("exotel", record["id"]))
    assert f"token={record['token']}".encode() in out
    assert "keep this output private" in err
    assert "EXOTEL_ALLOWED_IPS" in err


@pytest.mark.parametrize("option", ["--token", "--seed"])
@pytest.mark.parametrize("joined", [False, True])
def test_a_secret_on_the_command_line_is_refused_without_echoing_it(option: str, joined: bool) -> None:
    value = "cli-secret-" + secrets.token_hex(8)
    given = [f"{option}={value}"] if joined else [option, value]
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "sign", "--url", "https://hooks.example.com/plivo/status/ph_1", *given],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{option} is not accepted: secrets never come from the command line" in result.stderr
    assert value not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
