"""Plivo/Vobiz through the real app and socket: each rule has a negative test that changes one thing."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
import redis

from tests.helpers.builders import new_token, plivo_params, plivo_phone, plivo_request
from tests.helpers.replies import stream_entries
from tests.helpers.support import RunningGateway, make_settings, random_id, run_gateway, send_as_carrier

STREAM = "gateway:events"


@pytest.fixture(scope="module")
def gw(redis_server: str) -> Iterator[RunningGateway]:
    with run_gateway(make_settings(redis_server)) as running:
        yield running


@pytest.fixture
def phone(gw: RunningGateway, redis_url: str) -> dict[str, Any]:
    phone = plivo_phone(random_id(), new_token())
    gw.put_phone(phone)
    return phone


def token_of(phone: dict[str, Any]) -> str:
    return str(phone["credentials"]["auth_token"])


def stream_len(redis_sync: redis.Redis) -> int:
    return int(redis_sync.xlen(STREAM))


def test_valid_status_callback_is_forwarded(gw: RunningGateway, phone: dict[str, Any], redis_sync: redis.Redis) -> None:
    request = plivo_request(token_of(phone), phone["id"])
    response = send_as_carrier(gw, request)
    assert response.status_code == 200
    assert response.content == b""
    entries = stream_entries(redis_sync.xrange(STREAM))
    assert len(entries) == 1
    event = orjson.loads(entries[0][1][b"event"])
    assert event["phone_id"] == phone["id"]
    assert event["kind"] == "status"
    assert event["params"]["CallStatus"] == "ringing"
    assert event["idempotency_key"] is not None
    assert event["key_fingerprint"].startswith("fp_")
    assert event["source_ip"] == "198.51.100.20"
    assert token_of(phone) not in entries[0][1][b"event"].decode()


def test_answer_url_gets_plivo_xml(gw: RunningGateway, phone: dict[str, Any]) -> None:
    response = send_as_carrier(gw, plivo_request(token_of(phone), phone["id"], kind="incoming"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    assert b"<Response>" in response.content


def test_phone_answer_template_rendered_escaped(gw: RunningGateway, redis_url: str) -> None:
    phone = plivo_phone(random_id(), new_token(), answer_template="<Response><Speak>$call_id</Speak></Response>")
    gw.put_phone(phone)
    params = plivo_params(call_uuid="a<b>&c")
    response = send_as_carrier(gw, plivo_request(token_of(phone), phone["id"], kind="incoming", params=params))
    assert response.status_code == 200
    assert response.content == b"<Response><Speak>a&lt;b&gt;&amp;c</Speak></Response>"


def test_get_with_query_is_verified(gw: RunningGateway, phone: dict[str, Any], redis_sync: redis.Redis) -> None:
    request = plivo_request(token_of(phone), phone["id"], method="GET", query="CallUUID=abc-1&CallStatus=ringing")
    assert send_as_carrier(gw, request).status_code == 200
    assert stream_len(redis_sync) == 1


# ---- one change at a time --------------------------------------------------------------


def _tamper_body(r: dict[str, Any]) -> None:
    r["body"] = r["body"].replace("ringing", "completed")


def _add_param(r: dict[str, Any]) -> None:
    r["body"] += "&Extra=1"


def _drop_param(r: dict[str, Any]) -> None:
    r["body"] = "&".join(r["body"].split("&")[:-1])


def _scheme(r: dict[str, Any]) -> None:
    r["url"] = r["url"].replace("https://", "http://")


def _host(r: dict[str, Any]) -> None:
    r["url"] = r["url"].replace("hooks.example.com", "evil.example.com")


def _port(r: dict[str, Any]) -> None:
    r["url"] = r["url"].replace("hooks.example.com", "hooks.example.com:443")


def _path(r: dict[str, Any]) -> None:
    r["url"] = r["url"].replace("/status/", "/incoming/")


def _add_query(r: dict[str, Any]) -> None:
    r["url"] += "?x=1"


def _nonce(r: dict[str, Any]) -> None:
    r["headers"]["X-Plivo-Signature-V3-Nonce"] += "1"


def _garble(r: dict[str, Any]) -> None:
    r["headers"]["X-Plivo-Signature-V3"] = "%%%not-base64%%%"


def _truncate(r: dict[str, Any]) -> None:
    r["headers"]["X-Plivo-Signature-V3"] = r["headers"]["X-Plivo-Signature-V3"][:-4]


def _method(r: dict[str, Any]) -> None:
    r["method"] = "GET"
    r["url"] += "?" + r["body"]
    r["body"] = ""


def _downgrade_v2(r: dict[str, Any]) -> None:
    r["headers"]["X-Plivo-Signature-V2"] = r["headers"].pop("X-Plivo-Signature-V3")
    r["headers"]["X-Plivo-Signature-V2-Nonce"] = r["headers"].pop("X-Plivo-Signature-V3-Nonce")


@pytest.mark.parametrize(
    "change",
    [
        _tamper_body,
        _add_param,
        _drop_param,
        _scheme,
        _host,
        _port,
        _path,
        _add_query,
        _nonce,
        _garble,
        _truncate,
        _method,
    ],
)
def test_one_change_is_rejected(
    gw: RunningGateway, phone: dict[str, Any], redis_sync: redis.Redis, change: Any
) -> None:
    request = plivo_request(token_of(phone), phone["id"])
    change(request)
    assert send_as_carrier(gw, request).status_code == 403
    assert stream_len(redis_sync) == 0


@pytest.mark.parametrize("header", ["X-Plivo-Signature-V3", "X-Plivo-Signature-V3-Nonce"])
def test_missing_header_is_unauthorized(
    gw: RunningGateway, phone: dict[str, Any], redis_sync: redis.Redis, header: str
) -> None:
    request = plivo_request(token_of(phone), phone["id"])
    del request["headers"][header]
    assert send_as_carrier(gw, request).status_code == 401
    assert stream_len(redis_sync) == 0


def test_empty_signature_header_rejected(gw: RunningGateway, phone: dict[str, Any], redis_sync: redis.Redis) -> None:
    request = plivo_request(token_of(phone), phone["id"])
    request["headers"]["X-Plivo-Signature-V3"] = ""
    assert send_as_carrier(gw, request).status_code in (401, 403)
    assert stream_len(redis_sync) == 0


def test_v2_downgrade_rejected(gw: RunningGateway, phone: dict[str, Any], redis_sync: redis.Redis) -> None:
    request = plivo_request(token_of(phone), phone["id"])
    _downgrade_v2(request)
    assert send_as_carrier(gw, request).status_code == 401
    assert stream_len(redis_sync) == 0


def test_wrong_token_rejected(gw: RunningGateway, phone: dict[str, Any], redis_sync: redis.Redis) -> None:
    assert send_as_carrier(gw, plivo_request(new_token(), phone["id"])).status_code == 403
    assert stream_len(redis_sync) == 0


def test_duplicated_signature_header_rejected(
    gw: RunningGateway, phone: dict[str, Any], redis_sync: redis.Redis
) -> None:
    request = plivo_request(token_of(phone), phone["id"])
    signature = request["headers"]["X-Plivo-Signature-V3"]
    url = request["url"].removeprefix("https://hooks.example.com")
    headers = [(k, v) for k, v in request["headers"].items()] + [("X-Plivo-Signature-V3", signature)]
    headers += [("x-forwarded-proto", "https"), ("x-forwarded-host", "hooks.example.com")]
    response = gw.client.post(url, headers=headers, content=request["body"])
    assert response.status_code == 403
    assert stream_len(redis_sync) == 0


def test_query_reordered_verifies_like_the_sdk(
    gw: RunningGateway, phone: dict[str, Any], redis_sync: redis.Redis
) -> None:
    """plivo-python sorts decoded query values: order and %20-vs-+ encoding do not matter; values do."""
    request = plivo_request(token_of(phone), phone["id"], query="b=2&a=x%20y")
    reordered = copy.deepcopy(request)
    reordered["url"] = reordered["url"].replace("b=2&a=x%20y", "a=x+y&b=2")
    assert send_as_carrier(gw, reordered).status_code == 200
    changed = plivo_request(token_of(phone), phone["id"], query="b=2&a=x%20y")
    changed["url"] = changed["url"].replace("b=2", "b=3")
    assert send_as_carrier(gw, changed).status_code == 403
    assert stream_len(redis_sync) == 1


def test_replayed_nonce_rejected(gw: RunningGateway, phone: dict[str, Any], redis_sync: redis.Redis) -> None:
    request = plivo_request(token_of(phone), phone["id"])
    assert send_as_carrier(gw, request).status_code == 200
    # The identical copy (a carrier's retry after a lost answer) is the duplicate of the event
    # already forwarded (issue 14 item 2); the same nonce on any other content is a replay.
    assert send_as_carrier(gw, request).status_code == 200
    other = plivo_request(token_of(phone), phone["id"], nonce=request["headers"]["X-Plivo-Signature-V3-Nonce"])
    assert send_as_carrier(gw, other).status_code == 403
    assert stream_len(redis_sync) == 1


def test_carrier_retry_is_answered_but_not_forwarded_twice(
    gw: RunningGateway, phone: dict[str, Any], redis_sync: redis.Redis
) -> None:
    params = plivo_params()
    first = plivo_request(token_of(phone), phone["id"], params=params)
    retry = plivo_request(token_of(phone), phone["id"], params=params)  # same event, fresh nonce
    assert send_as_carrier(gw, first).status_code == 200
    assert send_as_carrier(gw, retry).status_code == 200
    assert stream_len(redis_sync) == 1
    next_status = plivo_request(token_of(phone), phone["id"], params=plivo_params(params[0][1], status="in-progress"))
    assert send_as_carrier(gw, next_status).status_code == 200
    assert stream_len(redis_sync) == 2


def test_unknown_phone_answered_like_bad_signature(
    gw: RunningGateway, phone: dict[str, Any], redis_sync: redis.Redis
) -> None:
    bad_signature = send_as_carrier(gw, plivo_request(new_token(), phone["id"]))
    unknown = send_as_carrier(gw, plivo_request(token_of(phone), random_id("ph_nobody")))
    assert (
        (unknown.status_code, unknown.content)
        == (bad_signature.status_code, bad_signature.content)
        == (
            403,
            b"forbidden\n",
        )
    )
    unsigned_known = plivo_request(token_of(phone), phone["id"])
    unsigned_unknown = plivo_request(token_of(phone), random_id("ph_nobody"))
    for request in (unsigned_known, unsigned_unknown):
        del request["headers"]["X-Plivo-Signature-V3"]
    assert send_as_carrier(gw, unsigned_known).status_code == send_as_carrier(gw, unsigned_unknown).status_code == 401
    assert stream_len(redis_sync) == 0


def test_phone_of_another_carrier_is_treated_as_unknown(gw: RunningGateway, redis_sync: redis.Redis) -> None:
    token = new_token()
    phone_id = random_id()
    gw.put_phone({"id": phone_id, "provider": "twilio", "credentials": {"account_sid": "AC1", "auth_token": token}})
    assert send_as_carrier(gw, plivo_request(token, phone_id)).status_code == 403
    assert stream_len(redis_sync) == 0


def test_rotated_key_old_and_new_verify_until_expiry(gw: RunningGateway, redis_sync: redis.Redis) -> None:
    old, new = new_token(), new_token()
    phone = plivo_phone(random_id(), old)
    gw.put_phone(phone)
    body = {
        "provider": "plivo",
        "credentials": {"auth_id": "MAEXAMPLE", "auth_token": new},
        "rotation": {"keep_previous_s": 3600},
    }
    assert gw.admin("PUT", f"/admin/phones/{phone['id']}", body).status_code == 200
    assert send_as_carrier(gw, plivo_request(old, phone["id"])).status_code == 200
    assert send_as_carrier(gw, plivo_request(new, phone["id"])).status_code == 200
    body.pop("rotation")  # replacing without a grace period retires the old key at once
    assert gw.admin("PUT", f"/admin/phones/{phone['id']}", body).status_code == 200
    assert send_as_carrier(gw, plivo_request(old, phone["id"])).status_code == 403
    assert send_as_carrier(gw, plivo_request(new, phone["id"])).status_code == 200
    assert stream_len(redis_sync) == 3


def test_vobiz_phone_accepts_both_header_families(gw: RunningGateway, redis_sync: redis.Redis) -> None:
    from gateway.providers import vobiz

    token = new_token()
    phone = plivo_phone(random_id(), token, provider="vobiz")
    gw.put_phone(phone)
    assert send_as_carrier(gw, plivo_request(token, phone["id"])).status_code == 200
    request = plivo_request(token, phone["id"])
    nonce = "9" * 20
    request["headers"] = {
        "X-Vobiz-Signature-V3": vobiz.sign_vobiz_v3(token, request["url"], nonce),
        "X-Vobiz-Signature-V3-Nonce": nonce,
        "Content-Type": "application/x-www-form-urlencoded",
    }
    assert send_as_carrier(gw, request).status_code == 200
    other_body = {**request, "body": urlencode(plivo_params())}  # Vobiz's own header does not cover the body
    assert send_as_carrier(gw, other_body).status_code == 403  # Vobiz nonce is single-use too
    assert stream_len(redis_sync) == 2


def test_method_not_allowed(gw: RunningGateway, phone: dict[str, Any]) -> None:
    response = gw.client.put(f"/plivo/status/{phone['id']}", content=b"x")
    assert response.status_code == 405
