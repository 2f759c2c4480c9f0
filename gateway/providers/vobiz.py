"""Vobiz: Plivo-compatible callbacks on the /plivo/ routes, with Vobiz's own header family too.

Vobiz sends `X-Plivo-Signature-V3`, verified exactly as Plivo's with the Vobiz auth
token, and documents its own `X-Vobiz-Signature-V3` ("Validating Callbacks"):
base64(HMAC-SHA256(auth token, callback URL without its query + "." + nonce)). That
string does not cover the body, so the single-use nonce is all that stops a captured
signature travelling with another body.
"""

from __future__ import annotations

import secrets

from gateway.inbound import InboundRequest, wire_text
from gateway.providers import Key, KeyKind, PhoneCredentials, Provider, RouteFamily, plivo
from gateway.providers.plivo import PLIVO_SCHEMES, PlivoVerifier, V3Scheme, b64_hmac_sha256
from gateway.providers.spec import CallEvent, CarrierSpec, SigningInput, UrlSigning, form_call_event

SIGNATURE_HEADER = "x-vobiz-signature-v3"
NONCE_HEADER = "x-vobiz-signature-v3-nonce"


def vobiz_v3_string_to_sign(url: str, nonce: str) -> bytes:
    """Vobiz V3: the callback URL without its query, "." and the nonce."""
    base = url.partition("#")[0].partition("?")[0]
    return f"{base}.{nonce}".encode("utf-8", "surrogatepass")


def sign_vobiz_v3(auth_token: str, url: str, nonce: str) -> str:
    """The `X-Vobiz-Signature-V3` value Vobiz would send for this callback."""
    return b64_hmac_sha256(auth_token.encode("utf-8"), vobiz_v3_string_to_sign(url, nonce)).decode()


def _vobiz_message(inbound: InboundRequest, nonce: str) -> bytes:
    base = f"{inbound.scheme}://{inbound.netloc}{wire_text(inbound.raw_path)}"
    return f"{base}.{nonce}".encode("utf-8", "surrogatepass")


# The platform routes Vobiz numbers through /plivo/... and verifies the Plivo V3 header
# with the Vobiz token; Vobiz's own header is accepted as well.
VOBIZ_SCHEMES = (
    *PLIVO_SCHEMES,
    V3Scheme(SIGNATURE_HEADER, NONCE_HEADER, KeyKind.AUTH_TOKEN, _vobiz_message, False, covers_content=False),
    V3Scheme(
        "x-vobiz-signature-ma-v3", NONCE_HEADER, KeyKind.MAIN_AUTH_TOKEN, _vobiz_message, False, covers_content=False
    ),
)


def verifier() -> PlivoVerifier:
    return PlivoVerifier(Provider.VOBIZ, VOBIZ_SCHEMES)


# Vobiz (Plivo-compatible) `CallStatus` terminal values: completed, busy, failed, timeout,
# no-answer, cancel — https://docs.vobiz.ai/xml/request/call-status and https://docs.vobiz.ai/xml/request
TERMINAL_STATUSES = frozenset({"completed", "busy", "failed", "timeout", "no-answer", "cancel"})


def call_event(inbound: InboundRequest, kind: str) -> CallEvent | None:
    return form_call_event(
        inbound, kind, call_id_param="CallUUID", status_params=("CallStatus",), terminal=TERMINAL_STATUSES
    )


def decoy() -> PhoneCredentials:
    """The /plivo/ family's decoy: a Vobiz phone (every header family) with a random token.

    An unknown phone id then gets exactly the answer a real phone gives for a bad
    signature (401 when unsigned, 403 otherwise), so phone ids cannot be enumerated.
    """
    key = Key(material=secrets.token_bytes(32), fingerprint="decoy")
    return PhoneCredentials("decoy", Provider.VOBIZ, {KeyKind.AUTH_TOKEN: (key,)})


# ---- `gateway sign` and `gateway explain` (gateway/diagnostics/) ----

# Header names as `gateway sign` writes them (the gateway reads them case-insensitively).
SIGN_SIGNATURE_HEADER = "X-Vobiz-Signature-V3"
SIGN_MAIN_ACCOUNT_SIGNATURE_HEADER = "X-Vobiz-Signature-Ma-V3"
SIGN_NONCE_HEADER = "X-Vobiz-Signature-V3-Nonce"


def sign_headers(data: SigningInput) -> list[tuple[str, str]]:
    """Plivo's V3 headers and Vobiz's own (Vobiz documents its own header too; the gateway accepts either)."""
    headers = plivo.sign_headers(data)
    nonce = headers[1][1]
    token = data.secret.decode("utf-8")
    return [*headers, (SIGN_SIGNATURE_HEADER, sign_vobiz_v3(token, data.url, nonce)), (SIGN_NONCE_HEADER, nonce)]


def signed_strings(request: InboundRequest, url: str) -> list[tuple[str, bytes]]:
    """What Vobiz signs for `request` (called at `url`, as text), per signature header present."""
    out = plivo.signed_strings(request, url)
    for header in (SIGN_SIGNATURE_HEADER.lower(), SIGN_MAIN_ACCOUNT_SIGNATURE_HEADER.lower()):
        if request.headers.get(header):
            nonce = request.headers.get(SIGN_NONCE_HEADER.lower(), "")
            out.append((f"Vobiz V3 ({header})", vobiz_v3_string_to_sign(url, nonce)))
    return out


# Vobiz sends its signature headers only when the callback URL has credentials configured in the
# Vobiz console (issue 15, from Vobiz users): an unsigned Vobiz callback is usually that, not a forgery.
EXPLAIN_NO_SIGNATURE = (
    "  Vobiz sends its signature headers (X-Vobiz-Signature-V3, X-Plivo-Signature-V3 and their nonces)",
    "  only when the callback URL has credentials configured in the Vobiz console: configure them for",
    "  this application or number, or every callback is refused (401 missing_signature).",
)


SPEC = CarrierSpec(
    provider=Provider.VOBIZ,
    family=RouteFamily.PLIVO,
    routes=(),  # Plivo's spec declares the /plivo/ routes
    make_verifier=lambda _options: verifier(),
    credentials=plivo.CREDENTIALS,
    idempotency_key=plivo.idempotency_key,
    call_event=call_event,
    call_id=plivo.call_id,
    answer=plivo.ANSWER,
    signature_headers=tuple(dict.fromkeys(h for s in VOBIZ_SCHEMES for h in (s.signature_header, s.nonce_header))),
    decoy=decoy,
    sample_params=plivo.sample_params,
    title="Vobiz",
    sign_headers=sign_headers,
    signing_key=plivo.signing_key,
    url_signing=UrlSigning.PARAMS,
    strings_to_sign=signed_strings,
    explain_no_signature=EXPLAIN_NO_SIGNATURE,
)
