"""`gateway explain` and the live diagnosis for every carrier (issue 15 part 3).

For each way a callback fails, a request built to fail exactly that way (one change to a
valid one), and the report names the cause: Telnyx (timestamp skew, which key, a body
altered: trailing newline, re-serialised JSON, another encoding), Exotel (address not
allowlisted, token missing or wrong, token in another parameter, no trusted proxy so the
proxy's own address is checked), unsigned callbacks (Vobiz: its console's callback
credentials; others: a generic line). Pure `report()` over a parsed capture, plus the live
diagnosis through the real app and socket for Telnyx.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from urllib.parse import urlencode

import orjson
import pytest
import redis
from nacl.signing import SigningKey
from prometheus_client import REGISTRY

from gateway.diagnostics.capture import parse_capture
from gateway.diagnostics.report import report
from gateway.providers import KeyKind, PhoneCredentials, Provider
from gateway.providers import telnyx as telnyx_sig
from gateway.providers.allowlist import Allowlist, parse_network
from tests.diagnostics.test_capture import raw_http
from tests.helpers.builders import telnyx_event, telnyx_phone, telnyx_request, telnyx_seed
from tests.helpers.contract import Gateway, start_gateway, stream_events
from tests.helpers.inbound_builders import creds, key, public_key
from tests.helpers.support import random_id, send_as_carrier

NOW = 1_795_000_000
HOST = {"Host": "hooks.example.com", "X-Forwarded-Proto": "https"}
TOKEN = "exotel-url-token-0123456789abc"
AUTH_TOKEN = "diagnostics-token-0123456789abcdef"
ALLOWLIST = Allowlist([parse_network("203.0.113.0/24")])
TRUSTED = (parse_network("192.0.2.0/24"),)


def explain(capture: bytes, phone: PhoneCredentials, **options: object) -> tuple[int, str]:
    lines, status = report(parse_capture(capture, "http"), phone, public_base=None, public_url=None, now=NOW, **options)  # type: ignore[arg-type]
    text = "\n".join(lines)
    assert TOKEN not in text and AUTH_TOKEN not in text  # never a secret
    return status, text


# ---- Telnyx ---------------------------------------------------------------------------------


def telnyx(seed: bytes, body: bytes, *, stamp: int = NOW, sent: bytes | None = None) -> bytes:
    headers = {
        **HOST,
        "telnyx-signature-ed25519": telnyx_sig.sign(seed, str(stamp), body),
        "telnyx-timestamp": str(stamp),
        "Content-Type": "application/json",
    }
    return raw_http("/webhooks/telnyx/voice/ph_test", headers, body if sent is None else sent)


def telnyx_phone_of(*seeds: tuple[bytes, str, float | None]) -> PhoneCredentials:
    keys = [public_key(SigningKey(seed).verify_key.encode(), fp, expires) for seed, fp, expires in seeds]
    return creds(Provider.TELNYX, {KeyKind.PUBLIC_KEY: keys})


EVENT = {"data": {"event_type": "call.initiated", "id": "ev-1", "payload": {"from": "+14155550100", "caller": "Zoë"}}}
COMPACT = json.dumps(EVENT, separators=(",", ":"), ensure_ascii=False).encode()


def test_telnyx_timestamp_skew() -> None:
    seed = secrets.token_bytes(32)
    status, text = explain(telnyx(seed, COMPACT, stamp=NOW - 1000), telnyx_phone_of((seed, "fp-new", None)))
    assert status == 1
    assert "signature as captured: MATCHES (key fp-new)" in text
    assert "timestamp is 1000 s from now (tolerance 300 s)" in text and "clock skew" in text


def test_telnyx_which_active_key_and_a_retired_one() -> None:
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    rotating = telnyx_phone_of((old, "fp-old", NOW + 3600.0), (new, "fp-new", None))
    status, text = explain(telnyx(old, COMPACT), rotating)
    assert status == 0 and "MATCHES (key fp-old)" in text  # the previous key, still in its window
    retired = telnyx_phone_of((old, "fp-old", NOW - 60.0), (new, "fp-new", None))
    status, text = explain(telnyx(old, COMPACT), retired)
    assert status == 1
    assert "public_key keys tried: fp-new" in text
    assert "signed with public_key fp-old, retired at" in text and "still signs with the old key" in text


@pytest.mark.parametrize(
    ("sent", "label", "words"),
    [
        (COMPACT + b"\n", "body_newline", "body without its trailing newline"),
        (json.dumps(EVENT, indent=2).encode(), "body_json", "body re-serialised as JSON (compact)"),
        (json.dumps(EVENT, separators=(",", ":")).encode(), "body_json", "(compact)"),  # non-ASCII escaped
        (COMPACT.decode().encode("utf-8").decode("latin-1").encode(), "body_encoding", "body as Latin-1 bytes"),
    ],
    ids=["trailing_newline", "pretty_printed", "non_ascii_escaped", "utf8_read_as_latin1"],
)
def test_telnyx_body_altered_on_the_way(sent: bytes, label: str, words: str) -> None:
    seed = secrets.token_bytes(32)
    status, text = explain(telnyx(seed, COMPACT, sent=sent), telnyx_phone_of((seed, "fp-new", None)))
    assert status == 1
    assert "signature as captured: does not match (invalid_signature)" in text
    match = next(line for line in text.splitlines() if line.strip().startswith("MATCH"))
    assert f"[{label}]" in match and words in match
    assert "diagnosis: telnyx signature would match with" in text


def test_telnyx_forgery_names_no_body_variant() -> None:
    seed = secrets.token_bytes(32)
    status, text = explain(telnyx(secrets.token_bytes(32), COMPACT), telnyx_phone_of((seed, "fp-new", None)))
    assert status == 1 and "MATCH " not in text and "not the URL" in text


# ---- Exotel ---------------------------------------------------------------------------------


def exotel_phone() -> PhoneCredentials:
    return creds(Provider.EXOTEL, {KeyKind.EXOTEL_WEBHOOK_TOKEN: [key(TOKEN)]})


def exotel(query: str, *, xff: str = "203.0.113.10", body: bytes = b"CallSid=c1&Status=completed") -> bytes:
    headers = {**HOST, "X-Forwarded-For": xff, "Content-Type": "application/x-www-form-urlencoded"}
    return raw_http(f"/exotel/status/ph_test?{query}", headers, body)


def exotel_explain(capture: bytes, trusted: object = TRUSTED) -> tuple[int, str]:
    return explain(capture, exotel_phone(), allowlist=ALLOWLIST, trusted_proxies=trusted)


def test_exotel_passes_from_an_allowlisted_address_with_the_token() -> None:
    status, text = exotel_explain(exotel(f"token={TOKEN}"))
    assert status == 0 and "source: 203.0.113.10 is in the allowlist" in text and "token: MATCHES" in text


def test_exotel_address_not_allowlisted() -> None:
    status, text = exotel_explain(exotel(f"token={TOKEN}", xff="198.51.100.7, 192.0.2.9"))  # a trusted LB hop
    assert "source: 198.51.100.7 is NOT in the allowlist (EXOTEL_ALLOWED_IPS): refused 403 ip_not_allowed" in text
    assert "gateway exotel sources" in text


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("a=1", "token: missing"),
        ("token=guess-guess-guess-guess&a=1", "token: wrong"),
        (f"token={TOKEN}&token={TOKEN}", "token: given more than once"),
    ],
    ids=["missing", "wrong", "twice"],
)
def test_exotel_token_missing_or_wrong(query: str, words: str) -> None:
    status, text = exotel_explain(exotel(query))
    assert status == 1 and words in text


@pytest.mark.parametrize(
    ("query", "body", "where"),
    [
        (f"Token={TOKEN}", b"CallSid=c1", "the query parameter 'Token'"),
        (f"auth={TOKEN}", b"CallSid=c1", "the query parameter 'auth'"),
        ("a=1", urlencode({"CallSid": "c1", "token": TOKEN}).encode(), "the form body parameter 'token'"),
    ],
    ids=["capitalised", "another_name", "in_the_form_body"],
)
def test_exotel_token_in_another_parameter(query: str, body: bytes, where: str) -> None:
    status, text = exotel_explain(exotel(query, body=body))
    assert status == 1 and "token: missing" in text
    assert f"token: the phone's token is in {where}: the gateway reads it only from ?token=" in text


def test_exotel_behind_a_proxy_that_is_not_trusted() -> None:
    status, text = exotel_explain(exotel(f"token={TOKEN}"), trusted=())
    assert "GATEWAY_TRUSTED_PROXIES is not set" in text and "the balancer's" in text and "own address" in text


# ---- unsigned callbacks ---------------------------------------------------------------------


def test_unsigned_vobiz_callback_names_the_console_setting() -> None:
    phone = creds(Provider.VOBIZ, {KeyKind.AUTH_TOKEN: [key(AUTH_TOKEN)]})
    capture = raw_http("/plivo/status/ph_test", {**HOST, "Content-Type": "application/x-www-form-urlencoded"}, b"a=1")
    status, text = explain(capture, phone)
    assert status == 1
    assert "signature: none (" in text and "x-vobiz-signature-v3" in text
    assert "only when the callback URL has credentials configured in the Vobiz console" in text


@pytest.mark.parametrize("provider", [Provider.PLIVO, Provider.TWILIO, Provider.TELNYX])
def test_unsigned_callbacks_of_other_carriers_say_who_signs(provider: Provider) -> None:
    kind = KeyKind.PUBLIC_KEY if provider is Provider.TELNYX else KeyKind.AUTH_TOKEN
    material = SigningKey(secrets.token_bytes(32)).verify_key.encode() if provider is Provider.TELNYX else AUTH_TOKEN
    phone = creds(provider, {kind: [key(material)]})
    status, text = explain(raw_http("/x/status/ph_test", {**HOST, "Content-Type": "application/json"}, b"{}"), phone)
    assert status == 1 and "signature: none (" in text and "was not sent by" in text


# ---- live: through the real app and socket --------------------------------------------------


@pytest.fixture(scope="module")
def gateway(redis_server: str) -> Iterator[Gateway]:
    yield from start_gateway(redis_server)


def _mismatches(label: str) -> float:
    return (
        REGISTRY.get_sample_value("gateway_signature_mismatch_total", {"provider": "telnyx", "mismatch": label}) or 0.0
    )


@pytest.mark.parametrize(
    ("change", "label"),
    [
        (lambda body: body + b"\n", "body_newline"),
        (lambda body: json.dumps(orjson.loads(body), indent=2).encode(), "body_json"),
    ],
    ids=["trailing_newline", "re_serialised"],
)
def test_live_telnyx_body_diagnosis_counts_and_never_accepts(
    gateway: Gateway, redis_sync: redis.Redis, change: object, label: str
) -> None:
    seed = telnyx_seed()
    phone_id = random_id("ph_tx")
    gateway.gw.put_phone(telnyx_phone(phone_id, seed))
    body = orjson.dumps(telnyx_event())
    request = telnyx_request(seed, phone_id, now=gateway.now(), body=body)
    request["body"] = change(body)  # type: ignore[operator]
    before = _mismatches(label)
    assert send_as_carrier(gateway.gw, request).status_code == 403
    assert _mismatches(label) == before + 1
    assert stream_events(redis_sync) == []
    request["body"] = body  # the original is still accepted: the diagnosis spent nothing
    assert send_as_carrier(gateway.gw, request).status_code == 200
    assert len(stream_events(redis_sync)) == 1
