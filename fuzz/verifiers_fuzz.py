"""Coverage-guided fuzzing (atheris) of the verifiers and the request parsing, in-process.

Each input is decoded into two things:
  1. an ASGI request (method, route, raw path, raw query bytes, headers as raw byte
     pairs, body in fuzzed chunks, client address, scheme) driven through the real
     `WebhookHandler` — header folding, Content-Length, bounded body read, trusted-proxy
     resolution, InboundRequest building, phone lookup (by id or Telnyx event number),
     verification, idempotency key, event building — with an in-memory key store and a
     forwarder that records what it is asked to forward;
  2. an InboundRequest built directly (bytes no HTTP parser would let through), given
     to every verifier, plus parse_pairs, telnyx.event_numbers/event_id and the Exotel
     allowlist.

Failure (atheris reports it, with the input) is: any exception other than `Rejected`
from a verifier or parser, any exception out of the handler, a 5xx, or an accepted
request that carries no valid proof — the keys are random per run, so the only
legitimate acceptance is an Exotel phone without a token called from an allowlisted
address. Every 100,000 inputs it prints the tally (inputs, acceptances).

Run (see fuzz/README.md):  python fuzz/verifiers_fuzz.py -max_total_time=300 fuzz/corpus
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import sys
from typing import Any

import atheris

with atheris.instrument_imports():
    from nacl.signing import SigningKey, VerifyKey

    from gateway import inbound as inbound_module
    from gateway.answers import Answerer
    from gateway.diagnostics.mismatch import MismatchExplainer
    from gateway.errors import Rejected
    from gateway.forwarder import Outcome
    from gateway.inbound import InboundRequest, parse_pairs
    from gateway.providers import Key, KeyKind, PhoneCredentials, Provider, Verifier, telnyx
    from gateway.providers.exotel import Allowlist, ExotelVerifier
    from gateway.providers.plivo import PlivoVerifier
    from gateway.providers.telnyx import TelnyxVerifier
    from gateway.providers.twilio import TwilioVerifier
    from gateway.proxy import OriginResolver
    from gateway.settings import from_env, parse_networks
    from gateway.webhooks import WebhookHandler, match_route

NOW = 1_795_000_000.0
ALLOWLIST = Allowlist.parse("203.0.113.0/24,2001:db8::/32")
OPEN_EXOTEL = "ph_exotel_open"  # an Exotel phone without a token: IP-only by design


def _secret(fingerprint: str) -> Key:
    return Key(material=secrets.token_urlsafe(30).encode(), fingerprint=fingerprint)


def _telnyx_public() -> Key:
    public = bytes(SigningKey.generate().verify_key)
    return Key(material=public, fingerprint="fp-telnyx", prepared=VerifyKey(public))


AUTH = {KeyKind.AUTH_TOKEN: (_secret("fp-auth"),), KeyKind.MAIN_AUTH_TOKEN: (_secret("fp-main"),)}
PHONES: dict[str, PhoneCredentials] = {
    "ph_plivo": PhoneCredentials("ph_plivo", Provider.PLIVO, AUTH),
    "ph_vobiz": PhoneCredentials("ph_vobiz", Provider.VOBIZ, AUTH),
    "ph_twilio": PhoneCredentials(
        "ph_twilio",
        Provider.TWILIO,
        {KeyKind.AUTH_TOKEN: (_secret("fp-auth"),), KeyKind.TWILIO_SIGNING_KEY: (_secret("fp-sk"),)},
    ),
    "ph_telnyx": PhoneCredentials("ph_telnyx", Provider.TELNYX, {KeyKind.PUBLIC_KEY: (_telnyx_public(),)}),
    "ph_exotel": PhoneCredentials("ph_exotel", Provider.EXOTEL, {KeyKind.EXOTEL_WEBHOOK_TOKEN: (_secret("fp-token"),)}),
    OPEN_EXOTEL: PhoneCredentials(OPEN_EXOTEL, Provider.EXOTEL, {}),
}
NUMBERS = {"+14155550101": "ph_telnyx", "+14155550100": "ph_telnyx"}
VERIFIERS: dict[Provider, Verifier] = {
    Provider.PLIVO: PlivoVerifier(),
    Provider.VOBIZ: PlivoVerifier(),
    Provider.TWILIO: TwilioVerifier(),
    Provider.TELNYX: TelnyxVerifier(),
    Provider.EXOTEL: ExotelVerifier(ALLOWLIST),
}


class MemoryKeyStore:
    async def credentials(self, phone_id: str) -> PhoneCredentials | None:
        return PHONES.get(phone_id)

    async def phone_for_number(self, number: str) -> str | None:
        return NUMBERS.get(number)


class RecordingForwarder:
    def __init__(self) -> None:
        self.forwarded: list[str] = []

    async def forward(
        self, phone_id: str, event: bytes, *, nonce: str | None, idempotency_key: str | None
    ) -> tuple[Outcome, str]:
        self.forwarded.append(phone_id)
        return Outcome.FORWARDED, "1-0"


FORWARDER = RecordingForwarder()
SETTINGS = from_env({"GATEWAY_KEK": base64.b64encode(secrets.token_bytes(32)).decode()}, toml_path=None)
HANDLER = WebhookHandler(
    keystore=MemoryKeyStore(),  # type: ignore[arg-type]
    forwarder=FORWARDER,  # type: ignore[arg-type]
    verifiers=VERIFIERS,
    answers=Answerer(SETTINGS),
    origin=OriginResolver(parse_networks("trusted", "127.0.0.1/32"), None),
    max_body_bytes=SETTINGS.max_body_bytes,
    clock=lambda: NOW,
    # Failed-signature diagnosis (within its own CPU budget): must never accept, never crash.
    explain=MismatchExplainer(None),
)
LOOP = asyncio.new_event_loop()

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
    return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))


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
    return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))


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

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    before = len(FORWARDER.forwarded)
    LOOP.run_until_complete(HANDLER(scope, receive, send, route))
    STATS["handler_runs"] += 1
    starts = [m for m in sent if m["type"] == "http.response.start"]
    if not starts:
        return  # client "disconnected" before the body was complete: nothing to answer
    status = starts[0]["status"]
    if status >= 500:
        raise AssertionError(f"5xx answer: {status}")
    forwarded = FORWARDER.forwarded[before:]
    if status < 300 or forwarded:
        STATS["accepted"] += 1
        if forwarded != [OPEN_EXOTEL]:
            raise AssertionError(f"forgery accepted: {status} {forwarded} for {path}")
        # The only proof an open Exotel phone needs: an allowlisted source address.
        peer = scope["client"][0]
        forwarded_for = [v for n, v in scope["headers"] if n == b"x-forwarded-for"]
        if not ALLOWLIST.contains(peer) and not (peer == "127.0.0.1" and forwarded_for):
            raise AssertionError(f"open Exotel phone accepted from {peer!r}")
        STATS["accepted_legitimately"] += 1


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
