"""Synchronous answer requests to dispatch (answer mode `proxy`), signed with Standard Webhooks.

One pooled httpx.AsyncClient per process (created in the app lifespan), a hard
end-to-end budget (GATEWAY_DISPATCH_TIMEOUT_S: connection from the pool, connect,
send, wait, read — all of it), a bounded answer body, never a redirect followed.
Whatever goes wrong becomes a `Reply` with ok=False and a fixed `result` label
(a metric label: never an exception message, a URL or a body).

The request: POST GATEWAY_DISPATCH_URL with the event envelope, signed exactly as
the reference stream consumer's POST handler signs it (gateway/envelope_signing.py:
body, content type and the Standard Webhooks headers, `webhook-id` the same id a
stream consumer uses, so dispatch can de-duplicate).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from gateway.envelope_signing import signed_headers

MAX_ANSWER_BYTES = 100 * 1024  # Plivo/Vobiz refuse answer XML over 100 KB; no carrier needs more
USER_AGENT = "telephony-webhook-gateway"
DUPLICATE_HEADER = "gateway-duplicate-of"  # on a duplicate's proxied request: the first acceptance's entry id


@dataclass(frozen=True, slots=True)
class Reply:
    result: str  # proxied | timeout | error | bad_status | too_large
    status: int = 0
    body: bytes = b""
    content_type: str | None = None

    @property
    def ok(self) -> bool:
        return self.result == "proxied"


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

    async def request_answer(self, event: bytes, msg_id: str, *, duplicate_of: str | None = None) -> Reply:
        """POST the event; a Reply within the budget, whatever happens.

        `duplicate_of`: the stream entry id of the event's first acceptance when this request
        is a duplicate (a carrier's retry, a copy): sent as `gateway-duplicate-of`, with the
        same `webhook-id` as the first, so dispatch answers it with the document it gave then.
        """
        headers = signed_headers(self._keys, event, msg_id, int(self._clock()))
        if duplicate_of is not None:
            headers[DUPLICATE_HEADER] = duplicate_of
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
