"""Exotel: no signature. Source-IP allowlist, plus the phone's `?token=` when it has one.

Exotel does not sign callbacks and does not publish its callback IPs (its "IP
Whitelisting" and "Network Requirements" docs say to ask support or the account
manager). So the allowlist is data (`config/exotel_allowed_ips.txt`, overridden by
EXOTEL_ALLOWED_IPS) and everything fails closed: an empty allowlist rejects every request.
"""

from __future__ import annotations

import hmac
import secrets

from gateway.errors import Reason, Rejected
from gateway.inbound import InboundRequest
from gateway.providers import Key, KeyKind, PhoneCredentials, Provider, RouteFamily, Verified, params_digest, quote_part
from gateway.providers.allowlist import Allowlist
from gateway.providers.spec import (
    AnswerRules,
    CallEvent,
    CarrierSpec,
    CredentialFields,
    ExplainInput,
    RouteSpec,
    form_call_event,
)

TOKEN_PARAM = "token"  # the phone's secret URL token: never forwarded, logged or part of a key
# Exotel `Status` (StatusCallback is sent when the call reaches a terminal state): completed,
# failed, busy, no-answer — https://developer.exotel.com/api/statuscallback and
# https://developer.exotel.com/docs/references/webhooks; `EventType=terminal` marks the same event.
TERMINAL_STATUSES = frozenset({"completed", "failed", "busy", "no-answer"})


class ExotelVerifier:
    """Fail closed: the client IP must be allowlisted, and the token must match if the phone has one."""

    def __init__(self, allowlist: Allowlist) -> None:
        self._allowlist = allowlist

    def verify(self, inbound: InboundRequest, creds: PhoneCredentials, now: float) -> Verified:
        if not self._allowlist:
            raise Rejected(Reason.IP_NOT_ALLOWED, "allowlist is empty (EXOTEL_ALLOWED_IPS)")
        if not self._allowlist.contains(inbound.client_ip):
            raise Rejected(Reason.IP_NOT_ALLOWED)
        # Configured, not merely active: a phone whose tokens all expired must not fall
        # back to IP-only.
        if not creds.keys.get(KeyKind.EXOTEL_WEBHOOK_TOKEN):
            return Verified(key_fingerprint=None)
        return Verified(key_fingerprint=check_token(inbound, creds, now).fingerprint)


def check_token(request: InboundRequest, creds: PhoneCredentials, now: float) -> Key:
    """The phone's active token that the request's one `?token=` is (every key compared, constant time).

    Rejected: missing (or empty), given more than once (which one would we check?), or no active
    token matches. The one token check of the verifier, `gateway explain` and allowlist discovery.
    """
    presented = [value for name, value in request.query_params() if name == TOKEN_PARAM]
    if not presented or not presented[0]:
        raise Rejected(Reason.MISSING_TOKEN)
    if len(presented) > 1:
        raise Rejected(Reason.INVALID_TOKEN, "token given more than once")
    token = presented[0].encode("utf-8")
    found = None
    for key in creds.active_keys(KeyKind.EXOTEL_WEBHOOK_TOKEN, now):
        if hmac.compare_digest(key.material, token) and found is None:
            found = key
    if found is None:
        raise Rejected(Reason.INVALID_TOKEN)
    return found


_SECRET_PARAMS = frozenset({TOKEN_PARAM})


def idempotency_key(inbound: InboundRequest, kind: str) -> str | None:
    """`kind:CallSid:Status` (Status, or CallStatus; percent-quoted), or None without a CallSid.

    Passthru applets send no status, and one call may pass several of them: there the
    key is the CallSid plus a digest of every parameter (the token excluded), so a
    carrier retry of the same request is a duplicate but the next applet is not.
    """
    params = inbound.params()
    call_sid = params.get("CallSid")
    if not call_sid:
        return None
    status = params.get("Status") or params.get("CallStatus") or params_digest(params, exclude=_SECRET_PARAMS)
    return ":".join([quote_part(part) for part in (kind, call_sid, status)])


def call_event(inbound: InboundRequest, kind: str) -> CallEvent | None:
    return form_call_event(
        inbound,
        kind,
        call_id_param="CallSid",
        status_params=("Status", "CallStatus"),
        terminal=TERMINAL_STATUSES,
        terminal_flag=("EventType", "terminal"),
    )


def call_id(inbound: InboundRequest) -> str | None:
    return inbound.params().get("CallSid") or None


def decoy() -> PhoneCredentials:
    """A phone with a random token: an unknown phone id is answered like a wrong token (or IP)."""
    key = Key(material=secrets.token_urlsafe(24).encode(), fingerprint="decoy")
    return PhoneCredentials("decoy", Provider.EXOTEL, {KeyKind.EXOTEL_WEBHOOK_TOKEN: (key,)})


def sample_params() -> list[tuple[str, str]]:
    """A plausible inbound-call callback with a fresh CallSid (for `gateway sign`)."""
    return [
        ("CallSid", secrets.token_hex(16)),
        ("CallFrom", "+14155550100"),
        ("CallTo", "+14155550101"),
        ("Direction", "incoming"),
        ("Status", "ringing"),
    ]


# ---- `gateway sign` and `gateway explain` (gateway/diagnostics/) ----


def unsigned_proof(secret: bytes | None) -> tuple[list[tuple[str, str]], list[str]]:
    """`gateway sign`: the phone's token in the URL (when it has one), and how the gateway checks Exotel."""
    query: list[tuple[str, str]] = []
    notes: list[str] = []
    if secret is not None:
        query.append((TOKEN_PARAM, secret.decode("utf-8")))
        notes.append("the URL carries the phone's Exotel token (a secret): keep this output private")
    notes.append(
        "Exotel is checked by source address: the gateway must see an address in EXOTEL_ALLOWED_IPS "
        "(--client-ip adds X-Forwarded-For, believed only from GATEWAY_TRUSTED_PROXIES)"
    )
    return query, notes


def token_matches(request: InboundRequest, creds: PhoneCredentials, now: float) -> bool:
    """`gateway explain`: the phone has no token, or the request carries one active token of it once."""
    if not creds.keys.get(KeyKind.EXOTEL_WEBHOOK_TOKEN):
        return True
    try:
        check_token(request, creds, now)
    except Rejected:
        return False
    return True


def explain(data: ExplainInput) -> tuple[list[str], bool]:
    """`gateway explain`: what the gateway checks instead of a signature, and whether the token passes."""
    lines = [
        "Exotel does not sign callbacks: the gateway checks the source address against EXOTEL_ALLOWED_IPS",
        f"  (this capture says {data.request.client_ip}; the gateway uses the socket peer, or X-Forwarded-For",
        "  from GATEWAY_TRUSTED_PROXIES) and, when the phone has one, the ?token= of the URL.",
    ]
    lines += diagnose(data)
    return lines, token_matches(data.request, data.creds, data.now)


def diagnose(data: ExplainInput) -> list[str]:
    """What `gateway explain` and the live diagnosis of a refusal find: the source address, the token."""
    lines = _source_lines(data)
    if not data.creds.keys.get(KeyKind.EXOTEL_WEBHOOK_TOKEN):
        lines.append("token: the phone has none (IP allowlist only)")
    elif token_matches(data.request, data.creds, data.now):
        lines.append("token: MATCHES the phone's exotel_webhook_token")
    else:
        try:
            presented = [value for name, value in data.request.query_params() if name == TOKEN_PARAM]
        except Rejected:
            presented = []
        what = "missing" if not presented else "given more than once" if len(presented) > 1 else "wrong"
        elsewhere = _token_elsewhere(data)
        if not data.show_query:
            lines.append(f"token: {what} in ?{TOKEN_PARAM}= (refused 403)")
        else:
            # The token under another name would show in the query: then the query is not shown at all.
            shown = (
                "not shown: it holds the token" if elsewhere else f"the query without it: {data.redacted_query or '-'}"
            )
            lines.append(f"token: {what} (refused 403; {shown})")
        lines += elsewhere
    return lines


def _shown_name(name: str) -> str:
    return repr(name if name.isprintable() and len(name) <= 40 else name.encode("unicode_escape")[:40].decode())


def _token_elsewhere(data: ExplainInput) -> list[str]:
    """The phone's token under another parameter name, in the query or the form body (never printed)."""
    keys = data.creds.active_keys(KeyKind.EXOTEL_WEBHOOK_TOKEN, data.now)
    found: list[str] = []
    for where, params in (("query", data.request.query_params), ("form body", data.request.form_params)):
        try:
            pairs = params()
        except Rejected:
            continue
        for name, value in pairs:
            token = value.encode("utf-8", "surrogateescape")
            elsewhere = where != "query" or name != TOKEN_PARAM
            if elsewhere and any(hmac.compare_digest(key.material, token) for key in keys):
                found.append(
                    f"token: the phone's token is in the {where} parameter {_shown_name(name)}: the gateway reads it "
                    f"only from ?{TOKEN_PARAM}= in the callback URL (configure the URL at Exotel that way)"
                )
    return found


def _source_lines(data: ExplainInput) -> list[str]:
    """Which address the gateway checks, whether a proxy hides it, and whether it is allowlisted."""
    lines: list[str] = []
    hops = [hop.strip() for hop in data.request.headers.get("x-forwarded-for", "").split(",") if hop.strip()]
    address = data.request.client_ip
    if data.trusted_proxies is not None:
        if hops and not data.trusted_proxies:
            lines += [
                f"source: the {'capture' if data.peer is None else 'request'} carries X-Forwarded-For but "
                "GATEWAY_TRUSTED_PROXIES is not set: the gateway",
                "  ignores it and checks the address that connects to it, behind a load balancer the balancer's",
                "  own address (refused: ip_not_allowed). Add the balancer's addresses to GATEWAY_TRUSTED_PROXIES.",
            ]
            if data.peer is None:
                return lines
        elif hops and data.peer is not None and not Allowlist(data.trusted_proxies).contains(data.peer):
            lines += [
                f"source: X-Forwarded-For is present but the peer {data.peer} is not a trusted proxy:",
                "  GATEWAY_TRUSTED_PROXIES does not include the proxy, so its own address was checked.",
                "  Add the balancer's addresses to GATEWAY_TRUSTED_PROXIES.",
            ]
        elif data.peer is None:  # a capture: read the chain as the gateway would behind a trusted proxy
            untrusted = [hop for hop in hops if not Allowlist(data.trusted_proxies).contains(hop)]
            if untrusted:
                address = untrusted[-1]  # the right-most hop not added by a trusted proxy, as the gateway reads it
    if data.allowlist is None:
        return lines
    if not data.allowlist:
        lines.append("source: the allowlist is empty: every Exotel request is refused (ip_not_allowed)")
    elif data.allowlist.contains(address):
        lines.append(f"source: {address} is in the allowlist")
    else:
        lines.append(f"source: {address} is NOT in the allowlist (EXOTEL_ALLOWED_IPS): refused 403 ip_not_allowed")
    if not data.allowlist or not data.allowlist.contains(address):
        lines.append(
            "  Exotel publishes no list: with the phone's valid token such a request's network is recorded"
            " (gateway exotel sources); confirm it with Exotel support before adding it."
        )
    return lines


def token_proves_account(request: InboundRequest, creds: PhoneCredentials, now: float) -> bool:
    """Allowlist discovery: the request carries one of the phone's active tokens, once (constant time).

    False for a phone without a token: an address alone proves nothing. The source address is
    not looked at (the verifier has refused it already).
    """
    if not creds.keys.get(KeyKind.EXOTEL_WEBHOOK_TOKEN):
        return False
    try:
        check_token(request, creds, now)
    except Rejected:
        return False
    return True


SPEC = CarrierSpec(
    provider=Provider.EXOTEL,
    family=RouteFamily.EXOTEL,
    routes=(RouteSpec("/exotel/incoming", "incoming"), RouteSpec("/exotel/status", "status")),
    make_verifier=lambda options: ExotelVerifier(options.ip_allowlist),
    credentials=CredentialFields(
        required=("api_key", "api_token"),
        optional=("subdomain", "sid"),
        secret=frozenset({"api_key", "api_token"}),
        key_fields={},
        secret_config={"exotel_webhook_token": KeyKind.EXOTEL_WEBHOOK_TOKEN},
    ),
    idempotency_key=idempotency_key,
    call_event=call_event,
    call_id=call_id,
    # Passthru branches on the status code only: a body is optional, and the fallback is a
    # bare status (GATEWAY_EXOTEL_FALLBACK_STATUS); a 302 from dispatch selects the second branch.
    answer=AnswerRules(settings_key="exotel", xml=False, hangup=None, hold=None, redirect_means_branch=True),
    signature_headers=(),
    decoy=decoy,
    secret_params=_SECRET_PARAMS,
    sample_params=sample_params,
    title="Exotel",
    signing_key=lambda _algorithm: KeyKind.EXOTEL_WEBHOOK_TOKEN,
    unsigned_proof=unsigned_proof,
    explain_unsigned=explain,
    diagnose_unsigned=diagnose,
    proof_without_source=token_proves_account,
)
