"""`gateway sign`: a correctly signed carrier callback, as a curl command or raw HTTP.

For users' own integration tests and the README quick start. Signs with the same public
helpers the verifiers are tested against (gateway/providers/{plivo,twilio,telnyx}.py).
Secrets never come from argv (it is visible in `ps` and shell history): an environment
variable (--token-env, --seed-env) or the phone's record in Redis (--phone).

--target sends the request somewhere else (e.g. http://127.0.0.1:8080) while the
signature covers --url; X-Forwarded-Proto and X-Forwarded-Host then carry the public
scheme and host. The gateway believes them only from GATEWAY_TRUSTED_PROXIES; with
GATEWAY_PUBLIC_BASE_URL set to the origin of --url, it ignores them and still matches.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shlex
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson

from gateway.providers import KeyKind, PhoneCredentials, Provider
from gateway.providers import plivo as plivo_sig
from gateway.providers import telnyx as telnyx_sig
from gateway.providers import twilio as twilio_sig
from gateway.providers.exotel import TOKEN_PARAM
from gateway.settings import SettingsError, parse_key32

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
PROVIDERS = tuple(p.value for p in Provider)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class SignError(ValueError):
    """Invalid options; the message never contains a secret."""


@dataclass
class Secret:
    """Signing material. `value` is never printed."""

    value: bytes = field(repr=False)
    source: str  # "environment variable X" / "phone X in Redis"


@dataclass
class SignedRequest:
    method: str
    url: str  # the public URL the carrier calls (and signs)
    headers: list[tuple[str, str]]
    body: bytes
    send_url: str  # where the request is sent (--target, else url)
    notes: list[str] = field(default_factory=list)

    @property
    def send_target(self) -> str:
        parts = urlsplit(self.send_url)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def sample_params(provider: Provider) -> list[tuple[str, str]]:
    """A plausible inbound-call callback with fresh ids (so repeated runs are not duplicates)."""
    caller, callee = "+14155550100", "+14155550101"
    if provider in (Provider.PLIVO, Provider.VOBIZ):
        return [
            ("CallUUID", str(uuid.uuid4())),
            ("CallStatus", "ringing"),
            ("Direction", "inbound"),
            ("Event", "StartApp"),
            ("From", caller),
            ("To", callee),
        ]
    if provider is Provider.TWILIO:
        return [
            ("AccountSid", "AC" + "0" * 32),
            ("CallSid", "CA" + secrets.token_hex(16)),
            ("CallStatus", "ringing"),
            ("Direction", "inbound"),
            ("From", caller),
            ("To", callee),
        ]
    if provider is Provider.EXOTEL:
        return [
            ("CallSid", secrets.token_hex(16)),
            ("CallFrom", caller),
            ("CallTo", callee),
            ("Direction", "incoming"),
            ("Status", "ringing"),
        ]
    return []


def sample_telnyx_event(url: str) -> bytes:
    """A Call Control v2 `call.initiated` event with a fresh id."""
    event = {
        "data": {
            "event_type": "call.initiated",
            "id": str(uuid.uuid4()),
            "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
            "payload": {
                "call_control_id": "v3:" + secrets.token_urlsafe(24),
                "connection_id": "0000000000000000000",
                "direction": "incoming",
                "from": "+14155550100",
                "state": "parked",
                "to": "+14155550101",
            },
            "record_type": "event",
        },
        "meta": {"attempt": 1, "delivered_to": url},
    }
    return orjson.dumps(event)


def _with_query(url: str, pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return url
    base, _, fragment = url.partition("#")
    joiner = "&" if "?" in base else "?"
    if base.endswith(("?", "&")):
        joiner = ""
    return base + joiner + urlencode(list(pairs)) + (f"#{fragment}" if fragment else "")


def build(
    provider: Provider,
    url: str,
    *,
    secret: Secret | None,
    method: str = "POST",
    params: Sequence[tuple[str, str]] | None = None,
    json_body: bytes | None = None,
    nonce: str | None = None,
    timestamp: int | None = None,
    algorithm: str = twilio_sig.HMAC_SHA1,
    client_ip: str | None = None,
    target: str | None = None,
) -> SignedRequest:
    """The signed request. `params` None means the sample callback (use [] for none)."""
    method = method.upper()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        raise SignError(f"--url {url!r}: expected http(s)://host[:port]/path[?query] (no #fragment)")
    if method not in ("GET", "POST"):
        raise SignError("--method must be GET or POST")
    if json_body is not None and provider in (Provider.PLIVO, Provider.VOBIZ, Provider.EXOTEL):
        raise SignError(f"{provider.value} sends form parameters, not JSON: use --param")
    if json_body is not None and method != "POST":
        raise SignError("--json needs --method POST")
    if provider is Provider.TELNYX:
        if params:
            raise SignError("telnyx sends a JSON event: use --json, not --param")
        if method != "POST":
            raise SignError("telnyx sends POST")
    if params is None:
        params = [] if json_body is not None else sample_params(provider)
    params = list(params)

    headers: list[tuple[str, str]] = []
    body = b""
    notes: list[str] = []
    if provider is Provider.TELNYX:
        json_body = sample_telnyx_event(url) if json_body is None else json_body
    if json_body is not None:
        body = json_body
        headers.append(("Content-Type", JSON))
        if provider is Provider.TWILIO:  # Twilio covers a raw body through bodySHA256 in the signed URL
            url = _with_query(url, [("bodySHA256", twilio_sig.body_sha256(body))])
    elif method == "GET":
        url = _with_query(url, params)
    elif params:
        body = urlencode(params).encode()
        headers.append(("Content-Type", FORM))

    if provider is Provider.EXOTEL:
        if secret is not None:
            url = _with_query(url, [(TOKEN_PARAM, secret.value.decode("utf-8"))])
            notes.append("the URL carries the phone's Exotel token (a secret): keep this output private")
        notes.append(
            "Exotel is checked by source address: the gateway must see an address in EXOTEL_ALLOWED_IPS "
            "(--client-ip adds X-Forwarded-For, believed only from GATEWAY_TRUSTED_PROXIES)"
        )
    else:
        signed_params = params if method == "POST" and json_body is None else None
        headers += _signature_headers(provider, url, method, signed_params, body, secret, nonce, timestamp, algorithm)

    send_url = url
    if target is not None:
        goal = urlsplit(target)
        if goal.scheme not in ("http", "https") or not goal.netloc or goal.path not in ("", "/") or goal.query:
            raise SignError(f"--target {target!r}: expected scheme://host[:port] only (the path comes from --url)")
        public = urlsplit(url)
        send_url = f"{goal.scheme}://{goal.netloc}{public.path or '/'}" + (f"?{public.query}" if public.query else "")
        if (goal.scheme, goal.netloc) != (public.scheme, public.netloc):
            headers += [("X-Forwarded-Proto", public.scheme), ("X-Forwarded-Host", public.netloc)]
            notes.append(
                f"sent to {goal.scheme}://{goal.netloc} but signed for {public.scheme}://{public.netloc}: the gateway "
                f"must either trust the sender (GATEWAY_TRUSTED_PROXIES, e.g. 127.0.0.1/32) so it believes "
                f"X-Forwarded-Proto/-Host, or run with GATEWAY_PUBLIC_BASE_URL={public.scheme}://{public.netloc}"
            )
    if client_ip is not None:
        headers.append(("X-Forwarded-For", client_ip))
    return SignedRequest(method, url, headers, body, send_url, notes)


def _signature_headers(
    provider: Provider,
    url: str,
    method: str,
    params: list[tuple[str, str]] | None,  # the form parameters (POST), None otherwise
    body: bytes,
    secret: Secret | None,
    nonce: str | None,
    timestamp: int | None,
    algorithm: str,
) -> list[tuple[str, str]]:
    if secret is None:
        raise SignError(f"{provider.value} needs a key: --token-env VAR, --phone ID or (telnyx) --seed-env VAR")
    if provider in (Provider.PLIVO, Provider.VOBIZ):
        token = secret.value.decode("utf-8")
        nonce = nonce or str(secrets.randbelow(10**20)).zfill(20)
        headers = [
            ("X-Plivo-Signature-V3", plivo_sig.sign_v3(token, method, url, params, nonce)),
            ("X-Plivo-Signature-V3-Nonce", nonce),
        ]
        if provider is Provider.VOBIZ:  # Vobiz documents its own header too; the gateway accepts either
            headers += [
                ("X-Vobiz-Signature-V3", plivo_sig.sign_vobiz_v3(token, url, nonce)),
                ("X-Vobiz-Signature-V3-Nonce", nonce),
            ]
        return headers
    if provider is Provider.TWILIO:
        token = secret.value.decode("utf-8")
        headers = [("X-Twilio-Signature", twilio_sig.sign(token, url, params, algorithm=algorithm))]
        if algorithm != twilio_sig.HMAC_SHA1:  # signed with the shared webhook key: say so, as Twilio does
            headers.append(("X-Twilio-Webhooks-Signature-Settings", f"algorithm={algorithm}"))
        return headers
    if provider is Provider.TELNYX:
        if len(secret.value) != 32:
            raise SignError("the Telnyx seed must be 32 bytes (base64)")
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        return [
            ("telnyx-signature-ed25519", telnyx_sig.sign(secret.value, stamp, body)),
            ("telnyx-timestamp", stamp),
        ]
    raise SignError(f"{provider.value} has no signature")


# ---- output -----------------------------------------------------------------------------


def as_curl(request: SignedRequest) -> str:
    """A curl command (-g: no URL globbing, --path-as-is: no dot-segment squashing)."""
    words = ["curl", "-sS", "-i", "-g", "--path-as-is"]
    if request.method != "GET":
        words += ["-X", request.method]
    lines = [" ".join(words) + " " + shlex.quote(request.send_url)]
    lines += [f"-H {shlex.quote(f'{name}: {value}')}" for name, value in request.headers]
    if request.body:
        try:
            text = request.body.decode("utf-8")
        except UnicodeDecodeError:
            raise SignError("the body is not UTF-8 text: use --format http") from None
        lines.append(f"--data-raw {shlex.quote(text)}")
    return " \\\n  ".join(lines) + "\n"


def as_http(request: SignedRequest) -> bytes:
    """The raw HTTP/1.1 request, ready for `nc` or `gateway explain`."""
    host = urlsplit(request.send_url).netloc
    lines = [f"{request.method} {request.send_target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in request.headers]
    if request.body or request.method == "POST":
        lines.append(f"Content-Length: {len(request.body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + request.body


# ---- secrets ------------------------------------------------------------------------------


def _env_secret(variable: str, what: str) -> str:
    if not _ENV_NAME.match(variable):  # e.g. the token itself given by mistake: do not echo it
        raise SignError(f"expected the NAME of an environment variable holding {what}, not the value itself")
    value = os.environ.get(variable)
    if not value:
        raise SignError(f"environment variable {variable} ({what}) is not set")
    return value


def secret_from_env(provider: Provider, args: argparse.Namespace) -> Secret | None:
    if args.seed_env:
        if provider is not Provider.TELNYX:
            raise SignError("--seed-env is for telnyx (an Ed25519 seed); use --token-env or --phone")
        try:
            seed = parse_key32(args.seed_env, _env_secret(args.seed_env, "the Telnyx Ed25519 seed"))
        except SettingsError:
            raise SignError(f"{args.seed_env} must hold a 32-byte Ed25519 seed, base64") from None
        return Secret(seed, f"environment variable {args.seed_env}")
    if args.token_env:
        if provider is Provider.TELNYX:
            raise SignError("telnyx signs with an Ed25519 private key: use --seed-env VAR (its 32-byte seed, base64)")
        return Secret(_env_secret(args.token_env, "the auth token").encode("utf-8"), f"variable {args.token_env}")
    return None


def secret_from_phone(creds: PhoneCredentials, algorithm: str, now: float) -> Secret | None:
    provider = creds.provider
    if provider is Provider.TELNYX:
        raise SignError(
            "a Telnyx phone's record holds only the public key: sign with --seed-env VAR (the private seed)"
        )
    if provider is Provider.EXOTEL:
        kind = KeyKind.EXOTEL_WEBHOOK_TOKEN
    elif provider is Provider.TWILIO and algorithm != twilio_sig.HMAC_SHA1:
        kind = KeyKind.TWILIO_SIGNING_KEY
    else:
        kind = KeyKind.AUTH_TOKEN
    keys = creds.active_keys(kind, now)
    if not keys:
        if provider is Provider.EXOTEL:
            return None  # IP allowlist only
        raise SignError(f"phone {creds.phone_id} has no active {kind.value}")
    return Secret(keys[0].material, f"phone {creds.phone_id} in Redis")


def _read_json(value: str) -> bytes:
    if value == "-":
        return sys.stdin.buffer.read()
    if value.startswith("@"):
        return Path(value[1:]).read_bytes()
    return value.encode("utf-8")


def _params(items: Sequence[str] | None) -> list[tuple[str, str]] | None:
    if not items:
        return None
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SignError(f"--param expects NAME=VALUE, got {item.split('=')[0]!r}")
        pairs.append((name, value))
    return pairs


def run(args: argparse.Namespace) -> int:
    from gateway.cli import _with_keystore
    from gateway.phone_records import InvalidRecord

    try:
        algorithm = args.algorithm.upper()
        params = [] if args.no_sample else _params(args.param)
        if args.no_sample and args.param:
            raise SignError("--no-sample and --param exclude each other")
        json_body = _read_json(args.json) if args.json is not None else None

        def make(provider: Provider, secret: Secret | None) -> SignedRequest:
            if algorithm != twilio_sig.HMAC_SHA1 and provider is not Provider.TWILIO:
                raise SignError("--algorithm is for twilio")
            return build(
                provider,
                args.url,
                secret=secret,
                method=args.method,
                params=params,
                json_body=json_body,
                nonce=args.nonce,
                timestamp=args.timestamp,
                algorithm=algorithm,
                client_ip=args.client_ip,
                target=args.target,
            )

        if args.phone:
            built: list[SignedRequest] = []

            async def lookup(store: Any) -> int:
                creds = await store.credentials(args.phone)
                if creds is None:
                    raise SignError(f"no such phone: {args.phone}")
                if args.provider and args.provider != creds.provider.value:
                    raise SignError(f"phone {args.phone} is a {creds.provider.value} phone, not {args.provider}")
                built.append(make(creds.provider, secret_from_phone(creds, algorithm, time.time())))
                return 0

            asyncio.run(_with_keystore(lookup))
            request = built[0]
        else:
            if not args.provider:
                raise SignError("give --provider (or --phone, whose record names it)")
            provider = Provider(args.provider)
            request = make(provider, secret_from_env(provider, args))
        if args.format == "http":
            sys.stdout.buffer.write(as_http(request))
            sys.stdout.buffer.flush()
        else:
            sys.stdout.write(as_curl(request))
            sys.stdout.flush()
        for note in request.notes:
            sys.stderr.write(f"note: {note}\n")
        return 0
    except (SignError, SettingsError, InvalidRecord, OSError, UnicodeDecodeError) as exc:
        sys.stderr.write(f"gateway sign: {exc}\n")
        return 2


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sign",
        allow_abbrev=False,  # "--token X" must not silently mean "--token-env X"
        help="print a correctly signed carrier callback (curl command or raw HTTP)",
        description=(
            "Sign a callback as the carrier would, for integration tests. Secrets come from an environment "
            "variable or from the phone's record in Redis, never from the command line."
        ),
    )
    p.add_argument("--provider", choices=PROVIDERS, help="the carrier (optional with --phone)")
    p.add_argument("--url", required=True, help="the public callback URL the carrier calls (and signs)")
    p.add_argument("--method", default="POST", type=str.upper, choices=["GET", "POST"])
    p.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="a callback parameter (form body for POST, query for GET); default: a sample inbound call",
    )
    p.add_argument("--no-sample", action="store_true", help="send no parameters at all")
    p.add_argument(
        "--json",
        metavar="BODY",
        help="a JSON body (twilio: covered by bodySHA256; telnyx: the event); @FILE or - for stdin",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--token-env", metavar="VAR", help="environment variable holding the auth token")
    source.add_argument("--phone", metavar="ID", help="use the phone's key from Redis (GATEWAY_REDIS_URL, GATEWAY_KEK)")
    source.add_argument(
        "--seed-env", metavar="VAR", help="environment variable holding the Telnyx Ed25519 seed (base64)"
    )
    p.add_argument("--format", choices=["curl", "http"], default="curl")
    p.add_argument(
        "--target", metavar="URL", help="send to scheme://host[:port] instead (adds X-Forwarded-Proto/-Host)"
    )
    p.add_argument(
        "--client-ip", metavar="IP", help="add X-Forwarded-For (Exotel's allowlist, through a trusted proxy)"
    )
    p.add_argument("--nonce", help="Plivo/Vobiz nonce (default: random)")
    p.add_argument("--timestamp", type=int, help="Telnyx timestamp, unix seconds (default: now)")
    p.add_argument(
        "--algorithm",
        default=twilio_sig.HMAC_SHA1,
        choices=[twilio_sig.HMAC_SHA1, twilio_sig.HMAC_SHA256],
        help="twilio: HMAC_SHA256 signs with the shared webhook signing key (adds the settings header)",
    )
    p.set_defaults(func=run)
