"""Verifying, keying and building the event never change the request they read.

`InboundRequest` (and `Verified`) are plain slotted dataclasses, not frozen ones, because a
frozen __init__ costs three times as much on every request (loadtests/README.md). What frozen
guaranteed is checked here instead, on every step of the shared vectors, accepted or refused:
what is forwarded is exactly what the carrier sent and the verifier saw.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from gateway.errors import Rejected
from gateway.events import build_event
from gateway.inbound import InboundRequest
from gateway.providers import Provider, Verifier, vobiz
from gateway.providers.allowlist import Allowlist
from gateway.providers.exotel import ExotelVerifier
from gateway.providers.plivo import PlivoVerifier
from gateway.providers.registry import CARRIERS
from gateway.providers.telnyx import TelnyxVerifier
from gateway.providers.twilio import TwilioVerifier
from tests.helpers.inbound_builders import NOW, creds_from_vector, inbound_from_vector
from tests.providers.conftest import VectorStep

VECTOR_PROVIDERS = ("plivo", "vobiz", "twilio", "telnyx", "exotel")
FIELDS = ("method", "scheme", "netloc", "raw_path", "query_string", "headers", "body", "client_ip", "duplicate_headers")


def snapshot(request: InboundRequest) -> dict[str, Any]:
    return {name: copy.deepcopy(getattr(request, name)) for name in FIELDS}


def verifier_for(provider: Provider, vectors: Mapping[str, Any]) -> Verifier:
    if provider is Provider.PLIVO:
        return PlivoVerifier()
    if provider is Provider.VOBIZ:
        return vobiz.verifier()
    if provider is Provider.TWILIO:
        return TwilioVerifier()
    if provider is Provider.TELNYX:
        return TelnyxVerifier()
    return ExotelVerifier(Allowlist.parse(",".join(vectors["exotel_allowed_ips"])))


def test_no_step_changes_the_request(vector_step: VectorStep, vectors: Mapping[str, Any]) -> None:
    request = inbound_from_vector(vector_step.request)
    phone = creds_from_vector(vector_step.case["phone"])
    now = vector_step.case.get("now", NOW)
    before = snapshot(request)
    try:
        verified = verifier_for(phone.provider, vectors).verify(request, phone, now)
    except Rejected:
        assert vector_step.expected != "accept"
    else:
        key = CARRIERS[phone.provider].idempotency_key(request, "status")
        build_event(
            request,
            provider=phone.provider.value,
            phone_id=phone.phone_id,
            kind="status",
            received_at=now,
            idempotency_key=key,
            key_fingerprint=verified.key_fingerprint,
            redact=CARRIERS[phone.provider].secret_params,
        )
    assert snapshot(request) == before
