"""`gateway explain PHONE_ID FILE|-`: why does a captured request fail (or pass) verification?

Input: a raw HTTP/1.x request (parsed with h11) or a curl command line (split with shlex),
from FILE or stdin. The phone's credentials come from Redis through the KeyStore, like
`gateway phones get`. Prints the URL the gateway would rebuild, whether the presented
signature verifies, what the carrier would have signed (the string-to-sign: it holds no
secret), which variant of the request would verify (gateway/explain.py) and which part
differs. It never prints a key, and never a signature it computed: for an arbitrary
request that would make this tool a signing oracle. Only "matches" / "does not match".

Exit status: 0 the request verifies as captured, 1 it does not, 2 bad input or no such phone.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import h11

from gateway import explain
from gateway.errors import Rejected
from gateway.events import REDACTED_PARAMS, strip_query_params
from gateway.inbound import InboundRequest
from gateway.providers import KeyKind, PhoneCredentials, Provider, Verifier
from gateway.providers import plivo as plivo_sig
from gateway.providers import twilio as twilio_sig
from gateway.providers.exotel import TOKEN_PARAM
from gateway.providers.plivo import PlivoVerifier
from gateway.providers.telnyx import TIMESTAMP_HEADER, TelnyxVerifier
from gateway.providers.twilio import TwilioVerifier
from gateway.settings import PublicBase, SettingsError

# The CLI can afford more variants than the request path.
CLI_MAX_VARIANTS = 64
_SHOWN_CHARS = 4000
FORM = "application/x-www-form-urlencoded"


class CaptureError(ValueError):
    """The captured request cannot be parsed; the message says why."""


@dataclass
class Captured:
    """A request as captured: method, where it was sent, headers in order, body bytes."""

    method: str
    target: str  # raw path[?query] as on the wire
    headers: list[tuple[str, str]]
    body: bytes
    source: str  # "curl" or "http"
    url: str | None = None  # absolute URL when the capture names one (curl; absolute-form target)
    notes: list[str] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((value for n, value in self.headers if n.lower() == lowered), None)


# ---- curl ---------------------------------------------------------------------------------

_CURL_FLAGS = frozenset(
    "-s --silent -S --show-error -v --verbose -i --include -k --insecure -L --location --compressed -g --globoff "
    "--path-as-is -f --fail --fail-with-body -N --no-buffer -4 -6 --ipv4 --ipv6 --http1.0 --http1.1 --http2 "
    "-# --progress-bar --no-progress-meter -q --disable -Z --parallel --raw --tr-encoding".split()
)
_CURL_IGNORED_WITH_VALUE = frozenset(
    "-o --output -m --max-time --connect-timeout -w --write-out --retry --retry-delay --retry-max-time --resolve "
    "--connect-to --cacert --capath --cert -E --key --cert-type --key-type -x --proxy --limit-rate --max-redirs "
    "--interface -c --cookie-jar -D --dump-header --trace --trace-ascii --stderr".split()
)
_CURL_LONG_WITH_VALUE = {
    "--request": "-X",
    "--header": "-H",
    "--data": "-d",
    "--data-ascii": "-d",
    "--data-raw": "--data-raw",
    "--data-binary": "--data-binary",
    "--data-urlencode": "--data-urlencode",
    "--json": "--json",
    "--url": "--url",
    "--user-agent": "-A",
    "--referer": "-e",
    "--cookie": "-b",
    "--user": "-u",
}
_CURL_SHORT_WITH_VALUE = frozenset("XHdAebuomwxcDE")
_CURL_SHORT_FLAGS = frozenset("sSvikLgfN46#qZGI")


def _read_data_file(name: str, read_file: Callable[[str], bytes]) -> bytes:
    if name == "-":
        raise CaptureError("curl data from stdin (@-) cannot be replayed: put the data in the command or a file")
    try:
        return read_file(name)
    except OSError as exc:
        raise CaptureError(f"curl data file {name!r}: {exc.strerror}") from None


def _url_encoded(value: str, read_file: Callable[[str], bytes]) -> bytes:
    """--data-urlencode: content | =content | name=content | @file | name@file (curl_easy_escape)."""
    eq, at = value.find("="), value.find("@")
    if at != -1 and (eq == -1 or at < eq):
        name, content = value[:at], _read_data_file(value[at + 1 :], read_file)
    elif eq != -1:
        name, content = value[:eq], value[eq + 1 :].encode("utf-8")
    else:
        name, content = "", value.encode("utf-8")
    encoded = quote(content, safe="")
    return f"{name}={encoded}".encode() if name else encoded.encode()


def parse_curl(text: str, *, read_file: Callable[[str], bytes] | None = None) -> Captured:
    """A curl command line (what `gateway sign` prints, or "Copy as cURL" from a browser)."""
    reader = read_file or (lambda name: Path(name).read_bytes())
    joined = text.replace("\\\r\n", " ").replace("\\\n", " ").strip()
    if joined.startswith("$ "):
        joined = joined[2:]
    try:
        tokens = shlex.split(joined, comments=False, posix=True)
    except ValueError as exc:
        raise CaptureError(f"cannot split the curl command: {exc}") from None
    if not tokens or Path(tokens[0]).name != "curl":
        raise CaptureError("a curl command must start with curl")
    method: str | None = None
    headers: list[tuple[str, str]] = []
    data: list[bytes] = []
    json_parts: list[bytes] = []
    url: str | None = None
    get = head = False

    def take(option: str, value: str) -> None:
        nonlocal method, url
        if option == "-X":
            method = value.upper()
        elif option == "-H":
            if value.startswith("@"):
                raise CaptureError("curl -H @file is not supported: put the headers in the command")
            name, sep, rest = value.partition(":")
            if sep:
                headers[:] = [(n, v) for n, v in headers if n.lower() != name.strip().lower()]
                if rest.strip():  # "Name:" alone removes the header in curl
                    headers.append((name.strip(), rest.strip()))
            elif value.endswith(";"):  # "Name;" sends an empty header
                headers.append((value[:-1].strip(), ""))
            else:
                raise CaptureError(f"curl header {value!r} has no ':'")
        elif option == "-d":
            raw = _read_data_file(value[1:], reader) if value.startswith("@") else value.encode("utf-8")
            data.append(raw.replace(b"\r", b"").replace(b"\n", b"") if value.startswith("@") else raw)
        elif option == "--data-raw":
            data.append(value.encode("utf-8"))
        elif option == "--data-binary":
            data.append(_read_data_file(value[1:], reader) if value.startswith("@") else value.encode("utf-8"))
        elif option == "--data-urlencode":
            data.append(_url_encoded(value, reader))
        elif option == "--json":
            json_parts.append(_read_data_file(value[1:], reader) if value.startswith("@") else value.encode("utf-8"))
        elif option == "--url":
            if url is not None:
                raise CaptureError("the curl command names several URLs: give one")
            url = value
        elif option == "-A":
            headers.append(("User-Agent", value))
        elif option == "-e":
            headers.append(("Referer", value))
        elif option == "-b":
            headers.append(("Cookie", value))
        # -u and the ignored options do not change what is signed

    index = 1
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if token.startswith("--"):
            if token in _CURL_FLAGS:
                continue
            if token in ("--get",):
                get = True
                continue
            if token in ("--head",):
                head = True
                continue
            if token in _CURL_LONG_WITH_VALUE or token in _CURL_IGNORED_WITH_VALUE:
                if index >= len(tokens):
                    raise CaptureError(f"curl option {token} needs a value")
                value = tokens[index]
                index += 1
                if token in _CURL_LONG_WITH_VALUE:
                    take(_CURL_LONG_WITH_VALUE[token], value)
                continue
            raise CaptureError(f"unsupported curl option {token}")
        if token.startswith("-") and len(token) > 1:
            for position in range(1, len(token)):
                letter = token[position]
                if letter in _CURL_SHORT_FLAGS:
                    get = get or letter == "G"
                    head = head or letter == "I"
                    continue
                if letter in _CURL_SHORT_WITH_VALUE:
                    value = token[position + 1 :]
                    if not value:
                        if index >= len(tokens):
                            raise CaptureError(f"curl option -{letter} needs a value")
                        value = tokens[index]
                        index += 1
                    take(f"-{letter}", value)
                    break
                raise CaptureError(f"unsupported curl option -{letter}")
            continue
        if url is not None:
            raise CaptureError("the curl command names several URLs: give one")
        url = token
    if url is None:
        raise CaptureError("the curl command has no URL")
    if "://" not in url:
        url = "http://" + url  # as curl does
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CaptureError(f"unsupported URL {url!r}: expected http(s)://host/path")
    query = parts.query
    body = b""
    if json_parts:
        body = b"".join(json_parts)
        if not any(n.lower() == "content-type" for n, _ in headers):
            headers.append(("Content-Type", "application/json"))
    elif data:
        joined_data = b"&".join(data)
        if get:
            query = f"{query}&{joined_data.decode('latin-1')}" if query else joined_data.decode("latin-1")
        else:
            body = joined_data
            if not any(n.lower() == "content-type" for n, _ in headers):
                headers.append(("Content-Type", FORM))
    if method is None:
        method = "HEAD" if head else ("POST" if body or json_parts else "GET")
    target = (parts.path or "/") + (f"?{query}" if query else "")
    scheme_netloc = f"{parts.scheme}://{parts.netloc}"
    return Captured(method, target, headers, body, "curl", url=scheme_netloc + target)


# ---- raw HTTP (h11) -----------------------------------------------------------------------


def parse_http(data: bytes) -> Captured:
    """A raw HTTP/1.x request: request line, headers, blank line, body (Content-Length or chunked)."""
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
    connection.receive_data(data.lstrip(b"\r\n"))
    connection.receive_data(b"")  # end of input
    request: h11.Request | None = None
    body = bytearray()
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as exc:
            hint = ""
            if request is not None:
                declared = dict(request.headers).get(b"content-length")
                if declared is not None:
                    hint = f" (Content-Length says {declared.decode()} bytes, {len(body)} arrived)"
            raise CaptureError(f"not a complete HTTP/1.x request: {exc}{hint}") from None
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
        else:  # NEED_DATA cannot happen after end of input; ConnectionClosed before a request
            raise CaptureError("no HTTP request found")
    assert request is not None
    leftover, _closed = connection.trailing_data
    if leftover.strip():
        if request.method == b"POST" and not body:
            raise CaptureError(
                f"{len(leftover)} bytes follow the headers but the request declares no body: "
                "add a Content-Length header"
            )
        raise CaptureError("data after the end of the request (is Content-Length too small?)")
    headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers.raw_items()]
    target = request.target.decode("latin-1")
    url: str | None = None
    if not target.startswith("/"):
        parts = urlsplit(target)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CaptureError(f"unsupported request target {target!r}")
        url = target
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Captured(request.method.decode("ascii").upper(), target, headers, bytes(body), "http", url=url)


def parse_capture(data: bytes, fmt: str = "auto") -> Captured:
    if fmt == "auto":
        head = data.lstrip()[:7]
        fmt = "curl" if head.startswith((b"curl ", b"curl\t", b"curl\\", b"$ curl")) else "http"
    if fmt == "curl":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CaptureError("the curl command is not UTF-8 text") from None
        return parse_curl(text)
    return parse_http(data)


# ---- the request as the gateway sees it ---------------------------------------------------


def _first(value: str | None) -> str:
    return value.split(",", 1)[0].strip() if value else ""


def received_request(captured: Captured, public_base: PublicBase | None) -> tuple[InboundRequest, str]:
    """The InboundRequest the gateway would build, and where its URL came from."""
    headers: dict[str, str] = {}
    duplicates: set[str] = set()
    for name, value in captured.headers:
        lowered = name.lower()
        if lowered in headers:
            duplicates.add(lowered)
            continue
        headers[lowered] = value
    path, _, query = captured.target.partition("?")
    if public_base is not None:
        scheme, netloc, path = public_base.scheme, public_base.netloc, public_base.path_prefix + path
        how = "GATEWAY_PUBLIC_BASE_URL (X-Forwarded-* ignored, as the gateway does)"
    else:
        if captured.url is not None:
            parts = urlsplit(captured.url)
            scheme, netloc, how = parts.scheme, parts.netloc, f"the {captured.source} URL"
        else:
            scheme, netloc, how = "http", "", "the Host header, scheme http (not in a raw capture)"
        if "host" in headers:
            netloc = headers["host"]
            how = f"the Host header, scheme {scheme}"
        forwarded = [h for h in ("x-forwarded-proto", "x-forwarded-host") if _first(headers.get(h))]
        if forwarded:
            scheme = _first(headers.get("x-forwarded-proto")).lower() or scheme
            netloc = _first(headers.get("x-forwarded-host")) or netloc
            how += " + X-Forwarded-Proto/-Host (believed only from GATEWAY_TRUSTED_PROXIES)"
    client_ip = _first(headers.get("x-forwarded-for")) or "192.0.2.1"
    request = InboundRequest(
        method=captured.method,
        scheme=scheme,
        netloc=netloc,
        raw_path=_latin1(path or "/"),
        query_string=_latin1(query),
        headers=headers,
        body=captured.body,
        client_ip=client_ip,
        duplicate_headers=frozenset(duplicates),
    )
    return request, how


def _latin1(text: str) -> str:
    """Wire form: UTF-8 bytes as latin-1 text, as ASGI hands the gateway raw_path/query_string."""
    try:
        return text.encode("utf-8").decode("latin-1")
    except UnicodeEncodeError:
        return text


def configured_request(received: InboundRequest, public_url: str) -> InboundRequest:
    """`received` as if addressed to the callback URL configured at the carrier.

    A URL without a path keeps the captured path; without a query, the captured query.
    """
    parts = urlsplit(public_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CaptureError(f"--public-url {public_url!r}: expected http(s)://host[:port][/path][?query]")
    path = _latin1(parts.path) if parts.path not in ("", "/") else received.raw_path
    query = _latin1(parts.query) if parts.query else received.query_string
    return InboundRequest(
        method=received.method,
        scheme=parts.scheme,
        netloc=parts.netloc,
        raw_path=path,
        query_string=query,
        headers=received.headers,
        body=received.body,
        client_ip=received.client_ip,
        duplicate_headers=received.duplicate_headers,
    )


def differences(received: InboundRequest, configured: InboundRequest) -> list[str]:
    """Which parts of the URL differ, in words."""
    out: list[str] = []
    if received.scheme != configured.scheme:
        out.append(f"scheme: gateway sees {received.scheme}, carrier calls {configured.scheme}")
    if received.netloc != configured.netloc:
        same_host = explain.split_netloc(received.netloc)[0] == explain.split_netloc(configured.netloc)[0]
        kind = "port" if same_host else "host"
        out.append(f"{kind}: gateway sees {received.netloc}, carrier calls {configured.netloc}")
    if received.raw_path != configured.raw_path:
        out.append(f"path: gateway sees {received.raw_path}, carrier calls {configured.raw_path}")
    if received.query_string != configured.query_string:
        same = sorted(received.query_string.split("&")) == sorted(configured.query_string.split("&"))
        out.append("query: same parameters in another order" if same else "query: differs (values not shown)")
    return out


# ---- what the carrier signs -------------------------------------------------------------


def _text_url(request: InboundRequest, *, with_query: bool = True) -> str:
    def wire(raw: str) -> str:
        try:
            return raw.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return raw

    url = f"{request.scheme}://{request.netloc}{wire(request.raw_path)}"
    if with_query and request.query_string:
        url += "?" + wire(request.query_string)
    return url


def strings_to_sign(request: InboundRequest, provider: Provider) -> list[tuple[str, bytes]]:
    """(what, bytes) the carrier signs for this request, per signature header present. No secret in them."""
    out: list[tuple[str, bytes]] = []
    try:
        if provider in (Provider.PLIVO, Provider.VOBIZ):
            params = request.form_params() if request.method == "POST" else None
            for header, nonce_header, name in (
                ("x-plivo-signature-v3", "x-plivo-signature-v3-nonce", "Plivo V3 (X-Plivo-Signature-V3)"),
                ("x-plivo-signature-ma-v3", "x-plivo-signature-v3-nonce", "Plivo V3 (X-Plivo-Signature-Ma-V3)"),
            ):
                if request.headers.get(header):
                    nonce = request.headers.get(nonce_header, "")
                    out.append((name, plivo_sig.v3_string_to_sign(request.method, _text_url(request), params, nonce)))
            if provider is Provider.VOBIZ:
                for header in ("x-vobiz-signature-v3", "x-vobiz-signature-ma-v3"):
                    if request.headers.get(header):
                        nonce = request.headers.get("x-vobiz-signature-v3-nonce", "")
                        text = plivo_sig.vobiz_v3_string_to_sign(_text_url(request), nonce)
                        out.append((f"Vobiz V3 ({header})", text))
        elif provider is Provider.TWILIO:
            twilio_params = request.form_params() if request.is_form else None
            name = "Twilio (X-Twilio-Signature; also accepted with the default port added/removed)"
            out.append((name, twilio_sig.string_to_sign(_text_url(request), twilio_params)))
        elif provider is Provider.TELNYX:
            timestamp = request.headers.get(TIMESTAMP_HEADER, "")
            out.append(
                ("Telnyx (telnyx-signature-ed25519 over timestamp|body)", timestamp.encode() + b"|" + request.body)
            )
    except Rejected as rejection:
        out.append(("(cannot be built)", f"the request cannot be parsed: {rejection}".encode()))
    return out


def _shown(data: bytes) -> str:
    text = data.decode("utf-8", "backslashreplace")
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    if len(text) > _SHOWN_CHARS:
        text = text[:_SHOWN_CHARS] + f"… ({len(data)} bytes)"
    return text


# ---- the report ---------------------------------------------------------------------------


def _verifier(provider: Provider, tolerance_s: int) -> Verifier | None:
    if provider in (Provider.PLIVO, Provider.VOBIZ):
        return PlivoVerifier()
    if provider is Provider.TWILIO:
        return TwilioVerifier()
    if provider is Provider.TELNYX:
        return TelnyxVerifier(tolerance_s=tolerance_s)
    return None


def _verdict(verifier: Verifier, request: InboundRequest, creds: PhoneCredentials, now: float) -> tuple[bool, str]:
    try:
        verified = verifier.verify(request, creds, now)
    except Rejected as rejection:
        return False, rejection.reason.value
    return True, f"key {verified.key_fingerprint}"


def report(
    captured: Captured,
    creds: PhoneCredentials,
    *,
    public_base: PublicBase | None,
    public_url: str | None,
    tolerance_s: int = 300,
    now: float | None = None,
) -> tuple[list[str], int]:
    """The lines to print and the exit status (0 verifies as captured, 1 does not)."""
    now = time.time() if now is None else now
    provider = creds.provider
    received, how = received_request(captured, public_base)
    lines: list[str] = []
    fingerprints = ", ".join(f"{kind.value} {key.fingerprint}" for kind, keys in creds.keys.items() for key in keys)
    lines.append(f"phone {creds.phone_id}: {provider.value} (keys: {fingerprints or 'none'})")
    shown_url = _text_url(received)
    if provider is Provider.EXOTEL:
        shown_url = _text_url(received, with_query=False)
    lines.append(f"request: {received.method} {shown_url}")
    lines.append(f"  URL as the gateway rebuilds it, from {how}")

    if provider is Provider.EXOTEL:
        lines += _exotel_lines(received, creds, now)
        return lines, 0 if _exotel_token_ok(received, creds, now) else 1

    verifier = _verifier(provider, tolerance_s)
    assert verifier is not None
    check_now = now
    if provider is Provider.TELNYX:
        try:  # judge the signature at the moment it was made; the age is reported apart
            check_now = float(int(received.headers.get(TIMESTAMP_HEADER, "")))
        except ValueError:
            pass
    ok, detail = _verdict(verifier, received, creds, check_now)
    lines.append(f"signature as captured: {'MATCHES' if ok else 'does not match'} ({detail})")
    status = 0 if ok else 1
    if provider is Provider.TELNYX:
        if ok and abs(now - check_now) > tolerance_s:
            lines.append(
                f"  but the timestamp is {int(now - check_now)} s from now (tolerance {tolerance_s} s): "
                "the gateway rejects it as stale (a replayed capture, or clock skew)"
            )
            status = 1
        for what, text in strings_to_sign(received, provider):
            lines += [f"the carrier signs, {what}:", f"  {_shown(text)}"]
        if not ok:
            lines.append("  Telnyx signs the timestamp and the body, not the URL: a body changed on the way (even")
            lines.append("  re-serialised JSON or a trailing newline), another timestamp, or another key.")
        return lines, status

    for what, text in strings_to_sign(received, provider):
        lines += [f"a carrier calling this URL signs, {what}:", f"  {_shown(text)}"]
    if ok:
        return lines, status

    hint, hint_source = public_base, "GATEWAY_PUBLIC_BASE_URL"
    if public_url is not None:
        configured = configured_request(received, public_url)
        matches, why = _verdict(verifier, configured, creds, now)
        lines.append(f"with --public-url {_text_url(configured)}: {'MATCHES' if matches else 'does not match'} ({why})")
        for part in differences(received, configured) or ["nothing: the same URL"]:
            lines.append(f"  differs: {part}")
        if matches:
            for what, text in strings_to_sign(configured, provider):
                lines += [f"the carrier signed, {what}:", f"  {_shown(text)}"]
            return lines, status
        hint, hint_source = PublicBase(configured.scheme, configured.netloc, ""), "--public-url"

    tried: list[tuple[explain.Variant, bool]] = []
    found: explain.Variant | None = None
    for variant, verified in explain.attempts(
        received, creds, verifier, now, public_base=hint, base_source=hint_source, limit=CLI_MAX_VARIANTS
    ):
        tried.append((variant, verified is not None))
        if verified is not None:
            found = variant
            break
    lines.append(f"variants tried: {len(tried)}")
    for variant, matched in tried:
        lines.append(f"  {'MATCH' if matched else 'no   '}  [{variant.label}] {variant.description}")
    if found is not None:
        lines.append(f"diagnosis: {explain.Diagnosis(provider, found, None, len(tried)).message()}")
        for what, text in strings_to_sign(found.request, provider):
            lines += [f"the carrier signed, {what}:", f"  {_shown(text)}"]
    else:
        lines.append(
            "diagnosis: no variant matches: the auth token differs (rotated? sub-account?), the body was changed "
            "on the way, or the request is forged."
            + ("" if public_url else " Try --public-url with the callback URL configured at the carrier.")
        )
    return lines, status


def _exotel_token_ok(request: InboundRequest, creds: PhoneCredentials, now: float) -> bool:
    keys = creds.active_keys(KeyKind.EXOTEL_WEBHOOK_TOKEN, now)
    if not creds.keys.get(KeyKind.EXOTEL_WEBHOOK_TOKEN):
        return True
    try:
        presented = [value for name, value in request.query_params() if name == TOKEN_PARAM]
    except Rejected:
        return False
    if len(presented) != 1:
        return False
    token = presented[0].encode("utf-8")
    return any(hmac.compare_digest(key.material, token) for key in keys)


def _exotel_lines(request: InboundRequest, creds: PhoneCredentials, now: float) -> list[str]:
    lines = [
        "Exotel does not sign callbacks: the gateway checks the source address against EXOTEL_ALLOWED_IPS",
        f"  (this capture says {request.client_ip}; the gateway uses the socket peer, or X-Forwarded-For",
        "  from GATEWAY_TRUSTED_PROXIES) and, when the phone has one, the ?token= of the URL.",
    ]
    if not creds.keys.get(KeyKind.EXOTEL_WEBHOOK_TOKEN):
        lines.append("token: the phone has none (IP allowlist only)")
    elif _exotel_token_ok(request, creds, now):
        lines.append("token: MATCHES the phone's exotel_webhook_token")
    else:
        shown = strip_query_params(request.query_string, REDACTED_PARAMS)
        lines.append(f"token: missing, repeated or different (query without it: {shown or '-'})")
    return lines


# ---- command ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from gateway.cli import _cli_settings, _with_keystore
    from gateway.phone_records import InvalidRecord

    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        captured = parse_capture(data, args.input_format)
        settings = _cli_settings()

        async def lookup(store: Any) -> int:
            creds = await store.credentials(args.phone_id)
            if creds is None:
                sys.stderr.write(f"gateway explain: no such phone: {args.phone_id}\n")
                return 2
            lines, status = report(
                captured,
                creds,
                public_base=settings.public_base,
                public_url=args.public_url,
                tolerance_s=settings.telnyx_tolerance_s,
            )
            sys.stdout.write("\n".join(lines) + "\n")
            return status

        return asyncio.run(_with_keystore(lookup))
    except (CaptureError, SettingsError, InvalidRecord, OSError) as exc:
        sys.stderr.write(f"gateway explain: {exc}\n")
        return 2


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "explain",
        help="explain why a captured request's signature fails (raw HTTP or a curl command)",
        description=(
            "Read a captured request (raw HTTP/1.x, or a curl command line) and the phone's credentials from "
            "Redis; print the URL the gateway rebuilds, whether the signature matches, what the carrier signs "
            "and which variant (scheme, host, port, path, query, body) would match. Never prints a key or a "
            "computed signature. Exit 0: matches, 1: does not, 2: error."
        ),
    )
    p.add_argument("phone_id")
    p.add_argument("file", help="the captured request: a file, or - for stdin")
    p.add_argument("--public-url", help="the callback URL configured at the carrier, e.g. https://hooks.example.com")
    p.add_argument(
        "--input-format",
        choices=["auto", "http", "curl"],
        default="auto",
        help="how to read the capture (default: curl if it starts with 'curl', else raw HTTP)",
    )
    p.set_defaults(func=run)
