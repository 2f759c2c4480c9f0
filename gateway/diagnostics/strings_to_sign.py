"""What a carrier signs for a request (the string-to-sign): it holds no secret, so it may be shown."""

from __future__ import annotations

from gateway.diagnostics.carriers import STRINGS_TO_SIGN
from gateway.errors import Rejected
from gateway.inbound import InboundRequest
from gateway.providers import Provider

SHOWN_CHARS = 4000


def strings_to_sign(request: InboundRequest, provider: Provider) -> list[tuple[str, bytes]]:
    """(what, bytes) the carrier signs for this request, per signature header present. No secret in them."""
    out: list[tuple[str, bytes]] = []
    build = STRINGS_TO_SIGN.get(provider)
    try:
        if build is not None:
            build(request, out)
    except Rejected as rejection:
        out.append(("(cannot be built)", f"the request cannot be parsed: {rejection}".encode()))
    return out


def shown(data: bytes) -> str:
    """Bytes as one printable line (escapes for the rest), at most SHOWN_CHARS characters."""
    text = data.decode("utf-8", "backslashreplace")
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    if len(text) > SHOWN_CHARS:
        text = text[:SHOWN_CHARS] + f"… ({len(data)} bytes)"
    return text
