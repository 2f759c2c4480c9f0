"""docs/event.schema.json against real events: what the running app appends to the stream.

Every provider and route shape that changes the envelope (POST form, GET query, JSON body,
Exotel IP-only with a redacted token, a body that is not UTF-8) goes through the real app
into Redis; every entry must validate, and the schema must name exactly the fields
gateway/events.py writes (so neither can drift from the other).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from jsonschema import Draft202012Validator, FormatChecker

from gateway.events import SCHEMA_VERSION, build_event
from gateway.inbound import InboundRequest
from gateway.providers import exotel
from tests.helpers.builders import (
    exotel_phone,
    exotel_request,
    new_token,
    plivo_phone,
    plivo_request,
    telnyx_phone,
    telnyx_request,
    telnyx_seed,
    twilio_json_request,
    twilio_phone,
    twilio_request,
)
from tests.helpers.replies import stream_entries
from tests.helpers.support import REPO, RunningGateway, make_settings, random_id, run_gateway, send_as_carrier

SCHEMA_PATH = REPO / "docs" / "event.schema.json"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(Path(SCHEMA_PATH).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(loaded)
    return loaded


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=FormatChecker())


@pytest.fixture
def gw(redis_url: str) -> Iterator[RunningGateway]:
    with run_gateway(make_settings(redis_url)) as running:
        yield running


def stream_events(redis_sync: redis.Redis) -> list[dict[str, Any]]:
    return [orjson.loads(fields[b"event"]) for _, fields in stream_entries(redis_sync.xrange("gateway:events"))]


def test_real_forwarded_events_validate(
    gw: RunningGateway, redis_sync: redis.Redis, validator: Draft202012Validator
) -> None:
    sent = 0

    def accepted(request: dict[str, Any]) -> None:
        nonlocal sent
        response = send_as_carrier(gw, request)
        assert response.status_code == 200, (request["url"], response.status_code, response.text)
        sent += 1

    plivo_id, plivo_token = random_id(), new_token()
    gw.put_phone(plivo_phone(plivo_id, plivo_token))
    accepted(plivo_request(plivo_token, plivo_id))
    accepted(plivo_request(plivo_token, plivo_id, kind="incoming", method="GET", query="extra=%20x"))

    vobiz_id, vobiz_token = random_id(), new_token()
    gw.put_phone(plivo_phone(vobiz_id, vobiz_token, provider="vobiz"))
    accepted(plivo_request(vobiz_token, vobiz_id))

    twilio_id, twilio_token = random_id(), new_token()
    gw.put_phone(twilio_phone(twilio_id, twilio_token))
    accepted(twilio_request(twilio_token, twilio_id))
    accepted(twilio_request(twilio_token, twilio_id, kind="incoming", method="GET"))
    accepted(twilio_json_request(twilio_token, twilio_id, {"CallSid": "CA" + "0" * 32, "CallStatus": "ringing"}))

    seed = telnyx_seed()
    telnyx_id = random_id()
    gw.put_phone(telnyx_phone(telnyx_id, seed))
    accepted(telnyx_request(seed, telnyx_id, now=time.time()))

    exotel_token_id, exotel_ip_id, token = random_id(), random_id(), new_token()
    gw.put_phone(exotel_phone(exotel_token_id, token))
    gw.put_phone(exotel_phone(exotel_ip_id))
    accepted(exotel_request(exotel_token_id, token=token))
    accepted(exotel_request(exotel_token_id, token=token, kind="incoming", method="GET"))
    accepted(exotel_request(exotel_ip_id))

    events = stream_events(redis_sync)
    assert len(events) == sent
    for event in events:
        errors = sorted(validator.iter_errors(event), key=lambda e: list(e.path))
        assert not errors, (event["provider"], [f"{list(e.path)}: {e.message}" for e in errors])
    assert {e["provider"] for e in events} == {"plivo", "vobiz", "twilio", "telnyx", "exotel"}
    assert {e["kind"] for e in events} == {"incoming", "status", "voice"}
    assert {e["method"] for e in events} == {"GET", "POST"}
    assert any(e["key_fingerprint"] is None for e in events)  # Exotel IP-only
    assert all("token" not in e["params"] for e in events if e["provider"] == "exotel")


def test_schema_names_exactly_the_fields_events_py_writes(schema: dict[str, Any]) -> None:
    event = orjson.loads(_built(b"a=1"))
    assert set(schema["properties"]) == set(event) == set(schema["required"])
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    assert schema["additionalProperties"] is False


def _built(body: bytes, content_type: str = "application/x-www-form-urlencoded") -> bytes:
    inbound = InboundRequest(
        method="POST",
        scheme="https",
        netloc="hooks.example.com",
        raw_path="/exotel/status/ph_1",
        query_string="token=s3cret&b=2",
        headers={"content-type": content_type},
        body=body,
        client_ip="203.0.113.7",
        duplicate_headers=frozenset(),
    )
    return build_event(
        inbound,
        provider="exotel",
        phone_id="ph_1",
        kind="status",
        received_at=1_700_000_000.25,
        idempotency_key=None,
        key_fingerprint=None,
        redact=exotel.SPEC.secret_params,
    )


def test_a_body_that_is_not_utf8_travels_as_base64_and_validates(validator: Draft202012Validator) -> None:
    # (A form body must be UTF-8 — the gateway answers 400 otherwise — so only other bodies get here.)
    event = orjson.loads(_built(b"CallSid=\xff\xfe", "application/octet-stream"))
    assert event["body"] is None and event["body_base64"] == "Q2FsbFNpZD3//g=="
    validator.validate(event)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"schema_version": 2}, "an unknown version"),
        ({"id": "not-hex"}, "a malformed id"),
        ({"provider": "acme"}, "an unknown provider"),
        ({"body": None, "body_base64": None}, "no body at all"),
        ({"body": "x", "body_base64": "eA=="}, "both bodies"),
        ({"key_fingerprint": "secret-token-value"}, "a key instead of a fingerprint"),
        ({"params": {"a": 1}}, "a non-string parameter"),
        ({"extra": True}, "an undocumented field"),
    ],
)
def test_the_schema_refuses(change: dict[str, Any], why: str, validator: Draft202012Validator) -> None:
    event = orjson.loads(_built(b"a=1")) | change
    assert not validator.is_valid(event), why
