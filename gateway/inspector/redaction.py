"""What the inspector may show of a request: every secret removed or shortened, phone numbers masked.

Applied when a page is rendered, never on the request path. The carrier facts come
from the registry (`SECRET_PARAMS`, each spec's `signature_headers`); nothing here
names a carrier.

- Headers: `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie` and any header
  whose name says it holds a token, secret, password or API key are removed; signature
  values are shortened to their first few characters and "…"; a URL in a header
  (`X-Original-URI`, `Referer`, ...) has its query redacted like the request's.
- Parameters (query, form, JSON): every carrier's secret parameter (`SECRET_PARAMS`,
  e.g. the `?token=` of a phone's callback URL) is removed, wherever it appears.
- Phone numbers: with masking on (GATEWAY_INSPECTOR_MASK_NUMBERS), every value that
  looks like one (an optional "+" and 7 to 15 digits, standing alone) keeps only its
  last 4 digits.
"""

from __future__ import annotations

import hmac
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson

from gateway.errors import Rejected
from gateway.inbound import InboundRequest, parse_pairs, wire_text
from gateway.providers.registry import CARRIERS, SECRET_PARAMS

SHOWN_SIGNATURE_CHARS = 6
ELLIPSIS = "…"
REMOVED_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
_SECRET_HEADER_WORDS = ("token", "secret", "password", "api-key", "apikey", "session")
_NOT_A_SIGNATURE = ("-nonce", "-timestamp", "-settings")
# Every carrier's signature headers (the registry's), plus any other header named like one.
SIGNATURE_HEADERS = frozenset(
    name.lower()
    for spec in CARRIERS.values()
    for name in spec.signature_headers
    if not name.lower().endswith(_NOT_A_SIGNATURE)
)
_SECRET_PARAMS_LOWER = frozenset(name.lower() for name in SECRET_PARAMS)
# Headers a captured request does not need in a curl command (curl sets them itself).
_NOT_IN_COMMAND = frozenset({"host", "content-length", "connection", "transfer-encoding", "accept-encoding"})
_NUMBER = re.compile(r"(?<![0-9A-Za-z])\+?[0-9]{7,15}(?![0-9A-Za-z])")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e\u00a0-\uffff]")
_MAX_VALUE = 2000  # characters of one value shown


def printable(text: str, limit: int = _MAX_VALUE) -> str:
    """Control characters replaced (a page or a terminal never gets one), bounded."""
    cleaned = _UNPRINTABLE.sub("?", text)
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + ELLIPSIS


def mask_number(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = len(text) - (1 if text.startswith("+") else 0)
    return ("+" if text.startswith("+") else "") + "*" * (digits - 4) + text[-4:]


def mask_numbers(text: str) -> str:
    return _NUMBER.sub(mask_number, text)


def shorten(value: str) -> str:
    """A signature's first few characters, enough to tell two apart, and "…"."""
    return printable(value[:SHOWN_SIGNATURE_CHARS]) + ELLIPSIS


def is_secret_param(name: str) -> bool:
    return name.lower() in _SECRET_PARAMS_LOWER


def _is_removed_header(name: str) -> bool:
    return name in REMOVED_HEADERS or any(word in name for word in _SECRET_HEADER_WORDS)


def _is_signature_header(name: str) -> bool:
    return name in SIGNATURE_HEADERS or ("signature" in name and not name.endswith(_NOT_A_SIGNATURE))


@dataclass(frozen=True, slots=True)
class Redactor:
    mask: bool  # GATEWAY_INSPECTOR_MASK_NUMBERS
    secret_names: frozenset[str] = frozenset()  # one request's parameters that held a phone's secret

    def for_record(self, secret_names: frozenset[str]) -> Redactor:
        return self if not secret_names else Redactor(self.mask, secret_names)

    def value(self, text: str) -> str:
        return printable(mask_numbers(text) if self.mask else text)

    def secret(self, name: str) -> bool:
        return is_secret_param(name) or name in self.secret_names

    def pairs(self, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Parameters without any carrier's secret ones, numbers masked."""
        return [(printable(name, 200), self.value(value)) for name, value in pairs if not self.secret(name)]

    def query(self, raw: str) -> str:
        """A raw query string rebuilt without secret parameters (numbers masked); "" when none is left."""
        if not raw:
            return ""
        try:
            pairs = parse_pairs(wire_text(raw))
        except Rejected:
            return "(not parsable: not shown)"
        return urlencode(self.pairs(pairs))

    def url(self, text: str) -> str:
        """A URL (or a path) with its query redacted."""
        try:
            parts = urlsplit(text)
        except ValueError:
            return "(not parsable: not shown)"
        query = self.query(parts.query)
        base = parts._replace(query="", fragment="").geturl()
        return printable(base + (f"?{query}" if query else ""))

    def headers(self, headers: Mapping[str, str]) -> list[tuple[str, str]]:
        shown: list[tuple[str, str]] = []
        for name, value in headers.items():
            if _is_removed_header(name):
                continue
            if _is_signature_header(name):
                shown.append((printable(name, 200), shorten(value)))
            elif "?" in value:  # a URL: X-Original-URI, X-Forwarded-Uri, Referer, ...
                shown.append((printable(name, 200), self.url(value)))
            else:
                shown.append((printable(name, 200), printable(value)))
        return shown

    def json(self, value: Any) -> Any:
        """A parsed JSON value without secret keys, numbers masked."""
        if isinstance(value, dict):
            return {key: self.json(item) for key, item in value.items() if not self.secret(str(key))}
        if isinstance(value, list):
            return [self.json(item) for item in value]
        if isinstance(value, str):
            return self.value(value)
        return value


@dataclass(frozen=True, slots=True)
class Shown:
    """A request as the inspector shows it."""

    url: str  # public URL as the gateway rebuilt it, query redacted
    headers: list[tuple[str, str]]
    query: list[tuple[str, str]]
    form: list[tuple[str, str]]
    json: str | None  # pretty-printed redacted JSON body
    body_note: str  # what is (not) shown of the body
    command: str  # `gateway explain` of it, to copy


def show(request: InboundRequest, phone_id: str | None, redactor: Redactor, body_size: int) -> Shown:
    query_text = redactor.query(request.query_string)
    url = printable(request.base_url) + (f"?{query_text}" if query_text else "")
    headers = redactor.headers(request.headers)
    try:
        query = redactor.pairs(parse_pairs(wire_text(request.query_string)))
    except Rejected:
        query = []
    form: list[tuple[str, str]] = []
    parsed_json: str | None = None
    data: str | None = None  # the body for the command
    if body_size and not request.body:
        note = f"{body_size} bytes: too large to keep"
    elif not request.body:
        note = "no body"
    elif request.is_form:
        try:
            form = redactor.pairs(parse_pairs(wire_text(request.body.decode("latin-1"))))
            data = urlencode(form)
            note = f"{body_size} bytes, form parameters below"
        except (Rejected, UnicodeDecodeError):
            note = f"{body_size} bytes, form body not parsable: not shown"
    else:
        try:
            redacted = redactor.json(orjson.loads(request.body))
            parsed_json = orjson.dumps(redacted, option=orjson.OPT_INDENT_2).decode()
            data = orjson.dumps(redacted).decode()
            note = f"{body_size} bytes of JSON"
        except orjson.JSONDecodeError:
            note = f"{body_size} bytes ({printable(request.content_type or 'no content type', 100)}): not shown"
    return Shown(url, headers, query, form, parsed_json, note, explain_command(request, phone_id, url, headers, data))


def explain_command(
    request: InboundRequest, phone_id: str | None, url: str, headers: list[tuple[str, str]], data: str | None
) -> str:
    """The request as `gateway explain PHONE_ID -` reads it (a curl command on stdin), redacted."""
    lines = [
        f"gateway explain {shlex.quote(phone_id or 'PHONE_ID')} - <<'EOF'",
        f"curl -X {request.method} {shlex.quote(url)}",
    ]
    for name, value in headers:
        if name not in _NOT_IN_COMMAND:
            lines.append(f"  -H {shlex.quote(f'{name}: {value}')}")
    if data is not None:
        lines.append(f"  --data-raw {shlex.quote(data)}")
    return " \\\n".join(lines[1:]).join([lines[0] + "\n", "\nEOF"])


def params_holding(inbound: InboundRequest, secrets: Iterable[bytes]) -> frozenset[str]:
    """Names of the query and form parameters whose value is one of `secrets` (compared in constant time).

    A phone's secret sent under another name (Exotel's token as `?tok=`) is then redacted like the
    carriers' secret parameters. Refused requests only: never on the accepted path.
    """
    materials = list(secrets)
    if not materials:
        return frozenset()
    try:
        pairs = [*inbound.query_params(), *inbound.form_params()]
    except Rejected:
        return frozenset()
    names = set()
    for name, value in pairs:
        raw = value.encode("utf-8", "surrogatepass")
        matched = False
        for material in materials:
            matched |= hmac.compare_digest(raw, material)
        if matched:
            names.add(name)
    return frozenset(names)
