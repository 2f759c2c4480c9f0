"""What the gateway must know about a carrier, as data: one `CarrierSpec` per carrier file.

The request path, app wiring, admin validation, metrics, answers, the call-aware
defence and the `sign`/`explain` commands read these specs through
`gateway.providers.registry`; none of them names a carrier. A sixth carrier is one
new file with its `SPEC`, one registry line and its tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.inbound import InboundRequest
from gateway.providers import KeyKind, PhoneCredentials, Provider, RouteFamily, Verifier
from gateway.providers.allowlist import Allowlist

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
