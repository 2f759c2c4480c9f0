"""The inspector's login cookie: an expiry signed with a key derived from the admin token.

Stateless, so every worker (and every instance with the same GATEWAY_ADMIN_TOKEN)
accepts it; it is not the token, and a cookie cannot be turned back into it. The key is
HMAC-SHA256(admin token, a fixed label), the cookie `v1.<expiry>.<HMAC-SHA256(key, "v1.<expiry>")>`
in hex; checked with `hmac.compare_digest`. Changing the admin token ends every session.
Logging out clears the cookie in the browser; a copied cookie stays valid until it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from gateway.secrets import Secret

COOKIE_NAME = "gateway_inspector"
COOKIE_PATH = "/admin/inspector"
SESSION_TTL_S = 4 * 3600
_LABEL = b"gateway inspector session cookie v1"
_VERSION = "v1"


class Sessions:
    def __init__(self, admin_token: Secret, *, ttl_s: int = SESSION_TTL_S, clock: Callable[[], float] = time.time):
        self._token = admin_token.reveal().encode("utf-8")
        self._key = hmac.new(self._token, _LABEL, hashlib.sha256).digest()
        self._ttl_s = ttl_s
        self._clock = clock

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    def token_matches(self, presented: str) -> bool:
        """The admin token, compared in constant time."""
        return hmac.compare_digest(presented.encode("utf-8"), self._token)

    def issue(self) -> str:
        expiry = int(self._clock()) + self._ttl_s
        return f"{_VERSION}.{expiry}.{self._mac(expiry)}"

    def valid(self, cookie: str | None) -> bool:
        if not cookie or len(cookie) > 200:
            return False
        version, _, rest = cookie.partition(".")
        expiry_text, _, mac = rest.partition(".")
        if version != _VERSION or not expiry_text.isascii() or not expiry_text.isdigit() or len(expiry_text) > 12:
            return False
        expiry = int(expiry_text)
        if not hmac.compare_digest(mac.encode("ascii", "replace"), self._mac(expiry).encode("ascii")):
            return False
        now = self._clock()
        return now < expiry <= now + self._ttl_s + 60  # not expired, and not issued for longer than the TTL

    def _mac(self, expiry: int) -> str:
        return hmac.new(self._key, f"{_VERSION}.{expiry}".encode(), hashlib.sha256).hexdigest()
