"""Call-aware replay defence (opt-in): which call an event belongs to, and what it says about the call.

The rule (docs/answers-and-forwards.md, "Call-aware replay defence"), applied atomically
by the forwarder's Lua script in the same Redis round trip as the XADD:

* An *answer* event (an `incoming` route; Telnyx `call.initiated`) opens the call.
* Any other event of a call not yet answered is **held**, not forwarded: it is kept in
  Redis and answered 200. If the answer arrives within the window
  (GATEWAY_CALL_AWARE_WINDOW_S after the first held event) the held events are
  appended to the stream right after the answer, in arrival order; otherwise they are
  dropped, and later events of that call are rejected (403, reason `unknown_call`).
  Carriers do deliver out of order (Telnyx says so explicitly), so a status that
  overtakes its answer is not lost; a replayed status of a call that was never
  answered (or whose timeline expired) never reaches dispatch.
* A *terminal* status (its carrier's `TERMINAL_STATUSES`) ends the call. After it, answer events are accepted for
  the window (a late `call.initiated`), other events for GATEWAY_CALL_AWARE_LATE_S
  (recordings, late progress); later ones are rejected (403, reason `call_ended`).
* Events without a call id (nothing to correlate) are not checked.

Which event answers or ends a call, and each carrier's terminal statuses (with their
sources), are carrier rules: `call_event` in each gateway/providers/<carrier>.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.forwarder import CallCheck
from gateway.inbound import InboundRequest
from gateway.providers import PhoneCredentials, Provider
from gateway.providers.registry import CARRIERS
from gateway.redis_keys import KeyNames

MAX_HELD_PER_CALL = 16  # a call's held events beyond this are rejected (unknown_call)


class CallAware:
    """Builds the forwarder's call checks; `check()` is None (no extra Redis work) when disabled."""

    def __init__(
        self,
        names: KeyNames,
        *,
        enabled: bool,
        window_s: int,
        late_s: int,
        ttl_s: int,
        max_held: int = MAX_HELD_PER_CALL,
    ) -> None:
        self._names = names
        self._enabled = enabled
        self._tail = (str(window_s), str(late_s), str(ttl_s), str(max_held))

    def enabled_for(self, config: Mapping[str, Any]) -> bool:
        """Per phone `config.call_aware` (true/false) wins over GATEWAY_CALL_AWARE."""
        value = config.get("call_aware")
        return self._enabled if value is None else value is True

    def check(
        self, provider: Provider, kind: str, creds: PhoneCredentials, inbound: InboundRequest, now: float
    ) -> CallCheck | None:
        value = creds.config.get("call_aware")  # inlined enabled_for(): this runs on every request
        if not (self._enabled if value is None else value is True):
            return None
        event = CARRIERS[provider].call_event(inbound, kind)
        if event is None:
            return None
        return CallCheck(
            provider=provider.value,
            keys=self._names.call_keys(creds.phone_id, event.call_id),
            args=(event.phase, event.status, repr(now), *self._tail),
        )

    def key(self, phone_id: str, call: str) -> str:
        """The call's state hash (with its timeline and held events: KeyNames.call_keys)."""
        return self._names.call(phone_id, call)
