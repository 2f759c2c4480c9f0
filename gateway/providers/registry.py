"""The carrier registry: provider → its spec (one file per carrier), and what follows from it.

Like uvicorn's `HTTP_PROTOCOLS`, one table names the members of the family; everything
else in the gateway (routing, verifiers, admin validation, answers, call-aware rules,
metric label vocabularies, `gateway sign`/`explain`) reads it.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.providers import PhoneCredentials, Provider, RouteFamily, Verifier, exotel, plivo, telnyx, twilio, vobiz
from gateway.providers.spec import CarrierSpec, RouteSpec, VerifierOptions

CARRIERS: Mapping[Provider, CarrierSpec] = {
    Provider.PLIVO: plivo.SPEC,
    Provider.VOBIZ: vobiz.SPEC,
    Provider.EXOTEL: exotel.SPEC,
    Provider.TELNYX: telnyx.SPEC,
    Provider.TWILIO: twilio.SPEC,
}

# Which carriers' phones each URL family serves (a Vobiz phone on /plivo/...).
FAMILY_PROVIDERS: Mapping[RouteFamily, frozenset[Provider]] = {
    family: frozenset(spec.provider for spec in CARRIERS.values() if spec.family is family) for family in RouteFamily
}
# Every public webhook path prefix → (family, its route).
ROUTES: Mapping[str, tuple[RouteFamily, RouteSpec]] = {
    route.prefix: (spec.family, route) for spec in CARRIERS.values() for route in spec.routes
}
# Every query/form parameter that is a secret of some carrier (redacted wherever requests are shown).
SECRET_PARAMS: frozenset[str] = frozenset().union(*(spec.secret_params for spec in CARRIERS.values()))


def spec_for(provider: Provider) -> CarrierSpec:
    return CARRIERS[provider]


def decoy_for(family: RouteFamily) -> PhoneCredentials:
    """Fresh credentials no request can match, for unknown phones of `family` (one carrier per family has them)."""
    (make,) = [spec.decoy for spec in CARRIERS.values() if spec.family is family and spec.decoy is not None]
    return make()


def build_verifiers(options: VerifierOptions) -> dict[Provider, Verifier]:
    return {provider: spec.make_verifier(options) for provider, spec in CARRIERS.items()}
