"""`gateway explain`: captured requests (curl command lines, raw HTTP) against a phone in a real Redis."""

from __future__ import annotations

import base64
import io
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from nacl.signing import SigningKey

from gateway.cli import main
from gateway.providers import plivo as plivo_sig
from gateway.providers import telnyx as telnyx_sig
from gateway.providers import twilio as twilio_sig
from gateway.providers import vobiz as vobiz_sig
from tests.diagnostics.test_capture import raw_http
from tests.helpers.support import KEK

TOKEN = "explain-cli-auth-token-0123456789"
PUBLIC = "https://hooks.example.com"
FORM = "application/x-www-form-urlencoded"
PARAMS = [("CallUUID", "0b1c2d3e-1"), ("CallStatus", "ringing"), ("From", "+14155550100")]


@pytest.fixture
def env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("GATEWAY_REDIS_URL", redis_url)
    monkeypatch.setenv("GATEWAY_KEK", KEK)
    monkeypatch.setenv("EXPLAIN_TEST_TOKEN", TOKEN)
    for name in ("GATEWAY_PUBLIC_BASE_URL", "GATEWAY_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return redis_url


def put(capsys: pytest.CaptureFixture[str], phone_id: str, provider: str, *items: str) -> None:
    argv = ["phones", "put", phone_id, "--provider", provider]
    for item in items:
        argv += ["--config" if item.startswith("exotel_webhook_token") else "--credential", item]
    assert main(argv) == 0
    capsys.readouterr()


def put_plivo(capsys: pytest.CaptureFixture[str], phone_id: str = "ph_1", provider: str = "plivo") -> None:
    put(capsys, phone_id, provider, "auth_id=MAEXAMPLE", "auth_token=env:EXPLAIN_TEST_TOKEN")


def explain(capsys: pytest.CaptureFixture[str], tmp_path: Path, capture: bytes | str, *argv: str) -> tuple[int, str]:
    path = tmp_path / "capture.txt"
    path.write_bytes(capture.encode() if isinstance(capture, str) else capture)
    code = main(["explain", *argv[:1], str(path), *argv[1:]])
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    return code, out + err


def plivo_headers(url: str, nonce: str = "31415926535897932384") -> dict[str, str]:
    return {
        "X-Plivo-Signature-V3": plivo_sig.sign_v3(TOKEN, "POST", url, PARAMS, nonce),
        "X-Plivo-Signature-V3-Nonce": nonce,
        "Content-Type": FORM,
    }


def curl(url: str, headers: dict[str, str], body: str) -> str:
    parts = ["curl -sS -X POST", f"'{url}'", *(f"-H '{k}: {v}'" for k, v in headers.items()), f"--data-raw '{body}'"]
    return " \\\n  ".join(parts) + "\n"


# ---- against a phone in Redis -------------------------------------------------------------


def test_raw_http_scheme_rewritten_by_the_load_balancer(
    env: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    put_plivo(capsys)
    url = f"{PUBLIC}/plivo/status/ph_1"
    headers = {
        "Host": "10.0.0.5:8080",
        "X-Forwarded-Proto": "http",  # the LB says http, the carrier called https
        "X-Forwarded-Host": "hooks.example.com",
        **plivo_headers(url),
    }
    code, out = explain(capsys, tmp_path, raw_http("/plivo/status/ph_1", headers, urlencode(PARAMS).encode()), "ph_1")
    assert code == 1
    assert "signature as captured: does not match (invalid_signature)" in out
    assert "MATCH  [scheme] scheme=https" in out
    assert "your load balancer rewrites the scheme" in out
    # What the carrier signed: the https URL, sorted params, the nonce. No secret in it.
    assert "  https://hooks.example.com/plivo/status/ph_1?CallStatusringingCallUUID0b1c2d3e-1From+14155550100" in out
    # Never a signature we computed (that would make the CLI a signing oracle).
    received = plivo_sig.sign_v3(TOKEN, "POST", url.replace("https", "http"), PARAMS, "31415926535897932384")
    assert received not in out


def test_curl_to_the_backend_needs_the_public_url(env: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    put_plivo(capsys)
    command = curl("http://127.0.0.1:8080/plivo/status/ph_1", plivo_headers(f"{PUBLIC}/plivo/status/ph_1"), "x")
    command = command.replace("'x'", f"'{urlencode(PARAMS)}'")
    code, out = explain(capsys, tmp_path, command, "ph_1")
    assert code == 1
    assert "no variant matches" in out and "Try --public-url" in out
    code, out = explain(capsys, tmp_path, command, "ph_1", "--public-url", PUBLIC)
    assert code == 1  # the capture itself still does not verify
    assert "with --public-url https://hooks.example.com/plivo/status/ph_1: MATCHES" in out
    assert "differs: scheme: gateway sees http, carrier calls https" in out
    assert "differs: host: gateway sees 127.0.0.1:8080, carrier calls hooks.example.com" in out
    # A configured URL with an explicit :443 does not match as such; its port-less twin does.
    code, out = explain(capsys, tmp_path, command, "ph_1", "--public-url", "https://hooks.example.com:443")
    assert "does not match" in out
    assert "MATCH  [scheme+host] scheme=https, host=hooks.example.com (--public-url, default port toggled)" in out


def test_stdin_and_a_request_that_verifies(
    env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    put_plivo(capsys)
    url = f"{PUBLIC}/plivo/status/ph_1"
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.com", **plivo_headers(url)}
    command = curl("http://127.0.0.1:8080/plivo/status/ph_1", headers, urlencode(PARAMS))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(command.encode())))
    assert main(["explain", "ph_1", "-"]) == 0
    out = capsys.readouterr().out
    assert "signature as captured: MATCHES" in out
    assert "variants tried" not in out


def test_public_base_url_setting_is_used_like_the_gateway_uses_it(
    env: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_plivo(capsys)
    monkeypatch.setenv("GATEWAY_PUBLIC_BASE_URL", "https://hooks.example.com/gw")
    headers = {"Host": "10.0.0.5", **plivo_headers(f"{PUBLIC}/plivo/status/ph_1")}
    code, out = explain(capsys, tmp_path, raw_http("/plivo/status/ph_1", headers, urlencode(PARAMS).encode()), "ph_1")
    assert code == 1
    assert "request: POST https://hooks.example.com/gw/plivo/status/ph_1" in out
    assert "from GATEWAY_PUBLIC_BASE_URL" in out
    assert "[path_prefix] path without the prefix /gw of GATEWAY_PUBLIC_BASE_URL" in out


def test_twilio_json_captured_with_a_form_content_type(
    env: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    put(capsys, "ph_tw", "twilio", "account_sid=AC" + "0" * 32, "auth_token=env:EXPLAIN_TEST_TOKEN")
    body = orjson.dumps({"CallSid": "CA1", "CallStatus": "ringing"})
    url = f"{PUBLIC}/twilio/status/ph_tw?bodySHA256={twilio_sig.body_sha256(body)}"
    headers = {"X-Twilio-Signature": twilio_sig.sign(TOKEN, url), "Content-Type": FORM}
    code, out = explain(capsys, tmp_path, curl(url, headers, body.decode()), "ph_tw")
    assert code == 1
    assert "[form_vs_raw] body as raw bytes (bodySHA256)" in out
    assert "the carrier signed, Twilio" in out and url in out


def test_telnyx_stale_capture_and_changed_body(env: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    seed = secrets.token_bytes(32)
    public = base64.b64encode(SigningKey(seed).verify_key.encode()).decode()
    put(capsys, "ph_tx", "telnyx", f"public_key={public}")
    body = orjson.dumps({"data": {"id": "ev-1", "event_type": "call.initiated"}})
    stamp = str(int(time.time()) - 1000)
    headers = {
        "telnyx-signature-ed25519": telnyx_sig.sign(seed, stamp, body),
        "telnyx-timestamp": stamp,
        "Content-Type": "application/json",
        "Host": "hooks.example.com",
    }
    capture = raw_http("/webhooks/telnyx/voice/ph_tx", headers, body)
    code, out = explain(capsys, tmp_path, capture, "ph_tx")
    assert code == 1
    assert "signature as captured: MATCHES" in out
    assert "rejects it as stale" in out
    assert f"  {stamp}|{body.decode()}" in out
    code, out = explain(capsys, tmp_path, capture.replace(b"ev-1", b"ev-2"), "ph_tx")
    assert code == 1
    assert "does not match" in out and "not the URL" in out


def test_exotel_token_checked_never_printed(env: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    exotel_token = "exotel-url-token-0123456789"
    put(capsys, "ph_ex", "exotel", "api_key=k", "api_token=t", f"exotel_webhook_token={exotel_token}")
    good = raw_http(f"/exotel/status/ph_ex?token={exotel_token}&a=1", {"Host": "hooks.example.com"}, b"")
    code, out = explain(capsys, tmp_path, good, "ph_ex")
    assert code == 0 and "token: MATCHES" in out and exotel_token not in out
    bad = good.replace(exotel_token.encode(), b"guess-guess-guess-guess")
    code, out = explain(capsys, tmp_path, bad, "ph_ex")
    assert code == 1 and "token: wrong (refused 403; the query without it: a=1)" in out
    assert "guess-guess" not in out


def test_errors(env: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = explain(capsys, tmp_path, "curl http://h.example.com/plivo/status/ph_none", "ph_none")
    assert code == 2 and "no such phone: ph_none" in out
    code, out = explain(capsys, tmp_path, "curl --bogus http://h.example.com/", "ph_none")
    assert code == 2 and "unsupported curl option --bogus" in out
    assert main(["explain", "ph_none", str(tmp_path / "missing.txt")]) == 2
    assert "No such file" in capsys.readouterr().err


def test_vobiz_own_header(env: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    put_plivo(capsys, "ph_vb", provider="vobiz")
    nonce = "27182818284590452353"
    headers: dict[str, Any] = {
        "Host": "hooks.example.com:443",
        "X-Vobiz-Signature-V3": vobiz_sig.sign_vobiz_v3(TOKEN, f"{PUBLIC}/plivo/status/ph_vb", nonce),
        "X-Vobiz-Signature-V3-Nonce": nonce,
        "Content-Type": FORM,
        "X-Forwarded-Proto": "https",
    }
    code, out = explain(capsys, tmp_path, raw_http("/plivo/status/ph_vb", headers, b"a=1"), "ph_vb")
    assert code == 1
    assert "[port] host=hooks.example.com (default port toggled)" in out
    assert f"  https://hooks.example.com/plivo/status/ph_vb.{nonce}" in out


# ---- every carrier (issue 15 part 3): a capture built to fail one way, the cause named ----------


def test_telnyx_re_serialised_body_named(env: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    seed = secrets.token_bytes(32)
    public = base64.b64encode(SigningKey(seed).verify_key.encode()).decode()
    put(capsys, "ph_tj", "telnyx", f"public_key={public}")
    body = orjson.dumps({"data": {"id": "ev-1", "event_type": "call.initiated"}})
    stamp = str(int(time.time()))
    headers = {
        "telnyx-signature-ed25519": telnyx_sig.sign(seed, stamp, body),
        "telnyx-timestamp": stamp,
        "Content-Type": "application/json",
        "Host": "hooks.example.com",
    }
    pretty = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2)
    code, out = explain(capsys, tmp_path, raw_http("/webhooks/telnyx/voice/ph_tj", headers, pretty), "ph_tj")
    assert code == 1
    assert "MATCH  [body_json] body re-serialised as JSON (compact)" in out
    assert "public_key keys tried: fp_" in out


def test_exotel_unlisted_address_token_elsewhere_and_proxy(
    env: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exotel_token = "exotel-url-token-0123456789"
    put(capsys, "ph_ex2", "exotel", "api_key=k", "api_token=t", f"exotel_webhook_token={exotel_token}")
    monkeypatch.setenv("EXOTEL_ALLOWED_IPS", "203.0.113.0/24")
    monkeypatch.setenv("GATEWAY_TRUSTED_PROXIES", "192.0.2.0/24")
    headers = {"Host": "hooks.example.com", "X-Forwarded-For": "198.51.100.7"}
    capture = raw_http(f"/exotel/status/ph_ex2?Token={exotel_token}", headers, b"")
    code, out = explain(capsys, tmp_path, capture, "ph_ex2")
    assert code == 1
    assert "source: 198.51.100.7 is NOT in the allowlist" in out
    assert "token: the phone's token is in the query parameter 'Token'" in out
    assert exotel_token not in out
    monkeypatch.delenv("GATEWAY_TRUSTED_PROXIES")
    code, out = explain(capsys, tmp_path, capture, "ph_ex2")
    assert "GATEWAY_TRUSTED_PROXIES is not set" in out


def test_unsigned_vobiz_callback(env: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    put_plivo(capsys, "ph_vb2", provider="vobiz")
    capture = raw_http("/plivo/status/ph_vb2", {"Host": "hooks.example.com", "Content-Type": FORM}, b"a=1")
    code, out = explain(capsys, tmp_path, capture, "ph_vb2")
    assert code == 1
    assert "credentials configured in the Vobiz console" in out
