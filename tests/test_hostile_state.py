"""Hostile and damaged state through the real socket (issue 14, items 6, 8 and 10).

- forged traffic pins nothing: unknown ids that no phone can have are not cached;
- phone ids are matched whole (no trailing newline); `config` takes known fields only;
- a stored record that is not what the admin API wrote for its key (copied from another
  phone, not JSON, a field missing) fails closed exactly like an unknown phone, and the
  admin list skips and names it;
- fingerprints are keyed: a guess of a token cannot be checked against one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import orjson
import pytest
import redis

from gateway.cli import main as cli_main
from gateway.redis_keys import KeyNames
from tests.helpers.builders import new_token, plivo_phone, plivo_request
from tests.helpers.replies import stream_entries
from tests.helpers.support import KEK, RunningGateway, make_settings, run_gateway, send_as_carrier

NAMES = KeyNames()
STREAM = "gateway:events"


@pytest.fixture
def gw(redis_url: str) -> Iterator[RunningGateway]:
    with run_gateway(make_settings(redis_url)) as gateway:
        yield gateway


def refusal(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.text


def test_invalid_ids_on_the_wire_leave_the_key_store_cache_empty(gw: RunningGateway) -> None:
    components = gw.app.components
    assert components is not None
    for index in range(200):
        phone_id = "p" + "x" * 4000 + str(index)
        response = send_as_carrier(gw, plivo_request(new_token(), phone_id))
        assert response.status_code == 403
    for phone_id in ("ph_1%0A", "-ph", "ph%20x"):
        assert send_as_carrier(gw, plivo_request(new_token(), phone_id)).status_code == 403
    assert components.keystore.cache_usage()["absent"] == (0, 0)


def test_put_with_a_trailing_newline_in_the_id_is_refused(gw: RunningGateway, redis_sync: redis.Redis) -> None:
    phone = plivo_phone("abc", new_token())
    body = {k: phone[k] for k in ("provider", "credentials")}
    response = gw.admin("PUT", "/admin/phones/abc%0A", body)
    assert response.status_code == 422 and "phone_id" in response.json()["error"]
    assert redis_sync.keys("gateway:phone:*") == []


def test_unknown_config_fields_are_refused_and_not_stored(gw: RunningGateway, redis_sync: redis.Redis) -> None:
    secret = "plain-text-secret-" + new_token()
    phone = plivo_phone("ph_cfg", new_token(), dispatch_password=secret)
    response = gw.admin("PUT", "/admin/phones/ph_cfg", {k: phone[k] for k in ("provider", "credentials", "config")})
    assert response.status_code == 422
    assert "dispatch_password" in response.json()["error"] and secret not in response.text
    assert redis_sync.get(NAMES.phone("ph_cfg")) is None


def test_a_copied_record_is_answered_like_an_unknown_phone(gw: RunningGateway, redis_sync: redis.Redis) -> None:
    token = new_token()
    gw.put_phone(plivo_phone("ph_orig", token))
    redis_sync.set(NAMES.phone("ph_copy"), redis_sync.get(NAMES.phone("ph_orig")) or b"")
    redis_sync.sadd(NAMES.phone_index, "ph_copy")
    copied = send_as_carrier(gw, plivo_request(token, "ph_copy"))
    unknown = send_as_carrier(gw, plivo_request(token, "ph_nobody"))
    assert refusal(copied) == refusal(unknown) == (403, "forbidden\n")
    assert redis_sync.xlen(STREAM) == 0
    assert send_as_carrier(gw, plivo_request(token, "ph_orig")).status_code == 200


@pytest.mark.parametrize(
    "raw", [b"{not json", b'{"phone_id": "ph_bad", "provider": "plivo"}', b"[]"], ids=["json", "keys", "array"]
)
def test_an_invalid_record_fails_closed_and_the_list_reports_it(
    gw: RunningGateway, redis_sync: redis.Redis, raw: bytes
) -> None:
    token = new_token()
    gw.put_phone(plivo_phone("ph_good", token))
    redis_sync.set(NAMES.phone("ph_bad"), raw)
    redis_sync.sadd(NAMES.phone_index, "ph_bad")

    bad = send_as_carrier(gw, plivo_request(token, "ph_bad"))
    unknown = send_as_carrier(gw, plivo_request(token, "ph_nobody"))
    assert refusal(bad) == refusal(unknown) == (403, "forbidden\n")
    assert redis_sync.xlen(STREAM) == 0

    listing = gw.admin("GET", "/admin/phones")
    assert listing.status_code == 200
    assert [p["phone_id"] for p in listing.json()["phones"]] == ["ph_good"]
    assert listing.json()["invalid"] == ["ph_bad"]
    single = gw.admin("GET", "/admin/phones/ph_bad")
    assert single.status_code == 409 and single.json()["invalid"] == ["ph_bad"]

    # Repaired by a PUT: verifies again.
    repaired = gw.admin("PUT", "/admin/phones/ph_bad", {k: v for k, v in plivo_phone("x", token).items() if k != "id"})
    assert repaired.status_code == 200
    assert send_as_carrier(gw, plivo_request(token, "ph_bad")).status_code == 200
    assert gw.admin("GET", "/admin/phones").json()["invalid"] == []


def test_fingerprints_in_answers_and_events_are_keyed(gw: RunningGateway, redis_sync: redis.Redis) -> None:
    token = new_token()
    view = gw.put_phone(plivo_phone("ph_fp", token))
    assert send_as_carrier(gw, plivo_request(token, "ph_fp")).status_code == 200
    unkeyed = "fp_" + hashlib.blake2b(token.encode(), digest_size=8, person=b"gw-key-fp").hexdigest()
    (_, fields), *_ = stream_entries(redis_sync.xrange(STREAM))
    event = orjson.loads(fields[b"event"])
    assert event["key_fingerprint"] == view["credentials"]["auth_token"]["fingerprint"]
    assert unkeyed not in str(view) and event["key_fingerprint"] != unkeyed


def test_the_cli_lists_reseals_and_gets_around_an_invalid_record(
    redis_url: str, redis_sync: redis.Redis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_REDIS_URL", redis_url)
    monkeypatch.setenv("GATEWAY_KEK", KEK)
    monkeypatch.setenv("PLIVO_TOKEN", new_token())
    put = ["phones", "put", "ph_ok", "--provider", "plivo", "--credential", "auth_id=MA"]
    assert cli_main([*put, "--credential", "auth_token=env:PLIVO_TOKEN"]) == 0
    redis_sync.set(NAMES.phone("ph_bad"), b"{not json")
    redis_sync.sadd(NAMES.phone_index, "ph_bad")
    capsys.readouterr()
    assert cli_main(["phones", "list"]) == 0
    listing = orjson.loads(capsys.readouterr().out)
    assert [p["phone_id"] for p in listing["phones"]] == ["ph_ok"] and listing["invalid"] == ["ph_bad"]
    assert cli_main(["phones", "reseal"]) == 1  # reported: something needs the operator
    assert orjson.loads(capsys.readouterr().out)["invalid"] == ["ph_bad"]
    assert cli_main(["phones", "get", "ph_bad"]) == 2
    assert "not JSON" in capsys.readouterr().err
