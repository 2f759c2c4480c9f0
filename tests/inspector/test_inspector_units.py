"""The inspector's parts without a server: the bounded store, redaction of every secret kind, the session cookie."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from gateway.diagnostics.explainer import MismatchExplainer
from gateway.diagnostics.mismatch import NO_MATCH, NOT_URL_SIGNED, OVER_BUDGET, NotDiagnosed
from gateway.inbound import InboundRequest
from gateway.inspector.redaction import Redactor, mask_numbers, show
from gateway.inspector.session import RedisLogouts, Sessions
from gateway.inspector.store import DIAGNOSIS_KEY, INBOUND_KEY, MAX_BODY_KEPT, InspectorStore
from gateway.providers import KeyKind, Provider, plivo
from gateway.providers.plivo import PlivoVerifier
from gateway.providers.registry import CARRIERS, SECRET_PARAMS
from gateway.redis_keys import KeyNames
from gateway.secrets import Secret
from gateway.settings import SettingsError, from_env
from tests.helpers.inbound_builders import creds, key
from tests.helpers.support import KEK

FORM = "application/x-www-form-urlencoded"
SIGNATURE = "3fa9c1ZZsecretSIGNATUREvalue0123456789abcdef="
TOKEN = "exotel-url-token-0123456789abcdef"


def request(
    *, query: str = "", body: bytes = b"", headers: dict[str, str] | None = None, path: str = "/plivo/status/ph_x"
) -> InboundRequest:
    return InboundRequest(
        method="POST",
        scheme="https",
        netloc="hooks.example.com",
        raw_path=path,
        query_string=query,
        headers=headers or {"content-type": FORM},
        body=body,
        client_ip="198.51.100.20",
    )


def scope_of(inbound: InboundRequest | None, diagnosis: object = None) -> dict[str, Any]:
    scope: dict[str, Any] = {"method": "POST", "path": "/plivo/status/ph_x", "client": ("127.0.0.1", 5000)}
    if inbound is not None:
        scope[INBOUND_KEY] = inbound
    if diagnosis is not None:
        scope[DIAGNOSIS_KEY] = diagnosis
    return scope


# ---- the store ----------------------------------------------------------------------------


def test_store_keeps_kinds_apart_newest_first_and_bounded_by_count() -> None:
    store = InspectorStore(max_requests=3)
    for status in (200, 403, 200, 403, 403, 403, 503):
        store.record(scope_of(request()), "status", "ph_x", status, "x", "r", "plivo")
    snapshot = store.snapshot()
    assert [r.status for r in snapshot.accepted] == [200, 200]
    assert [r.id for r in snapshot.rejected] == [7, 6, 5]  # the 3 newest; ids 2 and 4 evicted
    assert store.find(2) is None and store.find(7) is not None and store.find(1) is not None


def test_store_bounded_by_bytes() -> None:
    store = InspectorStore(max_requests=1000, max_bytes=100_000)
    body = b"x" * 10_000
    for _ in range(50):
        store.record(scope_of(request(body=body)), "status", "ph_x", 403, "rejected", "r", "plivo")
    accepted_bytes, rejected_bytes = store.charged_bytes()
    assert accepted_bytes == 0 and 0 < rejected_bytes <= 100_000
    assert 1 <= len(store.snapshot().rejected) < 50


def test_store_drops_a_body_too_large_to_keep_but_remembers_its_size() -> None:
    store = InspectorStore()
    store.record(scope_of(request(body=b"y" * (MAX_BODY_KEPT + 1))), "status", "ph_x", 403, "rejected", "", "plivo")
    (record,) = store.snapshot().rejected
    assert record.request is not None and record.request.body == b""
    assert record.body_size == MAX_BODY_KEPT + 1
    assert "too large to keep" in show(record.request, "ph_x", Redactor(mask=True), record.body_size).body_note


def test_store_records_a_request_refused_before_it_was_read() -> None:
    store = InspectorStore()
    store.record(scope_of(None), "status", "ph_x", 405, "bad_request", "method_not_allowed", "plivo")
    (record,) = store.snapshot().rejected
    assert record.request is None and record.reason == "method_not_allowed"


# ---- redaction ----------------------------------------------------------------------------


def test_numbers_are_masked_to_their_last_four_digits() -> None:
    assert mask_numbers("+14155550100") == "+*******0100"
    assert mask_numbers("09876543210") == "*******3210"
    assert mask_numbers("sip:+14155550100@sip.example.com") == "sip:+*******0100@sip.example.com"
    assert mask_numbers("CA0123456789abcdef") == "CA0123456789abcdef"  # part of an id: not a number
    assert mask_numbers("123456") == "123456"  # too short


def every_secret_kind() -> InboundRequest:
    """A request carrying each kind of secret the inspector must never show."""
    secret_params = sorted(SECRET_PARAMS)
    assert secret_params, "the registry names the carriers' secret parameters"
    query = urlencode([(name, TOKEN) for name in secret_params] + [("TOKEN", TOKEN), ("CallSid", "CA1")])
    signature_headers = {
        name.lower(): SIGNATURE
        for spec in CARRIERS.values()
        for name in spec.signature_headers
        if not name.lower().endswith(("-nonce", "-timestamp", "-settings"))
    }
    headers = {
        "content-type": FORM,
        "authorization": "Bearer admin-token-never-shown-0123456789",
        "proxy-authorization": "Basic cHJveHk6c2VjcmV0",
        "cookie": "session=cookie-value-never-shown",
        "x-api-token": "api-token-never-shown",
        "x-original-uri": f"/exotel/status/ph_x?{query}",
        **signature_headers,
    }
    body = urlencode([("From", "+14155550100"), ("To", "+919876543210"), *[(n, TOKEN) for n in secret_params]])
    return request(query=query, body=body.encode(), headers=headers, path="/exotel/status/ph_x")


def test_every_secret_kind_is_removed_or_shortened() -> None:
    shown = show(every_secret_kind(), "ph_x", Redactor(mask=True), 100)
    text = repr(shown)
    for secret in (TOKEN, SIGNATURE, "admin-token-never-shown", "cHJveHk6c2VjcmV0", "cookie-value", "api-token-never"):
        assert secret not in text
    for secret in ("14155550100", "919876543210", "9876543210"):
        assert secret not in text
    names = [name for name, _ in shown.headers]
    assert not {"authorization", "proxy-authorization", "cookie", "x-api-token"} & set(names)
    for name, value in shown.headers:
        if "signature" in name:
            assert value == SIGNATURE[:6] + "…"
    assert dict(shown.form)["From"] == "+*******0100"
    assert "x-original-uri" in names and "CallSid=CA1" in dict(shown.headers)["x-original-uri"]
    assert "?" not in shown.url or "token" not in shown.url.lower()
    assert "gateway explain ph_x -" in shown.command and SIGNATURE[:6] + "…" in shown.command


def test_numbers_shown_when_masking_is_off_but_secrets_still_removed() -> None:
    shown = show(every_secret_kind(), "ph_x", Redactor(mask=False), 100)
    assert dict(shown.form)["From"] == "+14155550100"
    assert TOKEN not in repr(shown) and SIGNATURE not in repr(shown)


def test_json_body_redacted_and_masked() -> None:
    document = {"data": {"payload": {"from": "+14155550100", "token": TOKEN, "to": ["+14155550101"]}}}
    inbound = request(body=orjson.dumps(document), headers={"content-type": "application/json"})
    shown = show(inbound, None, Redactor(mask=True), 100)
    assert shown.json is not None and TOKEN not in shown.json and "14155550100" not in shown.json
    assert "+*******0100" in shown.json and "+*******0101" in shown.json
    assert "gateway explain PHONE_ID -" in shown.command and TOKEN not in shown.command


def test_an_opaque_body_is_not_shown() -> None:
    shown = show(
        request(body=b"\x00\x01 +14155550100", headers={"content-type": "application/octet-stream"}),
        "p",
        Redactor(True),
        16,
    )
    assert "not shown" in shown.body_note and "14155550100" not in repr(shown)


def test_control_characters_never_reach_a_page() -> None:
    inbound = request(headers={"content-type": FORM, "x-evil": "a\x1b[31mred"}, body=b"A=%1b%5B31m")
    shown = show(inbound, "ph_x", Redactor(mask=True), 11)
    assert "\x1b" not in repr(shown.headers) and "\x1b" not in repr(shown.form) and "\x1b" not in shown.command


# ---- the session cookie -------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


ADMIN = Secret("inspector-admin-token-0123456789")


def valid(sessions: Sessions, cookie: str | None) -> bool:
    return asyncio.run(sessions.valid(cookie))


def test_cookie_is_not_the_token_and_expires() -> None:
    clock = FakeClock()
    sessions = Sessions(ADMIN, ttl_s=600, clock=clock)
    cookie = sessions.issue()
    assert ADMIN.reveal() not in cookie and valid(sessions, cookie)
    clock.now += 599
    assert valid(sessions, cookie)
    clock.now += 2
    assert not valid(sessions, cookie)


def test_every_login_is_its_own_session() -> None:
    sessions = Sessions(ADMIN, clock=FakeClock())
    first, second = sessions.issue(), sessions.issue()
    assert first != second
    parsed = [sessions.parse(first), sessions.parse(second)]
    assert parsed[0] is not None and parsed[1] is not None
    assert parsed[0].session_id != parsed[1].session_id


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c[:-1] + ("0" if c[-1] != "0" else "1"),  # another MAC
        lambda c: ".".join([c.split(".")[0], str(int(c.split(".")[1]) + 3600), *c.split(".")[2:]]),  # later expiry
        lambda c: ".".join([*c.split(".")[:2], "0" * 32, c.split(".")[3]]),  # another session id
        lambda c: "v1" + c[2:],
        lambda c: "v1." + c.split(".")[1] + "." + c.split(".")[3],  # the old format, without a session id
        lambda c: "",
        lambda c: "garbage",
        lambda c: c + "." * 300,
        lambda c: "v2.99999999999999." + ".".join(c.split(".")[2:]),
    ],
)
def test_a_tampered_cookie_is_refused(tamper: Any) -> None:
    sessions = Sessions(ADMIN, clock=FakeClock())
    assert not valid(sessions, tamper(sessions.issue()))


def test_a_cookie_of_another_admin_token_is_refused() -> None:
    clock = FakeClock()
    other = Sessions(Secret("another-admin-token-0123456789"), clock=clock).issue()
    assert not valid(Sessions(ADMIN, clock=clock), other)


class SharedInRedis:
    """RedisLogouts on the real server, with a switch that makes Redis unreachable."""

    def __init__(self, redis_url: str, names: KeyNames) -> None:
        self.url = redis_url
        self.names = names
        self.down = False

    def _client(self) -> AsyncRedis:
        url = "redis://127.0.0.1:1/0" if self.down else self.url  # port 1: connection refused
        return AsyncRedis.from_url(url, socket_connect_timeout=0.5)

    async def revoke(self, session_id: str, expiry: int) -> None:
        async with self._client() as client:
            await RedisLogouts(client, self.names).revoke(session_id, expiry)

    async def revoked(self, session_id: str) -> bool:
        async with self._client() as client:
            return await RedisLogouts(client, self.names).revoked(session_id)


def test_a_logout_ends_the_session_in_every_worker_until_the_cookie_expires(
    redis_url: str, redis_sync: redis.Redis
) -> None:
    names = KeyNames(prefix=f"test-{secrets.token_hex(4)}")
    clock = FakeClock()
    clock.now = time.time()
    worker_a = Sessions(ADMIN, ttl_s=600, clock=clock, shared=SharedInRedis(redis_url, names))
    worker_b = Sessions(ADMIN, ttl_s=600, clock=clock, shared=SharedInRedis(redis_url, names))
    cookie, other = worker_a.issue(), worker_a.issue()
    assert valid(worker_a, cookie) and valid(worker_b, cookie)
    assert asyncio.run(worker_a.log_out(cookie))
    assert not valid(worker_a, cookie) and not valid(worker_b, cookie)
    assert valid(worker_b, other)  # another login is another session
    parsed = worker_a.parse(cookie)
    assert parsed is not None
    ttl = redis_sync.ttl(names.inspector_logout(parsed.session_id))
    assert 0 < ttl <= 600  # kept no longer than the cookie could be used


def test_an_invalid_cookie_logs_nothing_out_and_stores_nothing(redis_url: str, redis_sync: redis.Redis) -> None:
    names = KeyNames(prefix=f"test-{secrets.token_hex(4)}")
    sessions = Sessions(ADMIN, clock=FakeClock(), shared=SharedInRedis(redis_url, names))
    forged = "v2.99999999999.0123456789abcdef0123456789abcdef." + "0" * 64
    for cookie in (None, "", "garbage", forged):
        assert not asyncio.run(sessions.log_out(cookie))
    assert list(redis_sync.scan_iter(match=f"{names.prefix}:*")) == []


def test_with_redis_down_each_worker_keeps_its_own_logouts(redis_url: str) -> None:
    names = KeyNames(prefix=f"test-{secrets.token_hex(4)}")
    clock = FakeClock()
    clock.now = time.time()
    shared = SharedInRedis(redis_url, names)
    sessions = Sessions(ADMIN, clock=clock, shared=shared)
    cookie, other = sessions.issue(), sessions.issue()
    shared.down = True
    assert valid(sessions, cookie)  # usable during the outage
    with pytest.raises(redis.ConnectionError):
        asyncio.run(sessions.log_out(cookie))  # could not be shared: the caller says so
    assert not valid(sessions, cookie)  # but this worker refuses it at once
    assert valid(sessions, other)


def test_token_comparison() -> None:
    sessions = Sessions(ADMIN)
    assert sessions.token_matches(ADMIN.reveal())
    assert not sessions.token_matches(ADMIN.reveal()[:-1])
    assert not sessions.token_matches("")


# ---- settings and the explainer's hand-over -------------------------------------------------


def test_settings_defaults_and_errors_name_the_variable() -> None:
    settings = from_env({"GATEWAY_KEK": KEK}, toml_path=None)
    assert settings.inspector and settings.inspector_max_requests == 200 and settings.inspector_mask_numbers
    off = from_env({"GATEWAY_KEK": KEK, "GATEWAY_INSPECTOR": "off", "GATEWAY_INSPECTOR_MASK_NUMBERS": "false"})
    assert not off.inspector and not off.inspector_mask_numbers
    for name, value in (
        ("GATEWAY_INSPECTOR", "maybe"),
        ("GATEWAY_INSPECTOR_MAX_REQUESTS", "0"),
        ("GATEWAY_INSPECTOR_MAX_REQUESTS", "lots"),
        ("GATEWAY_INSPECTOR_MAX_REQUESTS", "10001"),
        ("GATEWAY_INSPECTOR_MASK_NUMBERS", "sometimes"),
    ):
        with pytest.raises(SettingsError, match=name):
            from_env({"GATEWAY_KEK": KEK, name: value}, toml_path=None)


def test_explainer_says_why_nothing_matched_only_when_asked() -> None:
    signed = plivo.sign_v3(
        "the-carrier-s-token-0123456789", "POST", "https://hooks.example.com/plivo/status/ph_x", [], "1"
    )
    forged = request(headers={"content-type": FORM, "x-plivo-signature-v3": signed, "x-plivo-signature-v3-nonce": "1"})
    phone = creds(Provider.PLIVO, {KeyKind.AUTH_TOKEN: [key("another-token-0123456789")]}, phone_id="ph_x")
    assert MismatchExplainer()(forged, phone, PlivoVerifier(), 0.0) is None  # its callers' contract
    found = MismatchExplainer(report_undiagnosed=True)(forged, phone, PlivoVerifier(), 0.0)
    assert isinstance(found, NotDiagnosed) and found.why == NO_MATCH and found.tried > 0
    assert "another key" in found.message()
    assert "does not cover the URL" in NotDiagnosed(Provider.EXOTEL, NOT_URL_SIGNED).message()
    assert "budget" in NotDiagnosed(Provider.PLIVO, OVER_BUDGET).message()
    assert "16 URL and body variants" in NotDiagnosed(Provider.PLIVO, NO_MATCH, 16).message()
