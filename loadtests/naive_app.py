"""The naive baseline: what a user would write with the carriers' official SDKs.

A plain Starlette app, one route per carrier, each calling the SDK's validator and a
synchronous redis-py client (three round trips per request: read the phone's token,
SET NX the nonce, XADD the event), blocking the event loop while it waits, as such
code usually does. Tokens are kept in plain text in Redis (`naive:phone:{id}` hash);
events go to the `naive:events` stream. Benchmark use only.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any, cast

import redis
from plivo.utils.signature_v3 import validate_v3_signature
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from telnyx.lib.webhook_verification import WebhookVerificationError, verify_webhook_signature

STREAM = "naive:events"


def create_app() -> Any:
    client = redis.Redis.from_url(os.environ["GATEWAY_REDIS_URL"])
    public_base = os.environ.get("GATEWAY_PUBLIC_BASE_URL", "")

    def forward(provider: str, phone_id: str, request: Request, body: bytes) -> None:
        event = {
            "id": uuid.uuid4().hex,
            "received_at": time.time(),
            "provider": provider,
            "phone_id": phone_id,
            "path": request.url.path,
            "body": body.decode("utf-8", "replace"),
        }
        client.xadd(STREAM, {"event": json.dumps(event)})

    async def plivo_callback(request: Request) -> Response:
        phone_id = request.path_params["phone_id"]
        token = client.hget(f"naive:phone:{phone_id}", "auth_token")
        if token is None:
            return PlainTextResponse("forbidden", 403)
        body = await request.body()
        form = await request.form()
        nonce = request.headers.get("X-Plivo-Signature-V3-Nonce", "")
        valid = validate_v3_signature(
            request.method,
            public_base + request.url.path,
            nonce,
            cast(bytes, token).decode(),  # a bytes reply: decode_responses is off
            request.headers.get("X-Plivo-Signature-V3", ""),
            {k: v for k, v in form.items() if isinstance(v, str)},
        )
        if not valid:
            return PlainTextResponse("forbidden", 403)
        if not client.set(f"naive:nonce:{phone_id}:{nonce}", 1, nx=True, ex=86400):
            return PlainTextResponse("replayed", 403)
        forward("plivo", phone_id, request, body)
        return Response(status_code=200)

    async def telnyx_callback(request: Request) -> Response:
        phone_id = request.path_params["phone_id"]
        public_key = client.hget(f"naive:phone:{phone_id}", "public_key")
        if public_key is None:
            return PlainTextResponse("forbidden", 403)
        body = await request.body()
        try:
            verify_webhook_signature(body, dict(request.headers), cast(bytes, public_key).decode())
        except WebhookVerificationError:
            return PlainTextResponse("forbidden", 403)
        forward("telnyx", phone_id, request, body)
        return Response(status_code=200)

    return Starlette(
        routes=[
            Route("/plivo/{kind}/{phone_id}", plivo_callback, methods=["POST"]),
            Route("/webhooks/telnyx/voice/{phone_id}", telnyx_callback, methods=["POST"]),
            Route("/healthz", lambda _request: PlainTextResponse("ok\n"), methods=["GET"]),
        ]
    )
