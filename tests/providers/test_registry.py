"""The carrier registry: every carrier has a complete spec, and what the gateway derives from it is right."""

from __future__ import annotations

import pytest

from gateway import metrics
from gateway.inbound import InboundRequest
from gateway.providers import Provider, RouteFamily, exotel
from gateway.providers.registry import CARRIERS, FAMILY_PROVIDERS, ROUTES, SECRET_PARAMS, build_verifiers, decoy_for
from gateway.providers.spec import VerifierOptions
from gateway.webhooks import Route, match_route


def test_every_provider_has_a_spec_of_its_own() -> None:
    assert set(CARRIERS) == set(Provider)
    assert all(spec.provider is provider for provider, spec in CARRIERS.items())


def test_every_family_has_routes_and_exactly_one_decoy() -> None:
    for family in RouteFamily:
        assert any(route_family is family for route_family, _route in ROUTES.values()), family
        decoys = [spec for spec in CARRIERS.values() if spec.family is family and spec.decoy is not None]
        assert len(decoys) == 1, family
        assert decoy_for(family).provider in FAMILY_PROVIDERS[family]


def test_decoys_are_fresh_random_credentials() -> None:
    for family in RouteFamily:
        first, second = decoy_for(family), decoy_for(family)
        assert first.keys and first.keys != second.keys


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/plivo/incoming/ph_1", Route(RouteFamily.PLIVO, "incoming", "ph_1")),
        ("/plivo/status/ph_1", Route(RouteFamily.PLIVO, "status", "ph_1")),
        ("/twilio/status/ph_1", Route(RouteFamily.TWILIO, "status", "ph_1")),
        ("/exotel/incoming/ph_1", Route(RouteFamily.EXOTEL, "incoming", "ph_1")),
        ("/webhooks/telnyx/voice", Route(RouteFamily.TELNYX, "voice", None)),
        ("/webhooks/telnyx/voice/ph_1", Route(RouteFamily.TELNYX, "voice", "ph_1")),
        ("/plivo/incoming", None),  # Plivo's phone id is not optional
        ("/plivo/incoming/", None),
        ("/plivo/other/ph_1", None),
        ("/plivo/incoming/ph_1/extra", None),
        ("/vobiz/incoming/ph_1", None),  # Vobiz phones use the /plivo/ routes
        ("/webhooks/telnyx/voice/", None),
        ("/", None),
    ],
)
def test_routes_come_from_the_registry(path: str, route: Route | None) -> None:
    assert match_route(path) == route


def test_metric_vocabularies_follow_the_registry() -> None:
    assert set(metrics.PROVIDERS) == {provider.value for provider in CARRIERS}
    assert set(metrics.KINDS) == {route.kind for _family, route in ROUTES.values()}


def test_exotel_token_is_the_one_secret_parameter() -> None:
    assert exotel.TOKEN_PARAM in SECRET_PARAMS
    assert CARRIERS[Provider.EXOTEL].secret_params == frozenset({exotel.TOKEN_PARAM})


def test_a_verifier_for_every_carrier() -> None:
    verifiers = build_verifiers(VerifierOptions())
    assert set(verifiers) == set(Provider)


def test_answer_rules_only_where_there_is_an_answer_url() -> None:
    assert CARRIERS[Provider.TELNYX].answer is None
    assert all(CARRIERS[p].answer is not None for p in Provider if p is not Provider.TELNYX)


def test_call_ids_of_form_carriers() -> None:
    request = InboundRequest("POST", "https", "hooks.example.com", "/x", "CallUUID=u1&CallSid=s1", {}, b"", "192.0.2.1")
    assert CARRIERS[Provider.PLIVO].call_id(request) == "u1"
    assert CARRIERS[Provider.VOBIZ].call_id(request) == "u1"
    assert CARRIERS[Provider.TWILIO].call_id(request) == "s1"
    assert CARRIERS[Provider.EXOTEL].call_id(request) == "s1"
    assert CARRIERS[Provider.TELNYX].call_id(request) is None
