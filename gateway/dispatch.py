"""Synchronous answer requests to dispatch (answer mode `proxy`), signed with Standard Webhooks.

One pooled httpx.AsyncClient per process (created in the app lifespan), a hard
end-to-end budget (GATEWAY_DISPATCH_TIMEOUT_S: connection from the pool, connect,
send, wait, read — all of it), a bounded answer body, never a redirect followed.
Whatever goes wrong becomes a `Reply` with ok=False and a fixed `result` label
(a metric label: never an exception message, a URL or a body).

The request: POST GATEWAY_DISPATCH_URL, body = the event envelope exactly as it
was appended to the stream (gateway/events.py), `content-type: application/json`,
and the Standard Webhooks headers `webhook-id` (the carrier's event id: the
envelope's idempotency_key, or its id when it has none — the same id a stream
consumer uses, so dispatch can de-duplicate), `webhook-timestamp`,
`webhook-signature` (every GATEWAY_FORWARD_SIGNING_KEY, newest first).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from gateway import standard_webhooks

MAX_ANSWER_BYTES = 100 * 1024  # Plivo/Vobiz refuse answer XML over 100 KB; no carrier needs more
USER_AGENT = "telephony-webhook-gateway"


@dataclass(frozen=True, slots=True)
class Reply:
    result: str  # proxied | timeout | error | bad_status | too_large
    status: int = 0
    body: bytes = b""
    content_type: str | None = None

    @property
    def ok(self) -> bool:
        return self.result == "proxied"


def webhook_id(envelope: Mapping[str, Any]) -> str:
    """Standard Webhooks `webhook-id` of an event envelope: the carrier's event id, else the gateway's."""
    key = envelope.get("idempotency_key")
    return key if isinstance(key, str) and key else str(envelope["id"])


def webhook_id_of(event: bytes, idempotency_key: str | None) -> str:
    """webhook_id() without parsing the envelope when the idempotency key is already known."""
    return idempotency_key if idempotency_key else webhook_id(orjson.loads(event))


def signed_headers(keys: Sequence[bytes], event: bytes, msg_id: str, timestamp: int) -> dict[str, str]:
    headers = standard_webhooks.headers(keys, msg_id, event, timestamp=timestamp)
    headers["content-type"] = "application/json"
    return headers


class DispatchClient:
    def __init__(
        self,
        url: str,
        keys: Sequence[bytes],
        *,
        timeout_s: float,
        max_connections: int,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not keys:
            raise ValueError("dispatch requests are always signed: no signing key given")
        self.url = url
        self.timeout_s = timeout_s
        self._keys = tuple(keys)
        self._clock = clock
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
            trust_env=False,  # no HTTP(S)_PROXY/.netrc surprises on an internal, signed hop
            headers={"user-agent": USER_AGENT},
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request_answer(self, event: bytes, msg_id: str) -> Reply:
        """POST the event; a Reply within the budget, whatever happens."""
        headers = signed_headers(self._keys, event, msg_id, int(self._clock()))
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._client.stream("POST", self.url, content=event, headers=headers) as response:
                    status = response.status_code
                    if not (200 <= status < 300 or status == 302):
                        return Reply("bad_status", status)
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_ANSWER_BYTES:
                            return Reply("too_large", status)
                    return Reply("proxied", status, bytes(body), response.headers.get("content-type"))
        except (TimeoutError, httpx.TimeoutException):
            return Reply("timeout")
        except (httpx.HTTPError, OSError):
            return Reply("error")
