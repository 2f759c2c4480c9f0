"""Twilio through the real app and socket: the shared contract, then Twilio's own rules.

Signing rules (twilio-python 9.13.0 RequestValidator): HMAC-SHA1 over the URL as called
+ the sorted form parameters; a JSON body is covered by `bodySHA256` in the URL; the
signature may have been computed with or without the default port.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import redis

from gateway.providers import twilio
from tests.helpers.builders import (
    new_token,
    twilio_call_sid,
    twilio_json_request,
    twilio_params,
    twilio_phone,
    twilio_request,
)
from tests.helpers.contract import (
    CarrierAdapter,
    CarrierContract,
    Change,
    Gateway,
    Request,
    assert_stream_holds,
    start_gateway,
)
from tests.helpers.support import random_id

SIGNATURE = "X-Twilio-Signature"
SETTINGS = "X-Twilio-Webhooks-Signature-Settings"


@pytest.fixture(scope="module")
def gateway(redis_server: str) -> Iterator[Gateway]:
    yield from start_gateway(redis_server)


class TwilioAdapter(CarrierAdapter):
    provider = "twilio"

    def new_secret(self) -> str:
        return new_token()

    def phone(self, phone_id: str, secret: str) -> dict[str, Any]:
        return twilio_phone(phone_id, secret)

    def request(self, phone_id: str, secret: str, now: float, *, event: str | None = None) -> Request:
        call_sid = f"CA{event}" if event else None
        return twilio_request(secret, phone_id, params=twilio_params(call_sid))

    def forge(self, request: Request) -> None:
        request["headers"][SIGNATURE] = base64.b64encode(secrets.token_bytes(20)).decode()

    def tamper(self, request: Request) -> None:
        request["body"] = request["body"].replace("CallStatus=ringing", "CallStatus=completed")

    def malformations(self) -> dict[str, Change]:
        def not_base64(r: Request) -> None:
            r["headers"][SIGNATURE] = "%%%not-base64%%%" + "=" * 12

        def truncated(r: Request) -> None:
            r["headers"][SIGNATURE] = r["headers"][SIGNATURE][:-4]

        def sha256_length(r: Request) -> None:
            r["headers"][SIGNATURE] = base64.b64encode(secrets.token_bytes(32)).decode()

        def non_ascii(r: Request) -> None:
            r["headers"][SIGNATURE] = b"\xe9" * 28  # latin-1 on the wire

        def unknown_algorithm(r: Request) -> None:
            r["headers"][SETTINGS] = "key=KS1,algorithm=HMAC_SHA512"

        def non_utf8_form(r: Request) -> None:
            r["body"] = r["body"].encode() + b"&Extra=%ff%fe"

        return {
            "not_base64": not_base64,
            "truncated": truncated,
            "sha256_length": sha256_length,
            "non_ascii": non_ascii,
            "unknown_algorithm": unknown_algorithm,
            "non_utf8_form": non_utf8_form,
        }

    def strip(self, request: Request) -> None:
        del request["headers"][SIGNATURE]


class TestTwilioContract(CarrierContract):
    adapter: ClassVar[CarrierAdapter] = TwilioAdapter()


# ---- Twilio's own rules ---------------------------------------------------------------


@pytest.fixture
def phone(gateway: Gateway, redis_url: str) -> tuple[str, str]:
    gateway.clock.now = None
    token = new_token()
    phone_id = random_id("ph_twilio")
    gateway.gw.put_phone(twilio_phone(phone_id, token))
    return phone_id, token


def test_form_post_status_event(gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis) -> None:
    phone_id, token = phone
    call_sid = twilio_call_sid()
    request = twilio_request(token, phone_id, params=twilio_params(call_sid, "in-progress"))
    response = gateway.send(request)
    assert response.status_code == 200
    assert response.content == b""
    (event,) = assert_stream_holds(redis_sync, [request])
    assert event["kind"] == "status"
    assert event["params"]["CallSid"] == call_sid
    assert event["params"]["CallStatus"] == "in-progress"
    assert event["idempotency_key"] == f"status:{call_sid}:in-progress"
    assert event["key_fingerprint"].startswith("fp_")
    assert event["content_type"] == "application/x-www-form-urlencoded"


def test_incoming_answer_is_twiml(gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis) -> None:
    phone_id, token = phone
    request = twilio_request(token, phone_id, kind="incoming")
    response = gateway.send(request)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    assert response.content.startswith(b"<?xml")
    assert b"<Response>" in response.content and b"</Response>" in response.content
    (event,) = assert_stream_holds(redis_sync, [request])
    assert event["kind"] == "incoming"


def test_get_with_query(gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis) -> None:
    phone_id, token = phone
    request = twilio_request(token, phone_id, method="GET", query="x=1")
    assert request["body"] == "" and "CallSid=" in request["url"]
    assert gateway.send(request).status_code == 200
    changed = twilio_request(token, phone_id, method="GET", query="x=1")
    changed["url"] = changed["url"].replace("x=1", "x=2")
    assert gateway.send(changed).status_code == 403
    reordered = twilio_request(token, phone_id, method="GET", query="a=1&b=2")
    reordered["url"] = reordered["url"].replace("a=1&b=2", "b=2&a=1")  # Twilio signs the URL as is
    assert gateway.send(reordered).status_code == 403
    (event,) = assert_stream_holds(redis_sync, [request])
    assert event["params"]["x"] == "1"
    assert event["idempotency_key"].startswith("status:CA")


def test_form_param_order_does_not_matter(gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis) -> None:
    """The signature covers the params sorted by name: the order in the body is free."""
    phone_id, token = phone
    request = twilio_request(token, phone_id)
    parts = request["body"].split("&")
    request["body"] = "&".join(reversed(parts))
    assert gateway.send(request).status_code == 200
    assert_stream_holds(redis_sync, [request])


def test_json_body_with_body_sha256(gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis) -> None:
    phone_id, token = phone
    document = {"CallSid": twilio_call_sid(), "CallStatus": "completed", "Note": "ünïcode"}
    request = twilio_json_request(token, phone_id, document)
    assert gateway.send(request).status_code == 200
    (event,) = assert_stream_holds(redis_sync, [request])
    assert event["idempotency_key"] == f"status:{document['CallSid']}:completed"
    assert event["content_type"] == "application/json"


def test_json_body_tampered_with_original_hash_rejected(
    gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis
) -> None:
    phone_id, token = phone
    request = twilio_json_request(token, phone_id, {"CallSid": twilio_call_sid(), "CallStatus": "ringing"})
    request["body"] = request["body"].replace("ringing", "completed")
    assert gateway.send(request).status_code == 403
    assert_stream_holds(redis_sync, [])


def test_json_body_with_recomputed_hash_rejected(
    gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis
) -> None:
    """Changing body and bodySHA256 together breaks the URL signature."""
    phone_id, token = phone
    request = twilio_json_request(token, phone_id, {"CallSid": twilio_call_sid(), "CallStatus": "ringing"})
    old_hash = twilio.body_sha256(request["body"].encode())
    request["body"] = request["body"].replace("ringing", "completed")
    request["url"] = request["url"].replace(old_hash, twilio.body_sha256(request["body"].encode()))
    assert gateway.send(request).status_code == 403
    assert_stream_holds(redis_sync, [])


def test_json_body_without_hash_rejected(gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis) -> None:
    """A non-form body the signature does not cover is refused (the SDK raises on it)."""
    phone_id, token = phone
    request = twilio_json_request(token, phone_id, {"CallSid": twilio_call_sid()})
    request["url"] = request["url"].split("?", 1)[0]
    request["headers"][SIGNATURE] = twilio.sign(token, request["url"])
    response = gateway.send(request)
    assert response.status_code in (400, 403)
    assert_stream_holds(redis_sync, [])


def test_json_body_stripped_rejected(gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis) -> None:
    phone_id, token = phone
    request = twilio_json_request(token, phone_id, {"CallSid": twilio_call_sid()})
    request["body"] = ""
    assert gateway.send(request).status_code == 403
    assert_stream_holds(redis_sync, [])


@pytest.mark.parametrize(
    ("signed_netloc", "called_netloc"),
    [
        ("hooks.example.com:443", "hooks.example.com"),
        ("hooks.example.com", "hooks.example.com:443"),
        ("hooks.example.com:8443", "hooks.example.com:8443"),
        # SDK quirk kept: the first URL variant drops ANY explicit port, not only the default.
        ("hooks.example.com", "hooks.example.com:8443"),
    ],
)
def test_port_variants_accepted_as_the_sdk_does(
    gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis, signed_netloc: str, called_netloc: str
) -> None:
    phone_id, token = phone
    request = twilio_request(
        token,
        phone_id,
        base=f"https://{called_netloc}",
        signed_url=f"https://{signed_netloc}/twilio/status/{phone_id}",
    )
    assert gateway.send(request).status_code == 200
    assert_stream_holds(redis_sync, [request])


@pytest.mark.parametrize(
    ("signed_netloc", "called_netloc"),
    [
        ("hooks.example.com:8443", "hooks.example.com"),  # a non-default port is not "the default port"
        ("hooks.example.com:80", "hooks.example.com"),  # :80 is http's default, not https's
    ],
)
def test_other_port_variants_rejected(
    gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis, signed_netloc: str, called_netloc: str
) -> None:
    phone_id, token = phone
    request = twilio_request(
        token,
        phone_id,
        base=f"https://{called_netloc}",
        signed_url=f"https://{signed_netloc}/twilio/status/{phone_id}",
    )
    assert gateway.send(request).status_code == 403
    assert_stream_holds(redis_sync, [])


def test_signed_over_http_called_over_https_rejected(
    gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis
) -> None:
    phone_id, token = phone
    url = f"http://hooks.example.com/twilio/status/{phone_id}"
    for signed in (url, url.replace("hooks.example.com", "hooks.example.com:80")):
        request = twilio_request(token, phone_id, signed_url=signed)
        assert request["url"].startswith("https://")
        assert gateway.send(request).status_code == 403
    assert_stream_holds(redis_sync, [])


def test_signed_for_another_host_or_path_rejected(
    gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis
) -> None:
    phone_id, token = phone
    for signed in (
        f"https://evil.example.com/twilio/status/{phone_id}",
        f"https://hooks.example.com/twilio/incoming/{phone_id}",
        f"https://hooks.example.com/twilio/status/{phone_id}/",
    ):
        assert gateway.send(twilio_request(token, phone_id, signed_url=signed)).status_code == 403
    assert_stream_holds(redis_sync, [])


def test_duplicate_signature_header_rejected(gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis) -> None:
    phone_id, token = phone
    request = twilio_request(token, phone_id)
    path = request["url"].removeprefix("https://hooks.example.com")
    headers = [*request["headers"].items(), (SIGNATURE, request["headers"][SIGNATURE])]
    headers += [("x-forwarded-proto", "https"), ("x-forwarded-host", "hooks.example.com")]
    assert gateway.gw.client.post(path, headers=headers, content=request["body"]).status_code == 403
    assert_stream_holds(redis_sync, [])


def test_same_call_sid_next_status_is_forwarded(
    gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis
) -> None:
    phone_id, token = phone
    call_sid = twilio_call_sid()
    ringing = twilio_request(token, phone_id, params=twilio_params(call_sid, "ringing"))
    retry = twilio_request(token, phone_id, params=[*twilio_params(call_sid, "ringing"), ("Timestamp", "later")])
    completed = twilio_request(token, phone_id, params=twilio_params(call_sid, "completed"))
    for request in (ringing, retry, completed):
        assert gateway.send(request).status_code == 200
    events = assert_stream_holds(redis_sync, [ringing, completed])
    assert [e["idempotency_key"] for e in events] == [f"status:{call_sid}:ringing", f"status:{call_sid}:completed"]


# ---- shared webhook signing key (X-Twilio-Webhooks-Signature-Settings) -------------------


@pytest.fixture
def keyed_phone(gateway: Gateway, redis_url: str) -> tuple[str, str, str]:
    gateway.clock.now = None
    token, key = new_token(), new_token()
    phone_id = random_id("ph_twilio_key")
    gateway.gw.put_phone(twilio_phone(phone_id, token, signing_key=key))
    return phone_id, token, key


def test_signing_key_variant_accepted(
    gateway: Gateway, keyed_phone: tuple[str, str, str], redis_sync: redis.Redis
) -> None:
    phone_id, token, key = keyed_phone
    by_key = twilio_request(
        key, phone_id, algorithm=twilio.HMAC_SHA256, settings_header="key=KS1,algorithm=HMAC_SHA256"
    )
    by_token = twilio_request(token, phone_id)  # the auth token keeps working without the header
    # The SDK upper-cases the algorithm name (get_signature_algorithm + .upper()).
    lower_case = twilio_request(
        key, phone_id, algorithm=twilio.HMAC_SHA256, settings_header="key=KS1, algorithm=hmac_sha256"
    )
    for request in (by_key, by_token, lower_case):
        assert gateway.send(request).status_code == 200
    events = assert_stream_holds(redis_sync, [by_key, by_token, lower_case])
    assert events[0]["key_fingerprint"] != events[1]["key_fingerprint"]
    assert events[0]["key_fingerprint"] == events[2]["key_fingerprint"]
    for event in events:
        assert key not in str(event) and token not in str(event)


@pytest.mark.parametrize(
    ("signer", "algorithm", "settings"),
    [
        ("key", twilio.HMAC_SHA256, None),  # signed with the key, header dropped
        ("token", twilio.HMAC_SHA256, "key=KS1,algorithm=HMAC_SHA256"),  # header added, signed with the token
        ("key", twilio.HMAC_SHA1, "key=KS1,algorithm=HMAC_SHA256"),  # algorithm swapped
        ("key", twilio.HMAC_SHA256, "key=KS1,algorithm=HMAC_SHA512"),  # unknown algorithm
        ("key", twilio.HMAC_SHA256, "key=KS1,algorithm=none"),
    ],
)
def test_signing_key_mismatches_rejected(
    gateway: Gateway,
    keyed_phone: tuple[str, str, str],
    redis_sync: redis.Redis,
    signer: str,
    algorithm: str,
    settings: str | None,
) -> None:
    phone_id, token, key = keyed_phone
    request = twilio_request(key if signer == "key" else token, phone_id, algorithm=algorithm, settings_header=settings)
    assert gateway.send(request).status_code == 403
    assert_stream_holds(redis_sync, [])


def test_settings_header_on_phone_without_signing_key_rejected(
    gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis
) -> None:
    phone_id, token = phone
    request = twilio_request(
        token, phone_id, algorithm=twilio.HMAC_SHA256, settings_header="key=KS1,algorithm=HMAC_SHA256"
    )
    assert gateway.send(request).status_code == 403
    assert_stream_holds(redis_sync, [])
