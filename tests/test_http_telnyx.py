"""Telnyx through the real app and socket: the shared contract, then Telnyx's own rules.

Signing rules (telnyx-python 4.189.0 `verify_webhook_signature`): Ed25519 over
"{telnyx-timestamp}|{raw body}", timestamp within 300 s either way (inclusive, on
int(now)). Without a phone id in the path, the phone is found from the event's number.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import orjson
import pytest
import redis

from tests.helpers.builders import (
    telnyx_body,
    telnyx_event,
    telnyx_number,
    telnyx_phone,
    telnyx_request,
    telnyx_seed,
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
from tests.helpers.replies import stream_entries
from tests.helpers.support import Clock, make_settings, random_id, run_gateway

SIGNATURE = "telnyx-signature-ed25519"
TIMESTAMP = "telnyx-timestamp"
NOW = 1_795_000_885.0


@pytest.fixture(scope="module")
def gateway(redis_server: str) -> Iterator[Gateway]:
    yield from start_gateway(redis_server)


class TelnyxAdapter(CarrierAdapter):
    provider = "telnyx"

    def new_secret(self) -> str:
        return telnyx_seed()

    def phone(self, phone_id: str, secret: str) -> dict[str, Any]:
        return telnyx_phone(phone_id, secret)

    def request(self, phone_id: str, secret: str, now: float, *, event: str | None = None) -> Request:
        return telnyx_request(secret, phone_id, now=now, body=telnyx_event(event))

    def redeliver(self, request: Request, secret: str, now: float) -> Request:
        """Telnyx's retry: same data.id, next attempt, signed again a little later."""
        document = telnyx_body(request)
        document["meta"]["attempt"] += 1
        phone_id = request["url"].rsplit("/", 1)[1]
        return telnyx_request(secret, phone_id, now=now, body=document, ts_offset=5)

    def forge(self, request: Request) -> None:
        request["headers"][SIGNATURE] = base64.b64encode(secrets.token_bytes(64)).decode()

    def tamper(self, request: Request) -> None:
        request["body"] = request["body"].replace(b"call.initiated", b"call.hangup")

    def malformations(self) -> dict[str, Change]:
        def set_header(name: str, value: str | bytes) -> Change:
            def change(r: Request) -> None:
                r["headers"][name] = value

            return change

        def truncated(r: Request) -> None:
            raw = base64.b64decode(r["headers"][SIGNATURE])
            r["headers"][SIGNATURE] = base64.b64encode(raw[:63]).decode()

        def padded(r: Request) -> None:
            raw = base64.b64decode(r["headers"][SIGNATURE])
            r["headers"][SIGNATURE] = base64.b64encode(raw + b"\0").decode()

        return {
            "signature_not_base64": set_header(SIGNATURE, "!!not base64!!"),
            "signature_bad_padding": set_header(SIGNATURE, "abc"),
            "signature_63_bytes": truncated,
            "signature_65_bytes": padded,
            "signature_non_ascii": set_header(SIGNATURE, b"\xe9" * 88),
            "timestamp_not_integer": set_header(TIMESTAMP, "yesterday"),
            "timestamp_float": set_header(TIMESTAMP, "1795000885.5"),
            "timestamp_huge": set_header(TIMESTAMP, "9" * 400),
            "timestamp_non_ascii": set_header(TIMESTAMP, b"\xe9\xe9"),
            "timestamp_empty": set_header(TIMESTAMP, ""),
            "signature_empty": set_header(SIGNATURE, ""),
        }

    def strip(self, request: Request) -> None:
        del request["headers"][SIGNATURE]


class TestTelnyxContract(CarrierContract):
    adapter: ClassVar[CarrierAdapter] = TelnyxAdapter()


# ---- Telnyx's own rules -----------------------------------------------------------------


class Phone:
    def __init__(self, phone_id: str, seed: str, number: str | None = None) -> None:
        self.id = phone_id
        self.seed = seed
        self.number = number


@pytest.fixture
def phone(gateway: Gateway, redis_url: str) -> Iterator[Phone]:
    gateway.clock.now = NOW
    phone = Phone(random_id("ph_telnyx"), telnyx_seed(), telnyx_number())
    gateway.gw.put_phone(telnyx_phone(phone.id, phone.seed, number=phone.number))
    yield phone
    gateway.clock.now = None


def test_path_route_event(gateway: Gateway, phone: Phone, redis_sync: redis.Redis) -> None:
    document = telnyx_event()
    request = telnyx_request(phone.seed, phone.id, now=NOW, body=document)
    response = gateway.send(request)
    assert response.status_code == 200
    (event,) = assert_stream_holds(redis_sync, [request])
    assert event["kind"] == "voice"
    assert event["phone_id"] == phone.id
    assert event["idempotency_key"] == document["data"]["id"]
    assert event["key_fingerprint"].startswith("fp_")
    assert event["content_type"] == "application/json"
    assert event["received_at"] == NOW


@pytest.mark.parametrize("offset", [-300, -299, 0, 299, 300])
def test_inside_tolerance_window_accepted(gateway: Gateway, phone: Phone, redis_sync: redis.Redis, offset: int) -> None:
    request = telnyx_request(phone.seed, phone.id, now=NOW, ts_offset=offset)
    assert gateway.send(request).status_code == 200
    assert_stream_holds(redis_sync, [request])


@pytest.mark.parametrize("offset", [-301, 301, -600, 86_400])
def test_outside_tolerance_window_rejected(
    gateway: Gateway, phone: Phone, redis_sync: redis.Redis, offset: int
) -> None:
    request = telnyx_request(phone.seed, phone.id, now=NOW, ts_offset=offset)
    assert gateway.send(request).status_code == 403
    assert_stream_holds(redis_sync, [])


def test_window_is_measured_on_whole_seconds_like_the_sdk(
    gateway: Gateway, phone: Phone, redis_sync: redis.Redis
) -> None:
    """The SDK compares int(time.time()): at now = T + 0.9, T - 300 is still inside and T + 301 is not."""
    gateway.clock.now = NOW + 0.9
    edge = telnyx_request(phone.seed, phone.id, now=NOW, ts_offset=-300)
    ahead = telnyx_request(phone.seed, phone.id, now=NOW, ts_offset=301)
    assert gateway.send(edge).status_code == 200
    assert gateway.send(ahead).status_code == 403
    assert_stream_holds(redis_sync, [edge])


def test_same_request_accepted_until_it_goes_stale(gateway: Gateway, phone: Phone, redis_sync: redis.Redis) -> None:
    request = telnyx_request(phone.seed, phone.id, now=NOW)
    assert gateway.send(request).status_code == 200
    gateway.clock.now = NOW + 300
    assert gateway.send(request).status_code == 200  # a duplicate: answered, not forwarded
    gateway.clock.now = NOW + 301
    assert gateway.send(request).status_code == 403
    assert_stream_holds(redis_sync, [request])


def test_signature_over_another_timestamp_rejected(gateway: Gateway, phone: Phone, redis_sync: redis.Redis) -> None:
    request = telnyx_request(phone.seed, phone.id, now=NOW, signed_timestamp=str(int(NOW) - 1))
    assert gateway.send(request).status_code == 403
    # The timestamp header is signed exactly as sent: "01795000885" parses to the same int but is
    # not the text that was signed.
    padded = telnyx_request(phone.seed, phone.id, now=NOW)
    padded["headers"][TIMESTAMP] = "0" + padded["headers"][TIMESTAMP]
    assert gateway.send(padded).status_code == 403
    assert_stream_holds(redis_sync, [])


def test_timestamp_header_signed_as_received(gateway: Gateway, phone: Phone, redis_sync: redis.Redis) -> None:
    """int() accepts '+1795000885'; signed over that text, the SDK accepts it, and so do we."""
    stamp = f"+{int(NOW)}"
    request = telnyx_request(phone.seed, phone.id, now=NOW, signed_timestamp=stamp)
    request["headers"][TIMESTAMP] = stamp
    assert gateway.send(request).status_code == 200
    assert_stream_holds(redis_sync, [request])


@pytest.mark.parametrize("header", [SIGNATURE, TIMESTAMP])
def test_missing_header_unauthorized(gateway: Gateway, phone: Phone, redis_sync: redis.Redis, header: str) -> None:
    request = telnyx_request(phone.seed, phone.id, now=NOW)
    del request["headers"][header]
    assert gateway.send(request).status_code == 401
    assert_stream_holds(redis_sync, [])


def test_unicode_body_verified_over_its_bytes(gateway: Gateway, phone: Phone, redis_sync: redis.Redis) -> None:
    document = telnyx_event()
    document["data"]["payload"]["client_state"] = "héllo – 你好 🎉"
    request = telnyx_request(phone.seed, phone.id, now=NOW, body=document)
    assert gateway.send(request).status_code == 200
    (event,) = assert_stream_holds(redis_sync, [request])
    assert orjson.loads(event["body"])["data"]["payload"]["client_state"] == "héllo – 你好 🎉"


# ---- bodies that are not UTF-8 -----------------------------------------------------------


def _non_utf8_body() -> bytes:
    return b'{"data": {"id": "' + secrets.token_hex(8).encode() + b'", "note": "\xff\xfe\xc3("}}'


def test_signed_non_utf8_body_refused_like_the_sdk(gateway: Gateway, phone: Phone, redis_sync: redis.Redis) -> None:
    """telnyx-python decodes the payload as UTF-8 before verifying, so it never accepts other bytes.
    The gateway refuses such a body (400), signed or not, and never answers 500."""
    body = _non_utf8_body()
    signed = telnyx_request(phone.seed, phone.id, now=NOW, body=body)
    assert gateway.send(signed).status_code == 400
    tampered = telnyx_request(phone.seed, phone.id, now=NOW, body=body)
    tampered["body"] = body.replace(b"\xff", b"\xfd")
    assert gateway.send(tampered).status_code in (400, 403)
    by_number = telnyx_request(phone.seed, None, now=NOW, body=body)
    assert gateway.send(by_number).status_code in (400, 403)
    assert_stream_holds(redis_sync, [])


# ---- phone found by number ---------------------------------------------------------------


def test_phone_found_by_number(gateway: Gateway, phone: Phone, redis_sync: redis.Redis) -> None:
    assert phone.number is not None
    incoming = telnyx_request(phone.seed, None, now=NOW, body=telnyx_event(to=phone.number))
    outgoing = telnyx_request(
        phone.seed, None, now=NOW, body=telnyx_event(from_=phone.number, to="+14155550199", direction="outgoing")
    )
    # Later events of a call carry no direction: `to`, then `from`.
    hangup = telnyx_request(
        phone.seed,
        None,
        now=NOW,
        body=telnyx_event(event_type="call.hangup", from_=phone.number, to="+14155550199", direction=None),
    )
    for request in (incoming, outgoing, hangup):
        assert gateway.send(request).status_code == 200
    events = assert_stream_holds(redis_sync, [incoming, outgoing, hangup])
    assert {e["phone_id"] for e in events} == {phone.id}
    assert all(e["path"] == "/webhooks/telnyx/voice" for e in events)


def test_number_route_verifies_with_that_phones_key_only(
    gateway: Gateway, phone: Phone, redis_sync: redis.Redis
) -> None:
    other_number = telnyx_number()
    other = Phone(random_id("ph_telnyx"), telnyx_seed(), other_number)
    gateway.gw.put_phone(telnyx_phone(other.id, other.seed, number=other.number))
    assert phone.number is not None
    # Signed by the other phone's account, about this phone's number: refused.
    request = telnyx_request(other.seed, None, now=NOW, body=telnyx_event(to=phone.number))
    assert gateway.send(request).status_code == 403
    # The other party's number is never a candidate: an inbound call FROM the other phone's number
    # to this phone is this phone's event, verified with this phone's key.
    inbound = telnyx_request(phone.seed, None, now=NOW, body=telnyx_event(to=phone.number, from_=other_number))
    assert gateway.send(inbound).status_code == 200
    spoof = telnyx_request(other.seed, None, now=NOW, body=telnyx_event(to=phone.number, from_=other_number))
    assert gateway.send(spoof).status_code == 403
    (event,) = assert_stream_holds(redis_sync, [inbound])
    assert event["phone_id"] == phone.id


def test_unknown_number_answered_like_bad_signature(gateway: Gateway, phone: Phone, redis_sync: redis.Redis) -> None:
    assert phone.number is not None
    unknown = gateway.send(telnyx_request(phone.seed, None, now=NOW, body=telnyx_event(to=telnyx_number())))
    bad = gateway.send(telnyx_request(telnyx_seed(), None, now=NOW, body=telnyx_event(to=phone.number)))
    assert (unknown.status_code, unknown.content) == (bad.status_code, bad.content) == (403, b"forbidden\n")
    unsigned_unknown = telnyx_request(phone.seed, None, now=NOW, body=telnyx_event(to=telnyx_number()))
    unsigned_known = telnyx_request(phone.seed, None, now=NOW, body=telnyx_event(to=phone.number))
    for request in (unsigned_unknown, unsigned_known):
        del request["headers"][SIGNATURE]
    assert gateway.send(unsigned_unknown).status_code == gateway.send(unsigned_known).status_code == 401
    assert_stream_holds(redis_sync, [])


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"{",
        b"[]",
        b'"just a string"',
        b'{"data": null}',
        b'{"data": {"payload": "x"}}',
        b'{"data": {"payload": {"to": 14155550101}}}',
        b'{"data": {"payload": {"to": "sip:alice@example.com"}}}',
        b"[" * 5000 + b"]" * 5000,
        b'{"data": {"payload": {"to": "+1' + b"9" * 40 + b'"}}}',
    ],
    ids=lambda b: repr(b[:24]),
)
def test_unparsable_body_on_number_route_rejected(
    gateway: Gateway, phone: Phone, redis_sync: redis.Redis, body: bytes
) -> None:
    """Signed, but no phone can be found from it: refused with a 4xx, never a 500."""
    response = gateway.send(telnyx_request(phone.seed, None, now=NOW, body=body))
    assert 400 <= response.status_code < 500, response.status_code
    assert_stream_holds(redis_sync, [])


def test_number_index_follows_number_changes_and_deletes(
    gateway: Gateway, phone: Phone, redis_sync: redis.Redis
) -> None:
    old_number, new_number = phone.number, telnyx_number()
    assert old_number is not None

    def send(number: str) -> int:
        return int(gateway.send(telnyx_request(phone.seed, None, now=NOW, body=telnyx_event(to=number))).status_code)

    assert send(old_number) == 200
    assert send(new_number) == 403  # also caches "unknown" for new_number: the change must drop it
    gateway.gw.put_phone(telnyx_phone(phone.id, phone.seed, number=new_number))
    assert send(new_number) == 200
    assert send(old_number) == 403
    # Another phone may now take the old number; events for it are verified with ITS key.
    other = Phone(random_id("ph_telnyx"), telnyx_seed(), old_number)
    gateway.gw.put_phone(telnyx_phone(other.id, other.seed, number=old_number))
    assert send(old_number) == 403
    taken = telnyx_request(other.seed, None, now=NOW, body=telnyx_event(to=old_number))
    assert gateway.send(taken).status_code == 200
    # Removing the number from the record drops it from the index.
    gateway.gw.put_phone(telnyx_phone(phone.id, phone.seed))
    assert send(new_number) == 403
    # Deleting a phone drops its number.
    assert gateway.gw.admin("DELETE", f"/admin/phones/{other.id}").status_code == 204
    gone = telnyx_request(other.seed, None, now=NOW, body=telnyx_event(to=old_number))
    assert gateway.send(gone).status_code == 403
    assert redis_sync.get(f"gateway:number:{old_number}") is None
    assert redis_sync.get(f"gateway:number:{new_number}") is None
    events = stream_entries(redis_sync.xrange("gateway:events"))
    assert [orjson.loads(fields[b"event"])["phone_id"] for _id, fields in events] == [phone.id, phone.id, other.id]


def test_number_taken_by_another_phone_is_a_conflict(gateway: Gateway, phone: Phone) -> None:
    other_id = random_id("ph_telnyx")
    body = telnyx_phone(other_id, telnyx_seed(), number=phone.number)
    response = gateway.gw.admin(
        "PUT", f"/admin/phones/{other_id}", {k: body[k] for k in ("provider", "credentials", "config")}
    )
    assert response.status_code == 409
    assert gateway.gw.admin("GET", f"/admin/phones/{other_id}").status_code == 404


def test_number_of_a_non_telnyx_phone_is_unknown_here(gateway: Gateway, phone: Phone, redis_sync: redis.Redis) -> None:
    from tests.helpers.builders import new_token, twilio_phone

    number = telnyx_number()
    twilio_id = random_id("ph_twilio")
    gateway.gw.put_phone(twilio_phone(twilio_id, new_token(), number=number))
    response = gateway.send(telnyx_request(phone.seed, None, now=NOW, body=telnyx_event(to=number)))
    assert response.status_code == 403
    assert_stream_holds(redis_sync, [])


def test_path_route_ignores_number_in_body(gateway: Gateway, phone: Phone, redis_sync: redis.Redis) -> None:
    other = Phone(random_id("ph_telnyx"), telnyx_seed(), telnyx_number())
    gateway.gw.put_phone(telnyx_phone(other.id, other.seed, number=other.number))
    assert other.number is not None
    # On the path route the path decides: this phone's key, whatever number the body names.
    request = telnyx_request(phone.seed, phone.id, now=NOW, body=telnyx_event(to=other.number))
    assert gateway.send(request).status_code == 200
    forged = telnyx_request(other.seed, phone.id, now=NOW, body=telnyx_event(to=other.number))
    assert gateway.send(forged).status_code == 403
    (event,) = assert_stream_holds(redis_sync, [request])
    assert event["phone_id"] == phone.id


# ---- GATEWAY_TELNYX_TOLERANCE_S -----------------------------------------------------------


def test_tolerance_setting_honoured(redis_url: str, redis_sync: redis.Redis) -> None:
    clock = Clock(NOW)
    with run_gateway(make_settings(redis_url, GATEWAY_TELNYX_TOLERANCE_S="60"), clock=clock) as gw:
        gateway = Gateway(gw, clock)
        seed, phone_id = telnyx_seed(), random_id("ph_telnyx")
        gw.put_phone(telnyx_phone(phone_id, seed))
        accepted = []
        for offset, expected in ((-60, 200), (60, 200), (-61, 403), (61, 403), (-300, 403)):
            request = telnyx_request(seed, phone_id, now=NOW, ts_offset=offset)
            assert gateway.send(request).status_code == expected, offset
            if expected == 200:
                accepted.append(request)
        assert_stream_holds(redis_sync, accepted)


def test_clock_is_real_time_by_default(gateway: Gateway, redis_url: str, redis_sync: redis.Redis) -> None:
    gateway.clock.now = None
    seed, phone_id = telnyx_seed(), random_id("ph_telnyx")
    gateway.gw.put_phone(telnyx_phone(phone_id, seed))
    request = telnyx_request(seed, phone_id, now=time.time())
    assert gateway.send(request).status_code == 200
    assert_stream_holds(redis_sync, [request])
