"""The inspector's pages (Starlette endpoints, Jinja2 templates in gateway/inspector/templates/).

Served only on the admin port (GATEWAY_ADMIN_PORT), with GATEWAY_ADMIN_TOKEN set and
GATEWAY_INSPECTOR on; otherwise there are no such routes (404), and nothing is recorded.

- `GET /admin/inspector`: this worker's recent requests, rejected and accepted apart, newest first;
- `GET /admin/inspector/requests/{id}`: one request, redacted, and as a `gateway explain` command;
- `GET /admin/inspector/login`: the form; `POST /admin/inspector/login` (field `token`) sets the
  session cookie (gateway/inspector/session.py) or answers the form again with 401;
- `POST /admin/inspector/logout`: ends the session, in every worker, and clears the cookie.

Without a valid cookie every page answers 303 to the form. Nothing changes state on GET.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import jinja2
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from gateway.diagnostics.mismatch import Diagnosis, NotDiagnosed
from gateway.diagnostics.rejection import Finding
from gateway.errors import NOT_FOUND, Rejected
from gateway.inspector.redaction import Redactor, mask_numbers, printable, show
from gateway.inspector.session import COOKIE_NAME, COOKIE_PATH, Sessions, SharedLogouts
from gateway.inspector.store import InspectorStore, Record
from gateway.providers.registry import CARRIERS
from gateway.proxy import OriginResolver
from gateway.settings import Settings
from gateway.source_log import SourceLog

log = logging.getLogger("gateway.inspector")

BASE = "/admin/inspector"
LOGIN = f"{BASE}/login"
LOGOUT = f"{BASE}/logout"
MAX_LOGIN_BODY = 4096
# No script, no framing, no referrer; forms post only to this origin.
SECURITY_HEADERS = {
    "cache-control": "no-store",
    "content-security-policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def enabled(settings: Settings) -> bool:
    """The inspector runs only where its pages can be served: the admin port, with a token."""
    return settings.inspector and settings.admin_port is not None and settings.admin_token is not None


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("gateway.inspector", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return Jinja2Templates(env=env)


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    when: str
    carrier: str
    route: str
    phone: str
    status: int
    outcome: str
    reason: str
    diagnosis: str
    matched_url: str
    key: str


class Inspector:
    def __init__(
        self,
        store: InspectorStore,
        sessions: Sessions,
        redactor: Redactor,
        resolver: OriginResolver,
        *,
        admin_port: int,
        workers: int = 1,
    ) -> None:
        self.store = store
        self._sessions = sessions
        self._redactor = redactor
        self._resolver = resolver  # the scheme of the admin request (X-Forwarded-Proto from trusted proxies)
        self._admin_port = admin_port
        self._workers = workers
        self._templates = _templates()
        self._source_log: SourceLog | None = None

    def share_logouts(self, shared: SharedLogouts) -> None:
        """Tell every worker and instance of a logout (Redis): gateway/inspector/session.py."""
        self._sessions.share_logouts(shared)

    def show_unlisted_sources(self, source_log: SourceLog) -> None:
        """List the allowlist-discovery sources (docs/operations.md) on the index page: one list in Redis."""
        self._source_log = source_log

    async def _unlisted_sources(self) -> list[dict[str, Any]]:
        """Per carrier that records them: its title and its sources, or `error` when Redis cannot say."""
        if self._source_log is None:
            return []
        sections: list[dict[str, Any]] = []
        for provider, spec in CARRIERS.items():
            if spec.proof_without_source is None:
                continue
            try:
                sources = await self._source_log.sources(provider)
            except Exception:  # a page must render even when Redis is down: say so instead
                log.warning("inspector: the unlisted sources of %s could not be read", provider.value)
                sections.append({"title": spec.title, "sources": [], "error": True, "provider": provider.value})
                continue
            rows = [
                {**source, "first": _when(source["first_seen"]), "last": _when(source["last_seen"])}
                for source in sources
            ]
            sections.append({"title": spec.title, "sources": rows, "error": False, "provider": provider.value})
        return sections

    @classmethod
    def from_settings(cls, settings: Settings) -> Inspector | None:
        if not enabled(settings) or settings.admin_token is None or settings.admin_port is None:
            return None
        return cls(
            InspectorStore(settings.inspector_max_requests),
            Sessions(settings.admin_token),
            Redactor(mask=settings.inspector_mask_numbers),
            OriginResolver(settings.trusted_proxies, None),
            admin_port=settings.admin_port,
            workers=settings.workers,
        )

    def routes(self) -> list[Route]:
        return [
            Route(BASE, self.index, methods=["GET"]),
            Route(BASE + "/requests/{record_id:int}", self.detail, methods=["GET"]),
            Route(LOGIN, self.login_form, methods=["GET"]),
            Route(LOGIN, self.login, methods=["POST"]),
            Route(LOGOUT, self.logout, methods=["POST"]),
        ]

    # ---- pages --------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        refused = await self._refuse(request)
        if refused is not None:
            return refused
        snapshot = self.store.snapshot()
        context = {
            "rejected": [self._row(record, listing=True) for record in snapshot.rejected],
            "accepted": [self._row(record, listing=True) for record in snapshot.accepted],
            "pid": snapshot.pid,
            "workers": self._workers,
            "max_requests": snapshot.max_requests,
            "max_bytes": snapshot.max_bytes,
            "masked": self._redactor.mask,
            "unlisted": await self._unlisted_sources(),
        }
        return self._page(request, "index.html", context)

    async def detail(self, request: Request) -> Response:
        refused = await self._refuse(request)
        if refused is not None:
            return refused
        record = self.store.find(request.path_params["record_id"])
        if record is None:
            gone: dict[str, Any] = {"pid": self.store.snapshot().pid}
            return self._page(request, "gone.html", gone, status=404)
        row = self._row(record)
        shown = (
            show(record.request, record.phone_id, self._redactor.for_record(record.secret_names), record.body_size)
            if record.request is not None
            else None
        )
        context: dict[str, Any] = {
            "row": row,
            "record": record,
            "path": printable(record.path, 300),
            "client": record.request.client_ip if record.request is not None else record.client,
            "shown": shown,
            "pid": self.store.snapshot().pid,
            "masked": self._redactor.mask,
        }
        return self._page(request, "detail.html", context)

    async def login_form(self, request: Request) -> Response:
        if not self._on_admin_port(request):
            return _not_found()
        return self._page(request, "login.html", {"failed": False})

    async def login(self, request: Request) -> Response:
        if not self._on_admin_port(request):
            return _not_found()
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_BODY:
                return PlainTextResponse("request too large\n", 413, headers=SECURITY_HEADERS)
        try:
            fields = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=10))
        except ValueError:
            fields = {}
        if not self._sessions.token_matches(fields.get("token", "")):
            log.warning("inspector login refused (wrong token) from %s", _peer(request))
            return self._page(request, "login.html", {"failed": True}, status=401)
        response = RedirectResponse(BASE, status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(
            COOKIE_NAME,
            self._sessions.issue(),
            max_age=self._sessions.ttl_s,
            path=COOKIE_PATH,
            secure=self._https(request),
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(self, request: Request) -> Response:
        if not self._on_admin_port(request):
            return _not_found()
        try:
            await self._sessions.log_out(request.cookies.get(COOKIE_NAME))
        except Exception as exc:  # ended in this process and in the browser; other workers may still take the cookie
            log.warning("inspector logout could not be shared with other workers (%s)", type(exc).__name__)
        response = RedirectResponse(LOGIN, status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(
            COOKIE_NAME, path=COOKIE_PATH, secure=self._https(request), httponly=True, samesite="strict"
        )
        return response

    # ---- helpers ------------------------------------------------------------------------

    def _on_admin_port(self, request: Request) -> bool:
        server = request.scope.get("server")
        return server is not None and server[1] == self._admin_port

    async def _refuse(self, request: Request) -> Response | None:
        """404 off the admin port; 303 to the login form without a valid session cookie."""
        if not self._on_admin_port(request):
            return _not_found()
        if not await self._sessions.valid(request.cookies.get(COOKIE_NAME)):
            return RedirectResponse(LOGIN, status_code=303, headers=SECURITY_HEADERS)
        return None

    def _https(self, request: Request) -> bool:
        client = request.scope.get("client")
        origin = self._resolver.resolve(client[0] if client else None, request.url.scheme, request.headers)
        return origin.scheme == "https"

    def _page(self, request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        return self._templates.TemplateResponse(request, name, context, status_code=status, headers=SECURITY_HEADERS)

    def _row(self, record: Record, *, listing: bool = False) -> Row:
        """A record as shown; the listing names no client address (the detail page does)."""
        diagnosis, matched_url, key = "", "", ""
        found = record.diagnosis
        if isinstance(found, Diagnosis):
            diagnosis = printable(found.message(), 1000)
            matched_url = printable(found.url, 500)
            key = found.key_fingerprint or ""
        elif isinstance(found, Finding):  # another refusal explained (gateway/diagnostics/rejection.py)
            diagnosis = printable(found.message(hide_addresses=listing), 1000)
            key = found.key_fingerprint or ""
        elif isinstance(found, NotDiagnosed):
            diagnosis = found.message()
        return Row(
            id=record.id,
            when=_when(record.at),
            carrier=record.provider,
            route=f"{record.method} {printable(record.path, 120)}",
            phone=printable(record.phone_id, 80) if record.phone_id is not None else self._phone_by_number(record),
            status=record.status,
            outcome=record.outcome,
            reason=record.reason,
            diagnosis=diagnosis,
            matched_url=matched_url,
            key=key,
        )

    def _phone_by_number(self, record: Record) -> str:
        """Routes without a phone id: the number the event names (masked like any number)."""
        if record.request is None:
            return "-"
        for spec in CARRIERS.values():
            if spec.numbers_in_request is None or record.provider not in (spec.provider.value, spec.family.value):
                continue
            try:
                numbers = spec.numbers_in_request(record.request)
            except (Rejected, ValueError, TypeError):
                return "-"
            if numbers:
                shown = numbers[0]
                return "number " + printable(mask_numbers(shown) if self._redactor.mask else shown, 40)
        return "-"


def _not_found() -> Response:
    status, text = NOT_FOUND
    return PlainTextResponse(text, status)


def _peer(request: Request) -> str:
    client = request.scope.get("client")
    return str(client[0]) if client else "-"
