"""ASGI wire text (raw path and query as latin-1 text of the bytes) to and from real text."""

from __future__ import annotations

from gateway.errors import Rejected
from gateway.inbound import InboundRequest
from gateway.inbound import wire_text as strict_wire_text


def wire_text(raw: str) -> str:
    """Wire form to text, as the gateway decodes it (gateway/inbound.py), except that wire
    bytes that are not UTF-8 come back as they are: a report shows them, it does not reject."""
    try:
        return strict_wire_text(raw)
    except Rejected:
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
