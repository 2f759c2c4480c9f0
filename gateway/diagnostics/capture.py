"""Captured requests for `gateway explain`: a curl command line (split with shlex) or raw HTTP/1.x (h11)."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import h11

from gateway.diagnostics.errors import CaptureError

FORM = "application/x-www-form-urlencoded"
__all__ = ["Captured", "CaptureError", "parse_capture", "parse_curl", "parse_http"]


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
