"""Call-aware replay defence through the real HTTP app, with a settable clock.

Rules under test (docs/answers-and-forwards.md): events of a call not yet answered are
held and released after its answer (within the window) or never; after a terminal status,
answers are accepted for the window and other events for the late window; then 403.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis

from gateway.calls import CallAware
from gateway.inbound import InboundRequest
from gateway.providers import Provider
from gateway.providers.registry import CARRIERS
from gateway.providers.spec import CallEvent
from gateway.redis_keys import KeyNames
from tests.helpers.builders import (
    exotel_params,
    exotel_phone,
    exotel_request,
    new_token,
    plivo_params,
    plivo_phone,
    plivo_request,
    telnyx_event,
    telnyx_phone,
    telnyx_request,
    telnyx_seed,
    twilio_params,
    twilio_phone,
    twilio_request,
)
from tests.helpers.replies import bytes_dict, bytes_list, stream_entries
from tests.helpers.support import Clock, RunningGateway, make_settings, random_id, run_gateway, send_as_carrier

STREAM = "gateway:events"
T0 = 1_800_000_000.0
WINDOW, LATE = 60, 900


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture(scope="module")
def gw(redis_server: str, clock: Clock) -> Iterator[RunningGateway]:
    settings = make_settings(
        redis_server,
        GATEWAY_CALL_AWARE="true",
        GATEWAY_CALL_AWARE_WINDOW_S=str(WINDOW),
        GATEWAY_CALL_AWARE_LATE_S=str(LATE),
    )
    with run_gateway(settings, clock=clock) as running:
        yield running


@pytest.fixture(autouse=True)
def _reset_clock(clock: Clock, redis_url: str) -> None:
    clock.now = T0


@pytest.fixture
def phone(gw: RunningGateway) -> dict[str, Any]:
    phone = plivo_phone(random_id(), new_token())
    gw.put_phone(phone)
    return phone


def uuid() -> str:
    return f"{secrets.token_hex(4)}-0000-4000-8000-{secrets.token_hex(6)}"


def plivo(gw: RunningGateway, phone: dict[str, Any], call: str, kind: str, status: str, event: str = "StartApp") -> int:
    params = [(k, v) for k, v in plivo_params(call, status) if k != "Event"] + [("Event", event)]
    request = plivo_request(phone["credentials"]["auth_token"], phone["id"], kind=kind, params=params)
    return send_as_carrier(gw, request).status_code


def streamed(redis_sync: redis.Redis) -> list[tuple[str, str]]:
    """(kind, status or event type) of each stream entry, in order."""
    out = []
    for _, fields in stream_entries(redis_sync.xrange(STREAM)):
        event = orjson.loads(fields[b"event"])
        status = event["params"].get("CallStatus") or event["params"].get("Status")
        if status is None and event["body"]:
            status = orjson.loads(event["body"])["data"]["event_type"]
        out.append((event["kind"], status))
    return out


def metric(gw: RunningGateway, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in gw.client.get("/metrics").text.splitlines():
        if line.startswith(name + "{") and ",".join(sorted(line[len(name) + 1 : line.index("}")].split(","))) == wanted:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_answered_call_events_flow_straight_through(
    gw: RunningGateway, phone: dict[str, Any], redis_sync: redis.Redis
) -> None:
    call = uuid()
    assert plivo(gw, phone, call, "incoming", "ringing") == 200
    assert plivo(gw, phone, call, "status", "in-progress", "Ring") == 200
    assert plivo(gw, phone, call, "status", "completed", "Hangup") == 200
    assert streamed(redis_sync) == [("incoming", "ringing"), ("status", "in-progress"), ("status", "completed")]


def test_status_before_answer_is_held_then_released_in_order(
    gw: RunningGateway, phone: dict[str, Any], redis_sync: redis.Redis, clock: Clock
) -> None:
    call = uuid()
    held_before = metric(gw, "gateway_call_aware_events_total", provider="plivo", result="held")
    released_before = metric(gw, "gateway_call_aware_events_total", provider="plivo", result="released")
    assert plivo(gw, phone, call, "status", "in-progress", "Ring") == 200
    assert plivo(gw, phone, call, "status", "completed", "Hangup") == 200
    assert streamed(redis_sync) == []  # nothing reaches dispatch for a call never answered
    clock.now = T0 + WINDOW  # the answer is late but still within the window
    assert plivo(gw, phone, call, "incoming", "ringing") == 200
    assert streamed(redis_sync) == [("incoming", "ringing"), ("status", "in-progress"), ("status", "completed")]
    assert metric(gw, "gateway_call_aware_events_total", provider="plivo", result="held") == held_before + 2
    assert metric(gw, "gateway_call_aware_events_total", provider="plivo", result="released") == released_before + 2
    # the held terminal status ended the call: an answer replayed after the window is refused
    clock.now = T0 + 2 * WINDOW + 1
    assert plivo(gw, phone, call, "incoming", "in-progress", "Redirect") == 403


def test_status_of_a_call_never_answered_is_never_forwarded(
    gw: RunningGateway, phone: dict[str, Any], redis_sync: redis.Redis, clock: Clock
) -> None:
    call = uuid()
    before = metric(gw, "gateway_rejections_total", provider="plivo", reason="unknown_call")
    assert plivo(gw, phone, call, "status", "completed", "Hangup") == 200  # held: maybe just early
    clock.now = T0 + WINDOW + 1
    assert plivo(gw, phone, call, "status", "in-progress", "Ring") == 403  # not early any more
    assert metric(gw, "gateway_rejections_total", provider="plivo", reason="unknown_call") == before + 1
    assert plivo(gw, phone, call, "incoming", "ringing") == 200  # a very late answer opens the call...
    assert streamed(redis_sync) == [("incoming", "ringing")]  # ...but the stale held events stay dropped


def test_after_the_terminal_status(
    gw: RunningGateway, phone: dict[str, Any], redis_sync: redis.Redis, clock: Clock
) -> None:
    call = uuid()
    assert plivo(gw, phone, call, "incoming", "ringing") == 200
    assert plivo(gw, phone, call, "status", "completed", "Hangup") == 200
    clock.now = T0 + WINDOW  # out-of-order answer (e.g. a Redirect) within the window
    assert plivo(gw, phone, call, "incoming", "in-progress", "Redirect") == 200
    clock.now = T0 + LATE  # a late callback (recording, progress) within the late window
    assert plivo(gw, phone, call, "status", "in-progress", "Record") == 200
    before = metric(gw, "gateway_rejections_total", provider="plivo", reason="call_ended")
    clock.now = T0 + LATE + 1
    assert plivo(gw, phone, call, "status", "in-progress", "Ring") == 403
    assert plivo(gw, phone, call, "incoming", "ringing", "Transfer") == 403
    assert metric(gw, "gateway_rejections_total", provider="plivo", reason="call_ended") == before + 2
    assert [s for _, s in streamed(redis_sync)] == ["ringing", "completed", "in-progress", "in-progress"]


def test_answer_replayed_after_the_window_is_refused(
    gw: RunningGateway, phone: dict[str, Any], redis_sync: redis.Redis, clock: Clock
) -> None:
    call = uuid()
    assert plivo(gw, phone, call, "incoming", "ringing") == 200
    assert plivo(gw, phone, call, "status", "no-answer", "Hangup") == 200
    clock.now = T0 + WINDOW + 1
    assert plivo(gw, phone, call, "incoming", "in-progress", "Redirect") == 403
    assert len(streamed(redis_sync)) == 2


def test_duplicates_are_still_duplicates(
    gw: RunningGateway, phone: dict[str, Any], redis_sync: redis.Redis, clock: Clock
) -> None:
    token = new_token()
    twilio = twilio_phone(random_id(), token)
    gw.put_phone(twilio)
    sid = "CA" + secrets.token_hex(16)
    early = twilio_request(token, twilio["id"], kind="status", params=twilio_params(sid, "completed"))
    assert send_as_carrier(gw, early).status_code == 200  # held
    assert send_as_carrier(gw, early).status_code == 200  # the carrier's retry: a duplicate, not held twice
    assert (
        send_as_carrier(gw, twilio_request(token, twilio["id"], kind="incoming", params=twilio_params(sid))).status_code
        == 200
    )
    assert streamed(redis_sync) == [("incoming", "ringing"), ("status", "completed")]
    clock.now = T0 + LATE + 1
    assert send_as_carrier(gw, early).status_code == 200  # a duplicate answers 200 (never forwarded twice)
    assert len(streamed(redis_sync)) == 2


def test_strict_window_zero_refuses_unknown_calls_at_once(redis_url: str, redis_sync: redis.Redis) -> None:
    settings = make_settings(redis_url, GATEWAY_CALL_AWARE="true", GATEWAY_CALL_AWARE_WINDOW_S="0")
    with run_gateway(settings) as gw:
        phone = plivo_phone(random_id(), new_token())
        gw.put_phone(phone)
        assert plivo(gw, phone, uuid(), "status", "completed", "Hangup") == 403
    assert streamed(redis_sync) == []


def test_held_events_per_call_are_bounded(gw: RunningGateway, phone: dict[str, Any], redis_sync: redis.Redis) -> None:
    call = uuid()
    answers = [plivo(gw, phone, call, "status", "in-progress", f"Ev{i}") for i in range(17)]
    assert answers == [200] * 16 + [403]


def test_per_phone_opt_in_and_opt_out(redis_url: str, redis_sync: redis.Redis) -> None:
    with run_gateway(make_settings(redis_url)) as gw:  # GATEWAY_CALL_AWARE off
        plain = plivo_phone(random_id(), new_token())
        aware = plivo_phone(random_id(), new_token(), call_aware=True)
        gw.put_phone(plain)
        gw.put_phone(aware)
        assert plivo(gw, plain, uuid(), "status", "completed", "Hangup") == 200
        assert redis_sync.keys("*:call:*") == []  # disabled: no call state at all
        assert len(streamed(redis_sync)) == 1
        assert plivo(gw, aware, uuid(), "status", "completed", "Hangup") == 200  # held
        assert len(streamed(redis_sync)) == 1
    settings = make_settings(redis_url, GATEWAY_CALL_AWARE="true", GATEWAY_CALL_AWARE_WINDOW_S="0")
    with run_gateway(settings) as gw:
        opted_out = plivo_phone(random_id(), new_token(), call_aware=False)
        gw.put_phone(opted_out)
        assert plivo(gw, opted_out, uuid(), "status", "completed", "Hangup") == 200
        assert len(streamed(redis_sync)) == 2


def test_timeline_is_recorded_with_a_ttl(gw: RunningGateway, phone: dict[str, Any], redis_sync: redis.Redis) -> None:
    call = uuid()
    plivo(gw, phone, call, "status", "ringing", "Ring")
    plivo(gw, phone, call, "incoming", "ringing")
    plivo(gw, phone, call, "status", "completed", "Hangup")
    key = CallAware(KeyNames(), enabled=True, window_s=WINDOW, late_s=LATE, ttl_s=86_400).key(phone["id"], call)
    assert key.startswith("{gateway:events}:call:")  # the stream's slot: joins the forwarder's script
    state = {k.decode(): v.decode() for k, v in bytes_dict(redis_sync.hgetall(key)).items()}
    assert state == {"answered": repr(T0), "ended": repr(T0), "end_status": "completed"}
    timeline = [entry.decode().split(" ") for entry in bytes_list(redis_sync.lrange(key + ":timeline", 0, -1))]
    assert [(phase, status, result) for _, phase, status, result in timeline] == [
        ("s", "ringing", "held"),
        ("a", "ringing", "forwarded+1"),
        ("e", "completed", "forwarded+0"),
    ]
    assert 0 < redis_sync.ttl(key) <= 86_400 and 0 < redis_sync.ttl(key + ":timeline") <= 86_400
    assert not redis_sync.exists(key + ":held")
    assert call not in str(redis_sync.keys("*"))  # call ids are hashed in key names


def test_telnyx_out_of_order_hangup_before_initiated(gw: RunningGateway, redis_sync: redis.Redis, clock: Clock) -> None:
    seed = telnyx_seed()
    phone = telnyx_phone(random_id(), seed)
    gw.put_phone(phone)
    initiated = telnyx_event(event_type="call.initiated")
    leg = initiated["data"]["payload"]
    answered = telnyx_event(event_type="call.answered")
    hangup = telnyx_event(event_type="call.hangup")
    for later in (answered, hangup):
        later["data"]["payload"].update({k: leg[k] for k in ("call_leg_id", "call_control_id", "call_session_id")})

    def send(document: dict[str, Any]) -> int:
        return send_as_carrier(gw, telnyx_request(seed, phone["id"], now=clock(), body=document)).status_code

    assert send(hangup) == 200
    assert send(answered) == 200
    assert streamed(redis_sync) == []
    assert send(initiated) == 200
    assert [s for _, s in streamed(redis_sync)] == ["call.initiated", "call.hangup", "call.answered"]
    clock.now = T0 + LATE + 1
    recording = telnyx_event(event_type="call.recording.saved")
    recording["data"]["payload"].update({k: leg[k] for k in ("call_leg_id", "call_control_id")})
    assert send(recording) == 403


def test_exotel_terminal_status(gw: RunningGateway, redis_sync: redis.Redis, clock: Clock) -> None:
    phone = exotel_phone(random_id())
    gw.put_phone(phone)
    sid = secrets.token_hex(16)
    passthru = exotel_request(
        phone["id"], kind="incoming", method="GET", params=[("CallSid", sid), ("CallFrom", "0987")]
    )
    assert send_as_carrier(gw, passthru).status_code == 200
    assert send_as_carrier(gw, exotel_request(phone["id"], params=exotel_params(sid, "busy"))).status_code == 200
    clock.now = T0 + LATE + 1
    late = exotel_request(phone["id"], params=[*exotel_params(sid, "completed"), ("EventType", "terminal")])
    assert send_as_carrier(gw, late).status_code == 403
    assert len(streamed(redis_sync)) == 2


def _inbound(query: str = "", body: bytes = b"", content_type: str = "") -> InboundRequest:
    headers = {"content-type": content_type} if content_type else {}
    return InboundRequest("POST", "https", "hooks.example.com", "/x", query, headers, body, "192.0.2.1")


def classify(provider: Provider, kind: str, inbound: InboundRequest) -> CallEvent | None:
    return CARRIERS[provider].call_event(inbound, kind)


@pytest.mark.parametrize(
    ("provider", "kind", "query", "phase", "status"),
    [
        (Provider.TWILIO, "incoming", "CallSid=CA1&CallStatus=ringing", "a", "ringing"),
        (Provider.TWILIO, "status", "CallSid=CA1&CallStatus=no-answer", "e", "no-answer"),
        (Provider.TWILIO, "status", "CallSid=CA1&CallStatus=canceled", "e", "canceled"),
        (Provider.TWILIO, "status", "CallSid=CA1&CallStatus=in-progress", "s", "in-progress"),
        (Provider.TWILIO, "status", "CallSid=CA1&RecordingStatus=completed", "s", "-"),
        (Provider.PLIVO, "status", "CallUUID=u1&CallStatus=cancel", "e", "cancel"),
        (Provider.PLIVO, "status", "CallUUID=u1&CallStatus=timeout", "e", "timeout"),
        (Provider.VOBIZ, "status", "CallUUID=u1&CallStatus=failed", "e", "failed"),
        (Provider.EXOTEL, "status", "CallSid=e1&Status=no-answer", "e", "no-answer"),
        (Provider.EXOTEL, "status", "CallSid=e1&EventType=answered", "s", "-"),
        (Provider.EXOTEL, "status", "CallSid=e1&EventType=terminal", "e", "-"),
    ],
)
def test_classification(provider: Provider, kind: str, query: str, phase: str, status: str) -> None:
    event = classify(provider, kind, _inbound(query))
    assert event is not None and (event.phase, event.status) == (phase, status)


def test_classification_without_a_call_id() -> None:
    assert classify(Provider.TWILIO, "status", _inbound("CallStatus=completed")) is None
    assert classify(Provider.TELNYX, "voice", _inbound(body=b"[]")) is None
    body = orjson.dumps({"data": {"event_type": "call.hangup", "payload": {"call_control_id": "v3:x"}}})
    event = classify(Provider.TELNYX, "voice", _inbound(body=body))
    assert event is not None and (event.call_id, event.phase) == ("v3:x", "e")


def test_one_batch_mixes_events_with_and_without_call_checks(
    redis_url: str, redis_sync: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit puts events of call-aware and other phones into one script call."""
    import asyncio

    from redis.asyncio import Redis

    from gateway.forwarder import CallCheck, Forwarder, Outcome, _Pending

    names = KeyNames()
    calls = CallAware(names, enabled=True, window_s=WINDOW, late_s=LATE, ttl_s=86_400)

    def check(call: str, kind: str, status: str) -> CallCheck | None:
        from gateway.providers import PhoneCredentials

        creds = PhoneCredentials("ph_mix", Provider.TWILIO, {})
        return calls.check(Provider.TWILIO, kind, creds, _inbound(f"CallSid={call}&CallStatus={status}"), T0)

    sizes: list[int] = []

    async def run() -> list[tuple[Outcome, str]]:
        client = Redis.from_url(redis_url)
        forwarder = Forwarder(client, names, nonce_ttl_s=60, idempotency_ttl_s=60)
        command = forwarder._command

        def counting(batch: list[_Pending]) -> list[Any]:
            sizes.append(len(batch))
            return command(batch)

        monkeypatch.setattr(forwarder, "_command", counting)
        forwarder.start()
        try:
            pending = [
                forwarder.forward("ph_mix", b'{"n":1}', nonce=None, idempotency_key="k1"),
                forwarder.forward(
                    "ph_mix", b'{"n":2}', nonce=None, idempotency_key="k2", call=check("CA1", "status", "completed")
                ),
                forwarder.forward("ph_plain", b'{"n":3}', nonce="n3", idempotency_key=None),
                forwarder.forward(
                    "ph_mix", b'{"n":4}', nonce=None, idempotency_key="k4", call=check("CA1", "incoming", "ringing")
                ),
                forwarder.forward(
                    "ph_mix", b'{"n":5}', nonce=None, idempotency_key="k5", call=check("CA9", "status", "x")
                ),
            ]
            return list(await asyncio.gather(*pending))
        finally:
            await forwarder.stop()
            await client.aclose()

    results = asyncio.run(run())
    assert sizes == [5]  # one script call for the whole mixed batch
    assert [outcome for outcome, _ in results] == [
        Outcome.FORWARDED,
        Outcome.HELD,
        Outcome.FORWARDED,
        Outcome.FORWARDED,
        Outcome.HELD,
    ]
    bodies = [fields[b"event"] for _, fields in stream_entries(redis_sync.xrange(STREAM))]
    assert bodies == [b'{"n":1}', b'{"n":3}', b'{"n":4}', b'{"n":2}']  # the held one right after its answer
