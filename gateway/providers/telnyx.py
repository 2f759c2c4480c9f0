"""Telnyx: Ed25519 over "{telnyx-timestamp}|{raw body}".

Bit-exact with telnyx-python 4.189.0 `telnyx/lib/webhook_verification.py`
(`verify_webhook_signature`): empty headers count as missing, the timestamp is parsed
with `int()` and must be within the tolerance of the clock either way (inclusive), the
signature is decoded with non-validating `base64.b64decode` and must be 64 bytes, the
body must be UTF-8, and the signed message uses the timestamp header exactly as received
and the body bytes as received.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any

import nacl.exceptions
import orjson
from nacl.signing import SigningKey, VerifyKey

from gateway.errors import Reason, Rejected
from gateway.inbound import InboundRequest
from gateway.providers import Key, KeyKind, PhoneCredentials, Provider, RouteFamily, Verified, signed_digest
from gateway.providers.spec import (
    ANSWER,
    END,
    OTHER,
    CallbackBody,
    CallEvent,
    CarrierSpec,
    CredentialFields,
    RouteSpec,
    SigningInput,
    SigningKeyError,
    status_label,
)

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
DEFAULT_TOLERANCE_S = 300  # the SDK's TIMESTAMP_TOLERANCE_SECONDS

_SIGNATURE_LEN = 64
# Which payload field holds OUR number, by call direction (Call Control v2 spelling).
_OWN_NUMBER_FIELD = {"incoming": "to", "outgoing": "from"}


def sign(seed: bytes, timestamp: str, body: bytes) -> str:
    """The `telnyx-signature-ed25519` value for `body` sent at `timestamp` (32-byte seed)."""
    message = timestamp.encode("utf-8") + b"|" + body
    return base64.b64encode(SigningKey(seed).sign(message).signature).decode()


def verify_key(key: Key) -> VerifyKey | None:
    """The key's prepared VerifyKey, or one built from its 32 raw bytes (None if invalid)."""
    if isinstance(key.prepared, VerifyKey):
        return key.prepared
    try:
        return VerifyKey(key.material)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return None


class TelnyxVerifier:
    """Verifies Telnyx webhooks against the phone's Ed25519 public key(s)."""

    def __init__(self, tolerance_s: int = DEFAULT_TOLERANCE_S) -> None:
        if tolerance_s < 0:
            raise ValueError(f"tolerance_s must be >= 0, got {tolerance_s}")
        self._tolerance_s = tolerance_s

    def verify(self, inbound: InboundRequest, creds: PhoneCredentials, now: float) -> Verified:
        signature = inbound.header(SIGNATURE_HEADER)
        timestamp = inbound.header(TIMESTAMP_HEADER)
        if not signature:
            raise Rejected(Reason.MISSING_SIGNATURE, SIGNATURE_HEADER)
        if not timestamp:
            raise Rejected(Reason.MISSING_SIGNATURE, TIMESTAMP_HEADER)
        try:
            sent_at = int(timestamp)  # as the SDK: int() rules (" 17", "+17", "1_7" parse)
        except ValueError:
            raise Rejected(Reason.MALFORMED_SIGNATURE, "timestamp is not an integer") from None
        # SDK: abs(int(time.time()) - webhook_time) > tolerance -> reject; the edge is accepted.
        if abs(int(now) - sent_at) > self._tolerance_s:
            raise Rejected(Reason.STALE_TIMESTAMP, "timestamp outside tolerance")
        try:
            raw_signature = base64.b64decode(signature)  # non-validating, like the SDK
        except (binascii.Error, ValueError):  # bad padding, or non-ASCII text
            raise Rejected(Reason.MALFORMED_SIGNATURE, "signature is not base64") from None
        if len(raw_signature) != _SIGNATURE_LEN:
            raise Rejected(Reason.MALFORMED_SIGNATURE, "signature is not 64 bytes")
        if not inbound.body.isascii():
            try:  # the SDK decodes the payload as UTF-8 before verifying: never accepts other bytes
                inbound.body.decode("utf-8")
            except UnicodeDecodeError:
                raise Rejected(Reason.MALFORMED_REQUEST, "body is not UTF-8") from None

        message = timestamp.encode("utf-8") + b"|" + inbound.body
        for key in creds.active_keys(KeyKind.PUBLIC_KEY, now):
            verifier = verify_key(key)
            if verifier is None:  # a stored key that is not 32 bytes cannot vouch for anything
                continue
            try:
                verifier.verify(message, raw_signature)
            except (nacl.exceptions.CryptoError, ValueError, TypeError):  # BadSignatureError is a CryptoError
                continue
            return Verified(key_fingerprint=key.fingerprint, signed_digest=signed_digest(message))
        raise Rejected(Reason.INVALID_SIGNATURE, "no active public key verifies the signature")


def _data_of(document: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    data = document.get("data") if document is not None else None
    return data if isinstance(data, dict) else None


def parse_event(body: bytes) -> Mapping[str, Any] | None:
    """The event's `data` object, or None unless the body is a JSON object holding one."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:  # also invalid UTF-8, too deep, numbers out of range
        return None
    return _data_of(document if isinstance(document, dict) else None)


def request_event(inbound: InboundRequest) -> Mapping[str, Any] | None:
    """The request's `data` object; the body is parsed once per request (routing, key, call check)."""
    return _data_of(inbound.json_object())


def _event_id_of(data: Mapping[str, Any] | None) -> str | None:
    value = data.get("id") if data is not None else None
    return value if isinstance(value, str) and value else None


def event_id(body: bytes) -> str | None:
    """`data.id`, Telnyx's identity for an event (it may deliver one event twice)."""
    return _event_id_of(parse_event(body))


def event_numbers(body: bytes) -> list[str]:
    """Candidate E.164 numbers of OUR phone in this event, most likely first (see `numbers_of`)."""
    return numbers_of(parse_event(body))


def request_numbers(inbound: InboundRequest) -> list[str]:
    return numbers_of(request_event(inbound))


def numbers_of(data: Mapping[str, Any] | None) -> list[str]:
    """Candidate E.164 numbers of OUR phone in an event's `data`, most likely first.

    With a `direction` (Call Control v2 sends it on `call.initiated`): incoming ->
    `payload.to` (the number dialled), outgoing -> `payload.from` (the number we call
    from); the other party's number is never a candidate. Later events of a call
    (`call.answered`, `call.hangup`, ...) carry no direction: then `to`, then `from`.
    The caller takes the first candidate registered as a phone. That guess can only go
    wrong for a call between two phones of the same Telnyx account (both registered,
    same public key): route those through /webhooks/telnyx/voice/{phone_id}.
    Only `+` and 1-15 digits count (SIP URIs and the like are not numbers).
    """
    payload = data.get("payload") if data is not None else None
    if not isinstance(payload, dict):
        return []
    direction = payload.get("direction")
    field = _OWN_NUMBER_FIELD.get(direction) if isinstance(direction, str) else None
    fields = (field,) if field else ("to", "from")
    numbers: list[str] = []
    for name in fields:
        number = payload.get(name)
        if isinstance(number, str) and _is_e164(number) and number not in numbers:
            numbers.append(number)
    return numbers


def _is_e164(number: str) -> bool:
    digits = number[1:]
    return number[:1] == "+" and 2 <= len(digits) <= 15 and digits.isascii() and digits.isdigit() and digits[0] != "0"


def idempotency_key(inbound: InboundRequest, kind: str) -> str | None:
    """`data.id`: the same event delivered again has the same id (whatever the route kind)."""
    return _event_id_of(request_event(inbound))


def call_event(inbound: InboundRequest, kind: str) -> CallEvent | None:
    """`call.initiated` answers the call, `call.hangup` ends it.

    https://developers.telnyx.com/api-reference/callbacks/call-hangup; Telnyx may deliver
    out of order: https://developers.telnyx.com/docs/voice/programmable-voice/receiving-webhooks
    """
    data = request_event(inbound)
    if data is None:
        return None
    payload = data.get("payload")
    if not isinstance(payload, Mapping):
        return None
    cid = payload.get("call_leg_id") or payload.get("call_control_id")
    if not isinstance(cid, str) or not cid:
        return None
    event_type = data.get("event_type")
    phase = ANSWER if event_type == "call.initiated" else END if event_type == "call.hangup" else OTHER
    return CallEvent(cid, phase, status_label(event_type))


def call_id(inbound: InboundRequest) -> str | None:
    """Telnyx answers carry no call id: Call Control acts through its REST API."""
    return None


def decoy() -> PhoneCredentials:
    """A phone with a random public key: an unknown phone id is answered like a bad signature."""
    public = secrets.token_bytes(32)
    key = Key(material=public, fingerprint="decoy", prepared=VerifyKey(public))
    return PhoneCredentials("decoy", Provider.TELNYX, {KeyKind.PUBLIC_KEY: (key,)})


# ---- `gateway sign` and `gateway explain` (gateway/diagnostics/) ----


def sign_headers(data: SigningInput) -> list[tuple[str, str]]:
    """The signature and timestamp headers Telnyx sends with this event (`data.secret`: the Ed25519 seed)."""
    if len(data.secret) != 32:
        raise SigningKeyError("the Telnyx seed must be 32 bytes (base64)")
    stamp = str(int(time.time()) if data.timestamp is None else data.timestamp)
    return [(SIGNATURE_HEADER, sign(data.secret, stamp, data.body)), (TIMESTAMP_HEADER, stamp)]


def call_initiated(url: str) -> bytes:
    """A Call Control v2 `call.initiated` event with a fresh id (delivered to `url`)."""
    event = {
        "data": {
            "event_type": "call.initiated",
            "id": str(uuid.uuid4()),
            "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
            "payload": {
                "call_control_id": "v3:" + secrets.token_urlsafe(24),
                "connection_id": "0000000000000000000",
                "direction": "incoming",
                "from": "+14155550100",
                "state": "parked",
                "to": "+14155550101",
            },
            "record_type": "event",
        },
        "meta": {"attempt": 1, "delivered_to": url},
    }
    return orjson.dumps(event)


def signed_strings(request: InboundRequest, _url: str) -> list[tuple[str, bytes]]:
    """What Telnyx signs for `request`: the timestamp header and the body (not the URL)."""
    timestamp = request.headers.get(TIMESTAMP_HEADER, "")
    return [(f"Telnyx ({SIGNATURE_HEADER} over timestamp|body)", timestamp.encode() + b"|" + request.body)]


def signed_at(request: InboundRequest) -> float | None:
    """The moment the request says it was signed (its timestamp header), or None."""
    try:
        return float(int(request.headers.get(TIMESTAMP_HEADER, "")))
    except ValueError:
        return None


EXPLAIN_HINT = (
    "  Telnyx signs the timestamp and the body, not the URL: a body changed on the way (even",
    "  re-serialised JSON or a trailing newline), another timestamp, or another key.",
)
EXPLAIN_NO_SIGNATURE = (
    "  Telnyx signs every API v2 webhook (telnyx-signature-ed25519 and telnyx-timestamp): a request",
    "  without them was not sent by Telnyx, or a proxy dropped the headers.",
)


SPEC = CarrierSpec(
    provider=Provider.TELNYX,
    family=RouteFamily.TELNYX,
    routes=(RouteSpec("/webhooks/telnyx/voice", "voice", phone_id_optional=True),),
    make_verifier=lambda options: TelnyxVerifier(tolerance_s=options.timestamp_tolerance_s),
    credentials=CredentialFields(
        required=("public_key",),
        optional=("api_key",),
        secret=frozenset({"api_key"}),
        key_fields={"public_key": KeyKind.PUBLIC_KEY},
    ),
    idempotency_key=idempotency_key,
    call_event=call_event,
    call_id=call_id,
    answer=None,  # Call Control ignores webhook answer bodies
    signature_headers=(SIGNATURE_HEADER, TIMESTAMP_HEADER),
    decoy=decoy,
    numbers_in_request=request_numbers,
    title="Telnyx",
    callback_body=CallbackBody.JSON_EVENT,
    sample_event=call_initiated,
    sign_headers=sign_headers,
    seed_signed=True,
    signing_key=None,  # its record holds only the public key
    strings_to_sign=signed_strings,
    signed_at=signed_at,
    explain_hint=EXPLAIN_HINT,
    explain_no_signature=EXPLAIN_NO_SIGNATURE,
    signed_body=True,  # the raw body bytes: a diagnosis may try it re-serialised, without a newline, ...
)
