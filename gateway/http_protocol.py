"""uvicorn's httptools protocol with the two limits it lacks: request-head size and request-head time.

Measured on uvicorn 0.54 (docs/limits.md): with `http="httptools"` a request head is
buffered without any size limit (`h11_max_incomplete_event_size` only applies to h11),
and neither protocol has a deadline for the head: a connection that sends nothing, or
one header byte now and then (slowloris), is held forever and counts against
`limit_concurrency` until new requests are all answered 503.

The same holds for a body: once the head is in, uvicorn waits for the rest of the
body as long as the client likes (the request even outlives a graceful shutdown until
`timeout_graceful_shutdown` cancels it).

This subclass keeps everything else of uvicorn's protocol and adds:
  - its own 503 once `limit_concurrency` is reached (uvicorn's has no Retry-After; this one
    is the gateway's usual 503, with `retry-after`, and closes the connection);
  - a cap on the bytes of an incomplete request head (the same number uvicorn uses for
    h11, `h11_max_incomplete_event_size`): over it, 431 and the connection is closed;
  - a deadline from the connection's first moment (and from the first byte of each
    later request) to the end of the request head: past it, 408 and close (a
    connection that never sent a byte is just closed);
  - a deadline for the rest of the body once the head is in (armed only when the body
    did not arrive with the head, so the usual one-packet callback costs no timer):
    past it, 408 (unless a response has started) and close; the app sees a disconnect.
Idle keep-alive time between requests stays uvicorn's `timeout_keep_alive`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import EDGE_REFUSALS, HEAD_TOO_LARGE, REQUEST_TIMEOUT, RETRY_AFTER_S, UNAVAILABLE_ANSWER

DEFAULT_HEAD_LIMIT_BYTES = 16 * 1024
HEAD_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 10.0  # GATEWAY_MAX_BODY_BYTES (64 KiB) in 10 s is >= 6.4 KB/s: any carrier does far better

_431, _408 = (
    b"HTTP/1.1 %d %s\r\ncontent-length: 0\r\nconnection: close\r\n\r\n" % (status, EDGE_REFUSALS[status].encode())
    for status in (HEAD_TOO_LARGE, REQUEST_TIMEOUT)
)
_503 = (
    b"HTTP/1.1 %d Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nretry-after: %d\r\nconnection: close\r\n\r\n%s"
    % (UNAVAILABLE_ANSWER[0], len(UNAVAILABLE_ANSWER[1]), RETRY_AFTER_S, UNAVAILABLE_ANSWER[1])
)


class _Refused(Exception):
    """Raised from a parser callback: stops httptools before the app is called (see `_refusal`)."""


class EdgeHttpToolsProtocol(HttpToolsProtocol):
    head_timeout_s: float = HEAD_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S

    @classmethod
    def configure(cls, *, head_timeout_s: float, body_timeout_s: float) -> None:
        """GATEWAY_HEAD_TIMEOUT_S / GATEWAY_BODY_TIMEOUT_S, set once per process before it serves
        (uvicorn builds protocols from the class, not from our settings)."""
        cls.head_timeout_s = head_timeout_s
        cls.body_timeout_s = body_timeout_s

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_limit = self.config.h11_max_incomplete_event_size or DEFAULT_HEAD_LIMIT_BYTES
        self._head_bytes = 0  # wire bytes received while the current head is incomplete
        self._head_size = 0  # parsed size of the current head (target + headers)
        self._refusal: bytes | None = None  # the answer for a request stopped in a parser callback
        self._awaiting_head = True
        self._head_timer: asyncio.TimerHandle | None = None
        self._awaiting_body = False
        self._body_timer: asyncio.TimerHandle | None = None

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self._disarm_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._awaiting_head:
            super().data_received(data)
            if self._awaiting_body and self._body_timer is None:
                self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timed_out)
            return
        self._head_bytes += len(data)
        super().data_received(data)
        # Still inside a request head after this chunk (headers_complete resets the count).
        if self._awaiting_head:
            if self._head_bytes > self._head_limit and not self.transport.is_closing():
                self._refuse(_431)
        elif self._awaiting_body and self._body_timer is None:  # the head came, not all the body
            self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timed_out)

    # -- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = 0
        if self._head_timer is None:  # a later request on a kept-alive connection
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        self._awaiting_body = True
        self._head_bytes = 0
        self._disarm_head_timer()
        if self._head_size > self._head_limit:  # the whole head came in one read
            self._refusal = _431
            raise _Refused
        limit = self.limit_concurrency  # uvicorn's own test, before it would pick its 503 app
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            self.logger.warning("Exceeded concurrency limit.")
            self._refusal = _503
            raise _Refused
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:
            self._refuse(self._refusal)
            return
        super().send_400_response(msg)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_head = True
        self._awaiting_body = False
        self._disarm_body_timer()

    # -- limits ---------------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._awaiting_head:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head_timer()  # a pipelined head behind a response still being produced
            return
        if self._head_bytes:
            self._refuse(_408)
        else:
            self.transport.close()

    def _disarm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or not self._awaiting_body:
            return
        if self.cycle is not None and not self.cycle.response_started:
            self.transport.write(_408)
        self.transport.close()  # the app's receive() now reports a disconnect

    def _refuse(self, answer: bytes) -> None:
        self._disarm_head_timer()
        self.transport.write(answer)
        self.transport.close()
