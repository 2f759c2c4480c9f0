"""Hostile input: never a 500, never a traceback, never a hang, never an accepted forgery.

Two layers, each with a quick default run and a long `fuzz`-marked run
(`python -m pytest -m fuzz tests/test_hostile_input.py`):

1. every verifier directly (pure functions): random and garbled requests, verified
   against credentials the attacker does not hold, raise `Rejected` and nothing else;
   validly signed but hostile content (thousands of fields, invalid percent-encoding,
   non-UTF-8, JSON bombs) is accepted or rejected, never crashes the steps after
   verification (idempotency key, event building); a genuine signature moved onto
   other content is refused;
2. the real HTTP path through a real uvicorn socket (httptools, as `gateway serve`
   runs, and h11): raw bytes on the wire, garbled and duplicated headers, huge headers,
   invalid percent-encoding, non-UTF-8 bodies, wrong content types, JSON bombs on the
   Telnyx number route, forms with thousands of fields. Every answer is a 4xx (or 503,
   never here), has no traceback, comes within the client timeout, and nothing reaches
   the stream.

The coverage-guided counterpart is fuzz/verifiers_fuzz.py (atheris).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import quote, urlencode

import pytest
import redis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey, VerifyKey

from gateway.errors import Reason, Rejected
from gateway.events import build_event
from gateway.http_protocol import EdgeHttpToolsProtocol
from gateway.inbound import MAX_FORM_FIELDS, InboundRequest, parse_pairs
from gateway.providers import (
    Key,
    KeyKind,
    PhoneCredentials,
    Provider,
    Verifier,
    plivo,
    telnyx,
    twilio,
    vobiz,
)
from gateway.providers.allowlist import Allowlist
from gateway.providers.exotel import ExotelVerifier
from gateway.providers.plivo import PlivoVerifier
from gateway.providers.registry import CARRIERS as SPECS
from gateway.providers.telnyx import TelnyxVerifier
from gateway.providers.twilio import TwilioVerifier
from tests.helpers.support import RunningGateway, make_settings, run_gateway, spawn_gateway

NOW = 1_795_000_000.0
STREAM = "gateway:events"
HOST = "hooks.example.com"

# Examples per property: quick in the default run, many more under `-m fuzz`.
QUICK, LONG = 60, 4000
PROFILES = [pytest.param(QUICK, id="quick"), pytest.param(LONG, id="long", marks=pytest.mark.fuzz)]
HTTP_PROFILES = [pytest.param(40, id="quick"), pytest.param(2000, id="long", marks=pytest.mark.fuzz)]


class _Settings(TypedDict):
    """The hypothesis settings every property here shares (with its own max_examples)."""

    deadline: None
    suppress_health_check: list[HealthCheck]
    derandomize: bool


SETTINGS: _Settings = {"deadline": None, "suppress_health_check": list(HealthCheck), "derandomize": False}


def run(examples: int, test: Callable[..., None], **strategies: st.SearchStrategy[Any]) -> None:
    given(**strategies)(settings(max_examples=examples, **SETTINGS)(test))()


# ---- strategies -----------------------------------------------------------------------------

# What the edge hands a verifier: latin-1 text of arbitrary wire bytes.
latin1 = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=80)
unicode_text = st.text(max_size=40)  # any code point, surrogates included
escapes = st.sampled_from(
    ["%", "%%", "%zz", "%f", "%ff", "%c3%28", "%00", "%e2%82", "%E2%82%AC", "%ed%a0%80", "+", "&", "=", ";", "#", "?"]
)
names = st.sampled_from(["CallUUID", "CallSid", "CallStatus", "Status", "token", "bodySHA256", "Event", "a", ""])
wire_text = st.lists(st.one_of(latin1, escapes, names), max_size=24).map("".join)

SIGNATURE_HEADERS = (
    "x-plivo-signature-v3",
    "x-plivo-signature-ma-v3",
    "x-plivo-signature-v3-nonce",
    "x-plivo-signature-v2",
    "x-vobiz-signature-v3",
    "x-vobiz-signature-ma-v3",
    "x-vobiz-signature-v3-nonce",
    "x-twilio-signature",
    "x-twilio-webhooks-signature-settings",
    "telnyx-signature-ed25519",
    "telnyx-timestamp",
)
CONTENT_TYPES = (
    "application/x-www-form-urlencoded",
    "APPLICATION/X-WWW-FORM-URLENCODED; charset=latin-1",
    "application/json",
    "text/plain",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded;;;",
    "",
    "\x00\xff",
)
header_value = st.one_of(
    latin1,
    st.binary(max_size=90).map(lambda raw: base64.b64encode(raw).decode()),
    st.integers().map(str),
    st.sampled_from(["", " ", ",", ",,,", "=" * 44, "A" * 44, "HMAC_SHA256", "key=1,algorithm=HMAC_SHA256"]),
)
header_name = st.one_of(
    st.sampled_from(SIGNATURE_HEADERS + ("content-type", "host", "x-forwarded-for", "x-forwarded-host")), latin1
)
# Hosts a URL parser chokes on ("Invalid IPv6 URL", bad ports): found by the atheris target.
ODD_HOSTS = ("[", "a]", "[::1", "[::1]:8443", f"{HOST}:443", f"{HOST}:x", f"{HOST}:99999", "", "@", "h/x")
headers_list = st.lists(st.tuples(header_name, header_value), max_size=12)


def json_bomb(kind: str, size: int) -> bytes:
    if kind == "deep_array":
        return b"[" * size + b"]" * size
    if kind == "deep_object":
        return b'{"a":' * size + b"1" + b"}" * size
    if kind == "big_int":
        return b'{"data":{"id":' + b"9" * size + b"}}"
    if kind == "big_float":
        return b'{"data":{"id":"x","payload":{"to":1e' + b"9" * min(size, 400) + b"}}}"
    if kind == "many_keys":
        return ("{" + ",".join(f'"k{i}":{i}' for i in range(size)) + "}").encode()
    if kind == "deep_payload":
        inner = b'{"to":"+14155550101"}'
        return b'{"data":{"payload":' + b'{"x":' * size + inner + b"}" * size + b"}}"
    raise ValueError(kind)


BOMB_KINDS = ("deep_array", "deep_object", "big_int", "big_float", "many_keys", "deep_payload")
bombs = st.builds(json_bomb, st.sampled_from(BOMB_KINDS), st.integers(min_value=1, max_value=3000))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | unicode_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
form_bodies = st.lists(st.tuples(wire_text, wire_text), max_size=8).map(
    lambda pairs: "&".join(f"{n}={v}" for n, v in pairs).encode("latin-1")
)
bodies = st.one_of(
    st.binary(max_size=300),
    form_bodies,
    bombs,
    json_values.map(
        lambda v: json.dumps({"data": {"id": "x", "payload": v}}, ensure_ascii=False).encode("utf-8", "surrogatepass")
    ),
    st.integers(min_value=MAX_FORM_FIELDS - 2, max_value=MAX_FORM_FIELDS * 3).map(
        lambda n: "&".join(f"f{i}=v" for i in range(n)).encode()
    ),
)
client_ips = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["203.0.113.7", "2001:db8::1", "::ffff:203.0.113.7", "", "garbage", "203.0.113.7, 10.0.0.1"]),
)


@st.composite
def hostile_requests(draw: st.DrawFn) -> InboundRequest:
    headers: dict[str, str] = {}
    duplicates: set[str] = set()
    for name, value in draw(headers_list):
        lname = name.lower()
        if lname in headers:
            duplicates.add(lname)
            continue
        headers[lname] = value
    if draw(st.booleans()):
        headers["content-type"] = draw(st.sampled_from(CONTENT_TYPES))
    return InboundRequest(
        method=draw(st.sampled_from(["POST", "GET", "PUT", "HEAD", "post", "\x00"])),
        scheme=draw(st.sampled_from(["https", "http", "HTTPS", "", "ftp"])),
        netloc=draw(st.one_of(st.just(HOST), st.sampled_from(ODD_HOSTS), latin1)),
        raw_path=draw(st.one_of(st.just("/plivo/status/ph_1"), wire_text.map(lambda t: "/" + t))),
        query_string=draw(wire_text),
        headers=headers,
        body=draw(bodies),
        client_ip=draw(client_ips),
        duplicate_headers=frozenset(duplicates),
    )


# ---- credentials the attacker does not hold ---------------------------------------------------


def secret_key(kind_fp: str) -> Key:
    return Key(material=secrets.token_urlsafe(30).encode(), fingerprint=kind_fp)


def telnyx_key() -> tuple[SigningKey, Key]:
    signing = SigningKey.generate()
    public = bytes(signing.verify_key)
    return signing, Key(material=public, fingerprint="fp-telnyx", prepared=VerifyKey(public))


@dataclass(frozen=True)
class Carrier:
    name: str
    verifier: Verifier
    creds: PhoneCredentials


def carriers() -> list[Carrier]:
    _, telnyx_public = telnyx_key()
    token = secret_key("fp-token")
    auth = {KeyKind.AUTH_TOKEN: (secret_key("fp-auth"),), KeyKind.MAIN_AUTH_TOKEN: (secret_key("fp-main"),)}
    allowlist = Allowlist.parse("203.0.113.0/24,2001:db8::/32")
    return [
        Carrier("plivo", PlivoVerifier(), PhoneCredentials("ph_1", Provider.PLIVO, auth)),
        Carrier("vobiz", vobiz.verifier(), PhoneCredentials("ph_1", Provider.VOBIZ, auth)),
        Carrier(
            "twilio",
            TwilioVerifier(),
            PhoneCredentials(
                "ph_1",
                Provider.TWILIO,
                {KeyKind.AUTH_TOKEN: (secret_key("fp-auth"),), KeyKind.TWILIO_SIGNING_KEY: (secret_key("fp-sk"),)},
            ),
        ),
        Carrier(
            "telnyx",
            TelnyxVerifier(),
            PhoneCredentials("ph_1", Provider.TELNYX, {KeyKind.PUBLIC_KEY: (telnyx_public,)}),
        ),
        Carrier(
            "exotel",
            ExotelVerifier(allowlist),
            PhoneCredentials("ph_1", Provider.EXOTEL, {KeyKind.EXOTEL_WEBHOOK_TOKEN: (token,)}),
        ),
    ]


CARRIERS = {carrier.name: carrier for carrier in carriers()}


def after_verification(inbound: InboundRequest, provider: Provider, kind: str = "status") -> None:
    """What the edge does with a verified request: it may refuse it, never crash."""
    try:
        key = SPECS[provider].idempotency_key(inbound, kind)
        build_event(
            inbound,
            provider=provider.value,
            phone_id="ph_1",
            kind=kind,
            received_at=NOW,
            idempotency_key=key,
            key_fingerprint="fp",
            redact=SPECS[provider].secret_params,
        )
    except Rejected:
        pass


# ---- 1. verifiers directly ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CARRIERS))
@pytest.mark.parametrize("examples", PROFILES)
def test_random_requests_are_rejected_and_nothing_else(name: str, examples: int) -> None:
    carrier = CARRIERS[name]

    def check(request: InboundRequest, now: float) -> None:
        with pytest.raises(Rejected):
            carrier.verifier.verify(request, carrier.creds, now)
        after_verification(request, carrier.creds.provider)

    run(examples, check, request=hostile_requests(), now=st.sampled_from([NOW, 0.0, 1e12, -1.0]))


@pytest.mark.parametrize("examples", PROFILES)
def test_exotel_without_token_accepts_exactly_the_allowlist(examples: int) -> None:
    """An Exotel phone with no token is IP-only by design: accepted iff the address is listed."""
    allowlist = Allowlist.parse("203.0.113.0/24,2001:db8::/32")
    verifier = ExotelVerifier(allowlist)
    phone = PhoneCredentials("ph_1", Provider.EXOTEL, {})

    def check(request: InboundRequest) -> None:
        try:
            address = ipaddress.ip_address(request.client_ip)
        except ValueError:
            listed = False
        else:
            mapped = getattr(address, "ipv4_mapped", None) or address
            listed = any(mapped in network for network in allowlist.networks)
        try:
            verified = verifier.verify(request, phone, NOW)
        except Rejected as rejection:
            assert not listed or rejection.reason is Reason.MALFORMED_REQUEST
        else:
            assert listed and verified.key_fingerprint is None
            after_verification(request, Provider.EXOTEL)

    run(examples, check, request=hostile_requests())


@pytest.mark.parametrize("examples", PROFILES)
def test_request_parsing_never_raises_anything_else(examples: int) -> None:
    def check(text: str, body: bytes, ip: str) -> None:
        try:
            pairs = parse_pairs(text)
        except Rejected as rejection:
            assert rejection.reason is Reason.MALFORMED_REQUEST
        else:
            assert len(pairs) <= MAX_FORM_FIELDS
        numbers = telnyx.event_numbers(body)
        assert all(n.startswith("+") and n[1:].isdigit() for n in numbers)
        telnyx.event_id(body)
        assert Allowlist.parse("203.0.113.0/24").contains(ip) in (True, False)

    run(examples, check, text=wire_text, body=bodies, ip=client_ips)


# -- validly signed hostile content: the attacker is the carrier account itself --------------


def _plivo_signed(token: bytes, params: list[tuple[str, str]], query: str, nonce: str) -> InboundRequest:
    url = f"https://{HOST}/plivo/status/ph_1" + (f"?{query}" if query else "")
    signature = plivo.sign_v3(token.decode(), "POST", url, params, nonce)
    return InboundRequest(
        method="POST",
        scheme="https",
        netloc=HOST,
        raw_path="/plivo/status/ph_1",
        query_string=query,
        headers={
            "x-plivo-signature-v3": signature,
            "x-plivo-signature-v3-nonce": nonce,
            "content-type": "application/x-www-form-urlencoded",
        },
        body=urlencode(params).encode(),
        client_ip="198.51.100.20",
    )


ascii_query = st.lists(st.tuples(st.text("abcXYZ_", min_size=1, max_size=5), st.text("0123+ ", max_size=5)), max_size=4)
signed_params = st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), max_size=10).filter(
    lambda pairs: all(_encodable(n) and _encodable(v) for n, v in pairs)
)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@pytest.mark.parametrize("examples", PROFILES)
def test_signed_hostile_plivo_content_never_crashes(examples: int) -> None:
    carrier = CARRIERS["plivo"]
    token = carrier.creds.keys[KeyKind.AUTH_TOKEN][0].material

    def check(params: list[tuple[str, str]], query: list[tuple[str, str]], nonce: str) -> None:
        assume(nonce.strip() and _encodable(nonce))
        request = _plivo_signed(token, params, urlencode(query), nonce)
        try:
            verified = carrier.verifier.verify(request, carrier.creds, NOW)
        except Rejected as rejection:
            assert rejection.reason is Reason.MALFORMED_REQUEST  # e.g. a field the parser refuses
            return
        assert verified.nonce == nonce
        after_verification(request, Provider.PLIVO)

    run(examples, check, params=signed_params, query=ascii_query, nonce=st.text(max_size=30))


@pytest.mark.parametrize("examples", PROFILES)
def test_signed_json_bombs_on_telnyx_never_crash(examples: int) -> None:
    signing, public = telnyx_key()
    phone = PhoneCredentials("ph_1", Provider.TELNYX, {KeyKind.PUBLIC_KEY: (public,)})
    verifier = TelnyxVerifier()

    def check(body: bytes) -> None:
        stamp = str(int(NOW))
        request = InboundRequest(
            method="POST",
            scheme="https",
            netloc=HOST,
            raw_path="/webhooks/telnyx/voice/ph_1",
            query_string="",
            headers={
                "telnyx-signature-ed25519": telnyx.sign(bytes(signing), stamp, body),
                "telnyx-timestamp": stamp,
                "content-type": "application/json",
            },
            body=body,
            client_ip="198.51.100.20",
        )
        try:
            verified = verifier.verify(request, phone, NOW)
        except Rejected as rejection:  # signed, but not text: the SDK never accepts that either
            assert rejection.reason is Reason.MALFORMED_REQUEST
            with pytest.raises(UnicodeDecodeError):
                body.decode("utf-8")
        else:
            assert verified.key_fingerprint == "fp-telnyx"
            after_verification(request, Provider.TELNYX, kind="voice")
        telnyx.event_numbers(body)

    run(examples, check, body=bodies)


@pytest.mark.parametrize("examples", PROFILES)
def test_a_genuine_signature_on_other_content_is_refused(examples: int) -> None:
    """Copy the headers of a genuinely signed request onto a different body: refused."""
    signing, public = telnyx_key()
    telnyx_phone = PhoneCredentials("ph_1", Provider.TELNYX, {KeyKind.PUBLIC_KEY: (public,)})
    plivo_carrier = CARRIERS["plivo"]
    twilio_carrier = CARRIERS["twilio"]
    plivo_token = plivo_carrier.creds.keys[KeyKind.AUTH_TOKEN][0].material
    twilio_token = twilio_carrier.creds.keys[KeyKind.AUTH_TOKEN][0].material.decode()
    stamp = str(int(NOW))

    def check(original: list[tuple[str, str]], other: list[tuple[str, str]], raw_other: bytes) -> None:
        # Telnyx signs the raw bytes: any other body is another message.
        body = urlencode(original).encode()
        assume(raw_other != body)
        telnyx_request = InboundRequest(
            "POST",
            "https",
            HOST,
            "/webhooks/telnyx/voice/ph_1",
            "",
            {"telnyx-signature-ed25519": telnyx.sign(bytes(signing), stamp, body), "telnyx-timestamp": stamp},
            raw_other,
            "198.51.100.20",
        )
        with pytest.raises(Rejected):
            TelnyxVerifier().verify(telnyx_request, telnyx_phone, NOW)
        # Plivo and Twilio sign name+value concatenations of the decoded, sorted parameters.
        # That string is ambiguous by the carriers' design ([("a", "bc")] and [("ab", "c")]
        # sign alike; see docs/threat-model.md), so "other content" means another string.
        url = f"https://{HOST}/plivo/status/ph_1"
        assume(plivo.v3_string_to_sign("POST", url, original, "n") != plivo.v3_string_to_sign("POST", url, other, "n"))
        genuine = _plivo_signed(plivo_token, original, "", "nonce-1")
        moved = _plivo_signed(plivo_token, other, "", "nonce-1")
        moved = _with_headers(moved, genuine.headers)
        with pytest.raises(Rejected):
            plivo_carrier.verifier.verify(moved, plivo_carrier.creds, NOW)
        url = f"https://{HOST}/twilio/status/ph_1"
        assume(twilio.string_to_sign(url, original) != twilio.string_to_sign(url, other))
        signature = twilio.sign(twilio_token, url, original)
        twilio_request = InboundRequest(
            "POST",
            "https",
            HOST,
            "/twilio/status/ph_1",
            "",
            {"x-twilio-signature": signature, "content-type": "application/x-www-form-urlencoded"},
            urlencode(other).encode(),
            "198.51.100.20",
        )
        with pytest.raises(Rejected):
            twilio_carrier.verifier.verify(twilio_request, twilio_carrier.creds, NOW)

    run(examples, check, original=signed_params, other=signed_params, raw_other=bodies)


def test_parameter_boundaries_are_not_signed_by_the_carriers_design() -> None:
    """Documented, not defended (docs/threat-model.md): Plivo V3 and Twilio sign name+value
    concatenations without separators, so moving the boundary between adjacent parameters
    keeps the signature valid. A captured Twilio request (no nonce) can come back with
    another CallSid, hence another idempotency key. This test pins the SDK-compatible
    behaviour so a change to it is a decision, not an accident."""
    url = f"https://{HOST}/twilio/status/ph_1"
    genuine = [("CallSid", "CA0001"), ("CallStatus", "completed")]
    resplit = [("CallSid", "CA0001CallStatuscompleted")]
    assert twilio.string_to_sign(url, genuine) == twilio.string_to_sign(url, resplit)
    carrier = CARRIERS["twilio"]
    token = carrier.creds.keys[KeyKind.AUTH_TOKEN][0].material.decode()
    request = InboundRequest(
        "POST",
        "https",
        HOST,
        "/twilio/status/ph_1",
        "",
        {"x-twilio-signature": twilio.sign(token, url, genuine), "content-type": "application/x-www-form-urlencoded"},
        urlencode(resplit).encode(),
        "198.51.100.20",
    )
    assert carrier.verifier.verify(request, carrier.creds, NOW).key_fingerprint == "fp-auth"
    assert twilio.idempotency_key(request, "status") != "status:CA0001:completed"


def _with_headers(request: InboundRequest, headers: Any) -> InboundRequest:
    return InboundRequest(
        request.method,
        request.scheme,
        request.netloc,
        request.raw_path,
        request.query_string,
        dict(headers),
        request.body,
        request.client_ip,
    )


# ---- 2. the HTTP path, over a real socket ----------------------------------------------------


@dataclass
class Target:
    gw: RunningGateway
    redis: redis.Redis
    phone_ids: dict[str, str]


@pytest.fixture(scope="module", params=["httptools", "h11"])
def target(request: pytest.FixtureRequest, redis_server: str) -> Iterator[Target]:
    settings = make_settings(redis_server, GATEWAY_MAX_BODY_BYTES=str(64 * 1024))
    with run_gateway(settings, http=request.param) as gw:
        client = redis.Redis.from_url(redis_server)
        client.flushdb()
        _, telnyx_public = telnyx_key()
        ids = {name: f"ph_hostile_{name}" for name in ("plivo", "vobiz", "twilio", "telnyx", "exotel")}
        gw.put_phone({"id": ids["plivo"], "provider": "plivo", "credentials": _plivo_creds()})
        gw.put_phone({"id": ids["vobiz"], "provider": "vobiz", "credentials": _plivo_creds()})
        gw.put_phone(
            {
                "id": ids["twilio"],
                "provider": "twilio",
                "credentials": {"account_sid": "AC" + "0" * 32, "auth_token": secrets.token_hex(16)},
            }
        )
        gw.put_phone(
            {
                "id": ids["telnyx"],
                "provider": "telnyx",
                "credentials": {"public_key": base64.b64encode(telnyx_public.material).decode()},
                "config": {"number": "+14155550101"},
            }
        )
        gw.put_phone(
            {
                "id": ids["exotel"],
                "provider": "exotel",
                "credentials": {"api_key": "k", "api_token": secrets.token_hex(16)},
                "config": {"exotel_webhook_token": secrets.token_urlsafe(24)},
            }
        )
        try:
            yield Target(gw, client, ids)
        finally:
            client.close()


def _plivo_creds() -> dict[str, str]:
    return {"auth_id": "MAEXAMPLE0000000000", "auth_token": secrets.token_urlsafe(30)}


@dataclass
class Answer:
    status: int
    raw: bytes
    closed_without_answer: bool = False


def send_raw(port: int, payload: bytes, *, timeout_s: float = 10.0) -> Answer:
    """Send bytes, read until the server closes (or answers and we have the whole head)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        try:
            sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (400/413/431) and close before reading everything
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError("no answer within the client timeout (a hang)") from None
            if not chunk:
                break
            chunks.append(chunk)
            assert time.monotonic() < deadline, "answer never finished (a hang)"
    raw = b"".join(chunks)
    if not raw:
        return Answer(0, raw, closed_without_answer=True)
    status_line = raw.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 "), status_line[:80]
    return Answer(int(status_line.split(b" ")[1]), raw)


ALLOWED = {400, 401, 403, 404, 405, 413, 414, 431}


def assert_refused(answer: Answer, target: Target, before: int, *, may_drop: bool = False) -> None:
    """A 4xx, no traceback, nothing in the stream. `may_drop`: an oversize request may be cut off."""
    if not (may_drop and answer.closed_without_answer):
        assert answer.status in ALLOWED, answer.raw[:300]
    assert b"Traceback" not in answer.raw and b'File "' not in answer.raw
    assert target.redis.xlen(STREAM) == before


ROUTES = (
    "/plivo/status/{}",
    "/plivo/incoming/{}",
    "/twilio/status/{}",
    "/exotel/status/{}",
    "/webhooks/telnyx/voice/{}",
)


@st.composite
def wire_requests(draw: st.DrawFn, phone_ids: list[str]) -> bytes:
    method = draw(st.sampled_from([b"POST", b"GET", b"PUT", b"DELETE", b"OPTIONS", b"P\xffST"]))
    route = draw(st.sampled_from(ROUTES + ("/webhooks/telnyx/voice",)))
    phone = draw(st.one_of(st.sampled_from(phone_ids), st.text("abc_%2F.:-", max_size=12)))
    path = route.format(phone).encode()
    query = draw(wire_text).encode("latin-1")
    query = bytes(b for b in query if b > 0x20 and b not in b"#\x7f")  # what can stand in a request line
    target_bytes = path + (b"?" + query if query else b"")
    host = draw(st.one_of(st.just(HOST), st.sampled_from(ODD_HOSTS))).encode()
    head = [method + b" " + target_bytes + b" HTTP/1.1", b"host: " + host]
    for name, value in draw(headers_list):
        raw_name = name.encode("latin-1")
        raw_value = value.encode("latin-1").replace(b"\r", b"").replace(b"\n", b"")
        if raw_name.lower() in (b"content-length", b"transfer-encoding", b"host", b"connection"):
            continue
        head.append(raw_name + b": " + raw_value)
    if draw(st.booleans()):
        head.append(b"content-type: " + draw(st.sampled_from(CONTENT_TYPES)).encode("latin-1"))
    body = draw(bodies)
    if draw(st.booleans()):
        head.append(b"content-length: " + str(len(body)).encode())
        encoded = body
    else:
        head.append(b"transfer-encoding: chunked")
        size = draw(st.integers(min_value=1, max_value=4096))
        parts = [body[i : i + size] for i in range(0, len(body), size)]
        encoded = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    head.append(b"connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + encoded


@pytest.mark.parametrize("examples", HTTP_PROFILES)
def test_random_requests_on_the_wire_are_refused(target: Target, examples: int) -> None:
    ids = list(target.phone_ids.values())

    def check(payload: bytes) -> None:
        before = target.redis.xlen(STREAM)
        assert_refused(send_raw(target.gw.port, payload), target, before)

    run(examples, check, payload=wire_requests(ids))


def _valid_head(path: str, extra: list[bytes], body: bytes, content_type: bytes = b"application/json") -> bytes:
    head = [b"POST " + path.encode() + b" HTTP/1.1", b"host: " + HOST.encode(), b"content-type: " + content_type]
    head += extra
    head += [b"content-length: " + str(len(body)).encode(), b"connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


@pytest.mark.parametrize("kind", BOMB_KINDS)
def test_json_bombs_on_the_telnyx_number_route(target: Target, kind: str) -> None:
    before = target.redis.xlen(STREAM)
    for size in (10, 1000, 20_000):
        body = json_bomb(kind, size)
        if len(body) > 64 * 1024:
            continue
        stamp = str(int(time.time())).encode()
        extra = [b"telnyx-timestamp: " + stamp, b"telnyx-signature-ed25519: " + base64.b64encode(b"\0" * 64)]
        for route in ("/webhooks/telnyx/voice", f"/webhooks/telnyx/voice/{target.phone_ids['telnyx']}"):
            answer = send_raw(target.gw.port, _valid_head(route, extra, body))
            assert_refused(answer, target, before)
            assert answer.status == 403, (kind, size, route, answer.raw[:200])


@pytest.mark.parametrize("fields", [MAX_FORM_FIELDS + 1, 5000, 20_000])
def test_forms_with_thousands_of_fields(target: Target, fields: int) -> None:
    before = target.redis.xlen(STREAM)
    body = "&".join(f"f{i}=v" for i in range(fields)).encode()
    if len(body) > 64 * 1024:
        body = body[: 64 * 1024 - 1]
    for name in ("plivo", "twilio", "exotel"):
        route = f"/{name}/status/{target.phone_ids[name]}"
        extra = [
            b"x-plivo-signature-v3: " + b"A" * 44,
            b"x-plivo-signature-v3-nonce: 1",
            b"x-twilio-signature: " + b"A" * 28,
        ]
        answer = send_raw(target.gw.port, _valid_head(route, extra, body, b"application/x-www-form-urlencoded"))
        assert_refused(answer, target, before)
        assert answer.status in (400, 403), (name, answer.raw[:200])
    # and in the query string
    query = "&".join(f"q{i}=v" for i in range(fields))[:8000]
    answer = send_raw(target.gw.port, _valid_head(f"/plivo/status/{target.phone_ids['plivo']}?{query}", [], b""))
    assert_refused(answer, target, before)


@pytest.mark.parametrize(
    "query",
    ["%", "%zz", "a=%ff", "a=%c3%28", "a=%00", "token=%ed%a0%80", "a=%E2%82", "=&=&&==", "a=" + "%ff" * 2000],
)
def test_invalid_percent_encoding(target: Target, query: str) -> None:
    before = target.redis.xlen(STREAM)
    for route in ROUTES:
        path = route.format(target.phone_ids[route.split("/")[1] if "telnyx" not in route else "telnyx"])
        answer = send_raw(target.gw.port, _valid_head(f"{path}?{query}", [b"x-plivo-signature-v3: x"], b""))
        assert_refused(answer, target, before)


@pytest.mark.parametrize("body", [b"\xff\xfe\xfd", b"a=\xff", b"CallUUID=%ff&x=\xc3\x28", b"\x00" * 100])
@pytest.mark.parametrize("content_type", [b"application/x-www-form-urlencoded", b"application/json", b"text/\xff"])
def test_non_utf8_bodies_and_wrong_content_types(target: Target, body: bytes, content_type: bytes) -> None:
    before = target.redis.xlen(STREAM)
    for route in ROUTES:
        path = route.format(target.phone_ids[route.split("/")[1] if "telnyx" not in route else "telnyx"])
        answer = send_raw(target.gw.port, _valid_head(path, [b"x-twilio-signature: " + b"A" * 28], body, content_type))
        assert_refused(answer, target, before)


def test_duplicated_and_huge_headers(target: Target) -> None:
    before = target.redis.xlen(STREAM)
    path = f"/plivo/status/{target.phone_ids['plivo']}"
    duplicated = [b"x-plivo-signature-v3: " + b"A" * 44] * 50 + [b"x-plivo-signature-v3-nonce: 1"] * 50
    for extra in (
        duplicated,
        [b"x-plivo-signature-v3: " + b"A," * 4000],
        [b"x-filler-%d: %s" % (i, b"y" * 100) for i in range(100)],
        [b"x-forwarded-for: " + b"203.0.113.9, " * 500],
        [b"content-type: a", b"content-type: application/x-www-form-urlencoded"],
    ):
        answer = send_raw(target.gw.port, _valid_head(path, extra, b"a=1", b"application/x-www-form-urlencoded"))
        assert_refused(answer, target, before)
    # Far over any sane header size: refused (or the connection dropped), never served.
    huge = [b"x-huge: " + b"h" * (1024 * 1024)]
    answer = send_raw(target.gw.port, _valid_head(path, huge, b"a=1", b"application/x-www-form-urlencoded"))
    assert_refused(answer, target, before)


@pytest.mark.parametrize("name", ["plivo", "vobiz", "twilio"])
@pytest.mark.parametrize("netloc", ODD_HOSTS)
def test_unparsable_public_url_is_rejected_not_raised(name: str, netloc: str) -> None:
    """Regression (atheris): `Host: [` made urlparse raise ValueError inside Plivo's and
    Twilio's verifiers: a 500 for any phone id, the unknown ones included (decoy path)."""
    carrier = CARRIERS[name]
    request = InboundRequest(
        "POST",
        "https",
        netloc,
        "/plivo/status/ph_1",
        "a=1",
        {
            "x-plivo-signature-v3": "A" * 44,
            "x-plivo-signature-v3-nonce": "1",
            "x-twilio-signature": "A" * 28,
            "content-type": "application/x-www-form-urlencoded",
        },
        b"CallSid=1",
        "198.51.100.20",
    )
    with pytest.raises(Rejected):
        carrier.verifier.verify(request, carrier.creds, NOW)


@pytest.mark.parametrize("host", [b"[", b"a]", b"[::1", b"x:y"])
def test_unparsable_host_header_is_4xx_for_known_and_unknown_phones(target: Target, host: bytes) -> None:
    before = target.redis.xlen(STREAM)
    signatures = [
        b"x-plivo-signature-v3: " + b"A" * 44,
        b"x-plivo-signature-v3-nonce: 1",
        b"x-twilio-signature: " + b"A" * 28,
    ]
    for name in ("plivo", "vobiz", "twilio", "exotel", "telnyx"):
        family = "plivo" if name == "vobiz" else name
        prefix = "/webhooks/telnyx/voice/" if name == "telnyx" else f"/{family}/status/"
        for phone in (target.phone_ids[name], "ph_nobody"):
            head = [b"POST " + (prefix + phone).encode() + b" HTTP/1.1", b"host: " + host, *signatures]
            head += [b"content-type: application/x-www-form-urlencoded", b"content-length: 3", b"connection: close"]
            answer = send_raw(target.gw.port, b"\r\n".join(head) + b"\r\n\r\na=1")
            assert_refused(answer, target, before)
            # and the same through the trusted proxy's X-Forwarded-Host
            forwarded = [*head[:-3], b"x-forwarded-host: " + host, *head[-3:]]
            forwarded[1] = b"host: " + HOST.encode()
            answer = send_raw(target.gw.port, b"\r\n".join(forwarded) + b"\r\n\r\na=1")
            assert_refused(answer, target, before)


def test_exotel_token_guessing_never_passes(target: Target) -> None:
    before = target.redis.xlen(STREAM)
    path = f"/exotel/status/{target.phone_ids['exotel']}"
    for guess in ("", "x", "token", secrets.token_urlsafe(24), "%00", "a&token=b"):
        answer = send_raw(
            target.gw.port,
            _valid_head(f"{path}?token={quote(guess)}&CallSid=c1", [b"x-forwarded-for: 203.0.113.9"], b""),
        )
        assert_refused(answer, target, before)
        assert answer.status == 403


# ---- 3. greedy and slow clients: the request-head cap and deadline, keep-alive, concurrency ----------


class QuickEdgeProtocol(EdgeHttpToolsProtocol):
    """The production protocol with a deadline short enough for a unit test."""

    head_timeout_s = 0.5
    body_timeout_s = 0.5


HEAD_LIMIT = 16 * 1024


class _Limits(TypedDict):
    """The uvicorn options (run_gateway's **uvicorn_options) of the size and time limit tests."""

    h11_max_incomplete_event_size: int
    timeout_keep_alive: int


LIMITS: _Limits = {"h11_max_incomplete_event_size": HEAD_LIMIT, "timeout_keep_alive": 1}


@pytest.fixture(scope="module", params=["edge", "h11"])
def limited(request: pytest.FixtureRequest, redis_server: str) -> Iterator[tuple[str, RunningGateway]]:
    http = QuickEdgeProtocol if request.param == "edge" else "h11"
    with run_gateway(make_settings(redis_server), http=http, **LIMITS) as gw:
        yield request.param, gw


def _recv_all(sock: socket.socket, timeout_s: float = 5.0) -> bytes:
    sock.settimeout(timeout_s)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError("connection still open after the client timeout") from None
    return b"".join(chunks)


def _read_response(sock: socket.socket) -> bytes:
    """One whole response (head and content-length body) from a kept-alive connection."""
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _send_in_pieces(port: int, payload: bytes, piece: int = 4096) -> Answer:
    """Send in separate small writes (separate reads on the server), then read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            for offset in range(0, len(payload), piece):
                sock.sendall(payload[offset : offset + piece])
                time.sleep(0.002)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before we finished: what we want
        raw = _recv_all(sock)
    return Answer(int(raw.split(b" ", 2)[1]) if raw else 0, raw, closed_without_answer=not raw)


BIG_HEAD = b"POST /plivo/status/ph_x HTTP/1.1\r\nhost: x\r\nx-big: " + b"h" * (HEAD_LIMIT * 4) + b"\r\n\r\n"
MANY_HEADERS = b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + b"".join(b"x-%d: y\r\n" % i for i in range(5000)) + b"\r\n"


@pytest.mark.parametrize("head", [BIG_HEAD, MANY_HEADERS], ids=["one_huge_header", "thousands_of_headers"])
def test_request_head_over_the_cap_is_refused(limited: tuple[str, RunningGateway], head: bytes) -> None:
    protocol, gw = limited
    streamed = _send_in_pieces(gw.port, head)
    at_once = send_raw(gw.port, head)
    if protocol == "edge":  # production: refused however it arrives, before the app sees it
        assert streamed.status == 431 and at_once.status == 431, (streamed.raw[:80], at_once.raw[:80])
    else:
        # uvicorn's h11 cap only counts an *incomplete* head: streamed in pieces it is 400, but
        # a head that arrives in one read is parsed whatever its size (measured; docs/limits.md).
        assert streamed.status == 400
        assert at_once.status in (200, 400, 401)  # 200 / 401: the app served it


def test_a_large_body_is_not_mistaken_for_a_large_head(limited: tuple[str, RunningGateway]) -> None:
    _, gw = limited
    body = b"a=" + b"x" * 60_000  # under GATEWAY_MAX_BODY_BYTES (64 KiB), sent in one write
    answer = send_raw(gw.port, _valid_head("/plivo/status/ph_x", [], body, b"application/x-www-form-urlencoded"))
    assert answer.status == 401  # reached the app: unsigned


def test_connection_that_sends_nothing_is_closed(limited: tuple[str, RunningGateway]) -> None:
    protocol, gw = limited
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        if protocol == "edge":
            assert _recv_all(sock) == b""  # closed at the head deadline, silently
        else:  # measured, documented in docs/limits.md: uvicorn never closes it
            sock.settimeout(1.5)
            with pytest.raises(TimeoutError):
                sock.recv(1)


def test_slowloris_head_gets_408(limited: tuple[str, RunningGateway]) -> None:
    protocol, gw = limited
    if protocol != "edge":
        pytest.skip("uvicorn's h11 protocol has no head deadline (docs/limits.md); production runs the edge one")
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(b"POST /plivo/status/ph_x HTTP/1.1\r\nhost: x\r\n")
        answer = b""
        for _ in range(40):  # one byte every 0.1 s: data keeps flowing, the head never ends
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.1)
        answer = _recv_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]


def test_stalled_body_gets_408_and_the_app_sees_a_disconnect(
    limited: tuple[str, RunningGateway], redis_sync: redis.Redis
) -> None:
    protocol, gw = limited
    head = b"POST /plivo/status/ph_x HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\n"
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(head + b"content-length: 100\r\n\r\na=1")  # 3 of the 100 bytes, then nothing
        if protocol == "edge":
            answer = _recv_all(sock)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
        else:  # measured, documented in docs/limits.md: uvicorn waits for the body forever
            sock.settimeout(1.5)
            with pytest.raises(TimeoutError):
                sock.recv(1)
    assert redis_sync.xlen(STREAM) == 0


def test_body_trickling_in_pieces_is_served_within_the_deadline(limited: tuple[str, RunningGateway]) -> None:
    _, gw = limited
    head = b"POST /plivo/status/ph_x HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\n"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(head + b"content-length: 6\r\nconnection: close\r\n\r\na=")
        time.sleep(0.2)  # under the (test) body deadline of 0.5 s
        sock.sendall(b"1234")
        assert _recv_all(sock).startswith(b"HTTP/1.1 401 ")  # read whole, refused as unsigned


def test_keep_alive_timeout_closes_idle_connections(limited: tuple[str, RunningGateway]) -> None:
    _, gw = limited
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert _read_response(sock).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert _recv_all(sock) == b""  # closed by timeout_keep_alive (1 s here), not by us
        assert time.monotonic() - started >= 0.5


def test_kept_alive_connection_serves_several_requests(limited: tuple[str, RunningGateway]) -> None:
    """The head deadline is per request: a connection reused within keep-alive keeps working."""
    _, gw = limited
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            assert _read_response(sock).startswith(b"HTTP/1.1 200 ")
            time.sleep(0.7)  # longer than the head deadline, shorter than keep-alive


@pytest.mark.parametrize("http", ["edge", "h11"])
def test_limit_concurrency_answers_503(redis_url: str, http: str) -> None:
    protocol: Any = QuickEdgeProtocol if http == "edge" else "h11"
    with run_gateway(make_settings(redis_url), http=protocol, limit_concurrency=3, **LIMITS) as gw:
        holders = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(3)]
        try:
            time.sleep(0.1)
            answer = send_raw(gw.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            assert answer.status == 503
            head = answer.raw.split(b"\r\n\r\n", 1)[0].lower()
            if http == "edge":  # the gateway's own 503: the carrier is told when to retry
                assert b"\r\nretry-after: 1" in head
                assert answer.raw.endswith(b"\r\n\r\nservice unavailable\n")
            else:  # uvicorn's own answer under h11 (not used in production): no Retry-After
                assert b"retry-after" not in head
            # A webhook gets the same answer while the limit holds.
            webhook = send_raw(gw.port, b"POST /plivo/status/ph_x HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            assert webhook.status == 503
        finally:
            for holder in holders:
                holder.close()
        time.sleep(0.2)
        answer = send_raw(gw.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert answer.status == 200


# ---- 4. body size: GATEWAY_MAX_BODY_BYTES from Content-Length before reading, and while streaming ----

BODY_LIMIT = 2048


@pytest.fixture(scope="module", params=["edge", "h11"])
def small_bodies(request: pytest.FixtureRequest, redis_server: str) -> Iterator[RunningGateway]:
    http = QuickEdgeProtocol if request.param == "edge" else "h11"
    settings = make_settings(redis_server, GATEWAY_MAX_BODY_BYTES=str(BODY_LIMIT))
    with run_gateway(settings, http=http, **LIMITS) as gw:
        yield gw


def _form_head(length: bytes, *extra: bytes) -> bytes:
    lines = [b"POST /plivo/status/ph_x HTTP/1.1", b"host: x", b"content-type: application/x-www-form-urlencoded"]
    return b"\r\n".join([*lines, *extra, b"content-length: " + length]) + b"\r\n\r\n"


@pytest.mark.parametrize("declared", [BODY_LIMIT + 1, 10 * 1024 * 1024, 10**15 - 1])
def test_declared_oversize_is_413_before_any_body_is_sent(small_bodies: RunningGateway, declared: int) -> None:
    # The body is never sent: an answer at all proves the gateway did not wait to read it.
    with socket.create_connection(("127.0.0.1", small_bodies.port), timeout=5) as sock:
        sock.sendall(_form_head(str(declared).encode(), b"expect: 100-continue"))
        answer = _recv_all(sock)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:100]
    assert b"100 Continue" not in answer  # the client was never invited to send it


def test_body_at_the_limit_is_read_and_one_more_byte_is_413(small_bodies: RunningGateway) -> None:
    at_limit = b"a=" + b"x" * (BODY_LIMIT - 2)
    answer = send_raw(small_bodies.port, _form_head(str(BODY_LIMIT).encode(), b"connection: close") + at_limit)
    assert answer.status == 401  # read whole, then refused as unsigned
    over = at_limit + b"x"
    answer = send_raw(small_bodies.port, _form_head(str(BODY_LIMIT + 1).encode(), b"connection: close") + over)
    assert answer.status == 413


def test_chunked_body_over_the_limit_is_413_while_still_streaming(
    small_bodies: RunningGateway, redis_sync: redis.Redis
) -> None:
    head = b"POST /plivo/status/ph_x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    with socket.create_connection(("127.0.0.1", small_bodies.port), timeout=5) as sock:
        sock.sendall(head)
        sent = 0
        answer = b""
        sock.settimeout(0.05)
        for _ in range(200):  # up to 200 KiB, far over the limit; the terminating chunk never comes
            try:
                sock.sendall(b"400\r\n" + b"x" * 1024 + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1024
            try:
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            if answer:
                break
        if not answer:
            answer = _recv_all(sock)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:100]
    assert sent < 64 * 1024  # answered while the client was still streaming, not after it finished
    assert redis_sync.xlen(STREAM) == 0


def test_chunked_body_under_the_limit_is_read(small_bodies: RunningGateway) -> None:
    chunks = b"".join(b"100\r\n" + b"y" * 256 + b"\r\n" for _ in range(7)) + b"0\r\n\r\n"  # 1792 bytes
    head = (
        b"POST /plivo/status/ph_x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n"
        b"content-type: application/x-www-form-urlencoded\r\n\r\n"
    )
    assert send_raw(small_bodies.port, head + chunks).status == 401  # read whole, refused as unsigned


@pytest.mark.parametrize("value", [b"12abc", b"-1", b"1e3", b" ", b"99999999999999999999", b"0x10"])
def test_invalid_content_length_is_400(small_bodies: RunningGateway, value: bytes) -> None:
    answer = send_raw(small_bodies.port, _form_head(value, b"connection: close"))
    assert answer.status == 400, answer.raw[:100]


def test_gateway_serve_runs_with_these_limits(redis_url: str, tmp_path: Path) -> None:
    """The production entry point (`gateway serve`) uses the edge protocol and the body limit."""
    with spawn_gateway(redis_url, tmp_path, GATEWAY_MAX_BODY_BYTES=str(BODY_LIMIT)) as gateway:
        assert send_raw(gateway.port, BIG_HEAD).status == 431
        assert send_raw(gateway.port, _form_head(str(BODY_LIMIT + 1).encode())).status == 413
        answer = send_raw(gateway.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert answer.status == 200
        assert b"server: uvicorn" not in answer.raw.lower()  # server_header=False
