"""Short-lived capability tokens for a call's media stream ($stream_token in answer templates).

The gateway answers an `incoming` call itself (answer mode `template`) and puts a
token in the answer, e.g. in the media stream URL:

    <Stream>wss://agent.example.com/media?call=$call_id&amp;token=$stream_token</Stream>

The agent service, which accepts the carrier's media WebSocket, checks the token
with `verify_token()` and so knows the connection belongs to a call the gateway
answered after verifying the carrier's signature — without a round trip to the
gateway or Redis.

Format: ``v1.<expiry>.<mac>``
  expiry  unix seconds (decimal) after which the token is refused
  mac     base64url (no padding) of HMAC-SHA256(key, "v1\\n<expiry>\\n<phone_id>\\n<call_id>")

The phone id cannot contain a newline (phone ids are [A-Za-z0-9_.:-]), so the
message is unambiguous whatever the carrier's call id contains. The key is
GATEWAY_CAPABILITY_KEY: 32 random bytes, as 64 hex characters or base64.

This module uses only the standard library: copy `verify_token` (and
`decode_key`) into the agent service as they are.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

from gateway.errors import GatewayError

VERSION = "v1"
MAX_TOKEN_CHARS = 128


class InvalidToken(GatewayError):
    """The token is malformed, expired, or not for this call. The message is safe to log."""


def decode_key(key: str | bytes) -> bytes:
    """GATEWAY_CAPABILITY_KEY as bytes: 64 hex characters or (url-safe) base64 of 32 bytes; bytes pass through."""
    if isinstance(key, bytes):
        return key
    text = key.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    for decoder in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decoder(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(raw) == 32:
            return raw
    raise ValueError("capability key must be 32 bytes as 64 hex characters or base64")


def _mac(key: bytes, expiry: int, phone_id: str, call_id: str) -> str:
    message = f"{VERSION}\n{expiry}\n{phone_id}\n{call_id}".encode()
    digest = hmac.digest(key, message, hashlib.sha256)
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def mint_token(key: bytes, call_id: str, phone_id: str, now: float, ttl_s: int) -> str:
    """A token for (call_id, phone_id) valid until now + ttl_s."""
    expiry = int(now) + ttl_s
    return f"{VERSION}.{expiry}.{_mac(key, expiry, phone_id, call_id)}"


def verify_token(key: str | bytes, token: str, call_id: str, phone_id: str, now: float | None = None) -> int:
    """Check a $stream_token; return its expiry (unix seconds) or raise InvalidToken.

    key       GATEWAY_CAPABILITY_KEY (the same value the gateway has), as str or raw bytes
    token     the token the carrier passed on (URL query, <Parameter>, custom header...)
    call_id   the call id the media stream reports (Twilio `start.callSid`, Plivo `start.callId`...)
    phone_id  the gateway phone id the stream is for (e.g. from the stream URL you templated)
    now       unix seconds; defaults to time.time()
    """
    raw_key = decode_key(key)
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken("malformed token")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        raise InvalidToken("malformed token")
    expiry_text, mac = parts[1], parts[2]
    if not expiry_text.isascii() or not expiry_text.isdigit() or len(expiry_text) > 12:
        raise InvalidToken("malformed token")
    expiry = int(expiry_text)
    expected = _mac(raw_key, expiry, phone_id, call_id)
    # Compare the MAC before the expiry so that timing tells nothing about a forged token.
    if not hmac.compare_digest(mac.encode("ascii", "replace"), expected.encode("ascii")):
        raise InvalidToken("token is not valid for this call")
    current = time.time() if now is None else now
    if current >= expiry:
        raise InvalidToken("token expired")
    return expiry
