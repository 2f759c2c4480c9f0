"""Exotel through the real app and socket: the shared contract, then Exotel's own rules.

Exotel does not sign callbacks. The gateway fails closed: the client address must be in
the allowlist (EXOTEL_ALLOWED_IPS) and, when the phone has `exotel_webhook_token`, `?token=`
must match one of its active tokens. The client address is the socket peer, or, only when
the peer is a trusted proxy, the right-most untrusted X-Forwarded-For hop.
"""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson
import pytest
import redis

from tests.helpers.builders import (
    EXOTEL_IP,
    exotel_call_sid,
    exotel_params,
    exotel_passthru_params,
    exotel_phone,
    exotel_request,
    exotel_token,
    new_token,
    twilio_phone,
    twilio_request,
)
from tests.helpers.contract import (
    STREAM,
    CarrierAdapter,
    CarrierContract,
    Change,
    Gateway,
    Request,
    assert_stream_holds,
    start_gateway,
    stream_events,
)
from tests.helpers.replies import stream_entries
from tests.helpers.support import Clock, make_settings, random_id, run_gateway, send_as_carrier

# 127.0.0.1 (the test client) and 192.0.2.0/24 (a chain of load balancers) are trusted proxies.
TRUSTED = "127.0.0.1/32,192.0.2.0/24"
ALLOWED = "203.0.113.0/24,2001:db8::/32"


@pytest.fixture(scope="module")
def gateway(redis_server: str) -> Iterator[Gateway]:
    yield from start_gateway(redis_server, GATEWAY_TRUSTED_PROXIES=TRUSTED, EXOTEL_ALLOWED_IPS=ALLOWED)


def _set_token(request: Request, value: str | None) -> None:
    """Replace (or, with None, remove) the `token=` item of the URL's query, keeping the rest."""
    base, _, query = request["url"].partition("?")
    parts = [p for p in query.split("&") if p and not p.startswith("token=")]
    if value is not None:
        parts.insert(0, f"token={value}")
    request["url"] = base + ("?" + "&".join(parts) if parts else "")


def _token_of(request: Request) -> str:
    query = urlsplit(request["url"]).query
    return next(p.removeprefix("token=") for p in query.split("&") if p.startswith("token="))


class ExotelAdapter(CarrierAdapter):
    provider = "exotel"
    missing_status = 403  # no signature header to miss: a missing token is a refusal like any other

    def new_secret(self) -> str:
        return exotel_token()

    def phone(self, phone_id: str, secret: str) -> dict[str, Any]:
        return exotel_phone(phone_id, secret)

    def request(self, phone_id: str, secret: str, now: float, *, event: str | None = None) -> Request:
        call_sid = f"{event}{'0' * 30}"[:32] if event else None
        return exotel_request(phone_id, token=secret, params=exotel_params(call_sid))

    def forge(self, request: Request) -> None:
        _set_token(request, secrets.token_urlsafe(len(_token_of(request)))[: len(_token_of(request))])

    def tamper(self, request: Request) -> None:
        """A near miss: the real token with its last character changed."""
        token = _token_of(request)
        _set_token(request, token[:-1] + ("A" if token[-1] != "A" else "B"))

    def malformations(self) -> dict[str, Change]:
        def twice(r: Request) -> None:  # even the right token twice is ambiguous
            token = _token_of(r)
            r["url"] += f"&token={token}"

        def set_to(value: str) -> Change:
            return lambda r: _set_token(r, value)

        def prefix(r: Request) -> None:
            _set_token(r, _token_of(r)[:-1])

        def extended(r: Request) -> None:
            _set_token(r, _token_of(r) + "x")

        def upper_name(r: Request) -> None:
            token = _token_of(r)
            _set_token(r, None)
            r["url"] += ("&" if "?" in r["url"] else "?") + f"TOKEN={token}"

        return {
            "token_twice": twice,
            "token_empty": set_to(""),
            "token_invalid_utf8": set_to("%ff%fe"),
            "token_prefix": prefix,
            "token_extended": extended,
            "token_name_upper_case": upper_name,
        }

    def strip(self, request: Request) -> None:
        _set_token(request, None)


class TestExotelContract(CarrierContract):
    adapter: ClassVar[CarrierAdapter] = ExotelAdapter()


# ---- Exotel's own rules -----------------------------------------------------------------


@pytest.fixture
def phone(gateway: Gateway, redis_url: str) -> tuple[str, str]:
    gateway.clock.now = None
    token = exotel_token()
    phone_id = random_id("ph_exotel")
    gateway.gw.put_phone(exotel_phone(phone_id, token))
    return phone_id, token


@pytest.fixture
def open_phone(gateway: Gateway, redis_url: str) -> str:
    """A phone without a token: the allowlist alone decides."""
    phone_id = random_id("ph_exotel_open")
    gateway.gw.put_phone(exotel_phone(phone_id))
    return phone_id


@pytest.mark.parametrize(
    ("client_ip", "allowed"),
    [
        ("203.0.113.10", True),
        ("2001:db8::5", True),
        ("2001:DB8:0:0::5", True),  # not canonical, same address
        ("198.51.100.20", False),
        ("2001:db9::1", False),
        # CIDR edges: first and last address of each range, and the neighbours outside
        ("203.0.113.0", True),
        ("203.0.113.255", True),
        ("203.0.112.255", False),
        ("203.0.114.0", False),
        ("2001:db8::", True),
        ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", True),
        ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", False),
        ("2001:db9::", False),
        # IPv4-mapped IPv6 (a dual-stack socket's view of an IPv4 peer) is judged as IPv4
        ("::ffff:203.0.113.5", True),
        ("::ffff:cb00:7105", True),  # the same address written in hex
        ("::ffff:198.51.100.5", False),
        ("64:ff9b::cb00:7105", False),  # NAT64 of 203.0.113.5 is another address
        # not addresses at all
        ("203.0.113.010", False),  # leading zeros: octal to some parsers, refused
        ("203.0.113.5:443", False),
        ("[2001:db8::5]", False),
        ("unknown", False),
    ],
)
def test_allowlist(gateway: Gateway, open_phone: str, redis_sync: redis.Redis, client_ip: str, allowed: bool) -> None:
    request = exotel_request(open_phone, client_ip=client_ip)
    response = gateway.send(request)
    assert response.status_code == (200 if allowed else 403)
    events = assert_stream_holds(redis_sync, [request] if allowed else [])
    if allowed:
        assert events[0]["source_ip"] == client_ip
        assert events[0]["key_fingerprint"] is None


def test_socket_peer_without_forwarded_for_is_the_client(
    gateway: Gateway, open_phone: str, redis_sync: redis.Redis
) -> None:
    """A trusted proxy that adds no X-Forwarded-For: the client is the proxy itself (not allowlisted)."""
    request = exotel_request(open_phone)
    path = request["url"].removeprefix("https://hooks.example.com")
    response = gateway.gw.client.post(path, headers=request["headers"], content=request["body"])
    assert response.status_code == 403
    assert_stream_holds(redis_sync, [])


@pytest.mark.parametrize(
    ("chain", "client"),
    [
        # right-most untrusted hop wins; trusted hops (192.0.2.0/24) are skipped
        ("203.0.113.5, 192.0.2.10, 192.0.2.11", "203.0.113.5"),
        ("198.51.100.7, 203.0.113.5, 192.0.2.10", "203.0.113.5"),  # left-most is whatever the client said
        ("203.0.113.5, 198.51.100.7, 192.0.2.10", "198.51.100.7"),  # spoofed left-most hop ignored
        ("203.0.113.5, 198.51.100.7", "198.51.100.7"),
        ("203.0.113.5,198.51.100.7,,192.0.2.10", "198.51.100.7"),
        ("203.0.113.5, not-an-ip, 192.0.2.10", "not-an-ip"),  # garbage stops the walk and matches nothing
        ("192.0.2.10, 192.0.2.11", "192.0.2.10"),  # all trusted: the left-most
    ],
)
def test_right_most_untrusted_forwarded_for_hop(
    gateway: Gateway, open_phone: str, redis_sync: redis.Redis, chain: str, client: str
) -> None:
    request = exotel_request(open_phone, client_ip=chain)
    allowed = client.startswith("203.0.113.")
    assert gateway.send(request).status_code == (200 if allowed else 403)
    events = assert_stream_holds(redis_sync, [request] if allowed else [])
    if allowed:
        assert events[0]["source_ip"] == client


def test_forwarded_for_given_twice_is_one_chain(gateway: Gateway, open_phone: str, redis_sync: redis.Redis) -> None:
    """Two X-Forwarded-For lines are one list in order (RFC 9110): the last line's hop is right-most."""
    request = exotel_request(open_phone)
    path = request["url"].removeprefix("https://hooks.example.com")

    def send(*hops: str) -> int:
        headers = [*request["headers"].items(), *(("x-forwarded-for", hop) for hop in hops)]
        return gateway.gw.client.post(path, headers=headers, content=request["body"]).status_code

    assert send("203.0.113.5", "198.51.100.7") == 403
    assert send("198.51.100.7", "203.0.113.5") == 200
    assert_stream_holds(redis_sync, [request])


def test_spoofed_forwarded_for_from_untrusted_peer(redis_url: str, redis_sync: redis.Redis) -> None:
    """The test client (127.0.0.1) is not a trusted proxy here and not allowlisted: claiming an
    allowlisted address in X-Forwarded-For is the only way in, and it must not work."""
    phone_id = random_id("ph_exotel_open")
    request = exotel_request(phone_id, client_ip="203.0.113.5")
    settings = make_settings(redis_url, GATEWAY_TRUSTED_PROXIES="192.0.2.0/24", EXOTEL_ALLOWED_IPS="203.0.113.0/24")
    with run_gateway(settings) as gw:
        gw.put_phone(exotel_phone(phone_id))
        assert send_as_carrier(gw, request).status_code == 403
        assert send_as_carrier(gw, exotel_request(phone_id, client_ip="203.0.113.5, 192.0.2.10")).status_code == 403
    assert_stream_holds(redis_sync, [])
    # The same request through a gateway that trusts 127.0.0.1 passes.
    trusted = make_settings(redis_url, GATEWAY_TRUSTED_PROXIES="127.0.0.1/32", EXOTEL_ALLOWED_IPS="203.0.113.0/24")
    with run_gateway(trusted) as gw:
        assert send_as_carrier(gw, request).status_code == 200
    assert_stream_holds(redis_sync, [request])


def test_untrusted_peer_is_judged_by_its_own_address(redis_url: str, redis_sync: redis.Redis) -> None:
    """With the socket peer itself allowlisted, a forwarded-for it sends is ignored either way."""
    phone_id = random_id("ph_exotel_open")
    settings = make_settings(redis_url, GATEWAY_TRUSTED_PROXIES="", EXOTEL_ALLOWED_IPS="127.0.0.1/32")
    with run_gateway(settings, clock=Clock()) as gw:
        gw.put_phone(exotel_phone(phone_id))
        request = exotel_request(phone_id, client_ip="198.51.100.7")
        assert send_as_carrier(gw, request).status_code == 200
    (event,) = assert_stream_holds(redis_sync, [request])
    assert event["source_ip"] == "127.0.0.1"


# ---- token --------------------------------------------------------------------------------


def test_token_present_absent_wrong(gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis) -> None:
    phone_id, token = phone
    good = exotel_request(phone_id, token=token)
    assert gateway.send(good).status_code == 200
    assert gateway.send(exotel_request(phone_id)).status_code == 403
    assert gateway.send(exotel_request(phone_id, token=exotel_token())).status_code == 403
    # Right token, wrong place: a disallowed address is refused whatever the token.
    assert gateway.send(exotel_request(phone_id, token=token, client_ip="198.51.100.20")).status_code == 403
    (event,) = assert_stream_holds(redis_sync, [good])
    assert event["key_fingerprint"].startswith("fp_")


def test_token_in_the_body_does_not_count(gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis) -> None:
    phone_id, token = phone
    request = exotel_request(phone_id, params=[*exotel_params(), ("token", token)])
    assert gateway.send(request).status_code == 403
    assert_stream_holds(redis_sync, [])


def test_token_of_another_phone_rejected(gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis) -> None:
    phone_id, _token = phone
    other_token = exotel_token()
    gateway.gw.put_phone(exotel_phone(random_id("ph_exotel"), other_token))
    assert gateway.send(exotel_request(phone_id, token=other_token)).status_code == 403
    assert_stream_holds(redis_sync, [])


def test_phone_without_token_ignores_one(gateway: Gateway, open_phone: str, redis_sync: redis.Redis) -> None:
    """IP-only phone: a token in the URL is not checked, and still never forwarded."""
    token = exotel_token()
    request = exotel_request(open_phone, token=token)
    assert gateway.send(request).status_code == 200
    (event,) = assert_stream_holds(redis_sync, [request])
    assert token not in orjson.dumps(event).decode()


def test_two_active_tokens_during_rotation(gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis) -> None:
    phone_id, old = phone
    new = exotel_token()
    body = exotel_phone(phone_id, new)
    rotate = {k: body[k] for k in ("provider", "credentials", "config")} | {"rotation": {"keep_previous_s": 600}}
    view = gateway.gw.admin("PUT", f"/admin/phones/{phone_id}", rotate).json()
    assert len([k for k in view["keys"] if k["kind"] == "exotel_webhook_token"]) == 2
    assert old not in str(view) and new not in str(view)
    by_old, by_new = exotel_request(phone_id, token=old), exotel_request(phone_id, token=new)
    for request in (by_old, by_new):
        assert gateway.send(request).status_code == 200
    events = assert_stream_holds(redis_sync, [by_old, by_new])
    assert events[0]["key_fingerprint"] != events[1]["key_fingerprint"]


# ---- methods and routes -----------------------------------------------------------------


def test_get_passthru_and_post_status(gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis) -> None:
    phone_id, token = phone
    call_sid = exotel_call_sid()
    passthru = exotel_request(
        phone_id, token=token, kind="incoming", method="GET", params=exotel_passthru_params(call_sid)
    )
    status = exotel_request(phone_id, token=token, params=exotel_params(call_sid, "completed"))
    for request in (passthru, status):
        response = gateway.send(request)
        assert response.status_code == 200
        assert response.content == b""
    incoming, completed = assert_stream_holds(redis_sync, [passthru, status])
    assert incoming["kind"] == "incoming" and incoming["method"] == "GET"
    assert incoming["params"]["CallSid"] == call_sid and incoming["params"]["CallFrom"] == "09876543210"
    assert incoming["idempotency_key"].startswith(f"incoming:{call_sid}:p-")  # no status: params digest
    assert completed["kind"] == "status" and completed["method"] == "POST"
    assert completed["idempotency_key"] == f"status:{call_sid}:completed"


def test_status_retry_forwarded_once(gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis) -> None:
    phone_id, token = phone
    params = exotel_params(status="busy")
    first = exotel_request(phone_id, token=token, params=params)
    retry = exotel_request(phone_id, token=token, params=params)
    assert gateway.send(first).status_code == gateway.send(retry).status_code == 200
    assert_stream_holds(redis_sync, [first])


def test_non_utf8_body_forwarded_as_base64(gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis) -> None:
    phone_id, token = phone
    request = exotel_request(phone_id, token=token)
    request["headers"]["Content-Type"] = "application/octet-stream"
    request["body"] = b"\xff\xfe raw \x00 bytes"
    assert gateway.send(request).status_code == 200
    (event,) = assert_stream_holds(redis_sync, [request])
    assert event["body"] is None
    assert base64.b64decode(event["body_base64"]) == b"\xff\xfe raw \x00 bytes"


def test_non_utf8_form_is_a_bad_request(gateway: Gateway, phone: tuple[str, str], redis_sync: redis.Redis) -> None:
    phone_id, token = phone
    request = exotel_request(phone_id, token=token)
    request["body"] = b"CallSid=%ff%fe&Status=completed"
    assert gateway.send(request).status_code == 400
    assert_stream_holds(redis_sync, [])


# ---- the token is a secret -----------------------------------------------------------------


def _event_text(client: redis.Redis) -> str:
    return "".join(fields[b"event"].decode() for _id, fields in stream_entries(client.xrange(STREAM)))


@pytest.mark.parametrize(
    "token_item",
    [
        "token={token}",
        "%74oken={token}",  # the same name, percent-encoded: the verifier decodes it
        "tok%65n={token}",
    ],
)
def test_token_never_in_event_log_or_metrics(
    gateway: Gateway,
    phone: tuple[str, str],
    redis_sync: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    token_item: str,
) -> None:
    phone_id, token = phone
    caplog.set_level(logging.INFO, logger="gateway.access")
    item = token_item.format(token=token)
    passthru = exotel_request(phone_id, kind="incoming", method="GET", query=f"{item}&x=1")
    status = exotel_request(phone_id, query=item)
    wrong = exotel_request(phone_id, query=item.replace(token, token[::-1]))
    answers = [gateway.send(request) for request in (passthru, status, wrong)]
    assert [a.status_code for a in answers] == [200, 200, 403]
    events = stream_events(redis_sync)
    assert len(events) == 2
    # Only the token item is removed; the rest of the raw query is kept byte for byte.
    assert events[0]["query"] == "&".join(p for p in urlsplit(passthru["url"]).query.split("&") if p != item)
    assert events[0]["query"].endswith("&x=1")
    assert events[1]["query"] == ""
    for event in events:
        assert "token" not in event["params"]
        assert "oken=" not in event["query"] and "%65n=" not in event["query"]
    stored = _event_text(redis_sync)
    assert token not in stored and token[::-1] not in stored
    access = [r for r in caplog.records if r.name == "gateway.access"]
    assert len(access) >= 3
    for record in access:
        assert token not in record.getMessage() and token[::-1] not in record.getMessage()
        assert "?" not in record.getMessage()
    for answer in answers:
        assert token not in answer.text
    metrics = gateway.gw.client.get("/metrics").text
    assert token not in metrics and phone_id not in metrics


# ---- fail closed ------------------------------------------------------------------------


def test_empty_allowlist_rejects_everything_and_stays_ready(
    redis_url: str, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway")
    settings = make_settings(redis_url, EXOTEL_ALLOWED_IPS="")
    with run_gateway(settings) as gw:
        assert any("EXOTEL_ALLOWED_IPS" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        token = exotel_token()
        with_token, open_id = random_id("ph_exotel"), random_id("ph_exotel_open")
        gw.put_phone(exotel_phone(with_token, token))
        gw.put_phone(exotel_phone(open_id))
        for client_ip in ("203.0.113.10", "2001:db8::1", "127.0.0.1", "198.51.100.1"):
            assert send_as_carrier(gw, exotel_request(open_id, client_ip=client_ip)).status_code == 403
            assert send_as_carrier(gw, exotel_request(with_token, token=token, client_ip=client_ip)).status_code == 403
        ready = gw.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["exotel_allowlist_entries"] == 0
        # The other carriers are not affected.
        twilio_token, twilio_id = new_token(), random_id("ph_twilio")
        gw.put_phone(twilio_phone(twilio_id, twilio_token))
        accepted = twilio_request(twilio_token, twilio_id)
        assert send_as_carrier(gw, accepted).status_code == 200
    assert_stream_holds(redis_sync, [accepted])


def test_without_setting_the_data_file_decides(redis_url: str, redis_sync: redis.Redis) -> None:
    """Without EXOTEL_ALLOWED_IPS the built-in data file decides (it ships empty: Exotel publishes no
    IPs); a documentation address is never in it."""
    from gateway.providers.allowlist import Allowlist
    from gateway.settings import DEFAULT_EXOTEL_IPS_FILE, from_env
    from tests.helpers.support import ADMIN_TOKEN, KEK

    settings = from_env(
        {
            "GATEWAY_REDIS_URL": redis_url,
            "GATEWAY_KEK": KEK,
            "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
            "GATEWAY_TRUSTED_PROXIES": "127.0.0.1/32",
        },
        toml_path=None,
    )
    with run_gateway(settings) as gw:
        phone_id = random_id("ph_exotel_open")
        gw.put_phone(exotel_phone(phone_id))
        assert send_as_carrier(gw, exotel_request(phone_id, client_ip=EXOTEL_IP)).status_code == 403
        entries = len(Allowlist.load_file(DEFAULT_EXOTEL_IPS_FILE))
        assert gw.client.get("/readyz").json()["exotel_allowlist_entries"] == entries
    assert_stream_holds(redis_sync, [])
