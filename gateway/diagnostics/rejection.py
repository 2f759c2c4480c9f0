"""Why was a request refused for a reason other than a failed signature? Pure, diagnosis only.

`gateway explain` (report.py) and the live diagnosis (`MismatchExplainer.rejection`,
explainer.py) share these functions, so both say the same thing:

- `stale_timestamp` (a carrier whose spec says when a request was signed, `CarrierSpec.signed_at`):
  how far off the timestamp is and in which direction, and whether the signature verifies at
  its own timestamp (then: a clock problem or a delayed delivery, not a forgery);
- `missing_signature`: which of the carrier's signature headers are absent, and the carrier's
  own explanation (`CarrierSpec.explain_no_signature`);
- `ip_not_allowed`, `missing_token`, `invalid_token` (a carrier that signs nothing,
  `CarrierSpec.diagnose_unsigned`): the address checked, a proxy not trusted, an empty
  allowlist, the token missing, wrong, repeated or under another parameter name.

Never a secret: no token, no signature, no query value. Carrier texts come from the specs.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import Reason, Rejected, answer_for
from gateway.inbound import InboundRequest
from gateway.providers import PhoneCredentials, Provider, Verifier
from gateway.providers.allowlist import Allowlist, Network
from gateway.providers.registry import spec_for
from gateway.providers.spec import CarrierSpec, ExplainInput

# The reasons diagnosed here (a failed signature is mismatch.py's).
DIAGNOSED = frozenset(
    {
        Reason.STALE_TIMESTAMP,
        Reason.MISSING_SIGNATURE,
        Reason.IP_NOT_ALLOWED,
        Reason.MISSING_TOKEN,
        Reason.INVALID_TOKEN,
    }
)


@dataclass(frozen=True, slots=True)
class Context:
    """What the deployment checks with (the live path knows all of it; a capture some)."""

    tolerance_s: int = 300
    allowlist: Allowlist | None = None  # the source-address allowlist (None: unknown)
    trusted_proxies: tuple[Network, ...] | None = None  # GATEWAY_TRUSTED_PROXIES (None: unknown)


@dataclass(frozen=True, slots=True)
class Finding:
    """A refusal explained. `text` holds no secret and no query value."""

    provider: Provider
    reason: Reason
    text: str
    key_fingerprint: str | None = None  # a key that verifies the request at its own timestamp
    addresses: tuple[str, ...] = ()  # client addresses named in `text` (the inspector's listing hides them)

    @property
    def status(self) -> int:
        return answer_for(self.reason)[0]

    def message(self, *, hide_addresses: bool = False) -> str:
        text = self.text
        if hide_addresses:
            for address in sorted(self.addresses, key=len, reverse=True):
                text = text.replace(address, "the source address")
        return f"{self.provider.value} request refused ({self.reason.value}): {text}"


def timestamp_skew(now: float, signed_at: float, tolerance_s: int) -> str:
    """How far off a request's timestamp is, which way, and what that usually means."""
    offset = int(now - signed_at)
    if offset >= 0:
        way = (
            f"{offset} s in the past: the gateway's clock is ahead of the carrier's (check NTP on the gateway "
            "host), the delivery was delayed, or the request is replayed"
        )
    else:
        way = f"{-offset} s in the future: the gateway's clock is behind the carrier's (check NTP on the gateway host)"
    return f"the timestamp is {offset} s from now (tolerance {tolerance_s} s), {way}"


def missing_headers(spec: CarrierSpec, request: InboundRequest) -> list[str]:
    """The carrier's signature headers the request does not carry."""
    return [header for header in spec.signature_headers if not request.headers.get(header.lower())]


def no_signature_lines(spec: CarrierSpec) -> list[str]:
    """Why a request may carry none of the carrier's signature headers (its spec's words, or generic ones)."""
    return list(
        spec.explain_no_signature
        or (
            f"  {spec.title} signs its callbacks: a request without these headers was not sent by {spec.title},",
            "  or a proxy dropped them on the way.",
        )
    )


def _joined(lines: list[str]) -> str:
    """Report lines as one sentence-ish line: continuation lines joined with a space, findings with "; "."""
    out: list[str] = []
    for line in lines:
        if line.startswith(" ") and out:
            previous, line = out[-1], line.strip()
            stop = "." if previous[-1:].isalnum() and line[:1].isupper() else ""  # a new sentence
            out[-1] = f"{previous}{stop} {line}"
        else:
            out.append(line.strip())
    return "; ".join(out)


def diagnose(
    reason: Reason,
    request: InboundRequest,
    creds: PhoneCredentials,
    verifier: Verifier,
    now: float,
    context: Context,
    *,
    peer: str | None = None,
) -> Finding | None:
    """The diagnosis of a refusal for `reason`, or None when there is nothing to add. Never accepts."""
    spec = spec_for(creds.provider)
    if reason is Reason.STALE_TIMESTAMP and spec.signed_at is not None:
        signed_at = spec.signed_at(request)
        if signed_at is None:
            return None
        text = timestamp_skew(now, signed_at, context.tolerance_s)
        try:
            verified = verifier.verify(request, creds, signed_at)  # pure: judged at its own moment, nothing spent
        except Rejected:
            return Finding(
                creds.provider,
                reason,
                f"{text}; and the signature does not verify even at its own timestamp (another key, or forged)",
            )
        text += (
            f"; the signature verifies at its own timestamp (key {verified.key_fingerprint or '-'}): "
            "a clock or delivery-delay problem, not a forgery"
        )
        return Finding(creds.provider, reason, text, verified.key_fingerprint)
    if reason is Reason.MISSING_SIGNATURE and spec.signature_headers:
        absent = missing_headers(spec, request)
        if len(absent) == len(spec.signature_headers):
            lines = [f"none of its signature headers ({', '.join(spec.signature_headers)})", *no_signature_lines(spec)]
        else:
            lines = [f"signature incomplete: {', '.join(absent) or 'a nonce'} absent (a proxy dropped it?)"]
        return Finding(creds.provider, reason, _joined(lines))
    if reason in (Reason.IP_NOT_ALLOWED, Reason.MISSING_TOKEN, Reason.INVALID_TOKEN) and spec.diagnose_unsigned:
        data = ExplainInput(
            request,
            creds,
            now,
            "",  # not shown (show_query=False)
            allowlist=context.allowlist,
            trusted_proxies=context.trusted_proxies,
            peer=peer,
            show_query=False,
        )
        lines = spec.diagnose_unsigned(data)
        addresses = tuple(address for address in (request.client_ip, peer) if address)
        return Finding(creds.provider, reason, _joined(lines), addresses=addresses) if lines else None
    return None
