"""What a carrier signs for a request (the string-to-sign): it holds no secret, so it may be shown.

Each carrier's spec says what it signs (`CarrierSpec.strings_to_sign`, gateway/providers/).
"""

from __future__ import annotations

from gateway.diagnostics.wire import text_url
from gateway.errors import Rejected
from gateway.inbound import InboundRequest
from gateway.providers import Provider
from gateway.providers.registry import spec_for

SHOWN_CHARS = 4000


def strings_to_sign(request: InboundRequest, provider: Provider) -> list[tuple[str, bytes]]:
    """(what, bytes) the carrier signs for this request, per signature header present. No secret in them."""
    build = spec_for(provider).strings_to_sign
    if build is None:
        return []
    try:
        return build(request, text_url(request))
    except Rejected as rejection:
        return [("(cannot be built)", f"the request cannot be parsed: {rejection}".encode())]


def shown(data: bytes) -> str:
    """Bytes as one printable line (escapes for the rest), at most SHOWN_CHARS characters."""
    text = data.decode("utf-8", "backslashreplace")
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    if len(text) > SHOWN_CHARS:
        text = text[:SHOWN_CHARS] + f"… ({len(data)} bytes)"
    return text
