"""Plivo and Vobiz: `X-Plivo-Signature-V3` (and Vobiz's own `X-Vobiz-Signature-V3`).

Plivo V3 is bit-exact with plivo-python 4.63.0 `plivo/utils/signature_v3.py`
(`validate_v3_signature`); the quirks it has, and which we keep, are noted where
they are implemented. Vobiz's header follows Vobiz's "Validating Callbacks" doc:
base64(HMAC-SHA256(auth token, callback URL without its query + "." + nonce)).

The older `X-Plivo-Signature-V2` / `X-Vobiz-Signature-V2` (URL + nonce only) is never
accepted: one captured header would vouch for any body (a downgrade).
"""

from __future__ import annotations

import binascii
import functools
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from urllib.parse import urlparse, urlunparse

from gateway.errors import Reason, Rejected
from gateway.inbound import InboundRequest, parse_pairs
from gateway.providers import KeyKind, PhoneCredentials, Provider, Verified, params_digest, quote_part

Pairs = Sequence[tuple[str, str]]
Params = Mapping[str, str] | Iterable[tuple[str, str]]

_ALLOWED_METHODS = frozenset({"GET", "POST"})
# base64 of a 32-byte HMAC-SHA256 digest, with padding: anything else can never match.
_B64_SHA256_LEN = 44


@dataclass(frozen=True, slots=True)
class _Scheme:
    """One header family we accept: where the signature and nonce are, which keys sign it."""

    signature_header: str
    nonce_header: str
    key_kind: KeyKind
    vobiz: bool  # True: Vobiz's string (base URL + "." + nonce); False: Plivo V3's
    split_signatures: bool  # Plivo sends several comma-separated signatures in one header


_PLIVO_V3 = _Scheme("x-plivo-signature-v3", "x-plivo-signature-v3-nonce", KeyKind.AUTH_TOKEN, False, True)
# Sub-account callbacks also carry a signature made with the main account's token.
_PLIVO_MA_V3 = _Scheme("x-plivo-signature-ma-v3", "x-plivo-signature-v3-nonce", KeyKind.MAIN_AUTH_TOKEN, False, True)
_VOBIZ_V3 = _Scheme("x-vobiz-signature-v3", "x-vobiz-signature-v3-nonce", KeyKind.AUTH_TOKEN, True, False)
_VOBIZ_MA_V3 = _Scheme("x-vobiz-signature-ma-v3", "x-vobiz-signature-v3-nonce", KeyKind.MAIN_AUTH_TOKEN, True, False)

# The platform routes Vobiz numbers through /plivo/... and verifies the Plivo V3 header
# with the Vobiz token (providers.md); Vobiz's own header is accepted as well.
_SCHEMES: dict[Provider, tuple[_Scheme, ...]] = {
    Provider.PLIVO: (_PLIVO_V3, _PLIVO_MA_V3),
    Provider.VOBIZ: (_PLIVO_V3, _PLIVO_MA_V3, _VOBIZ_V3, _VOBIZ_MA_V3),
}
_DOWNGRADE_HEADERS = ("x-plivo-signature-v2", "x-vobiz-signature-v2", "x-vobiz-signature")

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


def _b64_hmac_sha256(key: bytes, message: bytes) -> bytes:
    return binascii.b2a_base64(hmac.digest(key, message, "sha256"), newline=False)  # = base64.b64encode


def sign_v3(auth_token: str, method: str, url: str, params: Params | None, nonce: str) -> str:
    """The `X-Plivo-Signature-V3` value Plivo would send for this callback.

    e.g. `sign_v3(token, "POST", "https://hooks.example.com/plivo/status/ph_1", [("CallUUID", "u1")], "4242")`.
    """
    return _b64_hmac_sha256(auth_token.encode("utf-8"), v3_string_to_sign(method, url, params, nonce)).decode()


def vobiz_v3_string_to_sign(url: str, nonce: str) -> bytes:
    """Vobiz V3: the callback URL without its query, "." and the nonce."""
    base = url.partition("#")[0].partition("?")[0]
    return f"{base}.{nonce}".encode("utf-8", "surrogatepass")


def sign_vobiz_v3(auth_token: str, url: str, nonce: str) -> str:
    """The `X-Vobiz-Signature-V3` value Vobiz would send for this callback."""
    return _b64_hmac_sha256(auth_token.encode("utf-8"), vobiz_v3_string_to_sign(url, nonce)).decode()


# --- the verifier ---


def _wire_text(raw: str) -> str:
    """The ASGI raw path/query is latin-1 text of the wire bytes; carriers send UTF-8."""
    if raw.isascii():
        return raw
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeEncodeError:  # already real text (built by hand, not from a socket)
        return raw
    except UnicodeDecodeError:
        raise Rejected(Reason.MALFORMED_REQUEST, "URL path is not UTF-8") from None


class PlivoVerifier:
    """Verifies Plivo V3 (and, for Vobiz phones, Vobiz V3) callbacks.

    Accepts when any active key of the header's kind reproduces one of the signatures.
    `Verified.nonce` is the nonce that was signed: the caller must remember it per phone
    and reject a second use (Vobiz's string does not cover the body, so single-use
    nonces are all that stop a captured signature travelling with another body).
    An empty signature or nonce header is treated as missing: it carries no proof,
    exactly like an absent one (and the Telnyx SDK treats empty headers that way too).
    """

    def verify(self, inbound: InboundRequest, creds: PhoneCredentials, now: float) -> Verified:
        schemes = _SCHEMES.get(creds.provider)
        if schemes is None:
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
                    return verified
                reason, why = verified, scheme.signature_header
            if _SEVERITY[reason] >= _SEVERITY[failure]:
                failure, detail = reason, why
        if failure is Reason.MISSING_SIGNATURE and any(inbound.headers.get(h) for h in _DOWNGRADE_HEADERS):
            detail = "only a V1/V2 signature: not accepted (downgrade)"
        raise Rejected(failure, detail)

    @staticmethod
    def _check(
        inbound: InboundRequest,
        creds: PhoneCredentials,
        now: float,
        scheme: _Scheme,
        signature: str,
        nonce: str,
    ) -> Verified | Reason:
        # SDK: `signature in header.split(",")`: exact strings, no trimming.
        raw = signature.encode("utf-8", "surrogatepass")
        candidates = raw.split(b",") if scheme.split_signatures else [raw]
        candidates = [c for c in candidates if len(c) == _B64_SHA256_LEN]
        if not candidates:
            return Reason.MALFORMED_SIGNATURE
        message = _vobiz_message(inbound, nonce) if scheme.vobiz else _plivo_message(inbound, nonce)
        for key in creds.active_keys(scheme.key_kind, now):
            expected = _b64_hmac_sha256(key.material, message)
            matched = False
            for candidate in candidates:
                matched |= hmac.compare_digest(expected, candidate)
            if matched:
                return Verified(key_fingerprint=key.fingerprint, nonce=nonce)
        return Reason.INVALID_SIGNATURE


def _plivo_message(inbound: InboundRequest, nonce: str) -> bytes:
    base = _sdk_base_url(f"{inbound.scheme}://{inbound.netloc}{_wire_text(inbound.raw_path)}")
    params = inbound.form_params() if inbound.method == "POST" else ()
    return _v3_message(inbound.method, base, inbound.query_params(), params, nonce)


def _vobiz_message(inbound: InboundRequest, nonce: str) -> bytes:
    base = f"{inbound.scheme}://{inbound.netloc}{_wire_text(inbound.raw_path)}"
    return f"{base}.{nonce}".encode("utf-8", "surrogatepass")


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
