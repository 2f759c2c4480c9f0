"""Answer modes for `incoming` routes, through the real app and a real local dispatch HTTP server.

template: the gateway answers itself (with a capability token for the media stream);
proxy: dispatch answers within the budget, else the fallback — and the event is in the
stream before dispatch is even asked. Proxied requests carry Standard Webhooks headers.
"""

from __future__ import annotations

import logging
import re
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import orjson
import pytest
import redis

from gateway import standard_webhooks as sw
from gateway.answers import Answerer
from gateway.capability import InvalidToken, verify_token
from gateway.embedded_redis import free_port
from gateway.providers.plivo import HANGUP as PLIVO_HANGUP
from gateway.providers.twilio import HANGUP as TWILIO_HANGUP
from gateway.settings import SettingsError, from_env
from tests.helpers.builders import (
    exotel_passthru_params,
    exotel_phone,
    exotel_request,
    new_token,
    plivo_params,
    plivo_phone,
    plivo_request,
    twilio_params,
    twilio_phone,
    twilio_request,
)
from tests.helpers.replies import stream_entries
from tests.helpers.support import KEK, RunningGateway, make_settings, random_id, run_gateway, send_as_carrier

STREAM = "gateway:events"
SIGNING_KEY = sw.generate_key()
CAPABILITY_KEY = "c" * 64  # 32 bytes as hex
BUDGET_S = "0.3"
REPO = Path(__file__).resolve().parent.parent

# ---- a real dispatch service in a thread ----------------------------------------------------


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    in_stream_first: bool  # the event was already in the stream when dispatch was asked


@dataclass
class Dispatch:
    redis_url: str
    status: int = 200
    body: bytes = b'<?xml version="1.0" encoding="UTF-8"?><Response><Speak>From dispatch</Speak></Response>'
    content_type: str | None = "text/xml; charset=utf-8"
    block: bool = False  # hold the answer until `release` is set (a dispatch slower than any budget)
    release: threading.Event = field(default_factory=threading.Event)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/calls/answer"

    def reset(self) -> None:
        self.status, self.block, self.content_type = 200, False, "text/xml; charset=utf-8"
        self.body = Dispatch.body
        self.release = threading.Event()
        self.seen.clear()


def _in_stream(redis_url: str, event_id: str) -> bool:
    client = redis.Redis.from_url(redis_url)
    try:
        return any(
            orjson.loads(fields[b"event"])["id"] == event_id for _, fields in stream_entries(client.xrange(STREAM))
        )
    finally:
        client.close()


def _handler(state: Dispatch) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the gateway's pool reuses connections

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            event_id = orjson.loads(body)["id"]
            state.seen.append(
                Seen(
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    _in_stream(state.redis_url, event_id),
                )
            )
            if state.block:
                state.release.wait(20)
            self.send_response(state.status)
            if state.content_type is not None:
                self.send_header("content-type", state.content_type)
            self.send_header("content-length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def dispatch(redis_server: str) -> Iterator[Dispatch]:
    state = Dispatch(redis_server)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def gw(redis_server: str, dispatch: Dispatch) -> Iterator[RunningGateway]:
    settings = make_settings(
        redis_server,
        GATEWAY_ANSWER_MODE="proxy",
        GATEWAY_DISPATCH_URL=dispatch.url,
        GATEWAY_DISPATCH_TIMEOUT_S=BUDGET_S,
        GATEWAY_FORWARD_SIGNING_KEY=SIGNING_KEY,
        GATEWAY_CAPABILITY_KEY=CAPABILITY_KEY,
    )
    with run_gateway(settings) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(dispatch: Dispatch, redis_url: str) -> Iterator[None]:
    dispatch.reset()
    yield
    dispatch.release.set()


def plivo_proxy_phone(gw: RunningGateway, **config: Any) -> dict[str, Any]:
    phone = plivo_phone(random_id(), new_token(), **config)
    gw.put_phone(phone)
    return phone


def token_of(phone: dict[str, Any]) -> str:
    return str(phone["credentials"]["auth_token"])


def stream_events(redis_sync: redis.Redis) -> list[dict[str, Any]]:
    return [orjson.loads(fields[b"event"]) for _, fields in stream_entries(redis_sync.xrange(STREAM))]


def metric(gw: RunningGateway, name: str, **labels: str) -> float:
    text = gw.client.get("/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[len(name) + 1 : line.index("}")].split(",")))
            if got == wanted:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---- template mode --------------------------------------------------------------------------


def test_template_renders_a_capability_token_the_agent_can_verify(gw: RunningGateway, dispatch: Dispatch) -> None:
    template = '<Response><Stream bidirectional="true">wss://agent.example.com/media/$phone_id?token=$stream_token</Stream></Response>'
    phone = plivo_proxy_phone(gw, answer_mode="template", answer_template=template)
    call_uuid = "0f6d6a2c-4a4e-4bd8-9a3e-1c2d3e4f5a6b"
    request = plivo_request(token_of(phone), phone["id"], kind="incoming", params=plivo_params(call_uuid))
    response = send_as_carrier(gw, request)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    match = re.search(rb"\?token=([A-Za-z0-9._-]+)</Stream>", response.content)
    assert match, response.content
    assert verify_token(CAPABILITY_KEY, match.group(1).decode(), call_uuid, phone["id"]) > 0
    with pytest.raises(InvalidToken):  # bound to the call: another call's stream cannot use it
        verify_token(CAPABILITY_KEY, match.group(1).decode(), call_uuid + "x", phone["id"])
    assert dispatch.seen == []  # template mode never asks dispatch


def test_twilio_template_escapes_for_attributes(gw: RunningGateway, dispatch: Dispatch) -> None:
    template = (
        '<Response><Connect><Stream url="wss://agent.example.com/m">'
        '<Parameter name="call" value="$call_id"/><Parameter name="token" value="$stream_token"/>'
        "</Stream></Connect></Response>"
    )
    token = new_token()
    phone = twilio_phone(random_id(), token, answer_mode="template", answer_template=template)
    gw.put_phone(phone)
    params = twilio_params('CA"><Hangup/><x a="')
    response = send_as_carrier(gw, twilio_request(token, phone["id"], kind="incoming", params=params))
    assert response.status_code == 200
    assert b"<Hangup/>" not in response.content
    assert b'value="CA&quot;&gt;&lt;Hangup/&gt;&lt;x a=&quot;"' in response.content
    match = re.search(rb'name="token" value="([^"]+)"', response.content)
    assert match and verify_token(CAPABILITY_KEY, match.group(1).decode(), 'CA"><Hangup/><x a="', phone["id"])


def test_without_capability_key_the_token_is_empty_and_startup_warns(redis_url: str) -> None:
    template = "<Response><Stream>wss://agent.example.com/m?token=$stream_token&amp;x=$nope</Stream></Response>"
    settings = make_settings(redis_url, GATEWAY_PLIVO_ANSWER_TEMPLATE=template)
    warnings = Answerer(settings).warnings
    assert any("GATEWAY_PLIVO_ANSWER_TEMPLATE" in w and "$stream_token" in w for w in warnings)
    assert any("nope" in w for w in warnings)  # unknown variables are reported too
    assert Answerer(make_settings(redis_url, GATEWAY_CAPABILITY_KEY=CAPABILITY_KEY)).warnings == []
    with run_gateway(settings) as gw:
        phone = plivo_phone(random_id(), new_token())
        gw.put_phone(phone)
        response = send_as_carrier(gw, plivo_request(token_of(phone), phone["id"], kind="incoming"))
    assert response.status_code == 200
    assert b"?token=&amp;x=$nope</Stream>" in response.content


def test_exotel_template_mode_is_a_plain_200(gw: RunningGateway, dispatch: Dispatch) -> None:
    phone = exotel_phone(random_id(), answer_mode="template")
    gw.put_phone(phone)
    response = send_as_carrier(gw, exotel_request(phone["id"], kind="incoming", method="GET"))
    assert (response.status_code, response.content) == (200, b"")
    assert dispatch.seen == []


# ---- proxy mode -----------------------------------------------------------------------------


def test_proxy_relays_dispatch_answer_and_the_event_was_in_the_stream_first(
    gw: RunningGateway, dispatch: Dispatch, redis_sync: redis.Redis
) -> None:
    phone = plivo_proxy_phone(gw)
    before = metric(gw, "gateway_answers_total", provider="plivo", result="proxied")
    response = send_as_carrier(gw, plivo_request(token_of(phone), phone["id"], kind="incoming"))
    assert response.status_code == 200
    assert response.content == dispatch.body
    assert response.headers["content-type"] == "text/xml; charset=utf-8"
    assert len(dispatch.seen) == 1
    seen = dispatch.seen[0]
    assert seen.path == "/calls/answer"
    assert seen.in_stream_first
    events = stream_events(redis_sync)
    assert len(events) == 1
    assert orjson.loads(seen.body) == events[0]  # the very envelope the stream holds
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["webhook-id"] == events[0]["idempotency_key"]
    assert metric(gw, "gateway_answers_total", provider="plivo", result="proxied") == before + 1


def test_proxied_request_signature_verifies(gw: RunningGateway, dispatch: Dispatch) -> None:
    phone = plivo_proxy_phone(gw)
    send_as_carrier(gw, plivo_request(token_of(phone), phone["id"], kind="incoming"))
    seen = dispatch.seen[0]
    sw.verify(SIGNING_KEY, seen.body, seen.headers)
    with pytest.raises(sw.WebhookVerificationError):
        sw.verify(SIGNING_KEY, seen.body + b" ", seen.headers)
    with pytest.raises(sw.WebhookVerificationError):
        sw.verify(sw.generate_key(), seen.body, seen.headers)


def test_proxied_request_verifies_with_the_reference_library(gw: RunningGateway, dispatch: Dispatch) -> None:
    standardwebhooks = pytest.importorskip("standardwebhooks")
    phone = plivo_proxy_phone(gw)
    send_as_carrier(gw, plivo_request(token_of(phone), phone["id"], kind="incoming"))
    seen = dispatch.seen[0]
    webhook = standardwebhooks.Webhook(SIGNING_KEY)
    assert webhook.verify(seen.body, seen.headers)["phone_id"] == phone["id"]
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        webhook.verify(seen.body.replace(b'"incoming"', b'"status"'), seen.headers)


def test_docs_verification_snippet_accepts_ours_and_refuses_tampering(gw: RunningGateway, dispatch: Dispatch) -> None:
    doc = (REPO / "docs" / "answers-and-forwards.md").read_text(encoding="utf-8")
    snippet = re.search(r"<!-- verify-snippet -->\s*```python\n(.*?)```", doc, re.S)
    assert snippet, "docs/answers-and-forwards.md lost its verification snippet"
    namespace: dict[str, Any] = {}
    exec(compile(snippet.group(1), "docs-snippet", "exec"), namespace)  # noqa: S102 - our own documentation
    verify = namespace["verify_gateway_request"]
    phone = plivo_proxy_phone(gw)
    send_as_carrier(gw, plivo_request(token_of(phone), phone["id"], kind="incoming"))
    seen = dispatch.seen[0]
    assert verify(SIGNING_KEY, seen.body, seen.headers) == seen.headers["webhook-id"]
    for secret, body, headers in (
        (SIGNING_KEY, seen.body + b"\n", seen.headers),
        (sw.generate_key(), seen.body, seen.headers),
        (SIGNING_KEY, seen.body, {**seen.headers, "webhook-id": "evt_other"}),
        (SIGNING_KEY, seen.body, {**seen.headers, "webhook-timestamp": "1000000000"}),
        (SIGNING_KEY, seen.body, {k: v for k, v in seen.headers.items() if k != "webhook-signature"}),
        (SIGNING_KEY, seen.body, {**seen.headers, "webhook-signature": "v1,é"}),
    ):
        with pytest.raises(ValueError):
            verify(secret, body, headers)


def test_slow_dispatch_gets_the_fallback_within_the_budget_and_the_event_is_kept(
    gw: RunningGateway, dispatch: Dispatch, redis_sync: redis.Redis
) -> None:
    """Dispatch holds its answer until the test releases it: the carrier's answer can only have
    come from the gateway's own budget (no timing threshold needed)."""
    phone = plivo_proxy_phone(gw)
    dispatch.block = True
    before = metric(gw, "gateway_answers_total", provider="plivo", result="timeout")
    response = send_as_carrier(gw, plivo_request(token_of(phone), phone["id"], kind="incoming"))
    assert not dispatch.release.is_set()  # dispatch still has not answered
    assert response.status_code == 200
    assert response.content == PLIVO_HANGUP.encode()
    assert len(stream_events(redis_sync)) == 1
    assert dispatch.seen[0].in_stream_first
    assert metric(gw, "gateway_answers_total", provider="plivo", result="timeout") == before + 1


@pytest.mark.parametrize(("status", "result"), [(500, "bad_status"), (503, "bad_status"), (404, "bad_status")])
def test_dispatch_error_status_gets_the_fallback(
    gw: RunningGateway, dispatch: Dispatch, redis_sync: redis.Redis, status: int, result: str
) -> None:
    token = new_token()
    phone = twilio_phone(random_id(), token)
    gw.put_phone(phone)
    dispatch.status, dispatch.body = status, b"<Response><Say>leaked error page</Say></Response>"
    before = metric(gw, "gateway_answers_total", provider="twilio", result=result)
    response = send_as_carrier(gw, twilio_request(token, phone["id"], kind="incoming"))
    assert (response.status_code, response.content) == (200, TWILIO_HANGUP.encode())
    assert len(stream_events(redis_sync)) == 1
    assert metric(gw, "gateway_answers_total", provider="twilio", result=result) == before + 1


def test_oversized_or_redirecting_dispatch_answer_gets_the_fallback(gw: RunningGateway, dispatch: Dispatch) -> None:
    phone = plivo_proxy_phone(gw)
    dispatch.body = b"<Response>" + b" " * (101 * 1024) + b"</Response>"
    response = send_as_carrier(gw, plivo_request(token_of(phone), phone["id"], kind="incoming"))
    assert response.content == PLIVO_HANGUP.encode()
    dispatch.status, dispatch.body = 302, b""  # a redirect means nothing to Plivo: never relayed, never followed
    response = send_as_carrier(gw, plivo_request(token_of(phone), phone["id"], kind="incoming"))
    assert (response.status_code, response.content) == (200, PLIVO_HANGUP.encode())
    assert len(dispatch.seen) == 2


def test_dispatch_down_gets_the_fallback(redis_url: str, redis_sync: redis.Redis) -> None:
    settings = make_settings(
        redis_url,
        GATEWAY_ANSWER_MODE="proxy",
        GATEWAY_DISPATCH_URL=f"http://127.0.0.1:{free_port()}/answer",  # nothing listens
        GATEWAY_FORWARD_SIGNING_KEY=SIGNING_KEY,
        GATEWAY_DISPATCH_TIMEOUT_S=BUDGET_S,
    )
    with run_gateway(settings) as gw:
        phone = plivo_proxy_phone(gw)
        before = metric(gw, "gateway_answers_total", provider="plivo", result="error")
        response = send_as_carrier(gw, plivo_request(token_of(phone), phone["id"], kind="incoming"))
        assert (response.status_code, response.content) == (200, PLIVO_HANGUP.encode())
        assert metric(gw, "gateway_answers_total", provider="plivo", result="error") == before + 1
        exotel = exotel_phone(random_id())
        gw.put_phone(exotel)
        response = send_as_carrier(gw, exotel_request(exotel["id"], kind="incoming", method="GET"))
        assert (response.status_code, response.content) == (302, b"")  # Passthru's second branch
    assert len(stream_events(redis_sync)) == 2


def test_exotel_passthru_branch_is_relayed(gw: RunningGateway, dispatch: Dispatch) -> None:
    phone = exotel_phone(random_id())
    gw.put_phone(phone)
    dispatch.status, dispatch.body, dispatch.content_type = 302, b"", None
    response = send_as_carrier(gw, exotel_request(phone["id"], kind="incoming", method="GET"))
    assert response.status_code == 302
    dispatch.status = 200
    params = exotel_passthru_params()
    response = send_as_carrier(gw, exotel_request(phone["id"], kind="incoming", method="GET", params=params))
    assert response.status_code == 200
    assert orjson.loads(dispatch.seen[-1].body)["params"]["CallSid"] == params[0][1]


def test_status_callbacks_are_never_proxied(gw: RunningGateway, dispatch: Dispatch, redis_sync: redis.Redis) -> None:
    phone = plivo_proxy_phone(gw)
    response = send_as_carrier(gw, plivo_request(token_of(phone), phone["id"], kind="status"))
    assert (response.status_code, response.content) == (200, b"")
    assert dispatch.seen == []
    assert len(stream_events(redis_sync)) == 1


def test_carrier_retry_is_proxied_again_but_streamed_once(
    gw: RunningGateway, dispatch: Dispatch, redis_sync: redis.Redis
) -> None:
    token = new_token()
    phone = twilio_phone(random_id(), token)
    gw.put_phone(phone)
    request = twilio_request(token, phone["id"], kind="incoming")
    first = send_as_carrier(gw, request)
    again = send_as_carrier(gw, request)  # Twilio retried after its own timeout
    assert first.content == again.content == dispatch.body
    assert len(stream_events(redis_sync)) == 1
    assert [s.headers["webhook-id"] for s in dispatch.seen] == [stream_events(redis_sync)[0]["idempotency_key"]] * 2
    # The retry is marked as the duplicate of the entry already in the stream (issue 14 item 1);
    # the first request is not.
    (entry_id, _fields), *_ = stream_entries(redis_sync.xrange(STREAM))
    assert [s.headers.get("gateway-duplicate-of") for s in dispatch.seen] == [None, entry_id.decode()]


def test_hold_fallback_redirects_back_a_bounded_number_of_times(redis_url: str, dispatch: Dispatch) -> None:
    settings = make_settings(
        redis_url,
        GATEWAY_ANSWER_MODE="proxy",
        GATEWAY_ANSWER_FALLBACK="hold",
        GATEWAY_ANSWER_HOLD_ROUNDS="2",
        GATEWAY_DISPATCH_URL=dispatch.url,
        GATEWAY_DISPATCH_TIMEOUT_S=BUDGET_S,
        GATEWAY_FORWARD_SIGNING_KEY=SIGNING_KEY,
    )
    dispatch.status = 503
    with run_gateway(settings) as gw:
        phone = plivo_proxy_phone(gw)
        call_uuid = "7c0a5e4e-0000-4000-8000-000000000001"
        url = ""  # no redirect yet
        for expected_round in (1, 2):
            query = urlsplit(url).query if url else "a=1&b=%2F"
            request = plivo_request(
                token_of(phone), phone["id"], kind="incoming", params=plivo_params(call_uuid), query=query
            )
            response = send_as_carrier(gw, request)
            match = re.search(rb'<Redirect method="POST">([^<]+)</Redirect>', response.content)
            assert match, response.content
            url = match.group(1).decode().replace("&amp;", "&")
            assert url.startswith(f"https://hooks.example.com/plivo/incoming/{phone['id']}?a=1&b=%2F&gw_hold=")
            assert dict(parse_qsl(urlsplit(url).query))["gw_hold"] == str(expected_round)
        request = plivo_request(
            token_of(phone), phone["id"], kind="incoming", params=plivo_params(call_uuid), query=urlsplit(url).query
        )
        assert send_as_carrier(gw, request).content == PLIVO_HANGUP.encode()  # held long enough


def test_per_phone_fallback_template(gw: RunningGateway, dispatch: Dispatch) -> None:
    phone = plivo_proxy_phone(gw, fallback_template="<Response><Speak>Busy, $call_id</Speak></Response>")
    dispatch.status = 500
    params = plivo_params("call&1")
    response = send_as_carrier(gw, plivo_request(token_of(phone), phone["id"], kind="incoming", params=params))
    assert response.content == b"<Response><Speak>Busy, call&amp;1</Speak></Response>"


def test_pool_reuses_connections(gw: RunningGateway, dispatch: Dispatch) -> None:
    phone = plivo_proxy_phone(gw)
    for _ in range(3):
        assert send_as_carrier(gw, plivo_request(token_of(phone), phone["id"], kind="incoming")).status_code == 200
    assert len(dispatch.seen) == 3


# ---- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"GATEWAY_ANSWER_MODE": "proxy"}, "GATEWAY_DISPATCH_URL"),
        ({"GATEWAY_TWILIO_ANSWER_MODE": "proxy"}, "GATEWAY_DISPATCH_URL"),
        ({"GATEWAY_DISPATCH_URL": "https://dispatch.example.com/a"}, "GATEWAY_FORWARD_SIGNING_KEY"),
        ({"GATEWAY_ANSWER_MODE": "maybe"}, "GATEWAY_ANSWER_MODE"),
        ({"GATEWAY_EXOTEL_ANSWER_MODE": "relay"}, "GATEWAY_EXOTEL_ANSWER_MODE"),
        ({"GATEWAY_DISPATCH_URL": "ftp://dispatch.example.com"}, "GATEWAY_DISPATCH_URL"),
        ({"GATEWAY_DISPATCH_URL": "https://user:pw@dispatch.example.com/"}, "GATEWAY_DISPATCH_URL"),
        ({"GATEWAY_DISPATCH_TIMEOUT_S": "15"}, "GATEWAY_DISPATCH_TIMEOUT_S"),
        ({"GATEWAY_DISPATCH_TIMEOUT_S": "0"}, "GATEWAY_DISPATCH_TIMEOUT_S"),
        ({"GATEWAY_FORWARD_SIGNING_KEY": "whsec_c2hvcnQ="}, "GATEWAY_FORWARD_SIGNING_KEY"),
        ({"GATEWAY_CAPABILITY_KEY": "short"}, "GATEWAY_CAPABILITY_KEY"),
        ({"GATEWAY_ANSWER_FALLBACK": "music"}, "GATEWAY_ANSWER_FALLBACK"),
        ({"GATEWAY_EXOTEL_FALLBACK_STATUS": "204"}, "GATEWAY_EXOTEL_FALLBACK_STATUS"),
    ],
)
def test_invalid_settings_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle) as excinfo:
        from_env({"GATEWAY_KEK": KEK, **env}, toml_path=None)
    assert "c2hvcnQ" not in str(excinfo.value)


def test_settings_defaults_and_overrides() -> None:
    settings = from_env(
        {
            "GATEWAY_KEK": KEK,
            "GATEWAY_ANSWER_MODE": "proxy",
            "GATEWAY_EXOTEL_ANSWER_MODE": "template",
            "GATEWAY_DISPATCH_URL": "https://dispatch.example.com/answer",
            "GATEWAY_FORWARD_SIGNING_KEY": f"{SIGNING_KEY}, {sw.generate_key()}",
        },
        toml_path=None,
    )
    assert [settings.answer_mode_for(p) for p in ("plivo", "vobiz", "twilio", "exotel")] == [
        "proxy",
        "proxy",
        "proxy",
        "template",
    ]
    assert settings.dispatch_timeout_s == 2.0
    assert len(settings.forward_signing_key_bytes()) == 2
    assert SIGNING_KEY not in repr(settings.forward_signing_keys)
    assert from_env({"GATEWAY_KEK": KEK}, toml_path=None).answer_mode_for("twilio") == "template"


@pytest.mark.parametrize(
    ("config", "status"),
    [
        ({"answer_mode": "proxy"}, 201),
        ({"answer_mode": "relay"}, 422),
        ({"fallback_template": 7}, 422),
        ({"call_aware": "yes"}, 422),
        ({"call_aware": True}, 201),
    ],
)
def test_phone_config_is_validated(gw: RunningGateway, config: dict[str, Any], status: int) -> None:
    phone = plivo_phone(random_id(), new_token(), **config)
    body = {k: phone[k] for k in ("provider", "credentials", "config")}
    assert gw.admin("PUT", f"/admin/phones/{phone['id']}", body).status_code == status
    telnyx = {"provider": "telnyx", "credentials": {"public_key": "A" * 43 + "="}, "config": {"answer_mode": "proxy"}}
    assert gw.admin("PUT", f"/admin/phones/{random_id()}", telnyx).status_code == 422


def test_fallback_is_logged_without_flooding(
    redis_url: str, caplog: pytest.LogCaptureFixture, dispatch: Dispatch
) -> None:
    settings = make_settings(
        redis_url,
        GATEWAY_ANSWER_MODE="proxy",
        GATEWAY_DISPATCH_URL=dispatch.url,
        GATEWAY_DISPATCH_TIMEOUT_S=BUDGET_S,
        GATEWAY_FORWARD_SIGNING_KEY=SIGNING_KEY,
    )
    dispatch.status = 500
    with caplog.at_level(logging.WARNING, logger="gateway.answers"), run_gateway(settings) as gw:
        phone = plivo_proxy_phone(gw)
        for _ in range(3):
            send_as_carrier(gw, plivo_request(token_of(phone), phone["id"], kind="incoming"))
    warnings = [r for r in caplog.records if r.name == "gateway.answers"]
    assert len(warnings) == 1
    assert "bad_status" in warnings[0].getMessage()
    assert SIGNING_KEY not in caplog.text and token_of(phone) not in caplog.text


def test_dispatch_client_refuses_to_send_unsigned() -> None:
    from gateway.dispatch import DispatchClient

    with pytest.raises(ValueError):
        DispatchClient("http://127.0.0.1:9/", (), timeout_s=1.0, max_connections=1)


def test_httpx_is_a_main_dependency() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "httpx>=0.27" in project["dependencies"]  # the gateway itself imports it (gateway/dispatch.py)
    assert httpx.__version__


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain",
        "$call_id",
        "a$call_id$phone_id b",
        "${call_id}x ${phone_id}",
        "$$call_id costs $$5",
        "$unknown and ${unknown} stay",
        "$ alone, $1 digit, trailing $",
        "<R a='$call_id' b=\"$phone_id\">$stream_token$method$answer_url</R>",
    ],
)
def test_compiled_templates_render_like_safe_substitute(text: str) -> None:
    from string import Template

    from gateway.answers import compile_template

    values = {
        "call_id": "c<&>1",
        "phone_id": "p1",
        "stream_token": "v1.1.x",
        "method": "POST",
        "answer_url": "https://h.example.com/?a=1",
    }
    compiled = compile_template(text, xml=False)
    assert compiled.render(values).decode() == Template(text).safe_substitute(values)
