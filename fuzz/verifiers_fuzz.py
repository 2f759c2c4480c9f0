"""Coverage-guided fuzzing (atheris) of the verifiers and the request parsing, in-process.

Each input is decoded into two things:
  1. an ASGI request (method, route, raw path, raw query bytes, headers as raw byte
     pairs, body in fuzzed chunks, client address, scheme) driven through the real
     `WebhookHandler` — header folding, Content-Length, bounded body read, trusted-proxy
     resolution, InboundRequest building, phone lookup (by id or Telnyx event number),
     verification, idempotency key, event building, the forward script — the real app
     (`GatewayApp`, started through the ASGI lifespan protocol) on a private real Redis
     (the embedded server), with its phones registered through the real key store;
  2. an InboundRequest built directly (bytes no HTTP parser would let through), given
     to every verifier, plus parse_pairs, telnyx.event_numbers/event_id and the Exotel
     allowlist.

Failure (atheris reports it, with the input) is: any exception other than `Rejected`
from a verifier or parser, any exception out of the handler, a 5xx, or an accepted
request that carries no valid proof (answered 2xx, or an event in the stream) — the
keys are random per run, so the only legitimate acceptance is an Exotel phone without a
token called from an allowlisted address. Every 100,000 inputs it prints the tally
(inputs, acceptances).

Run (see fuzz/README.md):  python fuzz/verifiers_fuzz.py -max_total_time=300 fuzz/corpus
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import secrets
import sys
from collections.abc import MutableMapping
from typing import Any, cast

import atheris
import orjson
import redis

with atheris.instrument_imports():
    from nacl.signing import SigningKey

    from gateway import inbound as inbound_module
    from gateway.app import GatewayApp
    from gateway.embedded_redis import EmbeddedRedis
    from gateway.errors import Rejected
    from gateway.inbound import InboundRequest, parse_pairs
    from gateway.providers import PhoneCredentials, Provider, Verifier, telnyx
    from gateway.providers.allowlist import Allowlist
    from gateway.providers.registry import build_verifiers
    from gateway.settings import from_env
    from gateway.webhooks import match_route

NOW = 1_795_000_000.0
ALLOWLIST = Allowlist.parse("203.0.113.0/24,2001:db8::/32")  # what EXOTEL_ALLOWED_IPS says below
OPEN_EXOTEL = "ph_exotel_open"  # an Exotel phone without a token: IP-only by design


ALLOWED = "203.0.113.0/24,2001:db8::/32"
STREAM = "gateway:events"


def _token() -> str:
    return secrets.token_urlsafe(30)


def _telnyx_public_key() -> str:
    return base64.b64encode(bytes(SigningKey.generate().verify_key)).decode()


# Registered through the admin API's key store, with keys nobody else knows (random per run).
PHONE_RECORDS: dict[str, dict[str, Any]] = {
    "ph_plivo": {"provider": "plivo", "credentials": {"auth_id": "MAEXAMPLE0000000000", "auth_token": _token()}},
    "ph_vobiz": {"provider": "vobiz", "credentials": {"auth_id": "MAEXAMPLE0000000000", "auth_token": _token()}},
    "ph_twilio": {
        "provider": "twilio",
        "credentials": {
            "account_sid": "AC" + "0" * 32,
            "auth_token": _token(),
            "webhook_signing_key": _token(),
            "webhook_signing_key_id": "KS" + "0" * 32,
        },
    },
    "ph_telnyx": {
        "provider": "telnyx",
        "credentials": {"public_key": _telnyx_public_key()},
        "config": {"number": "+14155550101"},
    },
    "ph_exotel": {
        "provider": "exotel",
        "credentials": {"api_key": "exotel-api-key-example", "api_token": _token(), "sid": "example1"},
        "config": {"exotel_webhook_token": _token()},
    },
    OPEN_EXOTEL: {
        "provider": "exotel",
        "credentials": {"api_key": "exotel-api-key-example", "api_token": _token(), "sid": "example1"},
    },
}

REDIS = EmbeddedRedis(appendonly=False).start()
atexit.register(REDIS.stop)
STREAM_CLIENT = redis.Redis.from_url(REDIS.url)
SETTINGS = from_env(
    {
        "GATEWAY_REDIS_URL": REDIS.url,
        "GATEWAY_KEK": base64.b64encode(secrets.token_bytes(32)).decode(),
        "EXOTEL_ALLOWED_IPS": ALLOWED,
        "GATEWAY_TRUSTED_PROXIES": "127.0.0.1/32",
        "GATEWAY_ACCESS_LOG": "off",
    },
    toml_path=None,
)
APP = GatewayApp(SETTINGS, clock=lambda: NOW)
LOOP = asyncio.new_event_loop()


async def _start() -> None:
    """The ASGI lifespan protocol, as uvicorn drives it: the real components, started once."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: MutableMapping[str, Any]) -> None:
        await outbox.put(dict(message))

    LIFESPAN.append(LOOP.create_task(APP({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)))
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the gateway did not start: {started}")
    components = APP.components
    assert components is not None
    for phone_id, record in PHONE_RECORDS.items():
        await components.keystore.put(phone_id, record)
        credentials = await components.keystore.credentials(phone_id)
        assert credentials is not None
        PHONES[phone_id] = credentials


LIFESPAN: list[asyncio.Task[None]] = []
PHONES: dict[str, PhoneCredentials] = {}
VERIFIERS: dict[Provider, Verifier] = build_verifiers(SETTINGS.verifier_options())  # the ones the app built
LOOP.run_until_complete(_start())
_COMPONENTS = APP.components
assert _COMPONENTS is not None
HANDLER = _COMPONENTS.webhooks

HEADER_NAMES = [
    b"x-plivo-signature-v3",
    b"x-plivo-signature-ma-v3",
    b"x-plivo-signature-v3-nonce",
    b"x-vobiz-signature-v3",
    b"x-vobiz-signature-v3-nonce",
    b"x-twilio-signature",
    b"x-twilio-webhooks-signature-settings",
    b"telnyx-signature-ed25519",
    b"telnyx-timestamp",
    b"content-type",
    b"content-length",
    b"host",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
]
CONTENT_TYPES = [b"application/x-www-form-urlencoded", b"application/json", b"text/plain", b""]
ROUTES = ["/plivo/status/", "/plivo/incoming/", "/twilio/status/", "/exotel/status/", "/webhooks/telnyx/voice/"]
PHONE_IDS = [*PHONES, "ph_unknown"]
CLIENTS = ["127.0.0.1", "198.51.100.20", "203.0.113.7", "2001:db8::5", "::ffff:203.0.113.7"]
STATS = {"inputs": 0, "handler_runs": 0, "accepted": 0, "accepted_legitimately": 0}


def _value(fdp: atheris.FuzzedDataProvider) -> bytes:
    kind = fdp.ConsumeIntInRange(0, 3)
    if kind == 0:  # something shaped like a signature
        return base64.b64encode(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 70)))
    if kind == 1:
        return str(fdp.ConsumeInt(8)).encode()
    return bytes(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200)))


def _headers(fdp: atheris.FuzzedDataProvider) -> list[tuple[bytes, bytes]]:
    headers = []
    for _ in range(fdp.ConsumeIntInRange(0, 12)):
        if fdp.ConsumeBool():
            name = fdp.PickValueInList(HEADER_NAMES)
        else:
            name = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 20)).lower()
        value = fdp.PickValueInList(CONTENT_TYPES) if name == b"content-type" and fdp.ConsumeBool() else _value(fdp)
        headers.append((name, value))
    return headers


def _client_ip(fdp: atheris.FuzzedDataProvider) -> str:
    if fdp.ConsumeBool():
        return str(fdp.PickValueInList(CLIENTS))
    return str(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40)))


def _via_handler(fdp: atheris.FuzzedDataProvider) -> None:
    method = fdp.PickValueInList(["POST", "GET", "PUT", "HEAD"])
    phone = fdp.PickValueInList(PHONE_IDS) if fdp.ConsumeBool() else fdp.ConsumeUnicode(12)
    path = fdp.PickValueInList(ROUTES) + phone
    if fdp.ConsumeIntInRange(0, 5) == 0:
        path = "/webhooks/telnyx/voice"
    route = match_route(path)
    if route is None:
        return
    raw_path = path.encode("utf-8", "surrogatepass") if fdp.ConsumeBool() else fdp.ConsumeBytes(40)
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": raw_path,
        "query_string": fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300)),
        "headers": _headers(fdp),
        "client": (_client_ip(fdp), 40000),
        "scheme": fdp.PickValueInList(["http", "https"]),
    }
    body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096))
    pieces = max(1, fdp.ConsumeIntInRange(1, 4))
    size = max(1, len(body) // pieces + 1)
    chunks = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    before = _stream_end()
    LOOP.run_until_complete(HANDLER(scope, receive, send, route))
    STATS["handler_runs"] += 1
    starts = [m for m in sent if m["type"] == "http.response.start"]
    forwarded = _forwarded_since(before)
    if not starts:
        if forwarded:
            raise AssertionError(f"forwarded without an answer: {forwarded} for {path}")
        return  # client "disconnected" before the body was complete: nothing to answer
    status = starts[0]["status"]
    if status >= 500:
        raise AssertionError(f"5xx answer: {status}")
    if status < 300 or forwarded:
        STATS["accepted"] += 1
        # Forwarded once, or answered as the duplicate of an earlier acceptance (nothing new).
        if route.phone_id != OPEN_EXOTEL or forwarded not in ([], [OPEN_EXOTEL]):
            raise AssertionError(f"forgery accepted: {status} {forwarded} for {path}")
        # The only proof an open Exotel phone needs: an allowlisted source address.
        peer = scope["client"][0]
        forwarded_for = [v for n, v in scope["headers"] if n == b"x-forwarded-for"]
        if not ALLOWLIST.contains(peer) and not (peer == "127.0.0.1" and forwarded_for):
            raise AssertionError(f"open Exotel phone accepted from {peer!r}")
        STATS["accepted_legitimately"] += 1


StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]  # a bytes-mode client's XRANGE reply


def _stream_end() -> bytes:
    last = cast(StreamEntries, STREAM_CLIENT.xrevrange(STREAM, count=1))
    return last[0][0] if last else b"0-0"


def _forwarded_since(entry_id: bytes) -> list[str]:
    """The phone of every event added to the stream after `entry_id`."""
    entries = cast(StreamEntries, STREAM_CLIENT.xrange(STREAM, min=b"(" + entry_id))
    return [str(orjson.loads(fields[b"event"])["phone_id"]) for _, fields in entries]


def _direct(fdp: atheris.FuzzedDataProvider) -> None:
    headers: dict[str, str] = {}
    duplicates: set[str] = set()
    for name, value in _headers(fdp):
        key = name.decode("latin-1")
        if key in headers:
            duplicates.add(key)
        else:
            headers[key] = value.decode("latin-1")
    request = InboundRequest(
        method=fdp.PickValueInList(["POST", "GET", "PUT"]),
        scheme=fdp.PickValueInList(["https", "http", ""]),
        netloc=fdp.ConsumeUnicode(20) if fdp.ConsumeBool() else "hooks.example.com",
        raw_path=fdp.ConsumeUnicode(40),
        query_string=fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 200)),
        headers=headers,
        body=fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 2048)),
        client_ip=_client_ip(fdp),
        duplicate_headers=frozenset(duplicates),
    )
    for phone_id, creds in PHONES.items():
        try:
            VERIFIERS[creds.provider].verify(request, creds, NOW)
        except Rejected:
            continue
        if phone_id != OPEN_EXOTEL or not ALLOWLIST.contains(request.client_ip):
            raise AssertionError(f"verifier accepted a forgery for {phone_id}")
    for text in (request.query_string, request.body.decode("latin-1")):
        try:
            pairs = parse_pairs(text)
        except Rejected:
            continue
        assert len(pairs) <= inbound_module.MAX_FORM_FIELDS
    for number in telnyx.event_numbers(request.body):
        assert number.startswith("+") and number[1:].isdigit()
    telnyx.event_id(request.body)
    assert ALLOWLIST.contains(request.client_ip) in (True, False)


def test_one_input(data: bytes) -> None:
    STATS["inputs"] += 1
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        _via_handler(fdp)
    else:
        _direct(fdp)
    if STATS["inputs"] % REPORT_EVERY == 0:
        _report()


# libFuzzer ends the process with exit() (no Python atexit), so the tally is printed as it goes;
# the last line before libFuzzer's "Done N runs" is the run's figure (to within REPORT_EVERY).
REPORT_EVERY = 100_000


def _report() -> None:
    sys.stderr.write(
        "verifiers_fuzz: {inputs} inputs, {handler_runs} through the request handler, "
        "{accepted} accepted ({accepted_legitimately} open-Exotel from an allowlisted address), "
        "0 forgeries (any would have stopped the run)\n".format(**STATS)
    )
    sys.stderr.flush()


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
