"""Why did a signature fail? Diagnose (never accept) the usual URL and body mismatches.

For a request that carries a well-formed signature for a known phone and still fails,
`diagnose` re-runs the phone's own verifier on a bounded list of altered copies of the
request (gateway/diagnostics/variants.py) and reports the first one that would have
verified: "plivo signature would match with scheme=https".

This is diagnosis only. The answer is decided before and without it (still 403); a
matching variant is never forwarded, its nonce never recorded. Pure functions over
InboundRequest + PhoneCredentials + verifier; gateway/diagnostics/explainer.py runs them
on the request path (metric, rate-limited warning, CPU budget).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from gateway.diagnostics.variants import HINTS, Variant, variants
from gateway.errors import Rejected
from gateway.inbound import InboundRequest
from gateway.providers import PhoneCredentials, Provider, Verified, Verifier
from gateway.providers.registry import spec_for
from gateway.settings import PublicBase

# Variants tried per failed request on the request path (each is one verifier run).
MAX_VARIANTS = 16


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """The first variant that the phone's verifier would have accepted."""

    provider: Provider
    variant: Variant
    key_fingerprint: str | None
    tried: int  # variants verified, this one included

    @property
    def labels(self) -> tuple[str, ...]:
        return self.variant.labels

    def message(self) -> str:
        hints = "; ".join(HINTS[label] for label in self.variant.labels)
        return f"{self.provider.value} signature would match with {self.variant.description}: {hints}"

    @property
    def url(self) -> str:
        """The URL that would have verified, without its query (which may hold a token or a number)."""
        return self.variant.request.base_url


# Why a failed signature has no diagnosis (`MismatchExplainer.explain`; shown by the inspector only).
NOT_URL_SIGNED = "not_url_signed"
OVER_BUDGET = "over_budget"
NO_MATCH = "no_match"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class NotDiagnosed:
    """A failed signature that no variant explains, and why. No request data in here."""

    provider: Provider
    why: str  # NOT_URL_SIGNED | OVER_BUDGET | NO_MATCH | FAILED
    tried: int = 0  # variants verified

    def message(self) -> str:
        title = spec_for(self.provider).title or self.provider.value
        if self.why == NOT_URL_SIGNED:
            return (
                f"{title}'s signature does not cover the URL, so no URL variant can explain it: the signing key "
                "or the body differs (gateway explain shows what it signs)"
            )
        if self.why == OVER_BUDGET:
            return "not diagnosed: the diagnosis CPU budget is spent (many failures at once?)"
        if self.why == FAILED:
            return "not diagnosed: the diagnosis failed (see the gateway's log)"
        return (
            f"none of the {self.tried} URL and body variants tried matches: the request was signed with another "
            "key (another account, or an auth token rotated at the carrier) or its body was altered"
        )


def attempts(
    inbound: InboundRequest,
    creds: PhoneCredentials,
    verifier: Verifier,
    now: float,
    *,
    public_base: PublicBase | None = None,
    base_source: str = "GATEWAY_PUBLIC_BASE_URL",
    limit: int = MAX_VARIANTS,
    deadline: float | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> Iterator[tuple[Variant, Verified | None]]:
    """Each variant (at most `limit`, and none started after `deadline` on `timer` but the
    first) with what the verifier made of it. Never records anything."""
    for index, variant in enumerate(
        itertools.islice(variants(inbound, creds.provider, public_base, base_source), limit)
    ):
        if index and deadline is not None and timer() >= deadline:
            return
        try:
            verified: Verified | None = verifier.verify(variant.request, creds, now)
        except Rejected:
            verified = None
        yield variant, verified


def diagnose(
    inbound: InboundRequest,
    creds: PhoneCredentials,
    verifier: Verifier,
    now: float,
    *,
    public_base: PublicBase | None = None,
    limit: int = MAX_VARIANTS,
    deadline: float | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> Diagnosis | None:
    """The first variant the phone's verifier would have accepted, or None. Diagnosis only."""
    return search(inbound, creds, verifier, now, public_base=public_base, limit=limit, deadline=deadline, timer=timer)[
        0
    ]


def search(
    inbound: InboundRequest,
    creds: PhoneCredentials,
    verifier: Verifier,
    now: float,
    *,
    public_base: PublicBase | None = None,
    limit: int = MAX_VARIANTS,
    deadline: float | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> tuple[Diagnosis | None, int]:
    """`diagnose`, and how many variants were verified."""
    found = attempts(
        inbound, creds, verifier, now, public_base=public_base, limit=limit, deadline=deadline, timer=timer
    )
    tried = 0
    for tried, (variant, verified) in enumerate(found, start=1):
        if verified is not None:
            return Diagnosis(creds.provider, variant, verified.key_fingerprint, tried), tried
    return None, tried
