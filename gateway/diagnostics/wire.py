"""ASGI wire text (raw path and query as latin-1 text of the bytes) to and from real text."""

from __future__ import annotations

from gateway.inbound import InboundRequest


def wire_text(raw: str) -> str:
    """Wire form to text: latin-1 text of UTF-8 bytes, decoded; anything else as it is."""
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def wire_form(text: str) -> str:
    """Text to wire form: UTF-8 bytes as latin-1 text, as ASGI hands the gateway raw_path/query_string."""
    try:
        return text.encode("utf-8").decode("latin-1")
    except UnicodeEncodeError:
        return text


def text_url(request: InboundRequest, *, with_query: bool = True) -> str:
    """The request's URL as text (what a carrier signs)."""
    url = f"{request.scheme}://{request.netloc}{wire_text(request.raw_path)}"
    if with_query and request.query_string:
        url += "?" + wire_text(request.query_string)
    return url
