"""Build validly signed carrier requests (vector-shaped dicts for `send_as_carrier`), one thing changeable at a time.

Each builder returns a request that the gateway must accept, so a test changes one
thing at a time. Signatures come from the public helpers in gateway/providers
(`plivo.sign_v3`, `twilio.sign`, `telnyx.sign`); tests/providers/ pins those helpers to
the carriers' SDKs through the vectors.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any
from urllib.parse import urlencode

import orjson
from nacl.signing import SigningKey

from gateway.providers import plivo, telnyx, twilio

PUBLIC = "https://hooks.example.com"
CARRIER_IP = "198.51.100.20"


def plivo_params(call_uuid: str | None = None, status: str = "ringing") -> list[tuple[str, str]]:
    return [
        ("CallUUID", call_uuid or f"{secrets.token_hex(8)}-1"),
        ("CallStatus", status),
        ("From", "+14155550100"),
        ("To", "+14155550101"),
        ("Direction", "inbound"),
        ("Event", "StartApp"),
    ]


def plivo_request(
    token: str,
    phone_id: str,
    *,
    kind: str = "status",
    params: list[tuple[str, str]] | None = None,
    query: str = "",
    method: str = "POST",
    nonce: str | None = None,
    signed_url: str | None = None,
    base: str = PUBLIC,
) -> dict[str, Any]:
    """A Plivo V3 signed request; `signed_url` signs a different URL than the one called."""
    params = plivo_params() if params is None else params
    url = f"{base}/plivo/{kind}/{phone_id}" + (f"?{query}" if query else "")
    nonce = nonce or str(secrets.randbelow(10**24))
    body = urlencode(params) if method == "POST" else ""
    signature = plivo.sign_v3(token, method, signed_url or url, params if method == "POST" else None, nonce)
    headers = {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce}
    if method == "POST":
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    return {"method": method, "url": url, "headers": headers, "body": body, "client_ip": CARRIER_IP}


def plivo_phone(phone_id: str, token: str, provider: str = "plivo", **config: Any) -> dict[str, Any]:
    return {
        "id": phone_id,
        "provider": provider,
        "credentials": {"auth_id": "MAEXAMPLE0000000000", "auth_token": token},
        "config": config,
    }


def new_token() -> str:
    return secrets.token_urlsafe(30)


EXOTEL_IP = "203.0.113.10"  # inside the test allowlist (make_settings: 203.0.113.0/24, 2001:db8::/32)
FORM = "application/x-www-form-urlencoded"

# ---- Twilio -----------------------------------------------------------------------------


def twilio_call_sid() -> str:
    return "CA" + secrets.token_hex(16)


def twilio_params(call_sid: str | None = None, status: str = "ringing") -> list[tuple[str, str]]:
    return [
        ("AccountSid", "AC" + "0" * 32),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", call_sid or twilio_call_sid()),
        ("CallStatus", status),
        ("Called", "+14155550101"),
        ("Caller", "+14155550100"),
        ("Direction", "inbound"),
        ("From", "+14155550100"),
        ("To", "+14155550101"),
    ]


def twilio_phone(phone_id: str, token: str, *, signing_key: str | None = None, **config: Any) -> dict[str, Any]:
    credentials = {"account_sid": "AC" + "0" * 32, "auth_token": token}
    if signing_key is not None:
        credentials["webhook_signing_key"] = signing_key
        credentials["webhook_signing_key_id"] = "KS" + "0" * 32
    return {"id": phone_id, "provider": "twilio", "credentials": credentials, "config": config}


def twilio_url(phone_id: str, kind: str = "status", query: str = "", base: str = PUBLIC) -> str:
    return f"{base}/twilio/{kind}/{phone_id}" + (f"?{query}" if query else "")


def twilio_request(
    token: str,
    phone_id: str,
    *,
    kind: str = "status",
    params: list[tuple[str, str]] | None = None,
    query: str = "",
    method: str = "POST",
    signed_url: str | None = None,
    base: str = PUBLIC,
    algorithm: str = twilio.HMAC_SHA1,
    settings_header: str | None = None,
) -> dict[str, Any]:
    """A Twilio request signed like Twilio signs it.

    POST: form body, signature over the URL + sorted params. GET: the params go in the
    query (after `query`, if any) and the signature covers the URL alone. `signed_url`
    signs another URL than the one called; `algorithm`/`settings_header` sign with a
    shared webhook key (X-Twilio-Webhooks-Signature-Settings).
    """
    params = twilio_params() if params is None else params
    if method == "GET":
        query = "&".join(part for part in (query, urlencode(params)) if part)
    url = twilio_url(phone_id, kind, query, base)
    signed_params = params if method == "POST" else None
    signature = twilio.sign(token, signed_url or url, signed_params, algorithm=algorithm)
    headers = {"X-Twilio-Signature": signature}
    if settings_header is not None:
        headers["X-Twilio-Webhooks-Signature-Settings"] = settings_header
    body = ""
    if method == "POST":
        headers["Content-Type"] = FORM
        body = urlencode(params)
    return {"method": method, "url": url, "headers": headers, "body": body, "client_ip": CARRIER_IP}


def twilio_json_request(
    token: str, phone_id: str, document: dict[str, Any], *, kind: str = "status", base: str = PUBLIC
) -> dict[str, Any]:
    """A JSON-bodied Twilio request: the body is covered by `bodySHA256` in the signed URL."""
    body = orjson.dumps(document)
    url = twilio_url(phone_id, kind, f"bodySHA256={twilio.body_sha256(body)}", base)
    headers = {"X-Twilio-Signature": twilio.sign(token, url), "Content-Type": "application/json"}
    return {"method": "POST", "url": url, "headers": headers, "body": body.decode(), "client_ip": CARRIER_IP}


# ---- Telnyx -----------------------------------------------------------------------------


def telnyx_seed() -> str:
    """A fresh Ed25519 signing seed, base64 (the 'secret' Telnyx keeps; we get the public half)."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def telnyx_public_key(seed: str) -> str:
    return base64.b64encode(bytes(SigningKey(base64.b64decode(seed)).verify_key)).decode()


def telnyx_phone(phone_id: str, seed: str, *, number: str | None = None, **config: Any) -> dict[str, Any]:
    if number is not None:
        config["number"] = number
    return {
        "id": phone_id,
        "provider": "telnyx",
        "credentials": {"public_key": telnyx_public_key(seed)},
        "config": config,
    }


def telnyx_number() -> str:
    """A random North-American-looking E.164 number (555-01xx is reserved for fiction)."""
    return f"+1{secrets.randbelow(800) + 200}55501{secrets.randbelow(100):02d}"


def telnyx_event(
    event_id: str | None = None,
    *,
    event_type: str = "call.initiated",
    to: str = "+14155550101",
    from_: str = "+14155550100",
    direction: str | None = "incoming",
    attempt: int = 1,
) -> dict[str, Any]:
    """A Call Control v2 webhook document."""
    payload: dict[str, Any] = {
        "call_control_id": "v3:" + secrets.token_urlsafe(16),
        "call_leg_id": secrets.token_hex(8),
        "call_session_id": secrets.token_hex(8),
        "connection_id": "1494404757140276705",
        "from": from_,
        "to": to,
        "state": "parked",
    }
    if direction is not None:
        payload["direction"] = direction
    return {
        "data": {
            "event_type": event_type,
            "id": event_id or secrets.token_hex(16),
            "occurred_at": "2026-11-26T10:00:00.000000Z",
            "payload": payload,
            "record_type": "event",
        },
        "meta": {"attempt": attempt, "delivered_to": f"{PUBLIC}/webhooks/telnyx/voice"},
    }


def telnyx_request(
    seed: str,
    phone_id: str | None,
    *,
    now: float,
    body: bytes | dict[str, Any] | None = None,
    ts_offset: int = 0,
    signed_timestamp: str | None = None,
    signed_body: bytes | None = None,
    base: str = PUBLIC,
) -> dict[str, Any]:
    """A Telnyx webhook sent at `int(now) + ts_offset`, to the path route (or the number route if
    `phone_id` is None). `signed_timestamp`/`signed_body` sign something other than what is sent."""
    raw = orjson.dumps(telnyx_event()) if body is None else body if isinstance(body, bytes) else orjson.dumps(body)
    timestamp = str(int(now) + ts_offset)
    signature = telnyx.sign(
        base64.b64decode(seed),
        signed_timestamp if signed_timestamp is not None else timestamp,
        signed_body if signed_body is not None else raw,
    )
    url = f"{base}/webhooks/telnyx/voice" + (f"/{phone_id}" if phone_id is not None else "")
    headers = {
        "Content-Type": "application/json",
        "telnyx-signature-ed25519": signature,
        "telnyx-timestamp": timestamp,
    }
    return {"method": "POST", "url": url, "headers": headers, "body": raw, "client_ip": CARRIER_IP}


def telnyx_body(request: dict[str, Any]) -> dict[str, Any]:
    body = request["body"]
    return dict(orjson.loads(body if isinstance(body, bytes) else body.encode()))


# ---- Exotel -----------------------------------------------------------------------------


def exotel_call_sid() -> str:
    return secrets.token_hex(16)


def exotel_params(call_sid: str | None = None, status: str = "completed") -> list[tuple[str, str]]:
    """A status callback's fields (Exotel posts CallSid, Status, RecordingUrl, ...)."""
    return [
        ("CallSid", call_sid or exotel_call_sid()),
        ("Status", status),
        ("From", "09876543210"),
        ("To", "08012345678"),
        ("Direction", "incoming"),
        ("DateUpdated", "2026-11-26 10:00:00"),
    ]


def exotel_passthru_params(call_sid: str | None = None) -> list[tuple[str, str]]:
    """What a Passthru applet sends as the GET query (no Status: the call is in progress)."""
    return [
        ("CallSid", call_sid or exotel_call_sid()),
        ("CallFrom", "09876543210"),
        ("CallTo", "08012345678"),
        ("Direction", "incoming"),
        ("CallType", "call-attempt"),
        ("flow_id", "123456"),
        ("CurrentTime", "2026-11-26 10:00:00"),
    ]


def exotel_token() -> str:
    return new_token()


def exotel_phone(phone_id: str, token: str | None = None, **config: Any) -> dict[str, Any]:
    if token is not None:
        config["exotel_webhook_token"] = token
    return {
        "id": phone_id,
        "provider": "exotel",
        "credentials": {"api_key": "exotel-api-key-example", "api_token": new_token(), "sid": "example1"},
        "config": config,
    }


def exotel_request(
    phone_id: str,
    *,
    token: str | None = None,
    kind: str = "status",
    method: str = "POST",
    params: list[tuple[str, str]] | None = None,
    client_ip: str = EXOTEL_IP,
    query: str = "",
    base: str = PUBLIC,
) -> dict[str, Any]:
    """An Exotel callback: POST (form) status callback, or GET passthru with the params in the query.
    `?token=` comes first in the query when given; `query` is appended as is."""
    if params is None:
        params = exotel_params() if method == "POST" else exotel_passthru_params()
    parts = [f"token={token}"] if token is not None else []
    if method == "GET":
        parts.append(urlencode(params))
    if query:
        parts.append(query)
    full_query = "&".join(parts)
    url = f"{base}/exotel/{kind}/{phone_id}" + (f"?{full_query}" if full_query else "")
    headers: dict[str, str] = {}
    body = ""
    if method == "POST":
        headers["Content-Type"] = FORM
        body = urlencode(params)
    return {"method": method, "url": url, "headers": headers, "body": body, "client_ip": client_ip}
