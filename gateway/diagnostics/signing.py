"""A correctly signed carrier callback (what `gateway sign` prints), as a curl command or raw HTTP.

For users' own integration tests and the README quick start. Each carrier's spec
(gateway/providers/<carrier>.py) signs, with the same public helpers its verifier is
tested against, and says what its callbacks carry.
Secrets never come from argv: an environment variable or the phone's record in Redis.

`target` sends the request somewhere else (e.g. http://127.0.0.1:8080) while the
signature covers `url`; X-Forwarded-Proto and X-Forwarded-Host then carry the public
scheme and host. The gateway believes them only from GATEWAY_TRUSTED_PROXIES; with
GATEWAY_PUBLIC_BASE_URL set to the origin of `url`, it ignores them and still matches.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from gateway.diagnostics.errors import SignError
from gateway.providers import PhoneCredentials, Provider
from gateway.providers.registry import CARRIERS, spec_for
from gateway.providers.spec import CallbackBody, SigningInput, SigningKeyError
from gateway.settings import SettingsError, parse_key32

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
PROVIDERS = tuple(p.value for p in Provider)
# --algorithm values (the carriers' `sign_algorithms`); the first is the default, the only one others take.
ALGORITHMS = tuple(dict.fromkeys(name for spec in CARRIERS.values() for name in spec.sign_algorithms))
DEFAULT_ALGORITHM = ALGORITHMS[0]
# The carriers signed with an Ed25519 private key (--seed-env), and those with --algorithm, as users name them.
_SEEDED = "/".join(provider.value for provider, spec in CARRIERS.items() if spec.seed_signed)
_WITH_ALGORITHMS = "/".join(provider.value for provider, spec in CARRIERS.items() if spec.sign_algorithms)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


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
    make = spec_for(provider).sample_params
    return make() if make is not None else []


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
    algorithm: str = DEFAULT_ALGORITHM,
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
    spec = spec_for(provider)
    sends = spec.callback_body
    if json_body is not None and sends is CallbackBody.FORM:
        raise SignError(f"{provider.value} sends form parameters, not JSON: use --param")
    if json_body is not None and method != "POST":
        raise SignError("--json needs --method POST")
    if sends is CallbackBody.JSON_EVENT:
        if params:
            raise SignError(f"{provider.value} sends a JSON event: use --json, not --param")
        if method != "POST":
            raise SignError(f"{provider.value} sends POST")
    if params is None:
        params = [] if json_body is not None else sample_params(provider)
    params = list(params)

    headers: list[tuple[str, str]] = []
    body = b""
    notes: list[str] = []
    if spec.sample_event is not None and json_body is None:
        json_body = spec.sample_event(url)
    if json_body is not None:
        body = json_body
        headers.append(("Content-Type", JSON))
        body_hash = spec.body_hash_param
        if body_hash is not None:
            url = _with_query(url, [(body_hash.name, body_hash.digest(body))])
    elif method == "GET":
        url = _with_query(url, params)
    elif params:
        body = urlencode(params).encode()
        headers.append(("Content-Type", FORM))

    if spec.unsigned_proof is not None:  # it signs nothing: its proof (if any) goes into the URL
        query, proof_notes = spec.unsigned_proof(secret.value if secret is not None else None)
        url = _with_query(url, query)
        notes += proof_notes
    else:
        signed_params = params if method == "POST" and json_body is None else None
        headers += signature_headers(provider, url, method, signed_params, body, secret, nonce, timestamp, algorithm)

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


def signature_headers(
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
        raise SignError(f"{provider.value} needs a key: --token-env VAR, --phone ID or ({_SEEDED}) --seed-env VAR")
    signer = spec_for(provider).sign_headers
    if signer is None:
        raise SignError(f"{provider.value} has no signature")
    try:
        return signer(SigningInput(secret.value, url, method, params, body, nonce, timestamp, algorithm))
    except SigningKeyError as exc:
        raise SignError(str(exc)) from None


def check_algorithm(provider: Provider, algorithm: str) -> None:
    """--algorithm other than the default only for the carriers that have it."""
    if algorithm != DEFAULT_ALGORITHM and algorithm not in spec_for(provider).sign_algorithms:
        raise SignError(f"--algorithm is for {_WITH_ALGORITHMS}")


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


def _env_secret(variable: str, what: str, environ: Mapping[str, str]) -> str:
    if not _ENV_NAME.match(variable):  # e.g. the token itself given by mistake: do not echo it
        raise SignError(f"expected the NAME of an environment variable holding {what}, not the value itself")
    value = environ.get(variable)
    if not value:
        raise SignError(f"environment variable {variable} ({what}) is not set")
    return value


def secret_from_env(
    provider: Provider,
    *,
    token_env: str | None,
    seed_env: str | None,
    environ: Mapping[str, str] = os.environ,
) -> Secret | None:
    """The key named by --seed-env (Telnyx's Ed25519 seed) or --token-env (an auth token); None if neither."""
    spec = spec_for(provider)
    if seed_env:
        if not spec.seed_signed:
            raise SignError(f"--seed-env is for {_SEEDED} (an Ed25519 seed); use --token-env or --phone")
        try:
            seed = parse_key32(seed_env, _env_secret(seed_env, f"the {spec.title} Ed25519 seed", environ))
        except SettingsError:
            raise SignError(f"{seed_env} must hold a 32-byte Ed25519 seed, base64") from None
        return Secret(seed, f"environment variable {seed_env}")
    if token_env:
        if spec.seed_signed:
            raise SignError(
                f"{provider.value} signs with an Ed25519 private key: use --seed-env VAR (its 32-byte seed, base64)"
            )
        return Secret(_env_secret(token_env, "the auth token", environ).encode("utf-8"), f"variable {token_env}")
    return None


def secret_from_phone(creds: PhoneCredentials, algorithm: str, now: float) -> Secret | None:
    spec = spec_for(creds.provider)
    if spec.signing_key is None:
        raise SignError(
            f"a {spec.title} phone's record holds only the public key: sign with --seed-env VAR (the private seed)"
        )
    kind = spec.signing_key(algorithm)
    keys = creds.active_keys(kind, now)
    if not keys:
        if spec.sign_headers is None:
            return None  # it signs nothing: checked by source address only
        raise SignError(f"phone {creds.phone_id} has no active {kind.value}")
    return Secret(keys[0].material, f"phone {creds.phone_id} in Redis")


def parse_params(items: Sequence[str] | None) -> list[tuple[str, str]] | None:
    """--param NAME=VALUE items as pairs; None when there are none."""
    if not items:
        return None
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SignError(f"--param expects NAME=VALUE, got {item.split('=')[0]!r}")
        pairs.append((name, value))
    return pairs
