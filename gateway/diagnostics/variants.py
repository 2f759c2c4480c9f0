"""How a callback may have been altered on its way to the gateway: a bounded, lazy list of
altered copies of a request (`variants`), most likely explanation first.

Carriers sign the URL they were configured with, or the raw body; the gateway rebuilds
the URL from what reaches it. A load balancer that rewrites the scheme, adds a port,
strips a path prefix or re-encodes the query, or a framework that re-serialises the JSON
body, makes every signature fail. Each `Variant` undoes one such change (or two together)
with `dataclasses.replace`; gateway/diagnostics/mismatch.py verifies them. Each change
carries a metric label and a text safe to log (no secret, no query value).

Only the carriers whose signature covers the URL (`CarrierSpec.url_signing`: Plivo, Vobiz,
Twilio) or the raw body (`CarrierSpec.signed_body`: Telnyx, whose body is tried with or without a
trailing newline, re-serialised as JSON, re-encoded) are covered; Exotel does not sign at all.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from gateway import metrics
from gateway.diagnostics.wire import wire_text
from gateway.errors import Rejected
from gateway.inbound import FORM_CONTENT_TYPE, InboundRequest, parse_pairs
from gateway.providers import Provider
from gateway.providers.registry import CARRIERS, spec_for
from gateway.providers.spec import UrlSigning
from gateway.settings import PublicBase

# Carriers whose signature covers the URL or the raw body (not the unsigned).
SUPPORTED = frozenset(p for p, spec in CARRIERS.items() if spec.url_signing is not UrlSigning.NONE or spec.signed_body)

SCHEME = "scheme"
PORT = "port"
HOST = "host"
QUERY_ORDER = "query_order"
QUERY_ENCODING = "query_encoding"
FORM_VS_RAW = "form_vs_raw"
TRAILING_SLASH = "trailing_slash"
PATH_PREFIX = "path_prefix"
BODY_NEWLINE = "body_newline"
BODY_JSON = "body_json"
BODY_ENCODING = "body_encoding"
LABELS = (SCHEME, PORT, HOST, QUERY_ORDER, QUERY_ENCODING, FORM_VS_RAW, TRAILING_SLASH, PATH_PREFIX)
BODY_LABELS = (BODY_NEWLINE, BODY_JSON, BODY_ENCODING)
if not set(LABELS + BODY_LABELS) <= set(metrics.MISMATCHES):  # the metric's fixed vocabulary
    raise RuntimeError("gateway.metrics.MISMATCHES lacks an explain label")

# What the operator should do, per label. No request data in here.
HINTS: Mapping[str, str] = {
    SCHEME: "your load balancer rewrites the scheme; set GATEWAY_PUBLIC_BASE_URL or trust its X-Forwarded-Proto "
    "(GATEWAY_TRUSTED_PROXIES)",
    HOST: "the carrier called another host than the gateway rebuilt; set GATEWAY_PUBLIC_BASE_URL to the host in "
    "the carrier's callback URL, or trust the proxy's X-Forwarded-Host (GATEWAY_TRUSTED_PROXIES)",
    PORT: "the carrier's callback URL and the gateway's view differ by an explicit default port (:443/:80); "
    "make GATEWAY_PUBLIC_BASE_URL spell host[:port] exactly as the callback URL configured at the carrier",
    PATH_PREFIX: "a proxy adds or strips a path prefix; put the prefix the carrier calls in GATEWAY_PUBLIC_BASE_URL "
    "(https://host/prefix), and nothing else",
    TRAILING_SLASH: "the path differs by a trailing slash (a proxy normalises it); configure the carrier's callback "
    "URL without the trailing slash",
    QUERY_ORDER: "something between the carrier and the gateway re-orders the query string; pass it through unchanged",
    QUERY_ENCODING: "something between the carrier and the gateway re-encodes the query string; pass it through "
    "byte for byte",
    FORM_VS_RAW: "the Content-Type does not say how the body was signed (form parameters vs raw body); make the "
    "proxy pass Content-Type and the body through unchanged",
    BODY_NEWLINE: "the body differs by a trailing newline (a proxy or framework adds or strips it); pass the raw "
    "body through byte for byte",
    BODY_JSON: "the JSON body was parsed and re-serialised on the way (spacing, escaping or indentation changed); "
    "verify the raw bytes as received, before any JSON parsing, and make proxies pass them through",
    BODY_ENCODING: "the body's bytes were re-encoded on the way (UTF-8 read as Latin-1, or line endings changed); "
    "pass the raw body through byte for byte",
}

_MAX_SHOWN = 80  # characters of a header-derived value shown in a description
_NETLOC_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]{1,5})?$")
_PERCENT_RE = re.compile(r"%[0-9A-Fa-f]{2}")
_ORIGINAL_URI_HEADERS = ("x-original-uri", "x-forwarded-uri", "x-envoy-original-path", "x-original-url")
_DEFAULT_PORTS = {"https": "443", "http": "80"}


@dataclass(frozen=True, slots=True)
class Change:
    """One difference from the request as received. `text` is safe to log (no secret, no query value)."""

    label: str  # one of LABELS (a metric label)
    text: str  # e.g. "scheme=https", "host=hooks.example.com (X-Forwarded-Host)"


@dataclass(frozen=True, slots=True)
class Variant:
    """The request as received, with `changes` applied."""

    changes: tuple[Change, ...]
    request: InboundRequest

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(change.label for change in self.changes))

    @property
    def label(self) -> str:
        """ "scheme", or "scheme+host" for a combination (a log key, not a metric label)."""
        return "+".join(self.labels)

    @property
    def description(self) -> str:
        return ", ".join(change.text for change in self.changes)


# ---- variants -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Edit:
    change: Change
    fields: tuple[tuple[str, Any], ...]  # InboundRequest field -> new value


def _edit(label: str, text: str, **fields: Any) -> _Edit:
    return _Edit(Change(label, text), tuple(fields.items()))


def _shown(value: str) -> str:
    """A header-derived value fit for a log line: printable ASCII, bounded."""
    if len(value) <= _MAX_SHOWN and value.isascii() and value.isprintable():
        return value
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in value)
    return cleaned if len(cleaned) <= _MAX_SHOWN else cleaned[: _MAX_SHOWN - 3] + "..."


def _first(value: str | None) -> str:
    """The outermost (left-most) value of a possibly comma-joined forwarded header."""
    return value.split(",", 1)[0].strip() if value else ""


def _forwarded_param(value: str | None, name: str) -> str:
    """`name=` of the first element of an RFC 7239 `Forwarded` header ("" if absent)."""
    for pair in _first(value).split(";"):
        key, sep, raw = pair.partition("=")
        if sep and key.strip().lower() == name:
            return raw.strip().strip('"')
    return ""


def split_netloc(netloc: str) -> tuple[str, str]:
    """(host lower-cased, port or ""); IPv6 literals keep their brackets."""
    if netloc.startswith("["):
        host, _, rest = netloc.partition("]")
        return host.lower() + "]", rest[1:] if rest.startswith(":") else ""
    host, _, port = netloc.partition(":")
    return host.lower(), port


def _toggle_port(netloc: str, scheme: str) -> str | None:
    """The netloc with an explicit default port removed, or with the scheme's default added."""
    _host, port = split_netloc(netloc)
    if port:
        return netloc.rsplit(":", 1)[0] if port in _DEFAULT_PORTS.values() else None
    default = _DEFAULT_PORTS.get(scheme)
    return f"{netloc}:{default}" if default else None


def _netloc_edits(
    inbound: InboundRequest, provider: Provider, scheme: str, public_base: PublicBase | None, base_source: str
) -> list[_Edit]:
    current = inbound.netloc
    candidates: list[tuple[str, str]] = []
    for value, source in (
        (inbound.headers.get("host", "").strip(), "Host header"),
        (_first(inbound.headers.get("x-forwarded-host")), "X-Forwarded-Host"),
        (_forwarded_param(inbound.headers.get("forwarded"), "host"), "Forwarded"),
        (public_base.netloc if public_base else "", base_source),
    ):
        if value and len(value) <= 255 and _NETLOC_RE.match(value):
            candidates.append((value, source))
    # An exact-URL verifier (Twilio's) already tries every URL with the default port added and removed.
    if spec_for(provider).url_signing is not UrlSigning.EXACT:
        toggled = [(_toggle_port(netloc, scheme), f"{source}, default port toggled") for netloc, source in candidates]
        own = _toggle_port(current, scheme)
        candidates += [(own, "default port toggled")] if own else []
        candidates += [(netloc, source) for netloc, source in toggled if netloc]
    edits: list[_Edit] = []
    current_host, _ = split_netloc(current)
    for netloc, source in candidates:
        if netloc == current:
            continue
        label = PORT if split_netloc(netloc)[0] == current_host else HOST
        edits.append(_edit(label, f"host={_shown(netloc)} ({source})", netloc=netloc))
    return edits


def _path_edits(inbound: InboundRequest, public_base: PublicBase | None, base_source: str) -> list[_Edit]:
    path = inbound.raw_path
    edits: list[_Edit] = []
    prefix = _first(inbound.headers.get("x-forwarded-prefix")).rstrip("/")
    if prefix.startswith("/") and "?" not in prefix and "#" not in prefix and len(prefix) <= 200:
        edits.append(_edit(PATH_PREFIX, f"path prefix {_shown(prefix)} (X-Forwarded-Prefix)", raw_path=prefix + path))
    for name in _ORIGINAL_URI_HEADERS:
        value = inbound.headers.get(name)
        if not value or len(value) > 2048:
            continue
        original = urlsplit(value.strip()).path
        if original != path and original.endswith(path) and original.startswith("/"):
            shown = _shown(original[: len(original) - len(path)])
            edits.append(_edit(PATH_PREFIX, f"path prefix {shown} ({name})", raw_path=original))
    if public_base is not None and public_base.path_prefix and path.startswith(public_base.path_prefix + "/"):
        edits.append(
            _edit(
                PATH_PREFIX,
                f"path without the prefix {_shown(public_base.path_prefix)} of {base_source}",
                raw_path=path[len(public_base.path_prefix) :],
            )
        )
    if path.endswith("/") and len(path) > 1:
        edits.append(_edit(TRAILING_SLASH, "path without its trailing slash", raw_path=path[:-1]))
    else:
        edits.append(_edit(TRAILING_SLASH, "path with a trailing slash", raw_path=path + "/"))
    return edits


def _query_edits(inbound: InboundRequest, provider: Provider) -> list[_Edit]:
    raw = inbound.query_string
    if not raw:
        return []
    edits: list[_Edit] = []
    # Plivo signs the decoded parameters sorted by name: order, "+" vs "%20" and the case
    # of percent-escapes cannot matter there. Twilio signs the URL byte for byte.
    if spec_for(provider).url_signing is UrlSigning.EXACT:
        pieces = raw.split("&")
        ordered = sorted(pieces, key=lambda piece: piece.partition("=")[0])
        if ordered != pieces:
            edits.append(_edit(QUERY_ORDER, "query sorted by name", query_string="&".join(ordered)))
        if len(pieces) > 1 and pieces[::-1] != ordered:
            edits.append(_edit(QUERY_ORDER, "query in reverse order", query_string="&".join(pieces[::-1])))
        if "+" in raw:
            edits.append(_edit(QUERY_ENCODING, "query with %20 for +", query_string=raw.replace("+", "%20")))
        if "%20" in raw:
            edits.append(_edit(QUERY_ENCODING, "query with + for %20", query_string=raw.replace("%20", "+")))
        upper = _PERCENT_RE.sub(lambda m: m.group(0).upper(), raw)
        lower = _PERCENT_RE.sub(lambda m: m.group(0).lower(), raw)
        for text, case in ((upper, "upper"), (lower, "lower")):
            if text != raw:
                edits.append(_edit(QUERY_ENCODING, f"query with {case}-case percent-escapes", query_string=text))
        try:
            pairs = parse_pairs(wire_text(raw))
        except Rejected:
            pairs = []
        for encoded, style in ((urlencode(pairs), "form style"), (urlencode(pairs, quote_via=quote), "%20 style")):
            if pairs and encoded != raw:
                edits.append(_edit(QUERY_ENCODING, f"query re-encoded ({style})", query_string=encoded))
    if "+" in raw:  # a proxy that decoded %2B into "+" (which then reads as a space)
        edits.append(_edit(QUERY_ENCODING, "query with %2B for +", query_string=raw.replace("+", "%2B")))
    return edits


def _body_edits(inbound: InboundRequest, provider: Provider) -> list[_Edit]:
    if not inbound.body:
        return []
    if inbound.is_form:
        # Twilio covers a raw (JSON) body through bodySHA256 in the URL, not as parameters.
        body_hash = spec_for(provider).body_hash_param
        if body_hash is not None and f"{body_hash.name}=" in inbound.query_string:
            headers = {**inbound.headers, "content-type": "application/json"}
            text = f"body as raw bytes ({body_hash.name}), not form parameters"
            return [_edit(FORM_VS_RAW, text, headers=headers)]
        return []
    headers = {**inbound.headers, "content-type": FORM_CONTENT_TYPE}
    return [_edit(FORM_VS_RAW, f"body as form parameters (Content-Type {FORM_CONTENT_TYPE})", headers=headers)]


_MAX_JSON_BODY = 256 * 1024  # re-serialising a larger body is not worth the CPU


def _raw_body_edits(inbound: InboundRequest) -> list[_Edit]:
    """The body the carrier likely signed, for carriers signing the raw bytes (`CarrierSpec.signed_body`)."""
    body = inbound.body
    edits: list[_Edit] = []
    if body.endswith(b"\r\n"):
        edits.append(_edit(BODY_NEWLINE, "body without its trailing CRLF", body=body[:-2]))
    elif body.endswith(b"\n"):
        edits.append(_edit(BODY_NEWLINE, "body without its trailing newline", body=body[:-1]))
    else:
        edits.append(_edit(BODY_NEWLINE, "body with a trailing newline", body=body + b"\n"))
    if body and len(body) <= _MAX_JSON_BODY:
        try:
            document = json.loads(body)
        except ValueError:  # not JSON (or not UTF-8)
            document = None
        if isinstance(document, dict | list):
            styles = (
                ("compact", {"separators": (",", ":"), "ensure_ascii": False}),
                ("compact, non-ASCII escaped", {"separators": (",", ":"), "ensure_ascii": True}),
                ("with spaces after , and :", {"ensure_ascii": False}),
                ("with spaces, non-ASCII escaped", {"ensure_ascii": True}),
            )
            for name, options in styles:
                text = json.dumps(document, **options).encode("utf-8")
                edits.append(_edit(BODY_JSON, f"body re-serialised as JSON ({name})", body=text))
    if b"\r\n" in body.rstrip(b"\r\n"):
        edits.append(_edit(BODY_ENCODING, "body with LF line endings (not CRLF)", body=body.replace(b"\r\n", b"\n")))
    if not body.isascii():
        try:
            edits.append(
                _edit(
                    BODY_ENCODING,
                    "body as Latin-1 bytes (it was re-encoded as UTF-8)",
                    body=body.decode().encode("latin-1"),
                )
            )
        except (UnicodeDecodeError, UnicodeEncodeError):
            pass
    return edits


# Parsed values an InboundRequest caches, and what they are derived from. Whitelisted: a
# cache entry not named here is never shared with a variant (it is recomputed).
_DERIVED_FROM_QUERY = frozenset({"query", "params"})
_DERIVED_FROM_BODY = frozenset({"form", "params"})
_SHAREABLE = frozenset({"query", "form", "params"})


def _identity(inbound: InboundRequest, fields: Mapping[str, Any]) -> tuple[str | bytes, ...]:
    headers = fields.get("headers", inbound.headers)
    return (
        fields.get("scheme", inbound.scheme),
        fields.get("netloc", inbound.netloc),
        fields.get("raw_path", inbound.raw_path),
        fields.get("query_string", inbound.query_string),
        headers.get("content-type", ""),
        fields.get("body", inbound.body),
    )


def variants(
    inbound: InboundRequest,
    provider: Provider,
    public_base: PublicBase | None = None,
    base_source: str = "GATEWAY_PUBLIC_BASE_URL",
) -> Iterator[Variant]:
    """Altered copies of `inbound`, most likely explanation first: single changes, then
    the scheme combined with a host/port or path change, then host with path.

    Lazy (each family of edits is computed when first reached): take only as many as you
    will verify. Duplicates (and the request itself) are skipped.
    """
    if provider not in SUPPORTED:
        return
    if spec_for(provider).signed_body:
        body_edits = [(edit,) for edit in _raw_body_edits(inbound)]
        if spec_for(provider).url_signing is UrlSigning.NONE:  # only the body can explain it
            yield from _unique(inbound, [lambda: body_edits])
            return
    flipped = "http" if inbound.scheme == "https" else "https"
    scheme = _edit(SCHEME, f"scheme={flipped}", scheme=flipped)
    memo: dict[str, list[_Edit]] = {}

    def netlocs() -> list[_Edit]:
        if "netlocs" not in memo:
            memo["netlocs"] = _netloc_edits(inbound, provider, inbound.scheme, public_base, base_source)
        return memo["netlocs"]

    def paths() -> list[_Edit]:
        if "paths" not in memo:
            memo["paths"] = _path_edits(inbound, public_base, base_source)
        return memo["paths"]

    families: tuple[Callable[[], Iterable[tuple[_Edit, ...]]], ...] = (
        lambda: [(scheme,)],
        lambda: ((edit,) for edit in netlocs()),
        lambda: ((edit,) for edit in paths()),
        lambda: ((edit,) for edit in _body_edits(inbound, provider)),
        lambda: ((edit,) for edit in _query_edits(inbound, provider)),
        lambda: ((scheme, edit) for edit in _netloc_edits(inbound, provider, flipped, public_base, base_source)),
        lambda: ((scheme, edit) for edit in paths()),
        lambda: ((netloc, path) for netloc in netlocs() for path in paths()),
    )
    yield from _unique(inbound, families)


def _unique(
    inbound: InboundRequest, families: Iterable[Callable[[], Iterable[tuple[_Edit, ...]]]]
) -> Iterator[Variant]:
    """Each family's variants in order, skipping duplicates (and the request itself)."""
    seen = {_identity(inbound, {})}
    for family in families:
        for edits in family():
            fields = dict(field for edit in edits for field in edit.fields)
            identity = _identity(inbound, fields)
            if identity in seen:
                continue
            seen.add(identity)
            # Share what was already parsed, unless this variant changes what it was parsed from.
            keep = _SHAREABLE
            if "query_string" in fields:
                keep = keep - _DERIVED_FROM_QUERY
            if "headers" in fields or "body" in fields:
                keep = keep - _DERIVED_FROM_BODY
            cache = {name: value for name, value in inbound._cache.items() if name in keep}
            yield Variant(tuple(edit.change for edit in edits), dataclasses.replace(inbound, **fields, _cache=cache))
