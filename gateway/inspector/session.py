"""The inspector's login cookie: a session id and an expiry, signed with a key derived from the admin token.

Signed, so every worker (and every instance with the same GATEWAY_ADMIN_TOKEN) accepts it;
it is not the token, and a cookie cannot be turned back into it. The key is
HMAC-SHA256(admin token, a fixed label), the cookie
`v2.<expiry>.<session id>.<HMAC-SHA256(key, "v2.<expiry>.<session id>")>` in hex; checked with
`hmac.compare_digest`. Changing the admin token ends every session.

Logging out ends the session everywhere, not only in the browser: its id is kept as revoked
until the cookie would have expired, in this process at once and in Redis for the other
workers and instances (`RedisLogouts`). Only a signed, unexpired cookie is ever revoked, so
nothing is stored for an unauthenticated request. If Redis cannot be asked, a cookie is
judged by this process's own logouts: the inspector stays usable during a Redis outage, the
very time it is needed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis

from gateway.redis_keys import KeyNames
from gateway.secrets import Secret

COOKIE_NAME = "gateway_inspector"
COOKIE_PATH = "/admin/inspector"
SESSION_TTL_S = 4 * 3600
_LABEL = b"gateway inspector session cookie v1"
_VERSION = "v2"
_SESSION_ID_BYTES = 16
_MAX_LOCAL_LOGOUTS = 10_000  # each needs the admin token first; kept until its cookie expires

log = logging.getLogger("gateway.inspector")


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str  # hex
    expiry: int  # Unix seconds


class SharedLogouts(Protocol):
    """Where a logout is told to the other workers and instances."""

    async def revoke(self, session_id: str, expiry: int) -> None: ...

    async def revoked(self, session_id: str) -> bool: ...


class RedisLogouts:
    """Revoked session ids in Redis, each expiring with its cookie (SET ... EXAT)."""

    def __init__(self, redis: Redis, names: KeyNames) -> None:
        self._redis = redis
        self._names = names

    async def revoke(self, session_id: str, expiry: int) -> None:
        await self._redis.set(self._names.inspector_logout(session_id), b"1", exat=expiry)

    async def revoked(self, session_id: str) -> bool:
        return bool(await self._redis.exists(self._names.inspector_logout(session_id)))


class Sessions:
    def __init__(
        self,
        admin_token: Secret,
        *,
        ttl_s: int = SESSION_TTL_S,
        clock: Callable[[], float] = time.time,
        shared: SharedLogouts | None = None,
    ):
        self._token = admin_token.reveal().encode("utf-8")
        self._key = hmac.new(self._token, _LABEL, hashlib.sha256).digest()
        self._ttl_s = ttl_s
        self._clock = clock
        self._shared = shared
        self._logged_out: dict[str, int] = {}  # session id -> its expiry: this process's logouts

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    def share_logouts(self, shared: SharedLogouts) -> None:
        self._shared = shared

    def token_matches(self, presented: str) -> bool:
        """The admin token, compared in constant time."""
        return hmac.compare_digest(presented.encode("utf-8"), self._token)

    def issue(self) -> str:
        expiry = int(self._clock()) + self._ttl_s
        session_id = secrets.token_hex(_SESSION_ID_BYTES)
        return f"{_VERSION}.{expiry}.{session_id}.{self._mac(expiry, session_id)}"

    def parse(self, cookie: str | None) -> Session | None:
        """The session of a cookie this gateway signed that has not expired, else None (logouts not asked)."""
        if not cookie or len(cookie) > 200:
            return None
        parts = cookie.split(".")
        if len(parts) != 4:
            return None
        version, expiry_text, session_id, mac = parts
        if version != _VERSION or not expiry_text.isascii() or not expiry_text.isdigit() or len(expiry_text) > 12:
            return None
        if len(session_id) != 2 * _SESSION_ID_BYTES or not _is_hex(session_id):
            return None
        expiry = int(expiry_text)
        if not hmac.compare_digest(mac.encode("ascii", "replace"), self._mac(expiry, session_id).encode("ascii")):
            return None
        now = self._clock()
        if not now < expiry <= now + self._ttl_s + 60:  # expired, or issued for longer than the TTL
            return None
        return Session(session_id, expiry)

    async def valid(self, cookie: str | None) -> bool:
        """A signed, unexpired cookie whose session was not logged out."""
        session = self.parse(cookie)
        if session is None or session.session_id in self._logged_out:
            return False
        if self._shared is None:
            return True
        try:
            return not await self._shared.revoked(session.session_id)
        except Exception as exc:  # Redis down: this process's own logouts decide (see the module text)
            log.warning("inspector: logouts of other workers cannot be read (%s)", type(exc).__name__)
            return True

    async def log_out(self, cookie: str | None) -> bool:
        """End the cookie's session everywhere; False when the cookie was not a valid session
        (nothing to end, nothing stored). Raises when Redis cannot record it."""
        session = self.parse(cookie)
        if session is None:
            return False
        self._forget_expired()
        if len(self._logged_out) < _MAX_LOCAL_LOGOUTS:
            self._logged_out[session.session_id] = session.expiry
        if self._shared is not None:
            await self._shared.revoke(session.session_id, session.expiry)
        return True

    def _forget_expired(self) -> None:
        now = self._clock()
        for session_id in [sid for sid, expiry in self._logged_out.items() if expiry <= now]:
            del self._logged_out[session_id]

    def _mac(self, expiry: int, session_id: str) -> str:
        return hmac.new(self._key, f"{_VERSION}.{expiry}.{session_id}".encode(), hashlib.sha256).hexdigest()


def _is_hex(text: str) -> bool:
    return text.isascii() and all(ch in "0123456789abcdef" for ch in text)
