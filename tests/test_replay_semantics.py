"""Replays and duplicates yield nothing new (issue 14, items 1, 2, 3 and 5).

Real gateway behind a real socket, real Redis. Each test sends one validly signed request,
then a copy changed in exactly one way, and checks the answer and that nothing new reached
the stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
import redis

from gateway.capability import verify_token
from gateway.providers import plivo, twilio, vobiz
from tests.helpers.builders import (
    new_token,
    plivo_params,
    plivo_phone,
    plivo_request,
    telnyx_event,
    telnyx_phone,
    telnyx_request,
    telnyx_seed,
    twilio_json_request,
    twilio_params,
    twilio_phone,
    twilio_request,
)
from tests.helpers.support import Clock, RunningGateway, make_settings, random_id, run_gateway, send_as_carrier

STREAM = "gateway:events"
NOW = 1_900_000_000.0


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture(scope="module")
def gw(redis_server: str, clock: Clock) -> Iterator[RunningGateway]:
    with run_gateway(make_settings(redis_server), clock=clock) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(redis_url: str, clock: Clock) -> None:
    clock.now = NOW  # redis_url flushed the database


def stream_length(redis_sync: redis.Redis) -> int:
    return int(redis_sync.xlen(STREAM))


def resplit(request: dict[str, Any], params: list[tuple[str, str]]) -> dict[str, Any]:
    """The same request (same signature headers) with another form body."""
    return {**request, "body": urlencode(params)}


def merged_twilio_params(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """CallStatus folded into CallSid: Twilio signs name+value concatenations, so the signed string is unchanged."""
    values = dict(params)
    merged = [(n, v) for n, v in params if n not in ("CallSid", "CallStatus")]
    merged.append(("CallSid", f"{values['CallSid']}CallStatus{values['CallStatus']}"))
    return merged


# ---- item 3: duplicates are detected on the signed content -----------------------------------


def test_a_resplit_twilio_copy_is_a_duplicate_not_a_second_event(gw: RunningGateway, redis_sync: redis.Redis) -> None:
    phone_id, token = random_id(), new_token()
    gw.put_phone(twilio_phone(phone_id, token))
    params = twilio_params(status="completed")
    request = twilio_request(token, phone_id, params=params)
    assert send_as_carrier(gw, request).status_code == 200
    copy = resplit(request, merged_twilio_params(params))
    url = request["url"]
    assert twilio.string_to_sign(url, params) == twilio.string_to_sign(url, merged_twilio_params(params))
    assert send_as_carrier(gw, copy).status_code == 200  # answered as the duplicate it is
    assert stream_length(redis_sync) == 1  # not forwarded again under its new idempotency key


def test_a_resplit_plivo_copy_after_its_nonce_expired_is_a_duplicate(
    gw: RunningGateway, redis_sync: redis.Redis
) -> None:
    phone_id, token = random_id(), new_token()
    gw.put_phone(plivo_phone(phone_id, token))
    params = plivo_params(status="completed")
    request = plivo_request(token, phone_id, params=params)
    assert send_as_carrier(gw, request).status_code == 200
    for key in redis_sync.scan_iter(match="*:nonce:*"):  # the nonce window is over
        redis_sync.delete(key)
    values = dict(params)
    # Plivo sorts the names: CallStatus, then CallUUID. Folded into one value, the call id is gone.
    merged = [(n, v) for n, v in params if n not in ("CallStatus", "CallUUID")]
    merged.append(("CallStatus", f"{values['CallStatus']}CallUUID{values['CallUUID']}"))
    url = request["url"]
    nonce = request["headers"]["X-Plivo-Signature-V3-Nonce"]
    assert plivo.v3_string_to_sign("POST", url, params, nonce) == plivo.v3_string_to_sign("POST", url, merged, nonce)
    assert send_as_carrier(gw, resplit(request, merged)).status_code == 200
    assert stream_length(redis_sync) == 1


def test_a_twilio_event_without_callsid_is_forwarded_once(gw: RunningGateway, redis_sync: redis.Redis) -> None:
    phone_id, token = random_id(), new_token()
    gw.put_phone(twilio_phone(phone_id, token))
    request = twilio_json_request(token, phone_id, {"EventType": "recording", "RecordingSid": "RE" + "1" * 32})
    assert send_as_carrier(gw, request).status_code == 200
    assert send_as_carrier(gw, request).status_code == 200  # a copy: answered, not forwarded
    assert stream_length(redis_sync) == 1
    entries: Any = redis_sync.xrange(STREAM)
    events = [orjson.loads(fields[b"event"]) for _id, fields in entries]
    assert events[0]["idempotency_key"] is None  # the envelope is unchanged: the identity is internal


def test_a_telnyx_event_without_data_id_is_forwarded_once(gw: RunningGateway, redis_sync: redis.Redis) -> None:
    phone_id, seed = random_id(), telnyx_seed()
    gw.put_phone(telnyx_phone(phone_id, seed))
    event = telnyx_event()
    del event["data"]["id"]
    request = telnyx_request(seed, phone_id, now=NOW, body=event)
    assert send_as_carrier(gw, request).status_code == 200
    assert send_as_carrier(gw, request).status_code == 200
    assert stream_length(redis_sync) == 1


def test_other_signed_content_without_a_key_is_another_event(gw: RunningGateway, redis_sync: redis.Redis) -> None:
    """The positive control: the signed-content identity does not merge different events."""
    phone_id, seed = random_id(), telnyx_seed()
    gw.put_phone(telnyx_phone(phone_id, seed))
    for _ in range(2):
        event = telnyx_event()
        del event["data"]["id"]
        assert send_as_carrier(gw, telnyx_request(seed, phone_id, now=NOW, body=event)).status_code == 200
    assert stream_length(redis_sync) == 2


# ---- item 2: a carrier's identical retry after a lost answer is a duplicate ------------------


def test_an_identical_plivo_retry_after_a_lost_answer_is_the_duplicate(
    gw: RunningGateway, redis_sync: redis.Redis
) -> None:
    """The event is in the stream, the carrier never got the 2xx and sends the same request
    (same nonce): answered 200 as that duplicate, not 403 replay, and not forwarded again."""
    phone_id, token = random_id(), new_token()
    gw.put_phone(plivo_phone(phone_id, token))
    request = plivo_request(token, phone_id)
    assert send_as_carrier(gw, request).status_code == 200  # the answer the carrier lost
    assert send_as_carrier(gw, request).status_code == 200
    assert stream_length(redis_sync) == 1


def test_a_seen_nonce_on_other_content_is_still_a_replay(gw: RunningGateway, redis_sync: redis.Redis) -> None:
    phone_id, token = random_id(), new_token()
    gw.put_phone(plivo_phone(phone_id, token))
    params = plivo_params()
    request = plivo_request(token, phone_id, params=params)
    nonce = request["headers"]["X-Plivo-Signature-V3-Nonce"]
    assert send_as_carrier(gw, request).status_code == 200
    # Signed with the same nonce, for the same call: other content all the same.
    same_call = plivo_request(token, phone_id, params=plivo_params(params[0][1], status="in-progress"), nonce=nonce)
    assert send_as_carrier(gw, same_call).status_code == 403
    assert send_as_carrier(gw, plivo_request(token, phone_id, nonce=nonce)).status_code == 403
    assert stream_length(redis_sync) == 1


def test_the_retry_of_a_resigned_duplicate_is_a_duplicate_too(gw: RunningGateway, redis_sync: redis.Redis) -> None:
    """Plivo re-signs a retry with a fresh nonce (a duplicate by its idempotency key); if that
    answer is lost too, its own identical retry is still the duplicate."""
    phone_id, token = random_id(), new_token()
    gw.put_phone(plivo_phone(phone_id, token))
    params = plivo_params()
    assert send_as_carrier(gw, plivo_request(token, phone_id, params=params)).status_code == 200
    resigned = plivo_request(token, phone_id, params=params)
    assert send_as_carrier(gw, resigned).status_code == 200
    assert send_as_carrier(gw, resigned).status_code == 200
    assert stream_length(redis_sync) == 1


# ---- item 5: Vobiz with both header families spends both nonces ------------------------------


def test_the_other_vobiz_header_family_cannot_be_replayed_with_another_body(
    gw: RunningGateway, redis_sync: redis.Redis
) -> None:
    """A Vobiz callback with both families, each with its own nonce: the Plivo-compatible one
    verifies; the Vobiz header and nonce, copied onto another body, must not verify a second event."""
    phone_id, token = random_id(), new_token()
    gw.put_phone(plivo_phone(phone_id, token, provider="vobiz"))
    request = plivo_request(token, phone_id)
    vobiz_nonce = "7" * 20
    vobiz_headers = {
        "X-Vobiz-Signature-V3": vobiz.sign_vobiz_v3(token, request["url"], vobiz_nonce),
        "X-Vobiz-Signature-V3-Nonce": vobiz_nonce,
    }
    both = {**request, "headers": {**request["headers"], **vobiz_headers}}
    assert send_as_carrier(gw, both).status_code == 200
    copied = {
        **request,
        "headers": {"Content-Type": "application/x-www-form-urlencoded", **vobiz_headers},
        "body": urlencode(plivo_params(status="completed")),  # Vobiz's own string does not cover the body
    }
    assert send_as_carrier(gw, copied).status_code == 403
    assert stream_length(redis_sync) == 1


def test_vobiz_with_one_nonce_in_both_families_is_accepted_once(gw: RunningGateway, redis_sync: redis.Redis) -> None:
    phone_id, token = random_id(), new_token()
    gw.put_phone(plivo_phone(phone_id, token, provider="vobiz"))
    request = plivo_request(token, phone_id)
    nonce = request["headers"]["X-Plivo-Signature-V3-Nonce"]
    request["headers"]["X-Vobiz-Signature-V3"] = vobiz.sign_vobiz_v3(token, request["url"], nonce)
    request["headers"]["X-Vobiz-Signature-V3-Nonce"] = nonce
    assert send_as_carrier(gw, request).status_code == 200
    assert stream_length(redis_sync) == 1


# ---- item 1: a duplicate yields nothing new ---------------------------------------------------

CAPABILITY_KEY = "c" * 64
TOKEN_TEMPLATE = (
    '<Response><Connect><Stream url="wss://agent.example.com/media">$stream_token</Stream></Connect></Response>'
)


@pytest.fixture(scope="module")
def template_gw(redis_server: str, clock: Clock) -> Iterator[RunningGateway]:
    settings = make_settings(
        redis_server, GATEWAY_CAPABILITY_KEY=CAPABILITY_KEY, GATEWAY_TWILIO_ANSWER_TEMPLATE=TOKEN_TEMPLATE
    )
    with run_gateway(settings, clock=clock) as running:
        yield running


def stream_token(answer: bytes) -> str:
    return answer.split(b'"wss://agent.example.com/media">', 1)[1].split(b"<", 1)[0].decode()


def test_a_copied_twilio_answer_request_gets_the_first_answer_byte_for_byte(
    template_gw: RunningGateway, clock: Clock, redis_sync: redis.Redis
) -> None:
    """Twilio signs no nonce and no time: a copy of its answer request used to mint a fresh
    $stream_token with a later expiry on every replay (75 s later here)."""
    phone_id, token = random_id(), new_token()
    template_gw.put_phone(twilio_phone(phone_id, token))
    params = twilio_params()
    request = twilio_request(token, phone_id, kind="incoming", params=params)
    clock.now = NOW
    first = send_as_carrier(template_gw, request)
    assert first.status_code == 200 and stream_token(first.content)
    clock.now = NOW + 75
    copy = send_as_carrier(template_gw, request)
    assert copy.status_code == 200
    assert copy.content == first.content
    assert copy.headers["content-type"] == first.headers["content-type"]
    assert stream_length(redis_sync) == 1


def test_a_resplit_answer_request_gets_no_later_token(
    template_gw: RunningGateway, clock: Clock, redis_sync: redis.Redis
) -> None:
    """A re-split copy renders its own (regrouped) call id, but its token is issued as of the
    first acceptance: it expires with the first answer's, never later."""
    phone_id, token = random_id(), new_token()
    template_gw.put_phone(twilio_phone(phone_id, token))
    params = twilio_params()
    request = twilio_request(token, phone_id, kind="incoming", params=params)
    first = send_as_carrier(template_gw, request)
    clock.now = NOW + 75
    merged = merged_twilio_params(params)
    copy = send_as_carrier(template_gw, resplit(request, merged))
    assert copy.status_code == 200
    first_expiry = verify_token(CAPABILITY_KEY, stream_token(first.content), dict(params)["CallSid"], phone_id, 0)
    copy_expiry = verify_token(CAPABILITY_KEY, stream_token(copy.content), dict(merged)["CallSid"], phone_id, 0)
    assert copy_expiry == first_expiry
    assert stream_length(redis_sync) == 1
