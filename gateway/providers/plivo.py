"""Plivo: `X-Plivo-Signature-V3` (HMAC-SHA256 over URL, sorted parameters and a nonce).

Plivo V3 is bit-exact with plivo-python 4.63.0 `plivo/utils/signature_v3.py`
(`validate_v3_signature`); the quirks it has, and which we keep, are noted where
they are implemented. Vobiz (gateway/providers/vobiz.py) sends the same header, and
reuses this verifier with its own header family added.

The older `X-Plivo-Signature-V2` / `X-Vobiz-Signature-V2` (URL + nonce only) is never
accepted: one captured header would vouch for any body (a downgrade).
"""

from __future__ import annotations

import binascii
import functools
import hmac
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from urllib.parse import urlparse, urlunparse

from gateway.errors import Reason, Rejected
from gateway.inbound import InboundRequest, parse_pairs, wire_text
from gateway.providers import (
    KeyKind,
    PhoneCredentials,
    Provider,
    RouteFamily,
    Verified,
    params_digest,
    quote_part,
    signed_digest,
)
from gateway.providers.spec import (
    AnswerRules,
    CallEvent,
    CarrierSpec,
    CredentialFields,
    RouteSpec,
    SigningInput,
    UrlSigning,
    form_call_event,
)

Pairs = Sequence[tuple[str, str]]
Params = Mapping[str, str] | Iterable[tuple[str, str]]

_ALLOWED_METHODS = frozenset({"GET", "POST"})
# base64 of a 32-byte HMAC-SHA256 digest, with padding: anything else can never match.
_B64_SHA256_LEN = 44


# When several header families fail, report the most telling reason.
_SEVERITY = {Reason.MISSING_SIGNATURE: 0, Reason.MALFORMED_SIGNATURE: 1, Reason.INVALID_SIGNATURE: 2}


# --- the string to sign (pure, shared by the verifier, `sign_v3`, the CLI and load tests) ---


def _sdk_base_url(url_without_query: str) -> str:
    # A phone's callback URL repeats on every request: remembered, short URLs only (bounded memory).
    return _cached_base_url(url_without_query) if len(url_without_query) <= 512 else _parse_base_url(url_without_query)


def _parse_base_url(url_without_query: str) -> str:
    # The SDK rebuilds scheme://netloc/path from urlparse(): the scheme is lower-cased and
    # ";params" of the last path segment (and any "#fragment") are dropped. The path is
    # kept as given, never percent-decoded.
    try:
        parsed = urlparse(url_without_query)
    except ValueError:  # e.g. "Host: [" ("Invalid IPv6 URL"): the SDK raises too
        raise Rejected(Reason.MALFORMED_REQUEST, "URL cannot be parsed") from None
    return urlunparse((parsed.scheme, parsed.netloc, parsed.path, "", "", ""))


_cached_base_url = functools.lru_cache(maxsize=1024)(_parse_base_url)


# The SDK groups values by name (parse_qs), sorts the names, then each name's values. Sorting
# the (name, value) pairs as tuples gives exactly that order, without building the groups.


def _sorted_query(query: Pairs) -> str:
    # parse_qs(keep_blank_values=True) -> names sorted, each value (sorted) as its own name=value.
    return "&".join([f"{name}={value}" for name, value in sorted(query)])


def _sorted_params(params: Pairs) -> str:
    return "".join(chain.from_iterable(sorted(params)))  # name1 value1 name2 value2 ...


def _v3_message(method: str, base_url: str, query: Pairs, params: Pairs, nonce: str) -> bytes:
    sorted_query = _sorted_query(query)
    if method == "GET" or not params:
        # GET, and POST without parameters: construct_get_url(uri, {}, empty_post_params=True).
        text = f"{base_url}?{sorted_query}" if sorted_query else base_url
    else:
        # POST with parameters: "?" always, "." only after a non-empty query, then name+value.
        dot = "." if sorted_query else ""
        text = f"{base_url}?{sorted_query}{dot}{_sorted_params(params)}"
    nonce_bytes = nonce.encode("utf-8", "surrogatepass")
    if not nonce_bytes.isascii():
        # SDK quirk (get_signature_v3 -> string_format): the nonce reaches it as UTF-8 bytes,
        # is read back one byte per character and encoded again, so a non-ASCII nonce is
        # signed double-encoded. (4.63.0 fixed this for the URL and params, not the nonce.)
        nonce_bytes = nonce_bytes.decode("latin-1").encode("utf-8")
    return b"%s.%s" % (text.encode("utf-8", "surrogatepass"), nonce_bytes)


def v3_string_to_sign(method: str, url: str, params: Params | None, nonce: str) -> bytes:
    """The exact bytes Plivo V3 signs for a callback to `url` (full URL, query included).

    `params` are the decoded POST form parameters, as pairs or a mapping (ignored for
    GET). ValueError for a method other than GET/POST; `Rejected` (malformed request)
    when the query string is not valid percent-encoded UTF-8.
    """
    method = method.upper()
    if method not in _ALLOWED_METHODS:
        raise ValueError(f"Plivo signs GET and POST callbacks only, not {method}")
    parsed = urlparse(url)
    base = urlunparse((parsed.scheme, parsed.netloc, parsed.path, "", "", ""))
    pairs = list(params.items() if isinstance(params, Mapping) else params or ())
    return _v3_message(method, base, parse_pairs(parsed.query), pairs, nonce)


def b64_hmac_sha256(key: bytes, message: bytes) -> bytes:
    return binascii.b2a_base64(hmac.digest(key, message, "sha256"), newline=False)  # = base64.b64encode


def sign_v3(auth_token: str, method: str, url: str, params: Params | None, nonce: str) -> str:
    """The `X-Plivo-Signature-V3` value Plivo would send for this callback.

    e.g. `sign_v3(token, "POST", "https://hooks.example.com/plivo/status/ph_1", [("CallUUID", "u1")], "4242")`.
    """
    return b64_hmac_sha256(auth_token.encode("utf-8"), v3_string_to_sign(method, url, params, nonce)).decode()


@dataclass(frozen=True, slots=True)
class V3Scheme:
    """One header family we accept: where the signature and nonce are, which keys sign it."""

    signature_header: str
    nonce_header: str
    key_kind: KeyKind
    message: Callable[[InboundRequest, str], bytes]  # (request, nonce) -> the signed bytes
    split_signatures: bool  # Plivo sends several comma-separated signatures in one header
    # False when the message leaves the query and body out (Vobiz's own header): the event's
    # content identity then also takes the raw query and body, so other content is other content.
    covers_content: bool = True


def _plivo_message(inbound: InboundRequest, nonce: str) -> bytes:
    base = _sdk_base_url(f"{inbound.scheme}://{inbound.netloc}{wire_text(inbound.raw_path)}")
    params = inbound.form_params() if inbound.method == "POST" else ()
    return _v3_message(inbound.method, base, inbound.query_params(), params, nonce)


SIGNATURE_HEADER = "x-plivo-signature-v3"
NONCE_HEADER = "x-plivo-signature-v3-nonce"
PLIVO_SCHEMES = (
    V3Scheme(SIGNATURE_HEADER, NONCE_HEADER, KeyKind.AUTH_TOKEN, _plivo_message, True),
    # Sub-account callbacks also carry a signature made with the main account's token.
    V3Scheme("x-plivo-signature-ma-v3", NONCE_HEADER, KeyKind.MAIN_AUTH_TOKEN, _plivo_message, True),
)
DOWNGRADE_HEADERS = ("x-plivo-signature-v2", "x-vobiz-signature-v2", "x-vobiz-signature")


# --- the verifier ---


class PlivoVerifier:
    """Verifies Plivo V3 callbacks (and, given Vobiz's schemes, Vobiz's: gateway/providers/vobiz.py).

    Accepts when any active key of the header's kind reproduces one of the signatures.
    `Verified.nonce` is the nonce that was signed: the caller must remember it per phone
    and reject a second use (Vobiz's string does not cover the body, so single-use
    nonces are all that stop a captured signature travelling with another body).
    An empty signature or nonce header is treated as missing: it carries no proof,
    exactly like an absent one (and the Telnyx SDK treats empty headers that way too).
    """

    def __init__(self, provider: Provider = Provider.PLIVO, schemes: tuple[V3Scheme, ...] = PLIVO_SCHEMES) -> None:
        self._provider = provider
        self._schemes = schemes
        nonce_headers = tuple(dict.fromkeys(scheme.nonce_header for scheme in schemes))
        self._nonce_headers = nonce_headers if len(nonce_headers) > 1 else ()  # Plivo: one header family

    def verify(self, inbound: InboundRequest, creds: PhoneCredentials, now: float) -> Verified:
        schemes = self._schemes
        if creds.provider is not self._provider:
            raise Rejected(Reason.WRONG_PROVIDER, creds.provider)
        if inbound.method not in _ALLOWED_METHODS:
            raise Rejected(Reason.METHOD_NOT_ALLOWED, inbound.method)
        # Plivo signs form parameters only. A body it did not sign (JSON, or any body on a
        # GET) would reach dispatch unauthenticated, so it is refused up front.
        if inbound.body and (inbound.method == "GET" or not inbound.is_form):
            raise Rejected(Reason.MALFORMED_REQUEST, "body not covered by the signature")
        # Parse (and cache) query and form now: what cannot be parsed is refused whichever
        # header family verifies (Vobiz's string does not read them).
        inbound.query_params()
        inbound.form_params()

        failure = Reason.MISSING_SIGNATURE
        detail = "no V3 signature header"
        for scheme in schemes:
            signature = inbound.header(scheme.signature_header)
            if not signature:
                continue
            nonce = inbound.header(scheme.nonce_header)
            if not nonce:
                reason, why = Reason.MISSING_SIGNATURE, f"{scheme.nonce_header} missing"
            elif not creds.keys.get(scheme.key_kind):
                reason, why = Reason.INVALID_SIGNATURE, f"no {scheme.key_kind} key for {scheme.signature_header}"
            else:
                verified = self._check(inbound, creds, now, scheme, signature, nonce)
                if isinstance(verified, Verified):
                    # Every nonce present is spent, not only the one that verified (Vobiz sends
                    # two header families, each with its own nonce header).
                    for other in self._nonce_headers:
                        value = inbound.header(other)
                        if value and value != nonce:
                            verified.other_nonce = value
                    return verified
                reason, why = verified, scheme.signature_header
            if _SEVERITY[reason] >= _SEVERITY[failure]:
                failure, detail = reason, why
        if failure is Reason.MISSING_SIGNATURE and any(inbound.headers.get(h) for h in DOWNGRADE_HEADERS):
            detail = "only a V1/V2 signature: not accepted (downgrade)"
        raise Rejected(failure, detail)

    @staticmethod
    def _check(
        inbound: InboundRequest,
        creds: PhoneCredentials,
        now: float,
        scheme: V3Scheme,
        signature: str,
        nonce: str,
    ) -> Verified | Reason:
        # SDK: `signature in header.split(",")`: exact strings, no trimming.
        raw = signature.encode("utf-8", "surrogatepass")
        candidates = raw.split(b",") if scheme.split_signatures else [raw]
        candidates = [c for c in candidates if len(c) == _B64_SHA256_LEN]
        if not candidates:
            return Reason.MALFORMED_SIGNATURE
        message = scheme.message(inbound, nonce)
        for key in creds.active_keys(scheme.key_kind, now):
            expected = b64_hmac_sha256(key.material, message)
            matched = False
            for candidate in candidates:
                matched |= hmac.compare_digest(expected, candidate)
            if matched:
                if scheme.covers_content:
                    digest = signed_digest(message)
                else:
                    digest = signed_digest(message, inbound.query_string.encode("latin-1", "replace"), inbound.body)
                return Verified(key_fingerprint=key.fingerprint, nonce=nonce, signed_digest=digest)
        return Reason.INVALID_SIGNATURE


def idempotency_key(inbound: InboundRequest, kind: str) -> str | None:
    """`kind:CallUUID:CallStatus[:Event]` (each part percent-quoted), or None without a CallUUID.

    `kind` ("incoming"/"status") is part of the key: the answer URL and the status
    callback legitimately carry the same CallUUID and CallStatus.
    """
    params = inbound.params()
    call_uuid = params.get("CallUUID")
    if not call_uuid:
        return None
    # Recording and other callbacks without CallStatus: identify them by all their parameters.
    parts = [kind, call_uuid, params.get("CallStatus") or params_digest(params)]
    event = params.get("Event")
    if event:
        parts.append(event)
    return ":".join([quote_part(part) for part in parts])


# Plivo `CallStatus` terminal values: completed, busy, failed, timeout, no-answer, cancel —
# https://www.plivo.com/docs/voice/xml/request/call-status/ and `failed` from
# https://www.plivo.com/docs/account/api/application/ (CallStatus of outbound calls)
TERMINAL_STATUSES = frozenset({"completed", "busy", "failed", "timeout", "no-answer", "cancel"})


def call_event(inbound: InboundRequest, kind: str) -> CallEvent | None:
    return form_call_event(
        inbound, kind, call_id_param="CallUUID", status_params=("CallStatus",), terminal=TERMINAL_STATUSES
    )


def call_id(inbound: InboundRequest) -> str | None:
    return inbound.params().get("CallUUID") or None


def sample_params() -> list[tuple[str, str]]:
    """A plausible inbound-call callback with a fresh CallUUID (for `gateway sign`)."""
    return [
        ("CallUUID", str(uuid.uuid4())),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("Event", "StartApp"),
        ("From", "+14155550100"),
        ("To", "+14155550101"),
    ]


# Built-in fallback answers, Plivo XML: https://www.plivo.com/docs/voice/xml/ (Speak, Wait, Redirect, Hangup).
_XML_DOC = '<?xml version="1.0" encoding="UTF-8"?>\n'
HANGUP = (
    f"{_XML_DOC}<Response>\n  <Speak>We are sorry, we cannot take your call right now. "
    "Please try again later.</Speak>\n  <Hangup/>\n</Response>\n"
)
HOLD = (
    f'{_XML_DOC}<Response>\n  <Speak>Please hold.</Speak>\n  <Wait length="2"/>\n'
    '  <Redirect method="$method">$answer_url</Redirect>\n</Response>\n'
)
CREDENTIALS = CredentialFields(
    required=("auth_id", "auth_token"),
    optional=("main_auth_token",),
    secret=frozenset({"auth_token", "main_auth_token"}),
    key_fields={"auth_token": KeyKind.AUTH_TOKEN, "main_auth_token": KeyKind.MAIN_AUTH_TOKEN},
)
# GATEWAY_PLIVO_ANSWER_* settings (Vobiz phones use them too: the same XML dialect).
ANSWER = AnswerRules(settings_key="plivo", xml=True, hangup=HANGUP, hold=HOLD)

# ---- `gateway sign` and `gateway explain` (gateway/diagnostics/) ----

# Header names as `gateway sign` writes them (the gateway reads them case-insensitively).
SIGN_SIGNATURE_HEADER = "X-Plivo-Signature-V3"
SIGN_MAIN_ACCOUNT_SIGNATURE_HEADER = "X-Plivo-Signature-Ma-V3"
SIGN_NONCE_HEADER = "X-Plivo-Signature-V3-Nonce"
# (signature header, its nonce header)
SIGN_HEADER_PAIRS = (
    (SIGN_SIGNATURE_HEADER, SIGN_NONCE_HEADER),
    (SIGN_MAIN_ACCOUNT_SIGNATURE_HEADER, SIGN_NONCE_HEADER),
)


def sign_headers(data: SigningInput) -> list[tuple[str, str]]:
    """The V3 signature and nonce headers Plivo sends with this callback."""
    token = data.secret.decode("utf-8")
    nonce = data.nonce or str(secrets.randbelow(10**20)).zfill(20)
    return [
        (SIGN_SIGNATURE_HEADER, sign_v3(token, data.method, data.url, data.params, nonce)),
        (SIGN_NONCE_HEADER, nonce),
    ]


def signed_strings(request: InboundRequest, url: str) -> list[tuple[str, bytes]]:
    """What Plivo signs for `request` (called at `url`, as text), per V3 signature header present."""
    params = request.form_params() if request.method == "POST" else None
    out: list[tuple[str, bytes]] = []
    for header, nonce_header in SIGN_HEADER_PAIRS:
        if request.headers.get(header.lower()):
            nonce = request.headers.get(nonce_header.lower(), "")
            out.append((f"Plivo V3 ({header})", v3_string_to_sign(request.method, url, params, nonce)))
    return out


def signing_key(_algorithm: str) -> KeyKind:
    return KeyKind.AUTH_TOKEN


SPEC = CarrierSpec(
    provider=Provider.PLIVO,
    family=RouteFamily.PLIVO,
    routes=(RouteSpec("/plivo/incoming", "incoming"), RouteSpec("/plivo/status", "status")),
    make_verifier=lambda _options: PlivoVerifier(),
    credentials=CREDENTIALS,
    idempotency_key=idempotency_key,
    call_event=call_event,
    call_id=call_id,
    answer=ANSWER,
    signature_headers=tuple(dict.fromkeys(h for s in PLIVO_SCHEMES for h in (s.signature_header, s.nonce_header))),
    decoy=None,  # the family's decoy is Vobiz's, which accepts every header family of the route
    sample_params=sample_params,
    title="Plivo",
    sign_headers=sign_headers,
    signing_key=signing_key,
    url_signing=UrlSigning.PARAMS,
    strings_to_sign=signed_strings,
)
