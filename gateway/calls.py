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
* A *terminal* status (below) ends the call. After it, answer events are accepted for
  the window (a late `call.initiated`), other events for GATEWAY_CALL_AWARE_LATE_S
  (recordings, late progress); later ones are rejected (403, reason `call_ended`).
* Events without a call id (nothing to correlate) are not checked.

Terminal status vocabularies:
* Twilio `CallStatus`: completed, busy, failed, no-answer, canceled — "Final Call Statuses",
  https://help.twilio.com/articles/223132547 (What are the possible call statuses and what do they mean?)
* Plivo `CallStatus`: completed, busy, failed, timeout, no-answer, cancel —
  https://www.plivo.com/docs/voice/xml/request/call-status/ and `failed` from
  https://www.plivo.com/docs/account/api/application/ (CallStatus of outbound calls)
* Vobiz (Plivo-compatible): completed, busy, failed, timeout, no-answer, cancel —
  https://docs.vobiz.ai/xml/request/call-status and https://docs.vobiz.ai/xml/request
* Exotel `Status` (StatusCallback is sent when the call reaches a terminal state):
  completed, failed, busy, no-answer — https://developer.exotel.com/api/statuscallback and
  https://developer.exotel.com/docs/references/webhooks; `EventType=terminal` marks the same event.
* Telnyx: `call.hangup` — https://developers.telnyx.com/api-reference/callbacks/call-hangup;
  out-of-order delivery: https://developers.telnyx.com/docs/voice/programmable-voice/receiving-webhooks
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.inbound import InboundRequest
from gateway.providers import PhoneCredentials, Provider, telnyx
from gateway.redis_keys import KeyNames

ANSWER, END, OTHER = "a", "e", "s"
MAX_HELD_PER_CALL = 16  # a call's held events beyond this are rejected (unknown_call)

CALL_ID_PARAM: dict[Provider, str] = {
    Provider.PLIVO: "CallUUID",
    Provider.VOBIZ: "CallUUID",
    Provider.TWILIO: "CallSid",
    Provider.EXOTEL: "CallSid",
}
_PLIVO_TERMINAL = frozenset({"completed", "busy", "failed", "timeout", "no-answer", "cancel"})
TERMINAL: dict[Provider, frozenset[str]] = {
    Provider.TWILIO: frozenset({"completed", "busy", "failed", "no-answer", "canceled"}),
    Provider.PLIVO: _PLIVO_TERMINAL,
    Provider.VOBIZ: _PLIVO_TERMINAL,
    Provider.EXOTEL: frozenset({"completed", "failed", "busy", "no-answer"}),
}
_LABEL_UNSAFE = re.compile(r"[^a-z0-9._-]")


@dataclass(frozen=True, slots=True)
class CallCheck:
    """The call-aware part of one forwarder script call (KEYS[4..6], ARGV[7..13]: gateway/forwarder.py)."""

    provider: str  # metric label
    keys: tuple[str, str, str]  # state hash, timeline list, held list (all in the stream's slot)
    args: tuple[str, ...]  # phase, status label, now, window s, late s, TTL s, max held


@dataclass(frozen=True, slots=True)
class CallEvent:
    call_id: str
    phase: str  # ANSWER | END | OTHER
    status: str  # short label for the timeline ("-" when none)


def _label(value: object) -> str:
    """A short, safe label for the timeline (carrier-signed, but still bounded)."""
    if not isinstance(value, str) or not value:
        return "-"
    return _LABEL_UNSAFE.sub("_", value.lower())[:40]


def call_id(provider: Provider, inbound: InboundRequest) -> str | None:
    """The carrier's call id of a form/query-based request (None for Telnyx or when absent)."""
    name = CALL_ID_PARAM.get(provider)
    value = inbound.params().get(name) if name else None
    return value or None


def classify(provider: Provider, kind: str, inbound: InboundRequest) -> CallEvent | None:
    """What this authentic event says about its call; None when it names no call."""
    if provider is Provider.TELNYX:
        return _classify_telnyx(inbound.body)
    params = inbound.params()
    cid = params.get(CALL_ID_PARAM[provider])
    if not cid:
        return None
    if provider is Provider.EXOTEL:
        status = params.get("Status") or params.get("CallStatus") or ""
        terminal = status in TERMINAL[provider] or params.get("EventType") == "terminal"
    else:
        status = params.get("CallStatus", "")
        terminal = status in TERMINAL[provider]
    if kind == "incoming":
        phase = ANSWER
    else:
        phase = END if terminal else OTHER
    return CallEvent(cid, phase, _label(status))


def _classify_telnyx(body: bytes) -> CallEvent | None:
    data = telnyx.parse_event(body)
    if data is None:
        return None
    payload = data.get("payload")
    if not isinstance(payload, Mapping):
        return None
    cid = payload.get("call_leg_id") or payload.get("call_control_id")
    if not isinstance(cid, str) or not cid:
        return None
    event_type = data.get("event_type")
    phase = ANSWER if event_type == "call.initiated" else END if event_type == "call.hangup" else OTHER
    return CallEvent(cid, phase, _label(event_type))


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
        event = classify(provider, kind, inbound)
        if event is None:
            return None
        base = self.key(creds.phone_id, event.call_id)
        return CallCheck(
            provider=provider.value,
            keys=(base, f"{base}:timeline", f"{base}:held"),
            args=(event.phase, event.status, repr(now), *self._tail),
        )

    def key(self, phone_id: str, call: str) -> str:
        """The call's state hash (its timeline and held events are this + ':timeline' / ':held')."""
        return self._names.call(phone_id, call)
