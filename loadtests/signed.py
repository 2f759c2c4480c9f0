"""Validly signed (and deliberately forged) carrier callbacks, built with the gateway's own signing helpers.

Shared by the Locust scenario (signs each request as it is sent) and the ceiling
benchmark (pre-signs files of raw HTTP requests for wrk). Every request is addressed
to PUBLIC_BASE_URL (the gateway runs with GATEWAY_PUBLIC_BASE_URL set to it) and
carries X-Forwarded-For with the carrier's address: the gateway must run with
GATEWAY_TRUSTED_PROXIES=127.0.0.1/32 so it believes that header from the load
generator, which is how Exotel's source-IP allowlist is exercised from 127.0.0.1.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import orjson

from gateway.providers import plivo, telnyx, twilio
from loadtests.phones import EXOTEL_SOURCE_IP, FORGED_SOURCE_IP, PUBLIC_BASE_URL, Phone

FORGED_ACCEPTED = "FORGED REQUEST ACCEPTED"  # the failure Locust records for a forged request answered 2xx
REPLAYED = "plivo status REPLAYED"  # Locust's name for exact copies of accepted requests (duplicates)
CARRIER_IP = "198.51.100.20"  # documentation range: where Plivo/Twilio/Telnyx "send from"
FORM = "application/x-www-form-urlencoded"


@dataclass
class SignedRequest:
    name: str  # Locust's request name (grouping), e.g. "plivo status"
    method: str
    target: str  # path and raw query, as on the wire
    headers: dict[str, str]
    body: bytes = b""
    forged: bool = False  # True: the gateway must NOT answer 2xx
    meta: dict[str, str] = field(default_factory=dict)

    def raw(self, host: str) -> bytes:
        """The complete HTTP/1.1 request (for wrk / the open-loop generator)."""
        lines = [f"{self.method} {self.target} HTTP/1.1", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        if self.body or self.method == "POST":
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


def call_uuid(run: int, i: int) -> str:
    """A UUID unique to (run, i): run ids are random per run, so nothing repeats across runs."""
    return str(uuid.UUID(int=((run & 0xFFFFFFFFFFFFFFFF) << 64) | (i & 0xFFFFFFFFFFFFFFFF)))


def nonce(run: int, i: int) -> str:
    return f"{run % 10**10:010d}{i:014d}"


# ---- Plivo / Vobiz ---------------------------------------------------------------------


def plivo_status_params(uuid_: str, status: str = "completed") -> list[tuple[str, str]]:
    """A Plivo hangup status callback (about 400 bytes form-encoded)."""
    return [
        ("CallUUID", uuid_),
        ("CallStatus", status),
        ("Direction", "inbound"),
        ("From", "+918045678901"),
        ("To", "+918044556677"),
        ("Duration", "37"),
        ("BillDuration", "60"),
        ("Event", "Hangup"),
        ("HangupCause", "NORMAL_CLEARING"),
        ("HangupCauseCode", "4000"),
        ("HangupSource", "Callee"),
        ("StartTime", "2025-05-01 10:00:00"),
        ("AnswerTime", "2025-05-01 10:00:03"),
        ("EndTime", "2025-05-01 10:00:40"),
        ("TotalCost", "0.00850"),
        ("BillRate", "0.00850"),
        ("ParentAuthID", "MAEXAMPLE0000000000"),
    ]


def plivo_answer_params(uuid_: str) -> list[tuple[str, str]]:
    return [
        ("CallUUID", uuid_),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("From", "+918045678901"),
        ("To", "+918044556677"),
        ("Event", "StartApp"),
        ("CallerName", "+918045678901"),
    ]


def plivo_request(
    phone: Phone, kind: str, params: list[tuple[str, str]], nonce_: str, *, forge: bool = False
) -> SignedRequest:
    """Plivo V3 (for Plivo and Vobiz phones alike: the platform verifies the Plivo header)."""
    target = f"/plivo/{kind}/{phone.id}"
    signature = plivo.sign_v3(phone.auth_token, "POST", PUBLIC_BASE_URL + target, params, nonce_)
    if forge:  # same shape, wrong key: what an attacker without the token can produce
        signature = plivo.sign_v3(
            "not-the-auth-token-000000000000000000000", "POST", PUBLIC_BASE_URL + target, params, nonce_
        )
    return SignedRequest(
        f"{phone.provider} {kind}" + (" FORGED" if forge else ""),
        "POST",
        target,
        {
            "User-Agent": "PlivoHTTP/1.0",
            "Content-Type": FORM,
            "X-Plivo-Signature-V3": signature,
            "X-Plivo-Signature-V3-Nonce": nonce_,
            "X-Forwarded-For": CARRIER_IP,
        },
        urlencode(params).encode(),
        forged=forge,
    )


# ---- Twilio -------------------------------------------------------------------------------


def twilio_params(call_sid: str, kind: str) -> list[tuple[str, str]]:
    params = [
        ("AccountSid", "AC" + "0" * 32),
        ("CallSid", call_sid),
        ("CallStatus", "completed" if kind == "status" else "ringing"),
        ("Direction", "inbound"),
        ("From", "+12025550143"),
        ("To", "+12025550199"),
        ("ApiVersion", "2010-04-01"),
    ]
    if kind == "status":
        params += [("CallDuration", "37"), ("Timestamp", "Thu, 01 May 2025 10:00:40 +0000")]
    return params


def twilio_request(phone: Phone, kind: str, call_sid: str, *, forge: bool = False) -> SignedRequest:
    target = f"/twilio/{kind}/{phone.id}"
    params = twilio_params(call_sid, kind)
    token = "0" * 32 if forge else phone.auth_token
    return SignedRequest(
        f"twilio {kind}" + (" FORGED" if forge else ""),
        "POST",
        target,
        {
            "User-Agent": "TwilioProxy/1.1",
            "Content-Type": FORM,
            "X-Twilio-Signature": twilio.sign(token, PUBLIC_BASE_URL + target, params),
            "X-Forwarded-For": CARRIER_IP,
        },
        urlencode(params).encode(),
        forged=forge,
    )


# ---- Telnyx ------------------------------------------------------------------------------


def telnyx_body(event_id: str, phone: Phone, event_type: str = "call.hangup") -> bytes:
    payload: dict[str, object] = {
        "call_control_id": "v3:" + event_id.replace("-", "")[:22],
        "call_leg_id": event_id,
        "call_session_id": event_id[::-1],
        "connection_id": "1494404757140276705",
        "from": "+12025550143",
        "to": phone.number,
        "state": "hangup" if event_type == "call.hangup" else "parked",
    }
    if event_type == "call.initiated":
        payload["direction"] = "incoming"
    else:
        payload["hangup_cause"] = "normal_clearing"
        payload["hangup_source"] = "caller"
    document = {
        "data": {
            "event_type": event_type,
            "id": event_id,
            "occurred_at": "2025-05-01T10:00:40.000000Z",
            "payload": payload,
            "record_type": "event",
        },
        "meta": {"attempt": 1, "delivered_to": PUBLIC_BASE_URL + "/webhooks/telnyx/voice"},
    }
    return orjson.dumps(document)


def telnyx_request(
    phone: Phone,
    event_id: str,
    timestamp: int,
    *,
    by_number: bool = False,
    event_type: str = "call.hangup",
    forge: str = "",
) -> SignedRequest:
    """forge: "" (valid), "signature" (wrong key), "stale" (timestamp 10 min old)."""
    target = "/webhooks/telnyx/voice" if by_number else f"/webhooks/telnyx/voice/{phone.id}"
    body = telnyx_body(event_id, phone, event_type)
    stamp = str(timestamp - 600 if forge == "stale" else timestamp)
    seed = b"\x01" * 32 if forge == "signature" else phone.signing_seed
    return SignedRequest(
        "telnyx voice" + (" by number" if by_number else "") + (f" FORGED {forge}" if forge else ""),
        "POST",
        target,
        {
            "User-Agent": "telnyx-webhooks",
            "Content-Type": "application/json",
            "telnyx-signature-ed25519": telnyx.sign(seed, stamp, body),
            "telnyx-timestamp": stamp,
            "X-Forwarded-For": CARRIER_IP,
        },
        body,
        forged=bool(forge),
    )


# ---- Exotel ------------------------------------------------------------------------------


def exotel_request(phone: Phone, kind: str, call_sid: str, *, forge: str = "") -> SignedRequest:
    """Exotel passthru (GET with query parameters). forge: "ip" (outside the allowlist) or "token"."""
    token = "wrong-token-0123456789abcdef" if forge == "token" else phone.webhook_token
    query = [
        ("CallSid", call_sid),
        ("CallFrom", "09845678901"),
        ("CallTo", "08044556677"),
        ("Direction", "incoming"),
        ("Status", "completed" if kind == "status" else "ringing"),
        ("CurrentTime", "2025-05-01 10:00:00"),
        ("token", token),
    ]
    return SignedRequest(
        f"exotel {kind}" + (f" FORGED {forge}" if forge else ""),
        "GET",
        f"/exotel/{kind}/{phone.id}?" + urlencode(query, quote_via=quote),
        {
            "User-Agent": "Exotel",
            "X-Forwarded-For": FORGED_SOURCE_IP if forge == "ip" else EXOTEL_SOURCE_IP,
        },
        forged=bool(forge),
    )
