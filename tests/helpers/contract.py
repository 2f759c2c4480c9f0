"""The carrier contract, written once: every carrier's HTTP route must pass the same suite.

A carrier plugs in a `CarrierAdapter` (how to make its phone, a valid request, and each
kind of bad proof) and a test module subclasses `CarrierContract`:

    class TestTwilioContract(CarrierContract):
        adapter = TwilioAdapter()

The module provides a module-scoped `gateway` fixture (`start_gateway`). Every test runs
through the real app on a real uvicorn socket and ends by checking that the dispatch
stream holds exactly the requests that were accepted and forwarded, in order.
"""

from __future__ import annotations

import base64
import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson
import pytest
import redis

from tests.helpers.replies import stream_entries
from tests.helpers.support import Clock, RunningGateway, make_settings, random_id, run_gateway, send_as_carrier

STREAM = "gateway:events"

Request = dict[str, Any]
Change = Callable[[Request], None]


@dataclass
class Gateway:
    """A running gateway and the clock it reads (None = real time)."""

    gw: RunningGateway
    clock: Clock

    def send(self, request: Request) -> Any:
        return send_as_carrier(self.gw, request)

    def now(self) -> float:
        return self.clock()


def start_gateway(redis_url: str, **env: str) -> Iterator[Gateway]:
    """For a module-scoped fixture: `yield from start_gateway(redis_server)`."""
    clock = Clock()
    with run_gateway(make_settings(redis_url, **env), clock=clock) as gw:
        yield Gateway(gw, clock)


# ---- the stream --------------------------------------------------------------------------


def stream_events(client: redis.Redis) -> list[dict[str, Any]]:
    return [orjson.loads(fields[b"event"]) for _id, fields in stream_entries(client.xrange(STREAM))]


def _raw_body(request: Request) -> bytes:
    body = request.get("body", "")
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


def _without_token(query: str) -> str:
    return "&".join(part for part in query.split("&") if part and not part.startswith("token="))


def identity(request: Request) -> tuple[str, str, str, bytes]:
    """What a forwarded event must reproduce of the request: method, raw path, query, raw body."""
    parts = urlsplit(request["url"])
    return request["method"], parts.path, _without_token(parts.query), _raw_body(request)


def event_identity(event: dict[str, Any]) -> tuple[str, str, str, bytes]:
    if event["body"] is not None:
        body = event["body"].encode("utf-8")
    else:
        body = base64.b64decode(event["body_base64"])
    return event["method"], event["path"], event["query"], body


def assert_stream_holds(client: redis.Redis, accepted: list[Request]) -> list[dict[str, Any]]:
    """The stream holds exactly one event per forwarded request, in order, and nothing else."""
    events = stream_events(client)
    assert [event_identity(e) for e in events] == [identity(r) for r in accepted]
    return events


# ---- what a carrier plugs in ----------------------------------------------------------


class CarrierAdapter(ABC):
    """One carrier's way of proving a request, seen from the contract suite.

    `secret` is whatever the phone's proof is made with: an auth token (Twilio), an
    Ed25519 seed whose public half the phone holds (Telnyx), the URL token (Exotel).
    """

    provider: ClassVar[str]
    # Status for a request carrying no proof at all (401 where a signature header is missing).
    missing_status: ClassVar[int] = 401

    @abstractmethod
    def new_secret(self) -> str: ...

    @abstractmethod
    def phone(self, phone_id: str, secret: str) -> dict[str, Any]:
        """The vector-shaped phone (id, provider, credentials, config) whose proof is `secret`."""

    @abstractmethod
    def request(self, phone_id: str, secret: str, now: float, *, event: str | None = None) -> Request:
        """A valid request. The same `event` gives the same carrier idempotency key."""

    def redeliver(self, request: Request, secret: str, now: float) -> Request:
        """The carrier's own retry of the same event (by default: the identical request)."""
        return copy.deepcopy(request)

    @abstractmethod
    def forge(self, request: Request) -> None:
        """Replace the proof by a well-formed one nobody with the key made."""

    @abstractmethod
    def tamper(self, request: Request) -> None:
        """Change what the proof covers (or the proof itself, by a near miss), keeping its format."""

    @abstractmethod
    def malformations(self) -> dict[str, Change]:
        """Ways to make the proof unparsable; each must be refused with a 4xx, never a 500."""

    @abstractmethod
    def strip(self, request: Request) -> None:
        """Remove the proof entirely."""


# ---- the contract ----------------------------------------------------------------------


class CarrierContract:
    """The shared suite. Subclasses set `adapter`; the module provides the `gateway` fixture."""

    adapter: ClassVar[CarrierAdapter]

    @staticmethod
    def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
        if "malformation" in metafunc.fixturenames and metafunc.cls is not None:
            names = sorted(metafunc.cls.adapter.malformations())
            metafunc.parametrize("malformation", names)

    @pytest.fixture(autouse=True)
    def _fresh(self, gateway: Gateway, redis_url: str) -> Iterator[None]:
        gateway.clock.now = None  # real time unless a test pins it; Redis flushed by redis_url
        yield
        gateway.clock.now = None

    def _phone(self, gateway: Gateway, secret: str | None = None) -> tuple[str, str]:
        secret = secret or self.adapter.new_secret()
        phone_id = random_id(f"ph_{self.adapter.provider}")
        gateway.gw.put_phone(self.adapter.phone(phone_id, secret))
        return phone_id, secret

    def _replace(self, gateway: Gateway, phone_id: str, secret: str, keep_previous_s: int | None) -> None:
        phone = self.adapter.phone(phone_id, secret)
        body: dict[str, Any] = {k: phone[k] for k in ("provider", "credentials", "config")}
        if keep_previous_s is not None:
            body["rotation"] = {"keep_previous_s": keep_previous_s}
        response = gateway.gw.admin("PUT", f"/admin/phones/{phone_id}", body)
        assert response.status_code == 200, response.text

    # -- accepted -----------------------------------------------------------------------

    def test_valid_request_is_forwarded_once(self, gateway: Gateway, redis_sync: redis.Redis) -> None:
        phone_id, secret = self._phone(gateway)
        request = self.adapter.request(phone_id, secret, gateway.now())
        response = gateway.send(request)
        assert response.status_code == 200, response.text
        (event,) = assert_stream_holds(redis_sync, [request])
        assert event["provider"] == self.adapter.provider
        assert event["phone_id"] == phone_id
        assert event["source_ip"] == request["client_ip"]
        assert secret not in orjson.dumps(event).decode()

    # -- rejected: one thing wrong --------------------------------------------------------

    def test_forged_proof_rejected(self, gateway: Gateway, redis_sync: redis.Redis) -> None:
        phone_id, secret = self._phone(gateway)
        request = self.adapter.request(phone_id, secret, gateway.now())
        self.adapter.forge(request)
        assert gateway.send(request).status_code == 403
        assert_stream_holds(redis_sync, [])

    def test_tampered_request_rejected(self, gateway: Gateway, redis_sync: redis.Redis) -> None:
        phone_id, secret = self._phone(gateway)
        request = self.adapter.request(phone_id, secret, gateway.now())
        self.adapter.tamper(request)
        assert gateway.send(request).status_code == 403
        assert_stream_holds(redis_sync, [])

    def test_wrong_key_rejected(self, gateway: Gateway, redis_sync: redis.Redis) -> None:
        phone_id, _secret = self._phone(gateway)
        request = self.adapter.request(phone_id, self.adapter.new_secret(), gateway.now())
        assert gateway.send(request).status_code == 403
        assert_stream_holds(redis_sync, [])

    def test_key_of_another_phone_rejected(self, gateway: Gateway, redis_sync: redis.Redis) -> None:
        phone_id, _secret = self._phone(gateway)
        _other_id, other_secret = self._phone(gateway)
        assert gateway.send(self.adapter.request(phone_id, other_secret, gateway.now())).status_code == 403
        assert_stream_holds(redis_sync, [])

    def test_malformed_proof_rejected_never_500(
        self, gateway: Gateway, redis_sync: redis.Redis, malformation: str
    ) -> None:
        phone_id, secret = self._phone(gateway)
        request = self.adapter.request(phone_id, secret, gateway.now())
        self.adapter.malformations()[malformation](request)
        response = gateway.send(request)
        assert response.status_code in (400, 401, 403), (malformation, response.status_code)
        assert_stream_holds(redis_sync, [])

    def test_missing_proof_rejected(self, gateway: Gateway, redis_sync: redis.Redis) -> None:
        phone_id, secret = self._phone(gateway)
        request = self.adapter.request(phone_id, secret, gateway.now())
        self.adapter.strip(request)
        assert gateway.send(request).status_code == self.adapter.missing_status
        assert_stream_holds(redis_sync, [])

    def test_unknown_phone_answered_like_bad_proof(self, gateway: Gateway, redis_sync: redis.Redis) -> None:
        phone_id, secret = self._phone(gateway)
        bad = gateway.send(self.adapter.request(phone_id, self.adapter.new_secret(), gateway.now()))
        unknown = gateway.send(self.adapter.request(random_id("ph_nobody"), secret, gateway.now()))
        assert (unknown.status_code, unknown.content) == (bad.status_code, bad.content) == (403, b"forbidden\n")
        unsigned_known = self.adapter.request(phone_id, secret, gateway.now())
        unsigned_unknown = self.adapter.request(random_id("ph_nobody"), secret, gateway.now())
        self.adapter.strip(unsigned_known)
        self.adapter.strip(unsigned_unknown)
        known_answer, unknown_answer = gateway.send(unsigned_known), gateway.send(unsigned_unknown)
        assert (known_answer.status_code, known_answer.content) == (unknown_answer.status_code, unknown_answer.content)
        assert_stream_holds(redis_sync, [])

    def test_phone_of_another_carrier_is_unknown_here(self, gateway: Gateway, redis_sync: redis.Redis) -> None:
        """A Plivo phone id on this carrier's route is answered like an unknown phone."""
        from tests.helpers.builders import plivo_phone

        secret = self.adapter.new_secret()
        phone_id = random_id("ph_plivo")
        gateway.gw.put_phone(plivo_phone(phone_id, "plivo-token-" + "x" * 20))
        assert gateway.send(self.adapter.request(phone_id, secret, gateway.now())).status_code == 403
        assert_stream_holds(redis_sync, [])

    # -- rotation -----------------------------------------------------------------------

    def test_rotation_keeps_old_key_until_plain_replace(self, gateway: Gateway, redis_sync: redis.Redis) -> None:
        phone_id, old = self._phone(gateway)
        new = self.adapter.new_secret()
        self._replace(gateway, phone_id, new, keep_previous_s=3600)
        accepted = [
            self.adapter.request(phone_id, old, gateway.now()),
            self.adapter.request(phone_id, new, gateway.now()),
        ]
        for request in accepted:
            assert gateway.send(request).status_code == 200
        self._replace(gateway, phone_id, new, keep_previous_s=None)  # plain replace: old retired at once
        assert gateway.send(self.adapter.request(phone_id, old, gateway.now())).status_code == 403
        accepted.append(self.adapter.request(phone_id, new, gateway.now()))
        assert gateway.send(accepted[-1]).status_code == 200
        assert_stream_holds(redis_sync, accepted)

    def test_rotation_window_ends(self, gateway: Gateway, redis_sync: redis.Redis) -> None:
        gateway.clock.now = gateway.now()
        phone_id, old = self._phone(gateway)
        new = self.adapter.new_secret()
        self._replace(gateway, phone_id, new, keep_previous_s=60)
        gateway.clock.now += 59
        accepted = [self.adapter.request(phone_id, old, gateway.now())]
        assert gateway.send(accepted[0]).status_code == 200
        gateway.clock.now += 2  # past the window: the cached old key no longer verifies
        assert gateway.send(self.adapter.request(phone_id, old, gateway.now())).status_code == 403
        accepted.append(self.adapter.request(phone_id, new, gateway.now()))
        assert gateway.send(accepted[-1]).status_code == 200
        assert_stream_holds(redis_sync, accepted)

    def test_deleted_phone_rejected(self, gateway: Gateway, redis_sync: redis.Redis) -> None:
        phone_id, secret = self._phone(gateway)
        accepted = [self.adapter.request(phone_id, secret, gateway.now())]
        assert gateway.send(accepted[0]).status_code == 200
        assert gateway.gw.admin("DELETE", f"/admin/phones/{phone_id}").status_code == 204
        assert gateway.send(self.adapter.request(phone_id, secret, gateway.now())).status_code == 403
        assert_stream_holds(redis_sync, accepted)

    # -- replay and duplicates ------------------------------------------------------------

    def test_replay_is_answered_but_forwarded_once(self, gateway: Gateway, redis_sync: redis.Redis) -> None:
        phone_id, secret = self._phone(gateway)
        request = self.adapter.request(phone_id, secret, gateway.now(), event="e1")
        assert gateway.send(request).status_code == 200
        assert gateway.send(copy.deepcopy(request)).status_code == 200  # byte-identical replay
        retry = self.adapter.redeliver(request, secret, gateway.now())
        assert gateway.send(retry).status_code == 200  # the carrier's own retry of the event
        following = self.adapter.request(phone_id, secret, gateway.now(), event="e2")
        assert gateway.send(following).status_code == 200
        events = assert_stream_holds(redis_sync, [request, following])
        assert events[0]["idempotency_key"] and events[1]["idempotency_key"]
        assert events[0]["idempotency_key"] != events[1]["idempotency_key"]

    def test_same_event_on_two_phones_is_not_a_duplicate(self, gateway: Gateway, redis_sync: redis.Redis) -> None:
        first_id, first_secret = self._phone(gateway)
        second_id, second_secret = self._phone(gateway)
        accepted = [
            self.adapter.request(first_id, first_secret, gateway.now(), event="shared"),
            self.adapter.request(second_id, second_secret, gateway.now(), event="shared"),
        ]
        for request in accepted:
            assert gateway.send(request).status_code == 200
        assert_stream_holds(redis_sync, accepted)

    # -- never a 500 ----------------------------------------------------------------------

    def test_method_not_allowed(self, gateway: Gateway, redis_sync: redis.Redis) -> None:
        phone_id, secret = self._phone(gateway)
        request = self.adapter.request(phone_id, secret, gateway.now())
        request["method"] = "PUT"
        response = gateway.send(request)
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, POST"
        assert_stream_holds(redis_sync, [])
