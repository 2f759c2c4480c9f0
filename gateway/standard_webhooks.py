"""Standard Webhooks signing (https://www.standardwebhooks.com/) for events the gateway sends to dispatch.

Headers: webhook-id (the carrier's event id), webhook-timestamp (unix seconds),
webhook-signature ("v1,<base64 HMAC-SHA256(key, id.timestamp.payload)>", several
space-separated during key rotation). Keys are "whsec_" + base64 of random bytes.
`verify()` is the function dispatch can copy: it mirrors the reference library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

from gateway.errors import GatewayError
from gateway.random_ids import new_key

PREFIX = "whsec_"
TOLERANCE_S = 300


class WebhookVerificationError(GatewayError):
    pass


def generate_key() -> str:
    return PREFIX + new_key(32)


def decode_key(key: str) -> bytes:
    try:
        raw = base64.b64decode(key.removeprefix(PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("signing key must be whsec_ followed by base64") from None
    if len(raw) < 24:
        raise ValueError("signing key must hold at least 24 random bytes")
    return raw


def sign(key: bytes, msg_id: str, timestamp: int, payload: bytes) -> str:
    message = f"{msg_id}.{timestamp}.".encode() + payload
    return "v1," + base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def headers(keys: Sequence[bytes], msg_id: str, payload: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The three headers for one delivery, signed with every key (newest first) for rotation."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(sign(k, msg_id, ts, payload) for k in keys),
    }


def verify(key: str, payload: bytes, request_headers: Mapping[str, str], now: float | None = None) -> None:
    """Raise WebhookVerificationError unless the request was signed with `key` within ±5 minutes."""
    lowered = {k.lower(): v for k, v in request_headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not timestamp or not signatures:
        raise WebhookVerificationError("missing required headers")
    try:
        ts = int(timestamp)
    except ValueError:
        raise WebhookVerificationError("invalid timestamp") from None
    current = time.time() if now is None else now
    if abs(current - ts) > TOLERANCE_S:
        raise WebhookVerificationError("timestamp outside tolerance")
    expected = sign(decode_key(key), msg_id, ts, payload).encode()
    for candidate in signatures.split(" "):
        if hmac.compare_digest(candidate.encode(), expected):
            return
    raise WebhookVerificationError("no matching signature")
