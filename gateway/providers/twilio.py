"""Twilio: `X-Twilio-Signature`, bit-exact with twilio-python 9.13.0 `twilio/request_validator.py`.

S = the URL as called + for each form parameter name (sorted, unique), for each of its
values (sorted, unique), name + value. Signature = base64(HMAC(key, S)). The SDK accepts
S built with the default port added and with the port removed, because Twilio has
signed both ways. A JSON body is covered through `bodySHA256` in the URL instead.

A request carrying `X-Twilio-Webhooks-Signature-Settings` was signed with a shared
webhook key (KeyKind.TWILIO_SIGNING_KEY) and the algorithm that header names; without
it, with the auth token and HMAC-SHA1 (Twilio's docs, "Sign webhooks with shared keys").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import ParseResult, urlparse

from gateway.errors import Reason, Rejected
from gateway.inbound import InboundRequest, wire_text
from gateway.providers import (
    Key,
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
    BodyHashParam,
    CallbackBody,
    CallEvent,
    CarrierSpec,
    CredentialFields,
    RouteSpec,
    SigningInput,
    UrlSigning,
    form_call_event,
)

SIGNATURE_HEADER = "x-twilio-signature"
SETTINGS_HEADER = "x-twilio-webhooks-signature-settings"
HMAC_SHA1 = "HMAC_SHA1"
HMAC_SHA256 = "HMAC_SHA256"

_DIGESTS = {HMAC_SHA1: "sha1", HMAC_SHA256: "sha256"}
_B64_LENGTHS = {"sha1": 28, "sha256": 44}  # base64 of 20- and 32-byte digests, padded

Params = Mapping[str, str] | Iterable[tuple[str, str]]


def signature_algorithm(settings_header: str | None) -> str:
    """The algorithm named in `X-Twilio-Webhooks-Signature-Settings` (as the SDK's
    `get_signature_algorithm`: first non-empty `algorithm=`; none means HMAC_SHA1)."""
    for part in (settings_header or "").split(","):
        name, separator, value = part.partition("=")
        if separator and name.strip() == "algorithm" and value.strip():
            return value.strip()
    return HMAC_SHA1


def _params_suffix(params: Params) -> str:
    pairs = params.items() if isinstance(params, Mapping) else params
    groups: dict[str, set[str]] = {}
    for name, value in pairs:
        groups.setdefault(name, set()).add(value)
    # compute_signature: sorted(set(names)), then sorted(set(values)): repeats count once.
    return "".join(name + value for name in sorted(groups) for value in sorted(groups[name]))


def string_to_sign(url: str, params: Params | None = None) -> bytes:
    """The bytes Twilio signs for `url` (exactly as given) and the decoded form `params`."""
    return (url + _params_suffix(params or ())).encode("utf-8", "surrogatepass")


def _b64_hmac(key: bytes, message: bytes, digest: str) -> bytes:
    return base64.b64encode(hmac.digest(key, message, digest))


def sign(auth_token: str, url: str, params: Params | None = None, *, algorithm: str = HMAC_SHA1) -> str:
    """The `X-Twilio-Signature` for a request to `url` with form `params` (None for GET/JSON).

    `algorithm` is HMAC_SHA1 for the auth token, or what a shared key's settings name.
    For a JSON body, sign `url` that already carries `bodySHA256=` (see `body_sha256`).
    """
    digest = _DIGESTS.get(algorithm.upper())
    if digest is None:
        raise ValueError(f"unsupported Twilio signature algorithm {algorithm!r}")
    return _b64_hmac(auth_token.encode("utf-8"), string_to_sign(url, params), digest).decode()


def body_sha256(body: bytes) -> str:
    """The `bodySHA256` query value Twilio adds for a non-form (JSON) body."""
    return hashlib.sha256(body).hexdigest()


def url_variants(url: str) -> tuple[str, str] | None:
    """(URL without port, URL with the default port), as RequestValidator.validate tries them.

    Quirks kept: any explicit port is dropped in the first variant (not only 443/80), the
    default added is 443 for https and 80 for anything else, and both variants go
    through urlparse().geturl(). None when the URL cannot be parsed (an unbalanced "[" in
    the host) or the port is not a number (the SDK raises for both).
    """
    try:
        parsed = urlparse(url)
        port = parsed.port
    except ValueError:
        return None
    if port:
        return _geturl(parsed, parsed.netloc.split(":")[0]), parsed.geturl()
    default = "443" if parsed.scheme == "https" else "80"
    return parsed.geturl(), _geturl(parsed, f"{parsed.netloc}:{default}")


def _geturl(parsed: ParseResult, netloc: str) -> str:
    return parsed._replace(netloc=netloc).geturl()


def _signed_params(inbound: InboundRequest) -> Sequence[tuple[str, str]]:
    """The parameters the signature covers; for a non-form body, check its bodySHA256."""
    if inbound.is_form:
        return inbound.form_params()
    # Not a form: Twilio covers the body by hashing it into the signed URL. Without that
    # hash the body would be unauthenticated, so it is refused (the SDK raises here too).
    # parse_qs() as the SDK: blank values do not count, the first other value does.
    claimed = next((v for n, v in inbound.query_params() if n == "bodySHA256" and v), None)
    if claimed is None:
        if inbound.body:
            raise Rejected(Reason.MALFORMED_REQUEST, "non-form body without bodySHA256")
        return ()
    # Checked even for an empty body: a signed bodySHA256 with the body stripped is tampering.
    try:
        inbound.body.decode("utf-8")  # the SDK hashes body.encode("utf-8"): text only
    except UnicodeDecodeError:
        raise Rejected(Reason.MALFORMED_REQUEST, "body is not UTF-8") from None
    actual = body_sha256(inbound.body).encode()
    if not hmac.compare_digest(actual, claimed.encode("utf-8", "surrogatepass")):
        raise Rejected(Reason.INVALID_SIGNATURE, "bodySHA256 does not match the body")
    return ()


class TwilioVerifier:
    """Verifies `X-Twilio-Signature` with the auth token(s), or shared signing key(s)."""

    def verify(self, inbound: InboundRequest, creds: PhoneCredentials, now: float) -> Verified:
        signature = inbound.header(SIGNATURE_HEADER)
        if not signature:  # an empty header carries no proof: same as absent
            raise Rejected(Reason.MISSING_SIGNATURE, SIGNATURE_HEADER)
        settings = inbound.header(SETTINGS_HEADER)
        if settings:
            algorithm = signature_algorithm(settings).upper()
            kind = KeyKind.TWILIO_SIGNING_KEY
        else:
            algorithm, kind = HMAC_SHA1, KeyKind.AUTH_TOKEN
        digest = _DIGESTS.get(algorithm)
        if digest is None:
            raise Rejected(Reason.MALFORMED_SIGNATURE, "unsupported signature algorithm")
        presented = signature.encode("utf-8", "surrogatepass")
        if len(presented) != _B64_LENGTHS[digest]:  # can never equal a computed signature
            raise Rejected(Reason.MALFORMED_SIGNATURE, "signature length")

        inbound.query_params()  # what cannot be parsed is refused here, not further down
        suffix = _params_suffix(_signed_params(inbound))
        query = wire_text(inbound.query_string)
        url = f"{inbound.scheme}://{inbound.netloc}{wire_text(inbound.raw_path)}"
        variants = url_variants(f"{url}?{query}" if query else url)
        if variants is None:
            raise Rejected(Reason.INVALID_SIGNATURE, "unparsable port")
        messages = [(variant + suffix).encode("utf-8", "surrogatepass") for variant in variants]

        for key in creds.active_keys(kind, now):
            matched: bytes | None = None
            for message in messages:  # both variants, always: no early exit
                if hmac.compare_digest(_b64_hmac(key.material, message, digest), presented):
                    matched = message
            if matched is not None:
                return Verified(key_fingerprint=key.fingerprint, signed_digest=signed_digest(matched))
        raise Rejected(Reason.INVALID_SIGNATURE, f"no active {kind} key matches")


def idempotency_key(inbound: InboundRequest, kind: str) -> str | None:
    """`kind:CallSid:CallStatus` (percent-quoted parts), or None without a CallSid.

    Form and query parameters first; a JSON body's top-level fields otherwise.
    """
    params: Mapping[str, object] = inbound.params()
    if "CallSid" not in params and inbound.body and not inbound.is_form:
        params = inbound.json_object() or {}
    call_sid = params.get("CallSid")
    if not isinstance(call_sid, str) or not call_sid:
        return None
    status = params.get("CallStatus")
    if not isinstance(status, str) or not status:
        # Recording/transcription callbacks carry no CallStatus; a call can send several.
        status = params_digest(params)
    parts = [kind, call_sid, status]
    sequence = params.get("SequenceNumber")  # status callbacks number their events; a retry repeats it
    if isinstance(sequence, str) and sequence:
        parts.append(sequence)
    return ":".join([quote_part(part) for part in parts])


# Twilio `CallStatus` final statuses: completed, busy, failed, no-answer, canceled — "Final Call
# Statuses", https://help.twilio.com/articles/223132547 (What are the possible call statuses?)
TERMINAL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})


def call_event(inbound: InboundRequest, kind: str) -> CallEvent | None:
    return form_call_event(
        inbound, kind, call_id_param="CallSid", status_params=("CallStatus",), terminal=TERMINAL_STATUSES
    )


def call_id(inbound: InboundRequest) -> str | None:
    return inbound.params().get("CallSid") or None


def decoy() -> PhoneCredentials:
    """A phone with a random auth token: an unknown phone id is answered like a bad signature."""
    key = Key(material=secrets.token_bytes(32), fingerprint="decoy")
    return PhoneCredentials("decoy", Provider.TWILIO, {KeyKind.AUTH_TOKEN: (key,)})


def sample_params() -> list[tuple[str, str]]:
    """A plausible inbound-call callback with a fresh CallSid (for `gateway sign`)."""
    return [
        ("AccountSid", "AC" + "0" * 32),
        ("CallSid", "CA" + secrets.token_hex(16)),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("From", "+14155550100"),
        ("To", "+14155550101"),
    ]


# Built-in fallback answers, TwiML: https://www.twilio.com/docs/voice/twiml (Say, Pause, Redirect, Hangup).
_XML_DOC = '<?xml version="1.0" encoding="UTF-8"?>\n'
HANGUP = (
    f"{_XML_DOC}<Response>\n  <Say>We are sorry, we cannot take your call right now. "
    "Please try again later.</Say>\n  <Hangup/>\n</Response>\n"
)
HOLD = (
    f'{_XML_DOC}<Response>\n  <Say>Please hold.</Say>\n  <Pause length="2"/>\n'
    '  <Redirect method="$method">$answer_url</Redirect>\n</Response>\n'
)

# ---- `gateway sign` and `gateway explain` (gateway/diagnostics/) ----

# Header names as `gateway sign` writes them (the gateway reads them case-insensitively).
SIGN_SIGNATURE_HEADER = "X-Twilio-Signature"
SIGN_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"


def sign_headers(data: SigningInput) -> list[tuple[str, str]]:
    """The signature header Twilio sends with this callback (and the settings header for a shared key)."""
    token = data.secret.decode("utf-8")
    headers = [(SIGN_SIGNATURE_HEADER, sign(token, data.url, data.params, algorithm=data.algorithm))]
    if data.algorithm != HMAC_SHA1:  # signed with the shared webhook key: say so, as Twilio does
        headers.append((SIGN_SETTINGS_HEADER, f"algorithm={data.algorithm}"))
    return headers


def signed_strings(request: InboundRequest, url: str) -> list[tuple[str, bytes]]:
    """What Twilio signs for `request` (called at `url`, as text)."""
    params = request.form_params() if request.is_form else None
    name = f"Twilio ({SIGN_SIGNATURE_HEADER}; also accepted with the default port added/removed)"
    return [(name, string_to_sign(url, params))]


def signing_key(algorithm: str) -> KeyKind:
    """The auth token signs HMAC_SHA1; the shared webhook signing key signs the others."""
    return KeyKind.AUTH_TOKEN if algorithm == HMAC_SHA1 else KeyKind.TWILIO_SIGNING_KEY


SPEC = CarrierSpec(
    provider=Provider.TWILIO,
    family=RouteFamily.TWILIO,
    routes=(RouteSpec("/twilio/incoming", "incoming"), RouteSpec("/twilio/status", "status")),
    make_verifier=lambda _options: TwilioVerifier(),
    credentials=CredentialFields(
        required=("account_sid", "auth_token"),
        optional=("webhook_signing_key", "webhook_signing_key_id"),
        secret=frozenset({"auth_token", "webhook_signing_key"}),
        key_fields={"auth_token": KeyKind.AUTH_TOKEN, "webhook_signing_key": KeyKind.TWILIO_SIGNING_KEY},
    ),
    idempotency_key=idempotency_key,
    call_event=call_event,
    call_id=call_id,
    answer=AnswerRules(settings_key="twilio", xml=True, hangup=HANGUP, hold=HOLD),
    signature_headers=(SIGNATURE_HEADER, SETTINGS_HEADER),
    decoy=decoy,
    sample_params=sample_params,
    title="Twilio",
    callback_body=CallbackBody.FORM_OR_JSON,
    body_hash_param=BodyHashParam("bodySHA256", body_sha256),
    sign_headers=sign_headers,
    sign_algorithms=(HMAC_SHA1, HMAC_SHA256),
    signing_key=signing_key,
    url_signing=UrlSigning.EXACT,
    strings_to_sign=signed_strings,
)
