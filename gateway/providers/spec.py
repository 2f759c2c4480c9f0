"""What the gateway must know about a carrier, as data: one `CarrierSpec` per carrier file.

The request path, app wiring, admin validation, metrics, answers, the call-aware
defence and the `sign`/`explain` commands read these specs through
`gateway.providers.registry`; none of them names a carrier. A sixth carrier is one
new file with its `SPEC`, one registry line and its tests.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.errors import GatewayError
from gateway.inbound import InboundRequest
from gateway.providers import KeyKind, PhoneCredentials, Provider, RouteFamily, Verifier
from gateway.providers.allowlist import Allowlist, Network

# What an event says about its call (the call-aware replay defence, gateway/calls.py).
ANSWER, END, OTHER = "a", "e", "s"
_LABEL_UNSAFE = re.compile(r"[^a-z0-9._-]")


@dataclass(frozen=True, slots=True)
class CallEvent:
    call_id: str
    phase: str  # ANSWER | END | OTHER
    status: str  # short label for the call's timeline ("-" when none)


def status_label(value: object) -> str:
    """A short, safe label for a call's timeline (carrier-signed, but still bounded)."""
    if not isinstance(value, str) or not value:
        return "-"
    return _LABEL_UNSAFE.sub("_", value.lower())[:40]


def form_call_event(
    inbound: InboundRequest,
    kind: str,
    *,
    call_id_param: str,
    status_params: tuple[str, ...],
    terminal: frozenset[str],
    terminal_flag: tuple[str, str] | None = None,
) -> CallEvent | None:
    """The call event of a form/query callback: `incoming` answers the call, a terminal status ends it."""
    params = inbound.params()
    cid = params.get(call_id_param)
    if not cid:
        return None
    status = next((value for name in status_params if (value := params.get(name))), "")
    ended = status in terminal or (terminal_flag is not None and params.get(terminal_flag[0]) == terminal_flag[1])
    phase = ANSWER if kind == "incoming" else END if ended else OTHER
    return CallEvent(cid, phase, status_label(status))


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One public webhook path: `prefix/{phone_id}` (and `prefix` alone when the id is optional)."""

    prefix: str  # e.g. "/plivo/incoming"
    kind: str  # incoming | status | voice
    phone_id_optional: bool = False  # Telnyx: the phone is then found from the event's number


@dataclass(frozen=True, slots=True)
class CredentialFields:
    """The admin API's `credentials` (and secret `config`) fields of a carrier's phone."""

    required: tuple[str, ...]
    optional: tuple[str, ...]
    secret: frozenset[str]  # sealed at rest, never shown
    key_fields: Mapping[str, KeyKind]  # credential field → verification key kind
    secret_config: Mapping[str, KeyKind] = field(default_factory=dict)  # config fields that are keys (sealed)


@dataclass(frozen=True, slots=True)
class AnswerRules:
    """How an accepted `incoming` callback (an answer URL) is answered (gateway/answers.py)."""

    settings_key: str  # which GATEWAY_<KEY>_ANSWER_* / _FALLBACK_* settings apply
    xml: bool  # templates are XML; otherwise chosen by their first character
    hangup: str | None  # built-in fallback when dispatch does not answer; None: a bare status
    hold: str | None  # the "hold" fallback (pause, then redirect back to $answer_url)
    redirect_means_branch: bool = False  # a 302 from dispatch selects a branch (Exotel Passthru)


@dataclass(frozen=True, slots=True)
class VerifierOptions:
    """Deployment settings a verifier may need (built from Settings by the app)."""

    timestamp_tolerance_s: int = 300
    ip_allowlist: Allowlist = field(default_factory=Allowlist)


# ---- what `gateway sign` and `gateway explain` (gateway/diagnostics/) need of a carrier ----


class CallbackBody(enum.Enum):
    """What a carrier's callbacks carry."""

    FORM = "form"  # form parameters (POST) or query parameters (GET), never JSON
    FORM_OR_JSON = "form or json"  # also a raw JSON body
    JSON_EVENT = "json event"  # a JSON event, always POST


class UrlSigning(enum.Enum):
    """How much of the URL a carrier's signature covers (what a mismatch diagnosis may vary)."""

    NONE = "none"  # not the URL (timestamp and body, or nothing signed at all)
    PARAMS = "params"  # the URL with its query decoded and sorted: order and escaping cannot matter
    EXACT = "exact"  # the URL byte for byte; its verifier also tries the default port added/removed


@dataclass(frozen=True, slots=True)
class BodyHashParam:
    """The query parameter through which a carrier's signature covers a raw (JSON) body."""

    name: str  # e.g. "bodySHA256"
    digest: Callable[[bytes], str]  # body -> the parameter's value


@dataclass(frozen=True)
class SigningInput:
    """What `gateway sign` gives a carrier's signer."""

    secret: bytes = field(repr=False)
    url: str  # the URL the carrier calls
    method: str
    params: list[tuple[str, str]] | None  # the form parameters (POST), None otherwise
    body: bytes
    nonce: str | None  # Plivo/Vobiz; None: random
    timestamp: int | None  # Telnyx; None: now
    algorithm: str  # --algorithm (carriers with `sign_algorithms`)


class SigningKeyError(GatewayError, ValueError):
    """The key given to `gateway sign` cannot sign for this carrier; the message holds no secret."""


@dataclass(frozen=True, slots=True)
class ExplainInput:
    """What `gateway explain` gives the report hook of a carrier that signs nothing."""

    request: InboundRequest  # as the gateway would see it
    creds: PhoneCredentials
    now: float
    redacted_query: str  # the raw query without any carrier's secret parameters (safe to print)
    allowlist: Allowlist | None = None  # the source-address allowlist as configured here (None: unknown)
    trusted_proxies: tuple[Network, ...] | None = None  # GATEWAY_TRUSTED_PROXIES as configured here (None: unknown)
    # The live diagnosis of a refusal (gateway/diagnostics/rejection.py) knows what a capture cannot:
    peer: str | None = None  # the socket peer; then `request.client_ip` is the address the gateway checked
    show_query: bool = True  # False in a log line: no query value at all


@dataclass(frozen=True, slots=True)
class CarrierSpec:
    provider: Provider
    family: RouteFamily  # the URL family its callbacks arrive on
    routes: tuple[RouteSpec, ...]  # the family's paths, declared by one carrier of the family
    make_verifier: Callable[[VerifierOptions], Verifier]
    credentials: CredentialFields
    idempotency_key: Callable[[InboundRequest, str], str | None]  # (request, route kind)
    call_event: Callable[[InboundRequest, str], CallEvent | None]  # (request, route kind)
    call_id: Callable[[InboundRequest], str | None]  # $call_id in answers
    answer: AnswerRules | None  # None: the carrier has no answer URL
    signature_headers: tuple[str, ...]  # request headers that carry its proof
    # Credentials no request can match, for unknown phones of the family (one carrier per family).
    decoy: Callable[[], PhoneCredentials] | None = None
    secret_params: frozenset[str] = frozenset()  # query/form parameters never forwarded or logged
    numbers_in_request: Callable[[InboundRequest], list[str]] | None = None  # routes without a phone id
    sample_params: Callable[[], list[tuple[str, str]]] | None = None  # `gateway sign`: a plausible callback
    # ---- `gateway sign` and `gateway explain` (gateway/diagnostics/) ----
    title: str = ""  # its name in prose, e.g. "Telnyx"
    callback_body: CallbackBody = CallbackBody.FORM  # what its callbacks carry
    body_hash_param: BodyHashParam | None = None  # how its signature covers a raw (JSON) body
    sample_event: Callable[[str], bytes] | None = None  # a sample JSON event, given the URL it is delivered to
    sign_headers: Callable[[SigningInput], list[tuple[str, str]]] | None = None  # None: it signs nothing
    sign_algorithms: tuple[str, ...] = ()  # `sign --algorithm` values it accepts; the first is the default
    seed_signed: bool = False  # signed with an Ed25519 private key: `sign --seed-env` (its record holds no key)
    signing_key: Callable[[str], KeyKind] | None = None  # `sign --phone`: the phone's key that signs, per --algorithm
    # `sign` for a carrier that signs nothing: (the phone's secret or None) -> (query pairs to add, notes to print).
    unsigned_proof: Callable[[bytes | None], tuple[list[tuple[str, str]], list[str]]] | None = None
    url_signing: UrlSigning = UrlSigning.NONE  # what a mismatch diagnosis may vary (gateway/diagnostics/variants.py)
    # `explain`: (what, bytes) it signs for a request, given the request's URL as text; never a secret.
    strings_to_sign: Callable[[InboundRequest, str], list[tuple[str, bytes]]] | None = None
    signed_at: Callable[[InboundRequest], float | None] | None = None  # `explain`: when the request says it was signed
    explain_hint: tuple[str, ...] = ()  # `explain`: lines after a failed signature that covers no URL
    # `explain`: why a request may carry none of `signature_headers` (empty: a generic line).
    explain_no_signature: tuple[str, ...] = ()
    # Its signature covers the raw body bytes: a mismatch diagnosis (gateway/diagnostics/variants.py)
    # may try the body as the carrier likely sent it (re-serialised JSON, trailing newline, encoding).
    signed_body: bool = False
    # `explain` for a carrier that signs nothing: (its report lines, whether the request passes).
    explain_unsigned: Callable[[ExplainInput], tuple[list[str], bool]] | None = None
    # The live diagnosis of a refusal of such a carrier (gateway/diagnostics/rejection.py): the findings
    # `explain_unsigned` reports (source address, token), without its introduction. Never a secret.
    diagnose_unsigned: Callable[[ExplainInput], list[str]] | None = None
    # ---- allowlist discovery (gateway/source_log.py) ----
    # For a carrier checked by source address: (request, phone, now) -> the request proves, without
    # its address, that it comes from the phone's account (Exotel: the phone's ?token=). A request
    # refused for its address (ip_not_allowed) that passes has its network recorded for the
    # operator to confirm with the carrier; it is never accepted, the allowlist never changed.
    proof_without_source: Callable[[InboundRequest, PhoneCredentials, float], bool] | None = None
