"""The ASGI application: webhooks on a pure-ASGI fast path, everything else through Starlette."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route as StarletteRoute

from gateway import metrics
from gateway.admin import AdminAPI
from gateway.answers import Answerer
from gateway.asgi_io import Receive, Scope, Send
from gateway.calls import CallAware
from gateway.diagnostics.explainer import MismatchExplainer
from gateway.diagnostics.rejection import Context
from gateway.dispatch import DispatchClient
from gateway.errors import NOT_FOUND
from gateway.forwarder import FORWARD_SCRIPT, Forwarder
from gateway.http_protocol import EdgeHttpToolsProtocol
from gateway.inspector.session import RedisLogouts
from gateway.inspector.views import Inspector
from gateway.keystore import KeyStore
from gateway.providers.registry import build_verifiers
from gateway.proxy import OriginResolver
from gateway.redis_client import connect
from gateway.redis_keys import KeyNames
from gateway.sealing import Sealer
from gateway.settings import Settings, from_env
from gateway.source_log import SourceLog, UnlistedSources
from gateway.stream_monitor import NOT_SAMPLED, StreamMonitor
from gateway.tasks import stop_task
from gateway.webhooks import WebhookHandler, match_route

log = logging.getLogger("gateway")


@dataclass
class Components:
    redis: Redis
    keystore: KeyStore
    forwarder: Forwarder
    webhooks: WebhookHandler


class GatewayApp:
    """Top-level ASGI app. Webhook paths go straight to WebhookHandler; the rest to Starlette."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis_factory: Callable[[], Redis] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._redis_factory = redis_factory or (lambda: connect(settings))
        self._verifier_options = settings.verifier_options()  # fail fast on a bad allowlist file
        for warning in settings.verifier_warnings(self._verifier_options):
            log.warning("%s", warning)
        self._sealer = Sealer.from_settings(settings)
        self._names = KeyNames.from_settings(settings)
        self.components: Components | None = None
        self.monitor: StreamMonitor | None = None
        self._admin_port = settings.admin_port
        metrics.preinitialise()
        self._inspector = Inspector.from_settings(settings)  # None: off (no recording, no pages)
        self._starlette = Starlette(routes=self._routes(), lifespan=self._lifespan)

    # ---- lifespan -----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        settings = self.settings
        redis = self._redis_factory()
        keystore = KeyStore(
            redis,
            self._sealer,
            self._names,
            cache_ttl_s=settings.cache_ttl_s,
            negative_ttl_s=settings.negative_cache_ttl_s,
            max_entries=settings.cache_max_entries,
            clock=self._clock,
        )
        forwarder = Forwarder(
            redis,
            self._names,
            nonce_ttl_s=settings.nonce_ttl_s,
            idempotency_ttl_s=settings.idempotency_ttl_s,
            stream_maxlen=settings.stream_maxlen,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=max(1, int(settings.redis_timeout_s * 500)),  # answered well before the socket timeout
        )
        verifiers = build_verifiers(self._verifier_options)
        dispatch = (  # answer mode proxy: one pooled client per process (docs/answers-and-forwards.md)
            DispatchClient(
                settings.dispatch_url,
                settings.forward_signing_key_bytes(),
                timeout_s=settings.dispatch_timeout_s,
                max_connections=settings.dispatch_max_connections,
                clock=self._clock,
            )
            if settings.dispatch_url
            else None
        )
        answers = Answerer(settings, dispatch=dispatch)
        for warning in answers.warnings:
            log.warning("%s", warning)
        calls = CallAware(
            self._names,
            enabled=settings.call_aware,
            window_s=settings.call_aware_window_s,
            late_s=settings.call_aware_late_s,
            ttl_s=settings.call_aware_ttl_s,
        )
        source_log = SourceLog(redis, self._names, ttl_s=settings.unlisted_sources_ttl_s)
        unlisted = UnlistedSources(source_log)  # allowlist discovery (docs/operations.md)
        if self._inspector is not None:
            self._inspector.show_unlisted_sources(source_log)
            self._inspector.share_logouts(RedisLogouts(redis, self._names))
        explainer = (
            MismatchExplainer(
                settings.public_base,
                report_undiagnosed=self._inspector is not None,
                context=Context(
                    tolerance_s=self._verifier_options.timestamp_tolerance_s,
                    allowlist=self._verifier_options.ip_allowlist,
                    trusted_proxies=settings.trusted_proxies,
                ),
            )
            if settings.explain_mismatches
            else None
        )
        webhooks = WebhookHandler(
            keystore=keystore,
            forwarder=forwarder,
            verifiers=verifiers,
            answers=answers,
            calls=calls,
            unlisted=unlisted,
            origin=OriginResolver(settings.trusted_proxies, settings.public_base),
            max_body_bytes=settings.max_body_bytes,
            clock=self._clock,
            explain=explainer,
            explain_rejection=explainer.rejection if explainer is not None else None,
            access_log_mode=settings.access_log,
            inspect=self._inspector.store.record if self._inspector is not None else None,
        )
        self.components = Components(redis, keystore, forwarder, webhooks)
        self._admin = AdminAPI(keystore, settings.admin_token, sources=source_log)
        with contextlib.suppress(Exception):  # Redis may be down at start: /readyz says so
            await redis.script_load(FORWARD_SCRIPT)
        readiness = self._names.readiness
        monitor = StreamMonitor(
            redis, settings.stream, lambda: forwarder.probe_write(readiness), timeout_s=settings.redis_timeout_s
        )
        await monitor.sample()  # the public /readyz answers from the monitor's last probe from the start
        self.monitor = monitor
        keystore.start_invalidation()
        forwarder.start()
        monitor.start()
        flusher = asyncio.get_running_loop().create_task(metrics.run_flusher(), name="metrics-flush")
        _freeze_startup_objects()
        try:
            yield
        finally:
            # Requests still in flight were drained by uvicorn before lifespan shutdown;
            # flush anything queued so no accepted request is left unanswered.
            await monitor.stop()
            self.monitor = None
            await forwarder.stop()
            if dispatch is not None:
                await dispatch.aclose()
            await keystore.stop_invalidation()
            await unlisted.stop()  # records still being written get a moment, then are dropped
            await redis.aclose()
            self.components = None
            await stop_task(flusher)  # its last flush folds the last requests' counts in
            metrics.retire_process()

    # ---- routes -------------------------------------------------------------

    def _routes(self) -> list[StarletteRoute]:
        return [
            StarletteRoute("/healthz", self._healthz, methods=["GET"]),
            StarletteRoute("/readyz", self._readyz, methods=["GET"]),
            StarletteRoute("/metrics", self._metrics, methods=["GET"]),
            StarletteRoute("/admin/phones", self._admin_dispatch, methods=["GET"]),
            StarletteRoute("/admin/phones/{phone_id}", self._admin_dispatch, methods=["GET", "PUT", "DELETE"]),
            StarletteRoute("/admin/{provider}/sources", self._admin_sources, methods=["GET"]),
            *(self._inspector.routes() if self._inspector is not None else []),  # the admin port only
        ]

    async def _healthz(self, _request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def _readyz(self, request: Request) -> Response:
        components = self.components
        if components is None:
            return Response(orjson.dumps({"ready": False, "redis": "not started"}), 503, media_type="application/json")
        if not (self._admin_port is not None and _local_port(request.scope) == self._admin_port):
            # The public port: the stream monitor's last probe (refreshed about once a second), so an
            # unauthenticated caller cannot make the gateway write to Redis (and WAIT for replicas).
            verdict = self.monitor.readiness() if self.monitor is not None else NOT_SAMPLED
            if not verdict.ready:
                failure = {"ready": False, "redis": verdict.redis}
                return Response(orjson.dumps(failure), 503, media_type="application/json")
            return self._ready_response()
        # The admin port (GATEWAY_ADMIN_PORT, bound to GATEWAY_ADMIN_HOST): probed live.
        try:
            # A write, not PING: a read-only replica (after a failover), an out-of-memory or a
            # write-paused server answers PING but refuses the writes every webhook needs.
            await asyncio.wait_for(
                components.forwarder.probe_write(self._names.readiness), timeout=self.settings.redis_timeout_s
            )
        except Exception as exc:
            metrics.REDIS_UP.set(0)
            metrics.REDIS_ERRORS.labels("ready", metrics.redis_error_class(exc)).inc()
            failure = {"ready": False, "redis": metrics.redis_error_class(exc)}
            return Response(orjson.dumps(failure), 503, media_type="application/json")
        metrics.REDIS_UP.set(1)
        return self._ready_response()

    def _ready_response(self) -> Response:
        body: dict[str, Any] = {"ready": True, "redis": "ok", **self.settings.readiness_details(self._verifier_options)}
        return Response(orjson.dumps(body), 200, media_type="application/json")

    async def _metrics(self, _request: Request) -> Response:
        payload, content_type = metrics.render()
        return Response(payload, 200, media_type=content_type)

    async def _admin_dispatch(self, request: Request) -> Response:
        api = self._admin
        route = {
            ("GET", False): api.list_phones,
            ("GET", True): api.get_phone,
            ("PUT", True): api.put_phone,
            ("DELETE", True): api.delete_phone,
        }[(request.method, "phone_id" in request.path_params)]
        return await route(request)

    async def _admin_sources(self, request: Request) -> Response:
        return await self._admin.unlisted_sources(request)

    # ---- ASGI ---------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            on_admin_port = self._admin_port is not None and _local_port(scope) == self._admin_port
            if not on_admin_port:
                route = match_route(scope["path"])
                if route is not None:
                    components = self.components
                    if components is None:
                        raise RuntimeError("gateway used before lifespan startup")
                    await components.webhooks(scope, receive, send, route)
                    return
                if self._admin_port is not None and not _public_path(scope["path"]):
                    status, text = NOT_FOUND
                    await PlainTextResponse(text, status)(scope, receive, send)
                    return
        await self._starlette(scope, receive, send)


_FROZEN = False


def _freeze_startup_objects() -> None:
    """Move what exists once the app is up (modules, settings, clients, metrics) out of the cyclic
    GC's reach, once per process: under load a full collection otherwise walks all of it and
    stalls every request in flight (~20 ms each, measured: loadtests/README.md).

    A request allocates a few hundred short-lived objects, nearly all freed by reference
    counting; the default youngest-generation threshold (700) ran a collection every few
    requests. 20,000 runs one every ~50 requests over the few thousand live ones (-2.5% CPU
    per request, measured); older generations follow at 20x their younger one."""
    global _FROZEN
    if not _FROZEN:
        _FROZEN = True
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)


def _local_port(scope: Scope) -> int | None:
    server = scope.get("server")
    return server[1] if server else None


def _public_path(path: str) -> bool:
    """With a separate admin port, the public port serves only webhooks and health checks."""
    return path in ("/healthz", "/readyz")


def create_app(settings: Settings | None = None, **kwargs: Any) -> GatewayApp:
    """The app `gateway serve` runs (uvicorn's factory, called once in each worker process)."""
    settings = settings or from_env()
    EdgeHttpToolsProtocol.configure(head_timeout_s=settings.head_timeout_s, body_timeout_s=settings.body_timeout_s)
    return GatewayApp(settings, **kwargs)
