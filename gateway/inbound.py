"""The read-only view of one webhook request that verifiers work on (read-only by convention: see InboundRequest).

Everything here is the request *as received*: the raw path and raw query string
from the ASGI scope, the raw body bytes, and the public URL the carrier called
(rebuilt by the edge from GATEWAY_PUBLIC_BASE_URL or trusted proxy headers).
Verifiers must never re-serialise a parsed form or re-encode the query.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson

from gateway.errors import Reason, Rejected

# Carriers post a few dozen fields; a form with thousands is an attack on the parser.
MAX_FORM_FIELDS = 1000

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

_ESCAPED_SEPARATOR = re.compile("%(?:26|3[dD])")  # an escaped "&" or "="

# "XX" -> the character, for every %XX escape of an ASCII character (either case of hex digit).
_ASCII_ESCAPES = {f"{high}{low}": chr(int(high + low, 16)) for high in "01234567" for low in "0123456789abcdefABCDEF"}


def _unquote(text: str) -> str:
    """`unquote(text, encoding="utf-8", errors="strict")`, with no call into urllib when every
    escape is of an ASCII character (what carriers' phone numbers and timestamps hold)."""
    head, *chunks = text.split("%")
    out = [head]
    for chunk in chunks:
        char = _ASCII_ESCAPES.get(chunk[:2])
        if char is None:  # %-escaped UTF-8, or a "%" that is not an escape: urllib decides
            return unquote(text, encoding="utf-8", errors="strict")
        out.append(char)
        out.append(chunk[2:])
    return "".join(out)


def wire_text(raw: str) -> str:
    """The text of a raw path or query: ASGI gives latin-1 text of the wire bytes; carriers send UTF-8.

    Text that is already real (built by hand, not read from a socket) is returned as it is;
    wire bytes that are not UTF-8 are a rejection (never a 500).
    """
    if raw.isascii():
        return raw
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeEncodeError:
        return raw
    except UnicodeDecodeError:
        raise Rejected(Reason.MALFORMED_REQUEST, "URL is not UTF-8") from None


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """Parse a query string or form body into decoded (name, value) pairs, blanks kept.

    Percent-escapes are decoded as UTF-8 and invalid UTF-8 is a rejection (never a 500).
    Exactly `parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict",
    max_num_fields=MAX_FORM_FIELDS)` (tests/test_inbound_parse.py checks it against parse_qsl),
    written out so that a name or value with nothing to decode costs no call: this runs on
    every request, and carriers post a few dozen mostly plain fields.
    """
    if not text:
        return []
    # parse_qsl: 1 + count("&") > max_num_fields (a text shorter than the limit cannot get there).
    if len(text) >= MAX_FORM_FIELDS and text.count("&") >= MAX_FORM_FIELDS:
        raise Rejected(Reason.MALFORMED_REQUEST, "ValueError")
    if "%" not in text or _ESCAPED_SEPARATOR.search(text) is None:
        # No escaped "&" or "=": decoding the whole text first leaves every "&" and "=" where
        # it was, and gives each name and value what decoding it alone would (an escape cannot
        # span an "&" or "=", and neither byte can continue a UTF-8 sequence). One pass.
        if "+" in text:
            text = text.replace("+", " ")
        if "%" in text:
            try:
                text = _unquote(text)
            except UnicodeDecodeError:  # invalid UTF-8 escapes
                raise Rejected(Reason.MALFORMED_REQUEST, "UnicodeDecodeError") from None
        return [(name, value) for name, _, value in [part.partition("=") for part in text.split("&") if part]]
    pairs: list[tuple[str, str]] = []
    append = pairs.append
    try:
        for part in text.split("&"):
            if not part:
                continue
            name, _, value = part.partition("=")  # no "=": a blank value (keep_blank_values)
            if "+" in name or "%" in name:
                name = _unquote(name.replace("+", " "))
            if "+" in value or "%" in value:
                value = _unquote(value.replace("+", " "))
            append((name, value))
    except UnicodeDecodeError:  # invalid UTF-8 escapes
        raise Rejected(Reason.MALFORMED_REQUEST, "UnicodeDecodeError") from None
    return pairs


def _first_values(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """name -> its first value, names in the order first seen."""
    values = dict(pairs)  # each name where first seen, but with its last value
    if len(values) != len(pairs):  # a repeated name (rare): first value wins
        values = {}
        for name, value in pairs:
            values.setdefault(name, value)
    return values


@dataclass(slots=True)
class InboundRequest:
    """One webhook request, exactly as the carrier sent it. Read-only: nothing assigns to it after
    it is built (not `frozen=True` only because a frozen dataclass's __init__ costs three times
    as much, on every request: loadtests/README.md)."""

    method: str  # "GET" or "POST" (upper case)
    scheme: str  # public scheme the carrier used: "https" or "http"
    netloc: str  # public host[:port] exactly as the carrier addressed it
    raw_path: str  # path as sent (percent-escapes intact), latin-1 decoded bytes
    query_string: str  # raw query string without "?", latin-1 decoded bytes; "" when absent
    headers: Mapping[str, str]  # lower-case names; see duplicate_headers
    body: bytes
    client_ip: str  # socket peer, or right-most untrusted X-Forwarded-For hop
    duplicate_headers: frozenset[str] = field(default_factory=frozenset)
    _cache: dict[str, object] = field(default_factory=dict, repr=False, compare=False)

    @property
    def base_url(self) -> str:
        """scheme://netloc/path, without the query."""
        return f"{self.scheme}://{self.netloc}{self.raw_path}"

    @property
    def public_url(self) -> str:
        """The full URL as the carrier called it (with the raw query, if any)."""
        if self.query_string:
            return f"{self.base_url}?{self.query_string}"
        return self.base_url

    def header(self, name: str) -> str | None:
        """A header's value; a security header sent twice is ambiguous and is a rejection."""
        value = self.headers.get(name)
        if value is not None and name in self.duplicate_headers:
            raise Rejected(Reason.MALFORMED_SIGNATURE, f"duplicate header {name}")
        return value

    @property
    def content_type(self) -> str:
        """Media type without parameters, lower case ("" when absent)."""
        cached = self._cache.get("content_type")
        if cached is None:
            raw = self.headers.get("content-type", "")
            cached = self._cache["content_type"] = raw.split(";", 1)[0].strip().lower()
        return cached  # type: ignore[return-value]

    @property
    def is_form(self) -> bool:
        return self.content_type == FORM_CONTENT_TYPE

    def query_params(self) -> list[tuple[str, str]]:
        """Decoded query parameters, in the order sent."""
        cached = self._cache.get("query")
        if cached is None:
            cached = parse_pairs(self.query_string)
            self._cache["query"] = cached
        return cached  # type: ignore[return-value]

    def form_params(self) -> list[tuple[str, str]]:
        """Decoded form-body parameters (empty unless the body is form-encoded)."""
        cached = self._cache.get("form")
        if cached is None:
            if self.is_form and self.body:
                try:
                    text = self.body.decode("utf-8")
                except UnicodeDecodeError:
                    raise Rejected(Reason.MALFORMED_REQUEST, "form body is not UTF-8") from None
                cached = parse_pairs(text)
            else:
                cached = []
            self._cache["form"] = cached
        return cached  # type: ignore[return-value]

    def params(self) -> dict[str, str]:
        """Query and form parameters merged, first value of each name; the form wins over the query.

        Built once per request and shared by every caller (idempotency key, event, answer):
        read it, never modify it.
        """
        cached = self._cache.get("params")
        if cached is None:
            query = self.query_params()
            merged = _first_values(self.form_params())
            if query:
                merged = {**_first_values(query), **merged}
            cached = self._cache["params"] = merged
        return cached  # type: ignore[return-value]

    def json_object(self) -> Mapping[str, Any] | None:
        """The body as a JSON object (None when it is anything else), parsed once per request.

        Kept on the request, never in a process-wide cache: an unauthenticated body must not
        outlive its request (docs/threat-model.md).
        """
        if "json" not in self._cache:
            try:
                document = orjson.loads(self.body)
            except orjson.JSONDecodeError:  # also invalid UTF-8, too deep, numbers out of range
                document = None
            self._cache["json"] = document if isinstance(document, dict) else None
        return self._cache["json"]  # type: ignore[return-value]
