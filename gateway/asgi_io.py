"""Minimal pure-ASGI helpers for the hot path: read a bounded body, send a small response."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.errors import GatewayError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLarge(GatewayError):
    pass


class BadContentLength(GatewayError):
    pass


class ClientDisconnected(GatewayError):
    pass


def declared_length(raw: str | None) -> int | None:
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 15:
        raise BadContentLength
    return int(raw)


async def read_body(receive: Receive, content_length: int | None, limit: int) -> bytes:
    """The whole body, refusing (before reading it) anything declared or streamed over `limit`."""
    if content_length is not None and content_length > limit:
        raise BodyTooLarge
    message = await receive()  # a callback's body nearly always comes whole, in the first message
    if message["type"] == "http.request" and not message.get("more_body", False):
        body: bytes = message.get("body", b"")
        if len(body) > limit:
            raise BodyTooLarge
        return body
    return await _read_chunks(receive, message, limit)


async def _read_chunks(receive: Receive, message: Message, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
        message = await receive()
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


_NO_BODY = (b"content-length", b"0")


async def respond(
    send: Send,
    status: int,
    body: bytes = b"",
    content_type: bytes = b"text/plain; charset=utf-8",
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    # An empty body (every status callback's 200) has no type: one header less for the server to check.
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())] if body else [_NO_BODY]
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
