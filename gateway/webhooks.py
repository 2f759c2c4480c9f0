"""The webhook request path, and the only place that knows the order of the steps:

    route → read bounded body → resolve phone → verify → replay/duplicate check +
    durable forward (one Redis round trip, group-committed) → answer.

Pure ASGI on purpose: this runs on every carrier callback, so it avoids
middleware stacks and per-request objects it does not need.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway import metrics
from gateway.answers import Answerer
from gateway.asgi_io import (
    BadContentLength,
    BodyTooLarge,
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    declared_length,
    read_body,
    respond,
)
from gateway.calls import CallAware
from gateway.errors import (
    CLIENT_CLOSED,
    RETRY_AFTER_S,
    UNAVAILABLE_ANSWER,
    Reason,
    Rejected,
    Unavailable,
    answer_for,
)
from gateway.events import build_event
from gateway.forwarder import Forwarder, Outcome
from gateway.inbound import InboundRequest
from gateway.inspector.redaction import params_holding
from gateway.inspector.store import DIAGNOSIS_KEY, INBOUND_KEY, SECRET_NAMES_KEY
from gateway.keystore import NOT_CACHED, KeyStore
from gateway.log_safety import loggable
from gateway.providers import PhoneCredentials, Provider, RouteFamily, Verifier
from gateway.providers.registry import CARRIERS, FAMILY_PROVIDERS, ROUTES, decoy_for
from gateway.proxy import OriginResolver

access_log = logging.getLogger("gateway.access")
log = logging.getLogger("gateway.webhooks")

ALLOWED_METHODS = frozenset({"GET", "POST"})
# Refusals whose request may carry a phone's secret under another parameter name (the inspector redacts it).
_TOKEN_REASONS = frozenset({Reason.IP_NOT_ALLOWED, Reason.MISSING_TOKEN, Reason.INVALID_TOKEN})
# The forwarder's refusals, and the reason each is answered and counted with.
REFUSED_OUTCOMES: dict[Outcome, Reason] = {
    Outcome.REPLAY: Reason.REPLAYED_NONCE,
    Outcome.UNKNOWN_CALL: Reason.UNKNOWN_CALL,
    Outcome.CALL_ENDED: Reason.CALL_ENDED,
}
_RETRY_AFTER = [(b"retry-after", str(RETRY_AFTER_S).encode())]
_NO_DUPLICATES: frozenset[str] = frozenset()
# Metric labels by provider and route family: an enum's .value is a descriptor call (slow in 3.11).
_LABELS: dict[Provider | RouteFamily, str] = {member: member.value for member in (*Provider, *RouteFamily)}


# Carriers send the same dozen header names on every request: decoded once. Bounded, so
# random names from a client fill it once and are then decoded each time.
_HEADER_NAMES: dict[bytes, str] = {}
_HEADER_NAMES_MAX = 512


def _header_name(raw: bytes) -> str:
    name = _HEADER_NAMES.get(raw)
    if name is None:
        name = raw.decode("latin-1").lower()
        if len(_HEADER_NAMES) < _HEADER_NAMES_MAX:
            _HEADER_NAMES[raw] = name
    return name


@dataclass(frozen=True, slots=True)
class Route:
    family: RouteFamily
    kind: str  # incoming | status | voice
    phone_id: str | None


def match_route(path: str) -> Route | None:
    """The carriers' webhook routes (gateway/providers/registry.py); anything else is not a webhook."""
    # A phone's routes repeat on every callback: remembered, short paths only (bounded memory).
    return _cached_route(path) if len(path) <= 256 else _match_route(path)


def _match_route(path: str) -> Route | None:
    prefix, _, phone_id = path.rpartition("/")
    found = ROUTES.get(prefix)
    if found is not None and phone_id:  # prefix/{phone_id}
        return Route(found[0], found[1].kind, phone_id)
    found = ROUTES.get(path)
    if found is not None and found[1].phone_id_optional:  # the prefix alone: phone found from the event
        return Route(found[0], found[1].kind, None)
    return None


_cached_route = functools.lru_cache(maxsize=4096)(_match_route)


def _decoys() -> dict[RouteFamily, PhoneCredentials]:
    """Credentials no request can match, verified against for unknown phones of each family.

    An unknown phone id then gets exactly the answer a real phone gives for a bad
    signature (401 when unsigned, 403 otherwise), so phone ids cannot be enumerated.
    """
    return {family: decoy_for(family) for family in RouteFamily}


def _no_numbers(_inbound: InboundRequest) -> list[str]:
    return []


def _numbers_in_request() -> dict[RouteFamily, Callable[[InboundRequest], list[str]]]:
    """Per family, how to find our number in an event (routes whose phone id is optional)."""
    found: dict[RouteFamily, Callable[[InboundRequest], list[str]]] = dict.fromkeys(RouteFamily, _no_numbers)
    for spec in CARRIERS.values():
        if spec.numbers_in_request is not None:
            found[spec.family] = spec.numbers_in_request
    return found


class WebhookHandler:
    def __init__(
        self,
        *,
        keystore: KeyStore,
        forwarder: Forwarder,
        verifiers: dict[Provider, Verifier],
        answers: Answerer,
        origin: OriginResolver,
        max_body_bytes: int,
        clock: Callable[[], float] = time.time,
        explain: Callable[[InboundRequest, PhoneCredentials, Verifier, float], object] | None = None,
        # (reason, request, phone, verifier, now, socket peer): any other refusal of a known phone, diagnosed
        explain_rejection: Callable[[Reason, InboundRequest, PhoneCredentials, Verifier, float, str | None], object]
        | None = None,
        calls: CallAware | None = None,
        unlisted: Callable[[InboundRequest, PhoneCredentials, float], object] | None = None,
        access_log_mode: str = "failed",
        inspect: Callable[[Scope, str, str | None, int, str, str, str], None] | None = None,
    ) -> None:
        self._inspect = inspect  # gateway/inspector/: keeps each request for the admin page; None: off
        self._keystore = keystore
        self._forwarder = forwarder
        self._verifiers = verifiers
        self._answers = answers
        self._calls = calls  # call-aware replay defence (gateway/calls.py); None: never
        self._unlisted = unlisted  # gateway/source_log.py: records proven sources refused for their address
        self._origin = origin
        self._max_body = max_body_bytes
        self._clock = clock
        self._decoys = _decoys()
        self._numbers_in_request = _numbers_in_request()
        self._explain = explain  # gateway/diagnostics/explainer.py: diagnoses failed signatures, never accepts
        self._explain_rejection = explain_rejection  # the same, for the other refusals (diagnostics/rejection.py)
        # GATEWAY_ACCESS_LOG: a line costs about a tenth of an accepted request's CPU, and the
        # metrics and the stream already record every accepted one; refusals and 503s are what
        # an operator reads the log for (loadtests/README.md has the measurement).
        self._log_accepted = access_log_mode == "all"
        self._log_failed = access_log_mode in ("all", "failed")

    async def __call__(self, scope: Scope, receive: Receive, send: Send, route: Route) -> None:
        started = time.perf_counter()
        provider_label = _LABELS[route.family]
        status, outcome, reason = 500, "bad_request", ""
        try:
            status, outcome, reason, provider_label = await self._handle(scope, receive, send, route)
        except ClientDisconnected:
            status, outcome, reason = CLIENT_CLOSED, "bad_request", "client_disconnected"
        except Exception:
            # A bug, or a Redis failure not known as an outage: a 503 the carrier retries, so nothing
            # is lost; the traceback goes to the log, never to the client.
            log.exception("unexpected error handling a webhook; answered 503")
            status, outcome, reason = UNAVAILABLE_ANSWER[0], "error", "internal_error"
            with contextlib.suppress(Exception):  # fails if the answer had already started
                await self._unavailable(send, provider_label)
        finally:
            tally = metrics.TALLY
            tally.count(metrics.request_counter(provider_label, route.kind, outcome))
            tally.observe(metrics.latency(provider_label, route.kind), time.perf_counter() - started)
            wanted = self._log_accepted if 200 <= status < 300 else self._log_failed
            if wanted and access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                # Request-controlled fields are escaped and capped (gateway/log_safety.py): a "%0A" in
                # the path must not write a second line, a 15 KB path not a 15 KB line.
                access_log.info(
                    '%s "%s %s" %d %s %s%s %.1fms',
                    loggable(client[0]) if client else "-",
                    loggable(scope.get("method", "-")),
                    loggable(scope.get("path", "-")),  # never the query string: Exotel's ?token= is a secret
                    status,
                    provider_label,
                    outcome,
                    f" reason={reason}" if reason else "",
                    (time.perf_counter() - started) * 1000,
                )
            if self._inspect is not None:
                self._inspect(scope, route.kind, route.phone_id, status, outcome, reason, provider_label)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, route: Route) -> tuple[int, str, str, str]:
        provider_label = _LABELS[route.family]
        method = scope["method"]
        if method not in ALLOWED_METHODS:
            return await self._reject(send, Reason.METHOD_NOT_ALLOWED, provider_label, extra=[(b"allow", b"GET, POST")])

        raw_headers = scope["headers"]
        names = _HEADER_NAMES
        headers = {names.get(name) or _header_name(name): value.decode("latin-1") for name, value in raw_headers}
        duplicates: set[str] = set()
        if len(headers) != len(raw_headers):  # a name sent twice (rare): first value wins, XFF hops joined
            headers = {}
            for raw_name, raw_value in raw_headers:
                name = _header_name(raw_name)
                value = raw_value.decode("latin-1")
                if name in headers:
                    duplicates.add(name)
                    if name == "x-forwarded-for":
                        headers[name] = f"{headers[name]},{value}"
                    continue
                headers[name] = value

        try:
            length = declared_length(headers.get("content-length"))
            body = await read_body(receive, length, self._max_body)
        except BodyTooLarge:
            metrics.REJECTIONS.labels(provider_label, Reason.BODY_TOO_LARGE.value).inc()
            status, text = answer_for(Reason.BODY_TOO_LARGE)
            await respond(send, status, text, extra_headers=[(b"connection", b"close")])
            return status, "too_large", Reason.BODY_TOO_LARGE.value, provider_label
        except BadContentLength:
            return await self._reject(send, Reason.MALFORMED_REQUEST, provider_label)

        client = scope.get("client")
        origin = self._origin.resolve(client[0] if client else None, scope.get("scheme", "http"), headers)
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else scope["path"]
        inbound = InboundRequest(
            method=method,
            scheme=origin.scheme,
            netloc=origin.netloc,
            raw_path=origin.path_prefix + path,
            query_string=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=body,
            client_ip=origin.client_ip,
            duplicate_headers=frozenset(duplicates) if duplicates else _NO_DUPLICATES,
        )
        if self._inspect is not None:
            scope[INBOUND_KEY] = inbound
        now = self._clock()
        try:
            creds = self._keystore.cached(route.phone_id) if route.phone_id is not None else NOT_CACHED
            if creds is NOT_CACHED:
                creds = await self._resolve_phone(route, inbound)
        except Unavailable:
            return await self._unavailable(send, provider_label)
        if creds is None or creds.provider not in FAMILY_PROVIDERS[route.family]:
            return await self._reject_unknown(send, route, inbound, now)
        provider = creds.provider
        provider_label = _LABELS[provider]
        spec = CARRIERS[provider]
        try:
            verified = self._verifiers[provider].verify(inbound, creds, now)
            idempotency_key = spec.idempotency_key(inbound, route.kind)
            event = build_event(
                inbound,
                provider=provider_label,
                phone_id=creds.phone_id,
                kind=route.kind,
                received_at=now,
                idempotency_key=idempotency_key,
                key_fingerprint=verified.key_fingerprint,
                redact=spec.secret_params,
            )
            call = self._calls.check(provider, route.kind, creds, inbound, now) if self._calls is not None else None
            result, entry_id = await self._forwarder.forward(
                creds.phone_id,
                event,
                nonce=verified.nonce,
                idempotency_key=idempotency_key,
                call=call,
                signed=verified.signed_digest,
                other_nonce=verified.other_nonce,
            )
        except Rejected as rejection:
            if rejection.reason is Reason.INVALID_SIGNATURE:
                if self._explain is not None:
                    # Diagnosis only: never accepts. Kept in the scope for the inspector.
                    scope[DIAGNOSIS_KEY] = self._explain(inbound, creds, self._verifiers[provider], now)
            elif self._explain_rejection is not None:  # the same for a stale timestamp, no signature, IP, token
                peer = scope.get("client")
                scope[DIAGNOSIS_KEY] = self._explain_rejection(
                    rejection.reason, inbound, creds, self._verifiers[provider], now, peer[0] if peer else None
                )
            if rejection.reason in _TOKEN_REASONS and self._inspect is not None:
                # The inspector must not show a phone secret sent under another parameter name.
                kinds = spec.credentials.secret_config.values()
                secret = (key.material for kind in kinds for key in creds.keys.get(kind, ()))
                scope[SECRET_NAMES_KEY] = params_holding(inbound, secret)
            if rejection.reason is Reason.IP_NOT_ALLOWED and self._unlisted is not None:
                self._unlisted(inbound, creds, now)  # allowlist discovery: records, never accepts, never raises
            return await self._reject(send, rejection.reason, provider_label)
        except Unavailable:
            return await self._unavailable(send, provider_label)

        if result is Outcome.DUPLICATE:
            metrics.TALLY.count(metrics.duplicates(provider_label))
            outcome = "duplicate"
        elif result is Outcome.FORWARDED:
            metrics.TALLY.count(metrics.forwarded(provider_label))
            outcome = "accepted"
        elif result is Outcome.HELD:
            metrics.call_event_counter(provider_label, "held").inc()
            outcome = "held"
        else:  # replayed nonce, call-aware refusals
            return await self._reject(send, REFUSED_OUTCOMES[result], provider_label)
        # Answer only now: the event is durably in the stream, so even a slow dispatch
        # behind a proxied answer cannot lose the call.
        if not self._answers.has_content(provider, route.kind):  # every status callback: no coroutine to run
            await respond(send, 200)
            return 200, outcome, "", provider_label
        # A duplicate is answered from its first acceptance (entry_id): the same bytes again.
        answer = await self._answers.answer(
            provider,
            route.kind,
            creds,
            inbound,
            event,
            idempotency_key,
            now,
            entry_id=entry_id,
            duplicate=result is Outcome.DUPLICATE,
        )
        await respond(send, answer.status, answer.body, answer.content_type)
        return answer.status, outcome, "", provider_label

    async def _resolve_phone(self, route: Route, inbound: InboundRequest) -> PhoneCredentials | None:
        if route.phone_id is not None:
            return await self._keystore.credentials(route.phone_id)
        # No phone in the path (Telnyx): find it from the event's own number.
        for number in self._numbers_in_request[route.family](inbound):
            phone_id = await self._keystore.phone_for_number(number)
            if phone_id is not None:
                return await self._keystore.credentials(phone_id)
        return None

    async def _reject_unknown(
        self, send: Send, route: Route, inbound: InboundRequest, now: float
    ) -> tuple[int, str, str, str]:
        """Answer an unknown phone exactly as the decoy's verifier does, and count the true reason."""
        decoy = self._decoys[route.family]
        answered = Reason.INVALID_SIGNATURE
        try:
            self._verifiers[decoy.provider].verify(inbound, decoy, now)
        except Rejected as rejection:
            answered = rejection.reason
        metrics.REJECTIONS.labels(route.family.value, Reason.UNKNOWN_PHONE.value).inc()
        status, text = answer_for(answered)
        await respond(send, status, text)
        return (
            status,
            "rejected" if status in (401, 403) else "bad_request",
            Reason.UNKNOWN_PHONE.value,
            route.family.value,
        )

    async def _unavailable(self, send: Send, provider_label: str) -> tuple[int, str, str, str]:
        status, text = UNAVAILABLE_ANSWER
        await respond(send, status, text, extra_headers=_RETRY_AFTER)
        return status, "unavailable", "", provider_label

    async def _reject(
        self, send: Send, reason: Reason, provider_label: str, extra: list[tuple[bytes, bytes]] | None = None
    ) -> tuple[int, str, str, str]:
        metrics.REJECTIONS.labels(provider_label, reason.value).inc()
        status, text = answer_for(reason)
        await respond(send, status, text, extra_headers=extra)
        outcome = "bad_request" if status in (400, 405) else "rejected"
        return status, outcome, reason.value, provider_label
