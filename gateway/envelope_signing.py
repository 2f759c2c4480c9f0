"""An event envelope sent to dispatch, signed: its Standard Webhooks id and headers.

Shared by the two senders of events over HTTP, so both sign the same way: the answer
proxy (gateway/dispatch.py) and the reference stream consumer's POST handler
(gateway/consumer.py). Body: the envelope exactly as appended to the stream
(gateway/events.py), `content-type: application/json`. Headers: `webhook-id` (the
carrier's event id: the envelope's idempotency_key, or its id when it has none, so
dispatch can de-duplicate), `webhook-timestamp`, `webhook-signature` (every
GATEWAY_FORWARD_SIGNING_KEY, newest first: gateway/standard_webhooks.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from gateway import standard_webhooks


def webhook_id(envelope: Mapping[str, Any]) -> str:
    """Standard Webhooks `webhook-id` of an event envelope: the carrier's event id, else the gateway's."""
    key = envelope.get("idempotency_key")
    return key if isinstance(key, str) and key else str(envelope["id"])


def webhook_id_of(event: bytes, idempotency_key: str | None) -> str:
    """webhook_id() without parsing the envelope when the idempotency key is already known."""
    return idempotency_key if idempotency_key else webhook_id(orjson.loads(event))


def signed_headers(keys: Sequence[bytes], event: bytes, msg_id: str, timestamp: int) -> dict[str, str]:
    """The request headers for one envelope: Standard Webhooks signature headers and its content type."""
    headers = standard_webhooks.headers(keys, msg_id, event, timestamp=timestamp)
    headers["content-type"] = "application/json"
    return headers
