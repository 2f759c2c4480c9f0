"""The admin API: /admin/phones and /admin/{carrier}/sources. Bearer token (constant time); secrets never come back."""

from __future__ import annotations

import hashlib
import hmac
import logging

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.keystore import Conflict, FingerprintKeyError, KeyStore
from gateway.log_safety import loggable
from gateway.phone_records import CorruptRecord, InvalidRecord
from gateway.redis_errors import REDIS_FAILURES
from gateway.secrets import Secret
from gateway.source_log import DISCOVERABLE, SourceLog

log = logging.getLogger("gateway.admin")
MAX_ADMIN_BODY = 64 * 1024


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


class AdminAPI:
    def __init__(self, keystore: KeyStore, token: Secret | None, sources: SourceLog | None = None) -> None:
        self._keystore = keystore
        self._sources = sources  # allowlist discovery (gateway/source_log.py)
        # Compare digests: equal length whatever the caller sends, so no length leak either.
        self._token_digest = hashlib.sha256(token.reveal().encode()).digest() if token else None

    def routes(self) -> list[Route]:
        return [
            Route("/admin/phones", self.list_phones, methods=["GET"]),
            Route("/admin/phones/{phone_id}", self.get_phone, methods=["GET"]),
            Route("/admin/phones/{phone_id}", self.put_phone, methods=["PUT"]),
            Route("/admin/phones/{phone_id}", self.delete_phone, methods=["DELETE"]),
            Route("/admin/{provider}/sources", self.unlisted_sources, methods=["GET"]),
        ]

    def _authorised(self, request: Request) -> Response | None:
        if self._token_digest is None:
            return _error(404, "admin API disabled: set GATEWAY_ADMIN_TOKEN to enable it")
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        digest = hashlib.sha256(presented.strip().encode("utf-8", "surrogateescape")).digest()
        valid = hmac.compare_digest(digest, self._token_digest)
        if scheme.lower() != "bearer" or not valid:
            return Response(
                b'{"error":"unauthorized"}',
                status_code=401,
                media_type="application/json",
                headers={"www-authenticate": 'Bearer realm="gateway-admin"'},
            )
        return None

    async def list_phones(self, request: Request) -> Response:
        if (denied := self._authorised(request)) is not None:
            return denied
        try:
            # Invalid stored records are skipped and named, so one bad record cannot hide the others.
            return _json(await self._keystore.listing())
        except REDIS_FAILURES:
            return _error(503, "redis unavailable")

    async def get_phone(self, request: Request) -> Response:
        if (denied := self._authorised(request)) is not None:
            return denied
        try:
            view = await self._keystore.get(phone_id := request.path_params["phone_id"])
        except CorruptRecord:
            return _json(
                {"error": "the stored record is invalid: replace it (PUT) or delete it", "invalid": [phone_id]}, 409
            )
        except REDIS_FAILURES:
            return _error(503, "redis unavailable")
        return _json(view) if view is not None else _error(404, "no such phone")

    async def put_phone(self, request: Request) -> Response:
        if (denied := self._authorised(request)) is not None:
            return denied
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_ADMIN_BODY):
            return _error(413, f"body larger than {MAX_ADMIN_BODY} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_ADMIN_BODY:
                return _error(413, f"body larger than {MAX_ADMIN_BODY} bytes")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(400, "body must be JSON")
        phone_id = request.path_params["phone_id"]
        try:
            existed = await self._keystore.exists(phone_id)
            view = await self._keystore.put(phone_id, payload)
        except InvalidRecord as exc:
            return _error(422, str(exc))
        except FingerprintKeyError:
            log.error("the fingerprint key cannot be opened: check GATEWAY_KEK / GATEWAY_KEK_PREVIOUS")
            return _error(500, "the fingerprint key cannot be opened under the configured KEKs")
        except Conflict as exc:
            return _error(409, str(exc))
        except REDIS_FAILURES:
            return _error(503, "redis unavailable")
        log.info("phone %s %s (%s)", loggable(phone_id), "replaced" if existed else "created", view["provider"])
        return _json(view, 200 if existed else 201)

    async def delete_phone(self, request: Request) -> Response:
        if (denied := self._authorised(request)) is not None:
            return denied
        phone_id = request.path_params["phone_id"]
        try:
            deleted = await self._keystore.delete(phone_id)
        except REDIS_FAILURES:
            return _error(503, "redis unavailable")
        if not deleted:
            return _error(404, "no such phone")
        log.info("phone %s deleted", loggable(phone_id))
        return Response(status_code=204)

    async def unlisted_sources(self, request: Request) -> Response:
        """Allowlist discovery: networks of requests refused for their address that proved their phone."""
        if (denied := self._authorised(request)) is not None:
            return denied
        name = request.path_params["provider"]
        provider = next((p for p in DISCOVERABLE if p.value == name), None)
        if provider is None or self._sources is None:
            return _error(404, "no source list for this provider")
        try:
            return _json({"sources": await self._sources.sources(provider)})
        except REDIS_FAILURES:
            return _error(503, "redis unavailable")
