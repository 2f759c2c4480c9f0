"""What an accepted webhook is answered with (docs/answers-and-forwards.md).

Status callbacks and Telnyx events get an empty 200. An `incoming` route (an
answer URL: the carrier waits for instructions) is answered in one of two modes,
chosen per phone (`config.answer_mode`) or per provider (GATEWAY_<PROVIDER>_ANSWER_MODE,
GATEWAY_ANSWER_MODE):

* template — the gateway answers itself, from a template (Plivo/Vobiz XML, TwiML,
  an optional Exotel body; Exotel's Passthru only looks at the 200), with
  $phone_id, $call_id, $stream_token (gateway/capability.py), $answer_url, $method.
* proxy — the event (already durably in the stream: the forwarder ran first) is
  POSTed to dispatch, signed (gateway/dispatch.py); a 2xx answer within
  GATEWAY_DISPATCH_TIMEOUT_S is relayed (body and content type; for Exotel a 302
  too: it selects the Passthru's second branch); anything else gets the fallback:
  a polite hangup, or "hold" (a short pause, then a redirect back to the same
  answer URL, at most GATEWAY_ANSWER_HOLD_ROUNDS times, then the hangup).

Values are escaped for the template's language: XML for Plivo/Vobiz/Twilio (and
Exotel templates that start with "<"), JSON string escaping for Exotel templates
that start with "{" or "[".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from string import Template
from typing import Any

import orjson

from gateway import metrics
from gateway.calls import call_id as call_id_of
from gateway.capability import mint_token
from gateway.dispatch import DispatchClient, webhook_id_of
from gateway.inbound import InboundRequest
from gateway.providers import PhoneCredentials, Provider
from gateway.settings import ANSWER_MODES, Settings

log = logging.getLogger("gateway.answers")

TEMPLATE, PROXY = "template", "proxy"
HOLD_PARAM = "gw_hold"  # the hold fallback's round counter, in the URL the carrier is redirected to
VARIABLES = frozenset({"phone_id", "call_id", "stream_token", "answer_url", "method"})
TEXT = b"text/plain; charset=utf-8"
XML = b"application/xml"
JSON = b"application/json"
_XML_DOC = '<?xml version="1.0" encoding="UTF-8"?>\n'
_SORRY = "We are sorry, we cannot take your call right now. Please try again later."

# Built-in fallbacks. Plivo XML: https://www.plivo.com/docs/voice/xml/ (Speak, Wait, Redirect, Hangup);
# TwiML: https://www.twilio.com/docs/voice/twiml (Say, Pause, Redirect, Hangup).
PLIVO_HANGUP = f"{_XML_DOC}<Response>\n  <Speak>{_SORRY}</Speak>\n  <Hangup/>\n</Response>\n"
TWILIO_HANGUP = f"{_XML_DOC}<Response>\n  <Say>{_SORRY}</Say>\n  <Hangup/>\n</Response>\n"
PLIVO_HOLD = (
    f'{_XML_DOC}<Response>\n  <Speak>Please hold.</Speak>\n  <Wait length="2"/>\n'
    '  <Redirect method="$method">$answer_url</Redirect>\n</Response>\n'
)
TWILIO_HOLD = (
    f'{_XML_DOC}<Response>\n  <Say>Please hold.</Say>\n  <Pause length="2"/>\n'
    '  <Redirect method="$method">$answer_url</Redirect>\n</Response>\n'
)
_MAX_CACHED_PHONE_TEMPLATES = 1024
_LOG_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: bytes


EMPTY = Answer(200, b"", TEXT)


_XML_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"})


def xml_escape(value: str) -> str:
    """Safe in XML text and in single- or double-quoted attributes."""
    return value.translate(_XML_ESCAPES)


def _verbatim(value: str) -> str:
    return value


def json_escape(value: str) -> str:
    """Safe inside a JSON string literal (the template supplies the quotes)."""
    return orjson.dumps(value).decode()[1:-1]


@dataclass(frozen=True, slots=True)
class Compiled:
    parts: tuple[tuple[bool, str], ...]  # (is_variable, variable name or literal text)
    escape: Callable[[str], str]
    content_type: bytes
    names: frozenset[str]  # every $identifier, known or not
    empty: bool

    def render(self, values: dict[str, str]) -> bytes:
        """Template.safe_substitute() semantics, without a regex per answer."""
        return "".join(values[text] if variable else text for variable, text in self.parts).encode("utf-8")


def _parts(text: str) -> tuple[tuple[bool, str], ...]:
    """Split once into literals and known variables; unknown `$names` and stray `$` stay as written."""
    parts: list[tuple[bool, str]] = []
    literal: list[str] = []
    position = 0
    for match in Template.pattern.finditer(text):
        literal.append(text[position : match.start()])
        position = match.end()
        name = match.group("named") or match.group("braced")
        if match.group("escaped") is not None:
            literal.append("$")
        elif name in VARIABLES:
            parts.append((False, "".join(literal)))
            literal = []
            parts.append((True, name))
        else:
            literal.append(match.group(0))
    literal.append(text[position:])
    parts.append((False, "".join(literal)))
    return tuple(part for part in parts if part[0] or part[1])


def compile_template(text: str, *, xml: bool) -> Compiled:
    """XML templates (Plivo/Vobiz/Twilio) always; Exotel's by their first character."""
    names = frozenset(Template(text).get_identifiers())
    head = text.lstrip()[:1]
    if xml or head == "<":
        escape, content_type = xml_escape, XML
    elif head in ("{", "["):
        escape, content_type = json_escape, JSON
    else:
        escape, content_type = _verbatim, TEXT
    return Compiled(_parts(text), escape, content_type, names, not text)


def template_warnings(name: str, compiled: Compiled, has_capability_key: bool) -> list[str]:
    warnings: list[str] = []
    unknown = sorted(compiled.names - VARIABLES)
    if unknown:
        warnings.append(f"{name} uses unknown variables {unknown}: they are left as written")
    if "stream_token" in compiled.names and not has_capability_key:
        warnings.append(f"{name} uses $stream_token but GATEWAY_CAPABILITY_KEY is not set: it renders empty")
    return warnings


class Answerer:
    def __init__(
        self,
        settings: Settings,
        *,
        dispatch: DispatchClient | None = None,
    ) -> None:
        self._dispatch = dispatch
        self._key = settings.capability_key_bytes()
        self._ttl = settings.capability_ttl_s
        self._hold_rounds = settings.answer_hold_rounds
        self._exotel_fallback = Answer(settings.exotel_fallback_status, b"", TEXT)
        plivo = compile_template(settings.plivo_answer_template, xml=True)
        twilio = compile_template(settings.twilio_answer_template, xml=True)
        exotel = compile_template(settings.exotel_answer_template, xml=False)
        self._templates: dict[Provider, Compiled] = {
            Provider.PLIVO: plivo,
            Provider.VOBIZ: plivo,
            Provider.TWILIO: twilio,
            Provider.EXOTEL: exotel,
        }
        hold = settings.answer_fallback == "hold"
        plivo_fallback = compile_template(
            settings.plivo_fallback_template or (PLIVO_HOLD if hold else PLIVO_HANGUP), xml=True
        )
        twilio_fallback = compile_template(
            settings.twilio_fallback_template or (TWILIO_HOLD if hold else TWILIO_HANGUP), xml=True
        )
        self._fallbacks: dict[Provider, Compiled] = {
            Provider.PLIVO: plivo_fallback,
            Provider.VOBIZ: plivo_fallback,
            Provider.TWILIO: twilio_fallback,
        }
        plivo_hangup = compile_template(PLIVO_HANGUP, xml=True)
        self._hangups: dict[Provider, Compiled] = {
            Provider.PLIVO: plivo_hangup,
            Provider.VOBIZ: plivo_hangup,
            Provider.TWILIO: compile_template(TWILIO_HANGUP, xml=True),
        }
        self._modes: dict[Provider, str] = {p: settings.answer_mode_for(p.value) for p in self._templates}
        self._per_phone: dict[str, Compiled] = {}
        self._warned: set[str] = set()
        self._fallback_log_at = 0.0
        self._fallbacks_unlogged = 0
        self.warnings: list[str] = []
        for name, compiled in (
            ("GATEWAY_PLIVO_ANSWER_TEMPLATE", plivo),
            ("GATEWAY_TWILIO_ANSWER_TEMPLATE", twilio),
            ("GATEWAY_EXOTEL_ANSWER_TEMPLATE", exotel),
            ("the Plivo/Vobiz fallback answer", plivo_fallback),
            ("the Twilio fallback answer", twilio_fallback),
        ):
            self.warnings.extend(template_warnings(name, compiled, self._key is not None))
        if dispatch is None and PROXY in self._modes.values():  # settings validation prevents this
            self.warnings.append("an answer mode is proxy but no dispatch client: every call gets the fallback")

    def mode_for(self, provider: Provider, config: Mapping[str, Any]) -> str:
        mode = config.get("answer_mode")
        if isinstance(mode, str) and mode in ANSWER_MODES:
            return mode
        return self._modes.get(provider, TEMPLATE)

    def has_content(self, provider: Provider, kind: str) -> bool:
        """False when `answer()` is the empty 200 (status callbacks, events): no need to await it."""
        return kind == "incoming" and provider in self._templates

    async def answer(
        self,
        provider: Provider,
        kind: str,
        creds: PhoneCredentials,
        inbound: InboundRequest,
        event: bytes,
        idempotency_key: str | None,
        now: float,
    ) -> Answer:
        """The answer for an accepted (forwarded or duplicate) request."""
        if not self.has_content(provider, kind):
            return EMPTY
        if self.mode_for(provider, creds.config) == PROXY:
            return await self._proxy(provider, creds, inbound, event, idempotency_key, now)
        metrics.answer_counter(provider.value, "template").inc()
        return self._from_template(provider, creds, inbound, now)

    # ---- template ---------------------------------------------------------

    def _from_template(
        self, provider: Provider, creds: PhoneCredentials, inbound: InboundRequest, now: float
    ) -> Answer:
        phone_template = creds.config.get("answer_template")
        if isinstance(phone_template, str):
            compiled = self._phone_template(phone_template, xml=provider is not Provider.EXOTEL)
        else:
            compiled = self._templates[provider]
        if compiled.empty:
            return EMPTY
        return self._render(compiled, 200, creds, inbound, now, hold_round=0)

    def _phone_template(self, text: str, *, xml: bool) -> Compiled:
        compiled = self._per_phone.get(text)
        if compiled is None:
            compiled = compile_template(text, xml=xml)
            if len(self._per_phone) >= _MAX_CACHED_PHONE_TEMPLATES:
                self._per_phone.clear()
            self._per_phone[text] = compiled
            for warning in template_warnings("a phone's template", compiled, self._key is not None):
                if warning not in self._warned:  # once per process, not per call
                    self._warned.add(warning)
                    log.warning("%s", warning)
        return compiled

    def _render(
        self,
        compiled: Compiled,
        status: int,
        creds: PhoneCredentials,
        inbound: InboundRequest,
        now: float,
        *,
        hold_round: int,
    ) -> Answer:
        esc = compiled.escape
        names = compiled.names
        call_id = call_id_of(creds.provider, inbound) or ""
        values: dict[str, str] = {"phone_id": esc(creds.phone_id), "call_id": esc(call_id)}
        if "stream_token" in names:
            token = mint_token(self._key, call_id, creds.phone_id, now, self._ttl) if self._key is not None else ""
            values["stream_token"] = token  # [A-Za-z0-9._-]: needs no escaping anywhere
        if "answer_url" in names:
            values["answer_url"] = esc(hold_url(inbound, hold_round + 1))
        if "method" in names:
            values["method"] = inbound.method
        return Answer(status, compiled.render(values), compiled.content_type)

    # ---- proxy ------------------------------------------------------------

    async def _proxy(
        self,
        provider: Provider,
        creds: PhoneCredentials,
        inbound: InboundRequest,
        event: bytes,
        idempotency_key: str | None,
        now: float,
    ) -> Answer:
        if self._dispatch is None:
            return self._fallback(provider, creds, inbound, now, "not_configured")
        started = time.perf_counter()
        reply = await self._dispatch.request_answer(event, webhook_id_of(event, idempotency_key))
        metrics.DISPATCH_LATENCY.observe(time.perf_counter() - started)
        if not reply.ok:
            return self._fallback(provider, creds, inbound, now, reply.result)
        if reply.status == 302:
            if provider is not Provider.EXOTEL:  # only Exotel's Passthru gives a 302 a meaning
                return self._fallback(provider, creds, inbound, now, "bad_status")
            metrics.answer_counter(provider.value, "proxied").inc()
            return Answer(302, b"", TEXT)
        metrics.answer_counter(provider.value, "proxied").inc()
        if reply.content_type:
            content_type = reply.content_type.encode("latin-1", "replace")
        else:
            content_type = TEXT if provider is Provider.EXOTEL else XML
        return Answer(200, reply.body, content_type)

    def _fallback(
        self, provider: Provider, creds: PhoneCredentials, inbound: InboundRequest, now: float, result: str
    ) -> Answer:
        metrics.answer_counter(provider.value, result).inc()
        self._log_fallback(provider, creds.phone_id, result)
        if provider is Provider.EXOTEL:
            return self._exotel_fallback
        phone_fallback = creds.config.get("fallback_template")
        compiled = (
            self._phone_template(phone_fallback, xml=True)
            if isinstance(phone_fallback, str)
            else self._fallbacks[provider]
        )
        hold_round = current_hold_round(inbound)
        if "answer_url" in compiled.names and hold_round >= self._hold_rounds:
            compiled = self._hangups[provider]  # held long enough: hang up politely instead of looping
        return self._render(compiled, 200, creds, inbound, now, hold_round=hold_round)

    def _log_fallback(self, provider: Provider, phone_id: str, result: str) -> None:
        """At most one warning per 10 s (an outage of dispatch must not flood the log)."""
        current = time.monotonic()
        if current - self._fallback_log_at < _LOG_EVERY_S:
            self._fallbacks_unlogged += 1
            return
        log.warning(
            "dispatch did not answer (%s) for %s phone %s: answered with the fallback%s",
            result,
            provider.value,
            phone_id,
            f" (and {self._fallbacks_unlogged} more since the last warning)" if self._fallbacks_unlogged else "",
        )
        self._fallback_log_at = current
        self._fallbacks_unlogged = 0


def current_hold_round(inbound: InboundRequest) -> int:
    for name, value in inbound.query_params():
        if name == HOLD_PARAM:
            return int(value) if value.isascii() and value.isdigit() and len(value) < 4 else 0
    return 0


def hold_url(inbound: InboundRequest, hold_round: int) -> str:
    """The URL the carrier called, with the hold round counter set (other query parameters kept as sent)."""
    kept = [part for part in inbound.query_string.split("&") if part and part.split("=", 1)[0] != HOLD_PARAM]
    kept.append(f"{HOLD_PARAM}={hold_round}")
    return f"{inbound.base_url}?{'&'.join(kept)}"
