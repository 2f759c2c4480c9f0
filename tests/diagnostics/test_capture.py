"""Captured requests (gateway/diagnostics/capture.py): curl command lines and raw HTTP, as `gateway explain` reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.diagnostics.capture import parse_capture, parse_curl, parse_http
from gateway.diagnostics.errors import CaptureError

FORM = "application/x-www-form-urlencoded"


def raw_http(target: str, headers: dict[str, str], body: bytes, *, eol: str = "\r\n") -> bytes:
    lines = [f"POST {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), f"Content-Length: {len(body)}"]
    return (eol.join(lines) + eol + eol).encode() + body


# ---- parsing -------------------------------------------------------------------------------


def test_curl_options_as_curl_reads_them(tmp_path: Path) -> None:
    data_file = tmp_path / "body.txt"
    data_file.write_bytes(b"c=3\nd=4\r\n")
    captured = parse_curl(
        "$ curl -sSL -XPOST -g 'https://h.example.com:8443/p/a?x=1' -H 'X-One: 1' -H'X-Two:2' "
        f"-H 'Accept:' -d a=1 --data 'b=2' -d @{data_file} --data-urlencode 'q=a b&c' --data-urlencode =r/s "
        "--compressed -o /dev/null"
    )
    assert captured.method == "POST"
    assert captured.url == "https://h.example.com:8443/p/a?x=1"
    assert captured.target == "/p/a?x=1"
    assert captured.header("x-one") == "1" and captured.header("X-Two") == "2"
    assert captured.header("accept") is None
    assert captured.header("content-type") == FORM  # curl's default for -d
    assert captured.body == b"a=1&b=2&c=3d=4&q=a%20b%26c&r%2Fs"


def test_curl_get_json_and_line_continuations() -> None:
    captured = parse_curl("curl -G \\\n  http://h.example.com/x?a=1 \\\n  -d b=2 --data-urlencode 'c=d e'")
    assert (captured.method, captured.target, captured.body) == ("GET", "/x?a=1&b=2&c=d%20e", b"")
    captured = parse_curl("curl h.example.com/y --json '{\"a\":1}'")
    assert captured.url == "http://h.example.com/y"  # no scheme: curl assumes http
    assert (captured.method, captured.body, captured.header("content-type")) == ("POST", b'{"a":1}', "application/json")


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("wget http://h.example.com/", "start with curl"),
        ("curl -H 'X: 1'", "no URL"),
        ("curl http://a.example.com/ http://b.example.com/", "several URLs"),
        ("curl --frobnicate http://h.example.com/", "unsupported curl option --frobnicate"),
        ("curl -z http://h.example.com/", "unsupported curl option -z"),
        ("curl -H 'NoColon' http://h.example.com/", "no ':'"),
        ("curl 'http://h.example.com/", "cannot split"),
        ("curl -d @- http://h.example.com/", "stdin"),
        ("curl ftp://h.example.com/", "unsupported URL"),
    ],
)
def test_curl_refusals(command: str, message: str) -> None:
    with pytest.raises(CaptureError, match=message):
        parse_curl(command)


def test_raw_http_with_crlf_lf_chunked_and_absolute_form() -> None:
    body = b"a=1&b=2"
    for eol in ("\r\n", "\n"):
        captured = parse_http(raw_http("/p?q=1", {"Host": "h.example.com", "X-A": "1"}, body, eol=eol))
        assert (captured.method, captured.target, captured.body, captured.url) == ("POST", "/p?q=1", body, None)
        assert captured.header("host") == "h.example.com"
    chunked = b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\na=1\r\n4\r\n&b=2\r\n0\r\n\r\n"
    assert parse_http(chunked).body == b"a=1&b=2"
    absolute = parse_http(b"GET https://h.example.com:443/z?y=2 HTTP/1.1\r\nHost: h.example.com\r\n\r\n")
    assert (absolute.url, absolute.target) == ("https://h.example.com:443/z?y=2", "/z?y=2")
    assert parse_capture(b"\n  curl http://h.example.com/").source == "curl"
    assert parse_capture(raw_http("/", {"Host": "h"}, b"")).source == "http"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"POST /p HTTP/1.1\r\nHost: h\r\n\r\na=1", "add a Content-Length"),
        (b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\na=1", "Content-Length says 10 bytes, 3 arrived"),
        (b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\na=1", "Content-Length too small"),
        (b"this is not HTTP\r\n\r\n", "not a complete HTTP"),
        (b"", "not a complete HTTP|no HTTP request"),
        (b"GET /p HTTP/1.1\r\n\r\n", "not a complete HTTP"),  # HTTP/1.1 without Host
    ],
)
def test_raw_http_refusals(data: bytes, message: str) -> None:
    with pytest.raises(CaptureError, match=message):
        parse_http(data)
