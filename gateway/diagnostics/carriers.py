"""What `gateway sign` and `gateway explain` know of each carrier, in tables keyed by Provider.

Header names, how each carrier's signature headers are made, what it signs (the
string-to-sign, shown by `explain`), what body it sends and a sample event. The
verifiers and sample callback parameters come from the carrier registry
(gateway/providers/registry.py). Signing uses the same public helpers the verifiers
are tested against (gateway/providers/{plivo,vobiz,twilio,telnyx}.py).
"""

from __future__ import annotations

import enum
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from gateway.diagnostics.errors import SignError
from gateway.diagnostics.wire import text_url
from gateway.inbound import InboundRequest
from gateway.providers import Provider
from gateway.providers import plivo as plivo_sig
from gateway.providers import telnyx as telnyx_sig
from gateway.providers import twilio as twilio_sig
from gateway.providers import vobiz as vobiz_sig

# ---- header names, as `gateway sign` writes them (the gateway reads them case-insensitively) ----

PLIVO_SIGNATURE = "X-Plivo-Signature-V3"
PLIVO_MAIN_ACCOUNT_SIGNATURE = "X-Plivo-Signature-Ma-V3"
PLIVO_NONCE = "X-Plivo-Signature-V3-Nonce"
VOBIZ_SIGNATURE = "X-Vobiz-Signature-V3"
VOBIZ_MAIN_ACCOUNT_SIGNATURE = "X-Vobiz-Signature-Ma-V3"
VOBIZ_NONCE = "X-Vobiz-Signature-V3-Nonce"
TWILIO_SIGNATURE = "X-Twilio-Signature"
TWILIO_SIGNATURE_SETTINGS = "X-Twilio-Webhooks-Signature-Settings"
TELNYX_SIGNATURE = "telnyx-signature-ed25519"
TELNYX_TIMESTAMP = "telnyx-timestamp"

# Each carrier's signature headers: (signature header, the header carrying its nonce or timestamp).
SIGNATURE_HEADERS: dict[Provider, tuple[tuple[str, str | None], ...]] = {
    Provider.PLIVO: ((PLIVO_SIGNATURE, PLIVO_NONCE), (PLIVO_MAIN_ACCOUNT_SIGNATURE, PLIVO_NONCE)),
    Provider.VOBIZ: (
        (PLIVO_SIGNATURE, PLIVO_NONCE),
        (PLIVO_MAIN_ACCOUNT_SIGNATURE, PLIVO_NONCE),
        (VOBIZ_SIGNATURE, VOBIZ_NONCE),
        (VOBIZ_MAIN_ACCOUNT_SIGNATURE, VOBIZ_NONCE),
    ),
    Provider.TWILIO: ((TWILIO_SIGNATURE, None),),
    Provider.TELNYX: ((TELNYX_SIGNATURE, TELNYX_TIMESTAMP),),
    Provider.EXOTEL: (),  # unsigned: source address and the URL's ?token=
}


# ---- what a callback carries -------------------------------------------------------------------


class Body(enum.Enum):
    FORM = "form"  # form parameters (POST) or query parameters (GET), never JSON
    FORM_OR_JSON = "form or json"  # also a raw JSON body
    JSON_EVENT = "json event"  # a JSON event, always POST


CALLBACK_BODIES: dict[Provider, Body] = {
    Provider.PLIVO: Body.FORM,
    Provider.VOBIZ: Body.FORM,
    Provider.EXOTEL: Body.FORM,
    Provider.TWILIO: Body.FORM_OR_JSON,
    Provider.TELNYX: Body.JSON_EVENT,
}


def twilio_body_hash(body: bytes) -> tuple[str, str]:
    """Twilio covers a raw body through bodySHA256 in the signed URL."""
    return ("bodySHA256", twilio_sig.body_sha256(body))


# The query parameter through which a carrier's signature covers a raw (JSON) body.
BODY_HASH_PARAMS: dict[Provider, Callable[[bytes], tuple[str, str]]] = {Provider.TWILIO: twilio_body_hash}


def telnyx_call_initiated(url: str) -> bytes:
    """A Call Control v2 `call.initiated` event with a fresh id."""
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


# A sample JSON event (given the URL it is delivered to), for the carriers that send one.
SAMPLE_EVENTS: dict[Provider, Callable[[str], bytes]] = {Provider.TELNYX: telnyx_call_initiated}


# ---- signing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningInput:
    secret: bytes = field(repr=False)
    url: str  # the URL the carrier calls
    method: str
    params: list[tuple[str, str]] | None  # the form parameters (POST), None otherwise
    body: bytes
    nonce: str | None  # Plivo/Vobiz; None: random
    timestamp: int | None  # Telnyx; None: now
    algorithm: str  # Twilio


def _plivo_headers(data: SigningInput) -> list[tuple[str, str]]:
    token = data.secret.decode("utf-8")
    nonce = data.nonce or str(secrets.randbelow(10**20)).zfill(20)
    return [
        (PLIVO_SIGNATURE, plivo_sig.sign_v3(token, data.method, data.url, data.params, nonce)),
        (PLIVO_NONCE, nonce),
    ]


def _vobiz_headers(data: SigningInput) -> list[tuple[str, str]]:
    # Vobiz documents its own header too; the gateway accepts either.
    headers = _plivo_headers(data)
    nonce = headers[1][1]
    token = data.secret.decode("utf-8")
    return [*headers, (VOBIZ_SIGNATURE, vobiz_sig.sign_vobiz_v3(token, data.url, nonce)), (VOBIZ_NONCE, nonce)]


def _twilio_headers(data: SigningInput) -> list[tuple[str, str]]:
    token = data.secret.decode("utf-8")
    headers = [(TWILIO_SIGNATURE, twilio_sig.sign(token, data.url, data.params, algorithm=data.algorithm))]
    if data.algorithm != twilio_sig.HMAC_SHA1:  # signed with the shared webhook key: say so, as Twilio does
        headers.append((TWILIO_SIGNATURE_SETTINGS, f"algorithm={data.algorithm}"))
    return headers


def _telnyx_headers(data: SigningInput) -> list[tuple[str, str]]:
    if len(data.secret) != 32:
        raise SignError("the Telnyx seed must be 32 bytes (base64)")
    stamp = str(int(time.time()) if data.timestamp is None else data.timestamp)
    return [(TELNYX_SIGNATURE, telnyx_sig.sign(data.secret, stamp, data.body)), (TELNYX_TIMESTAMP, stamp)]


# The signature headers a carrier sends with a callback (Exotel signs nothing).
SIGNERS: dict[Provider, Callable[[SigningInput], list[tuple[str, str]]]] = {
    Provider.PLIVO: _plivo_headers,
    Provider.VOBIZ: _vobiz_headers,
    Provider.TWILIO: _twilio_headers,
    Provider.TELNYX: _telnyx_headers,
}


# ---- what the carrier signs (no secret in it) ----------------------------------------------------


def _plivo_strings(request: InboundRequest, out: list[tuple[str, bytes]]) -> None:
    params = request.form_params() if request.method == "POST" else None
    for header, nonce_header in SIGNATURE_HEADERS[Provider.PLIVO]:
        if request.headers.get(header.lower()):
            nonce = request.headers.get((nonce_header or "").lower(), "")
            signed = plivo_sig.v3_string_to_sign(request.method, text_url(request), params, nonce)
            out.append((f"Plivo V3 ({header})", signed))


def _vobiz_strings(request: InboundRequest, out: list[tuple[str, bytes]]) -> None:
    _plivo_strings(request, out)
    for header in (VOBIZ_SIGNATURE.lower(), VOBIZ_MAIN_ACCOUNT_SIGNATURE.lower()):
        if request.headers.get(header):
            nonce = request.headers.get(VOBIZ_NONCE.lower(), "")
            out.append((f"Vobiz V3 ({header})", vobiz_sig.vobiz_v3_string_to_sign(text_url(request), nonce)))


def _twilio_strings(request: InboundRequest, out: list[tuple[str, bytes]]) -> None:
    params = request.form_params() if request.is_form else None
    name = f"Twilio ({TWILIO_SIGNATURE}; also accepted with the default port added/removed)"
    out.append((name, twilio_sig.string_to_sign(text_url(request), params)))


def _telnyx_strings(request: InboundRequest, out: list[tuple[str, bytes]]) -> None:
    timestamp = request.headers.get(TELNYX_TIMESTAMP, "")
    out.append((f"Telnyx ({TELNYX_SIGNATURE} over timestamp|body)", timestamp.encode() + b"|" + request.body))


# Appends (what, bytes) the carrier signs for this request, per signature header present.
STRINGS_TO_SIGN: dict[Provider, Callable[[InboundRequest, list[tuple[str, bytes]]], None]] = {
    Provider.PLIVO: _plivo_strings,
    Provider.VOBIZ: _vobiz_strings,
    Provider.TWILIO: _twilio_strings,
    Provider.TELNYX: _telnyx_strings,
}
