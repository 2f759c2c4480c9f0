"""No secret ever leaves the process: not in a log line, a response, /metrics, the stream, a repr.

One full run through the real app and socket, with every logger captured at DEBUG
(root and uvicorn's own, which do not propagate): phones of every carrier created,
accepted and forged webhooks, Exotel `?token=` right and wrong, bad admin tokens,
invalid admin bodies, Redis down (503s, reconnect warnings), and a second gateway
whose KEK cannot open the records (GATEWAY_KEK_PREVIOUS mismatch). Then every
captured byte is searched for every secret, in the forms it could take (raw,
percent-encoded, base64/hex for the KEK).

Also here: the admin API's bearer check and the GATEWAY_ADMIN_PORT separation,
against a real `gateway serve` process (whose whole log output is searched too).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
import redis
from nacl.signing import SigningKey

from gateway.embedded_redis import EmbeddedRedis
from gateway.errors import Rejected, Unavailable
from gateway.phone_records import InvalidRecord
from gateway.providers import telnyx, twilio
from gateway.sealing import Sealer, SealError
from gateway.secrets import Secret
from gateway.settings import SettingsError, from_env
from tests.helpers.builders import plivo_phone, plivo_request
from tests.helpers.replies import maybe_bytes_list, stream_entries
from tests.helpers.support import (
    ADMIN_TOKEN,
    KEK,
    GatewayProcess,
    RunningGateway,
    as_carrier,
    make_settings,
    run_gateway,
    send_as_carrier,
    spawn_gateway,
)

STREAM = "gateway:events"
CLIENT_SIDE = ("httpx", "httpcore")
# uvicorn's own logging config would give its loggers their own handlers (no propagation):
# without it, everything uvicorn logs reaches the root logger, at DEBUG.
VERBOSE: dict[str, Any] = {"log_config": None, "log_level": "debug"}
PUBLIC = "https://hooks.example.com"


class Capture(logging.Handler):
    """Every record, formatted with its traceback, from every logger it is attached to."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(CLIENT_SIDE):
            return  # the test's own HTTP client (the "carrier") logs the URLs it calls
        self.lines.append(self.format(record))


@pytest.fixture
def captured() -> Iterator[Capture]:
    handler = Capture()
    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "gateway"]
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


class Secrets:
    """Every secret of the run, and every form in which one could show up."""

    def __init__(self) -> None:
        self.plivo_token = "plivo-" + secrets.token_urlsafe(24)
        self.twilio_token = "twilio-" + secrets.token_hex(16)
        self.twilio_key = "twkey-" + secrets.token_urlsafe(24)
        self.exotel_token = "exo-" + secrets.token_urlsafe(24)
        self.exotel_api_token = "exoapi-" + secrets.token_urlsafe(24)
        self.telnyx_api_key = "KEY" + secrets.token_hex(16)
        self.telnyx_seed = secrets.token_bytes(32)
        self.kek_raw = base64.b64decode(KEK)
        self.other_kek = secrets.token_bytes(32)
        self.previous_kek = secrets.token_bytes(32)
        self.redis_password = "redispw-" + secrets.token_hex(8)

    def forms(self) -> dict[str, str]:
        texts = {
            "plivo auth token": self.plivo_token,
            "twilio auth token": self.twilio_token,
            "twilio signing key": self.twilio_key,
            "exotel webhook token": self.exotel_token,
            "exotel api token": self.exotel_api_token,
            "telnyx api key": self.telnyx_api_key,
            "admin token": ADMIN_TOKEN,
            "redis password": self.redis_password,
        }
        out: dict[str, str] = {}
        for name, value in texts.items():
            out[name] = value
            out[f"{name} (percent-encoded)"] = quote(value, safe="")
        for name, raw in (
            ("KEK", self.kek_raw),
            ("other KEK", self.other_kek),
            ("previous KEK", self.previous_kek),
            ("telnyx signing seed", self.telnyx_seed),
        ):
            out[f"{name} (base64)"] = base64.b64encode(raw).decode()
            out[f"{name} (urlsafe base64)"] = base64.urlsafe_b64encode(raw).decode().rstrip("=")
            out[f"{name} (hex)"] = raw.hex()
        return out

    def assert_absent(self, haystack: str, where: str) -> None:
        for name, form in self.forms().items():
            assert form not in haystack, f"{name} found in {where}"


@pytest.fixture
def keys() -> Secrets:
    return Secrets()


def phones(keys: Secrets) -> list[dict[str, Any]]:
    public = base64.b64encode(bytes(SigningKey(keys.telnyx_seed).verify_key)).decode()
    return [
        plivo_phone("ph_leak_plivo", keys.plivo_token),
        {
            "id": "ph_leak_twilio",
            "provider": "twilio",
            "credentials": {
                "account_sid": "AC" + "0" * 32,
                "auth_token": keys.twilio_token,
                "webhook_signing_key": keys.twilio_key,
            },
        },
        {
            "id": "ph_leak_telnyx",
            "provider": "telnyx",
            "credentials": {"public_key": public, "api_key": keys.telnyx_api_key},
            "config": {"number": "+14155550199"},
        },
        {
            "id": "ph_leak_exotel",
            "provider": "exotel",
            "credentials": {"api_key": "exotel-api-key-id", "api_token": keys.exotel_api_token},
            "config": {"exotel_webhook_token": keys.exotel_token},
        },
    ]


def exotel_request(token: str, status: str = "completed") -> dict[str, Any]:
    query = urlencode({"CallSid": secrets.token_hex(8), "Status": status, "token": token})
    return {
        "method": "GET",
        "url": f"{PUBLIC}/exotel/status/ph_leak_exotel?{query}",
        "headers": {},
        "body": "",
        "client_ip": "203.0.113.10",
    }


def twilio_request(keys: Secrets, token: str) -> dict[str, Any]:
    url = f"{PUBLIC}/twilio/status/ph_leak_twilio"
    params = [("CallSid", "CA" + secrets.token_hex(16)), ("CallStatus", "completed")]
    return {
        "method": "POST",
        "url": url,
        "headers": {
            "X-Twilio-Signature": twilio.sign(token, url, params),
            "Content-Type": "application/x-www-form-urlencoded",
        },
        "body": urlencode(params),
        "client_ip": "198.51.100.30",
    }


def telnyx_request(keys: Secrets) -> dict[str, Any]:
    event_id = secrets.token_hex(8)
    body = (
        f'{{"data":{{"id":"{event_id}","event_type":"call.hangup",'
        '"payload":{"to":"+14155550199","from":"+14155550100"}}}'
    )
    stamp = str(int(time.time()))
    return {
        "method": "POST",
        "url": f"{PUBLIC}/webhooks/telnyx/voice",
        "headers": {
            "telnyx-signature-ed25519": telnyx.sign(keys.telnyx_seed, stamp, body.encode()),
            "telnyx-timestamp": stamp,
            "content-type": "application/json",
        },
        "body": body,
        "client_ip": "198.51.100.40",
    }


def record(seen: list[str], response: httpx.Response) -> httpx.Response:
    seen.append(f"{response.status_code} {dict(response.headers)} {response.text}")
    return response


def test_a_full_run_leaks_no_secret(captured: Capture, keys: Secrets, private_redis: EmbeddedRedis) -> None:
    seen: list[str] = []  # every response, as text
    with run_gateway(make_settings(private_redis.url), **VERBOSE) as gw:
        # -- phones of every carrier, through the admin API
        for phone in phones(keys):
            body = {k: phone[k] for k in ("provider", "credentials", "config") if k in phone}
            assert record(seen, gw.admin("PUT", f"/admin/phones/{phone['id']}", body)).status_code == 201
            record(seen, gw.admin("GET", f"/admin/phones/{phone['id']}"))
        record(seen, gw.admin("GET", "/admin/phones"))

        # -- accepted, forged, replayed
        plivo = plivo_request(keys.plivo_token, "ph_leak_plivo")
        assert record(seen, send_as_carrier(gw, plivo)).status_code == 200
        replayed = plivo_request(
            keys.plivo_token, "ph_leak_plivo", nonce=plivo["headers"]["X-Plivo-Signature-V3-Nonce"]
        )
        assert record(seen, send_as_carrier(gw, replayed)).status_code == 403  # replay (same nonce, other event)
        record(seen, send_as_carrier(gw, plivo_request("not-" + keys.plivo_token, "ph_leak_plivo")))
        assert record(seen, send_as_carrier(gw, twilio_request(keys, keys.twilio_token))).status_code == 200
        record(seen, send_as_carrier(gw, twilio_request(keys, keys.twilio_token + "x")))
        assert record(seen, send_as_carrier(gw, telnyx_request(keys))).status_code == 200
        assert record(seen, send_as_carrier(gw, exotel_request(keys.exotel_token))).status_code == 200
        assert record(seen, send_as_carrier(gw, exotel_request(keys.exotel_token[:-1]))).status_code == 403
        # the token of another phone, sent to the unknown-phone path and to the wrong carrier
        unknown = exotel_request(keys.exotel_token)
        unknown["url"] = unknown["url"].replace("ph_leak_exotel", "ph_nobody")
        record(seen, send_as_carrier(gw, unknown))
        record(seen, gw.client.get(f"/plivo/status/ph_leak_plivo?token={keys.exotel_token}"))

        # -- admin: bad tokens, invalid bodies that carry secrets
        for token in (None, "x", ADMIN_TOKEN[:-1], ADMIN_TOKEN + "x", keys.plivo_token):
            assert record(seen, gw.admin("GET", "/admin/phones", token=token)).status_code == 401
        record(seen, gw.client.get("/admin/phones", headers={"authorization": f"Basic {ADMIN_TOKEN}"}))
        record(seen, gw.client.get("/admin/phones", headers={"authorization": ADMIN_TOKEN}))
        bad_bodies: list[Any] = [
            {"provider": "plivo", "credentials": {"auth_token": keys.plivo_token}},  # auth_id missing
            {"provider": "plivo", "credentials": {"auth_id": "MA", "auth_token": keys.plivo_token, "x": "1"}},
            {"provider": "nope", "credentials": {"auth_token": keys.twilio_token}},
            {"provider": "twilio", "credentials": {"account_sid": "AC", "auth_token": 12345}},
            {"provider": "exotel", "credentials": {"api_key": "k", "api_token": keys.exotel_api_token}, "config": 7},
            {
                "provider": "plivo",
                "credentials": {"auth_id": "MA", "auth_token": keys.plivo_token},
                "config": {"exotel_webhook_token": keys.exotel_token},
            },
            {"provider": "telnyx", "credentials": {"public_key": keys.telnyx_api_key}},
            [keys.plivo_token],
        ]
        for body in bad_bodies:
            assert record(seen, gw.admin("PUT", "/admin/phones/ph_leak_bad", body)).status_code == 422
        raw = b'{"provider": "plivo", "credentials": {"auth_token": "' + keys.plivo_token.encode() + b'"'
        response = gw.client.put(
            "/admin/phones/ph_leak_bad", content=raw, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert record(seen, response).status_code == 400

        # -- an unexpected exception on the request path: logged with its traceback, answered 503 (the carrier retries)
        components = gw.app.components
        assert components is not None
        original = components.forwarder.forward

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("simulated bug after verification")

        components.forwarder.forward = broken
        try:
            crashed = record(seen, send_as_carrier(gw, plivo_request(keys.plivo_token, "ph_leak_plivo")))
        finally:
            components.forwarder.forward = original
        assert (crashed.status_code, crashed.text) == (503, "service unavailable\n")
        assert crashed.headers["retry-after"] == "1"
        assert any("simulated bug" in line for line in captured.lines)

        # -- Redis down: 503s, reconnect warnings, readiness errors
        private_redis.stop()
        record(seen, send_as_carrier(gw, plivo_request(keys.plivo_token, "ph_leak_plivo")))
        record(seen, send_as_carrier(gw, exotel_request(keys.exotel_token)))
        record(seen, gw.client.get("/readyz"))
        record(seen, gw.admin("PUT", "/admin/phones/ph_leak_down", plivo_phone("x", keys.plivo_token)))
        time.sleep(0.5)  # let the invalidation subscriber fail and log
        private_redis.start()
        deadline = time.monotonic() + 10
        while gw.client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        metrics_text = record(seen, gw.client.get("/metrics")).text

    # -- a gateway whose KEK cannot open the sealed records (GATEWAY_KEK_PREVIOUS mismatch)
    wrong = make_settings(
        private_redis.url,
        GATEWAY_KEK=base64.b64encode(keys.other_kek).decode(),
        GATEWAY_KEK_PREVIOUS=base64.b64encode(keys.previous_kek).decode(),
    )
    with run_gateway(wrong, **VERBOSE) as other:
        assert record(seen, send_as_carrier(other, plivo_request(keys.plivo_token, "ph_leak_plivo"))).status_code == 403
        record(seen, send_as_carrier(other, exotel_request(keys.exotel_token)))
        record(seen, other.admin("GET", "/admin/phones/ph_leak_plivo"))
        metrics_text += other.client.get("/metrics").text
        settings_repr = repr(wrong) + str(wrong)

    assert any("cannot be unsealed" in line for line in captured.lines), "the KEK mismatch was not logged"
    assert any("503" in text for text in seen)
    client = redis.Redis.from_url(private_redis.url)
    try:
        stream = "\n".join(fields[b"event"].decode() for _, fields in stream_entries(client.xrange(STREAM)))
        stored = "\n".join(
            v.decode(errors="replace") for v in maybe_bytes_list(client.mget(client.keys("gateway:phone:*"))) if v
        )
    finally:
        client.close()
    assert stream.count('"provider"') == 4  # plivo, twilio, telnyx, exotel: the accepted ones

    keys.assert_absent("\n".join(captured.lines), "the logs")
    keys.assert_absent("\n".join(seen), "a response")
    keys.assert_absent(metrics_text, "/metrics")
    keys.assert_absent(stream, "the event stream")
    keys.assert_absent(stored, "the stored records (sealed at rest)")
    keys.assert_absent(settings_repr, "repr(settings)")


def test_reprs_and_exception_texts_hold_no_secret(keys: Secrets) -> None:
    env = {
        "GATEWAY_KEK": KEK,
        "GATEWAY_KEK_PREVIOUS": base64.b64encode(keys.previous_kek).decode(),
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "GATEWAY_REDIS_URL": f"redis://:{keys.redis_password}@127.0.0.1:6379/0",
    }
    settings = from_env(env, toml_path=None)
    texts = [repr(settings), str(settings), repr(settings.kek), repr(settings.admin_token), str(Secret("s"))]
    texts += [repr(settings.kek_previous)]
    for name, value in (
        ("GATEWAY_KEK", keys.plivo_token),
        ("GATEWAY_KEK", base64.b64encode(keys.other_kek).decode()[:30]),
        ("GATEWAY_KEK_PREVIOUS", keys.plivo_token),
        ("GATEWAY_ADMIN_TOKEN", keys.exotel_token[:10]),
    ):
        with pytest.raises(SettingsError) as info:
            from_env({**env, name: value}, toml_path=None)
        texts += [str(info.value), repr(info.value)]
        assert value not in str(info.value)
    sealer = Sealer(keys.kek_raw)
    sealed = sealer.seal("ph_1", keys.plivo_token)
    attempts: tuple[Callable[[], str], ...] = (
        lambda: Sealer(keys.other_kek).open("ph_1", sealed),
        lambda: Sealer(keys.kek_raw).open("ph_2", sealed),
        lambda: Sealer(keys.kek_raw).open("ph_1", sealed[:-6] + "AAAAAA"),
    )
    for attempt in attempts:
        with pytest.raises(SealError) as sealing:
            attempt()
        texts += [str(sealing.value), repr(sealing.value)]
    texts += [repr(Rejected.__new__(Rejected)), repr(Unavailable("redis")), repr(InvalidRecord("x"))]
    from gateway.providers import Key

    texts.append(repr(Key(material=keys.plivo_token.encode(), fingerprint="fp_x")))
    with pytest.raises(TypeError):
        __import__("pickle").dumps(settings.kek)
    keys.assert_absent("\n".join(texts), "a repr or an exception message")


# ---- the admin API's bearer check -----------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(redis_server: str) -> Iterator[RunningGateway]:
    with run_gateway(make_settings(redis_server)) as running:
        yield running


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        f"Bearer  {ADMIN_TOKEN}x",
        f"Basic {ADMIN_TOKEN}",
        ADMIN_TOKEN,
        f"Bearer {ADMIN_TOKEN}x",
        "Bearer x" * 500,
    ],
)
def test_admin_rejects_missing_or_wrong_bearer(gw: RunningGateway, authorization: str | None) -> None:
    headers = {"authorization": authorization} if authorization is not None else {}
    for method, path in (("GET", "/admin/phones"), ("GET", "/admin/phones/ph_1"), ("DELETE", "/admin/phones/ph_1")):
        response = gw.client.request(method, path, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.content == b'{"error":"unauthorized"}'  # the same whatever was wrong
    response = gw.client.put("/admin/phones/ph_1", headers=headers, content=b"{")
    assert response.status_code == 401  # refused before the body is even parsed


def test_admin_compares_every_presented_token_in_constant_time(
    gw: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request runs exactly one compare_digest over fixed-length digests, whatever it sent:
    no early exit on a missing header, a wrong scheme or a wrong length."""
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest  # what gateway.admin calls, through its own `import hmac`

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr("gateway.admin.hmac.compare_digest", spy)
    for headers in (
        {},
        {"authorization": "Basic abc"},
        {"authorization": "Bearer " + "x" * 3},
        {"authorization": "Bearer " + "x" * 999},
    ):
        assert gw.client.get("/admin/phones", headers=headers).status_code == 401
    assert calls == [(hashlib.sha256().digest_size, hashlib.sha256().digest_size)] * 4


def test_admin_is_disabled_without_a_token(redis_url: str) -> None:
    with run_gateway(make_settings(redis_url, GATEWAY_ADMIN_TOKEN="")) as gw:
        for method, path in (("GET", "/admin/phones"), ("PUT", "/admin/phones/ph_1"), ("DELETE", "/admin/phones/ph_1")):
            for token in (None, ADMIN_TOKEN):
                response = gw.admin(method, path, {"provider": "plivo"} if method == "PUT" else None, token=token)
                assert response.status_code == 404


# ---- GATEWAY_ADMIN_PORT: admin and metrics on their own port, webhooks only on the public one --------


@pytest.fixture
def two_ports(redis_url: str, tmp_path: Path) -> Iterator[GatewayProcess]:
    with spawn_gateway(redis_url, tmp_path, admin_port=True) as gateway:
        yield gateway


def test_admin_port_separation(two_ports: GatewayProcess, keys: Secrets) -> None:
    public = httpx.Client(base_url=two_ports.base_url, timeout=10)
    private = httpx.Client(base_url=f"http://127.0.0.1:{two_ports.admin_port}", timeout=10)
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        phone = plivo_phone("ph_ports", keys.plivo_token)
        body = {k: phone[k] for k in ("provider", "credentials")}
        # The public port serves webhooks and health checks only.
        assert public.put("/admin/phones/ph_ports", json=body, headers=auth).status_code == 404
        assert public.get("/admin/phones", headers=auth).status_code == 404
        assert public.get("/metrics").status_code == 404
        assert public.get("/healthz").status_code == 200
        assert public.get("/readyz").status_code == 200
        # The admin port serves the admin API and /metrics.
        assert private.put("/admin/phones/ph_ports", json=body, headers=auth).status_code == 201
        assert private.get("/admin/phones/ph_ports", headers=auth).status_code == 200
        assert private.get("/admin/phones").status_code == 401
        assert private.get("/metrics").status_code == 200
        # Webhooks: served on the public port, not on the admin port.
        request = plivo_request(keys.plivo_token, "ph_ports")
        method, target, headers, content = as_carrier(request)
        assert private.request(method, target, headers=headers, content=content).status_code == 404
        assert public.request(method, target, headers=headers, content=content).status_code == 200
        text = private.get("/metrics").text
        assert 'gateway_forwarded_total{provider="plivo"} 1.0' in text
    finally:
        public.close()
        private.close()
    two_ports.terminate()
    keys.assert_absent(two_ports.log(), "the gateway process's log output")
