"""The ceiling: a bare ASGI app that reads the request body and answers 204, nothing else.

Served through the same `gateway serve` code path as the gateway (loadtests/serve.py),
so the uvicorn settings (httptools, uvloop, keep-alive, limits) are identical.
"""

from __future__ import annotations

from typing import Any

from gateway.asgi_io import Receive, Scope, Send

_START = {"type": "http.response.start", "status": 204, "headers": []}
_BODY = {"type": "http.response.body", "body": b""}


async def bare(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        more = True
        while more:  # read the body as any real handler must
            message = await receive()
            more = message.get("more_body", False)
        await send(_START)
        await send(_BODY)
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app() -> Any:
    return bare
