"""What an accepted webhook is answered with (docs/answers-and-forwards.md).

Status callbacks, and carriers without an answer URL, get an empty 200. An `incoming`
route (an answer URL: the carrier waits for instructions) is answered in one of two modes,
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
from gateway.capability import mint_token
from gateway.dispatch import DispatchClient
from gateway.envelope_signing import webhook_id_of
from gateway.inbound import InboundRequest
from gateway.log_safety import loggable
from gateway.providers import PhoneCredentials, Provider
from gateway.providers.registry import CARRIERS
from gateway.providers.spec import AnswerRules
from gateway.settings import ANSWER_MODES, Settings

log = logging.getLogger("gateway.answers")

TEMPLATE, PROXY = "template", "proxy"
HOLD_PARAM = "gw_hold"  # the hold fallback's round counter, in the URL the carrier is redirected to
VARIABLES = frozenset({"phone_id", "call_id", "stream_token", "answer_url", "method"})
TEXT = b"text/plain; charset=utf-8"
XML = b"application/xml"
JSON = b"application/json"
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


@dataclass(frozen=True, slots=True)
class _CarrierAnswers:
    """One carrier's compiled answers (carriers sharing settings share these objects)."""

    rules: AnswerRules
    template: Compiled
    fallback: Compiled | None  # None: the fallback is `status_fallback`, a bare status
    hangup: Compiled | None
    mode: str
    status_fallback: Answer


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
        hold = settings.answer_fallback == "hold"
        self.warnings: list[str] = []
        self._carriers: dict[Provider, _CarrierAnswers] = {}
        compiled_by_key: dict[str, tuple[Compiled, Compiled | None, Compiled | None]] = {}
        for provider, spec in CARRIERS.items():
            rules = spec.answer
            if rules is None:
                continue
            if rules.settings_key not in compiled_by_key:
                template = compile_template(settings.answer_template_for(rules.settings_key), xml=rules.xml)
                name = f"GATEWAY_{rules.settings_key.upper()}_ANSWER_TEMPLATE"
                self.warnings.extend(template_warnings(name, template, self._key is not None))
                fallback = hangup = None
                if rules.hangup is not None:
                    builtin = rules.hold if hold and rules.hold is not None else rules.hangup
                    fallback = compile_template(settings.fallback_template_for(rules.settings_key) or builtin, xml=True)
                    hangup = compile_template(rules.hangup, xml=True)
                    name = f"the fallback answer (GATEWAY_{rules.settings_key.upper()}_FALLBACK_TEMPLATE)"
                    self.warnings.extend(template_warnings(name, fallback, self._key is not None))
                compiled_by_key[rules.settings_key] = (template, fallback, hangup)
            template, fallback, hangup = compiled_by_key[rules.settings_key]
            mode = settings.answer_mode_for(provider.value)
            status_fallback = Answer(settings.fallback_status_for(rules.settings_key), b"", TEXT)
            self._carriers[provider] = _CarrierAnswers(rules, template, fallback, hangup, mode, status_fallback)
        self._per_phone: dict[str, Compiled] = {}
        self._warned: set[str] = set()
        self._fallback_log_at = 0.0
        self._fallbacks_unlogged = 0
        if dispatch is None and any(c.mode == PROXY for c in self._carriers.values()):  # settings prevent this
            self.warnings.append("an answer mode is proxy but no dispatch client: every call gets the fallback")

    def mode_for(self, provider: Provider, config: Mapping[str, Any]) -> str:
        mode = config.get("answer_mode")
        if isinstance(mode, str) and mode in ANSWER_MODES:
            return mode
        carrier = self._carriers.get(provider)
        return carrier.mode if carrier is not None else TEMPLATE

    def has_content(self, provider: Provider, kind: str) -> bool:
        """False when `answer()` is the empty 200 (status callbacks, events): no need to await it."""
        return kind == "incoming" and provider in self._carriers

    async def answer(
        self,
        provider: Provider,
        kind: str,
        creds: PhoneCredentials,
        inbound: InboundRequest,
        event: bytes,
        idempotency_key: str | None,
        now: float,
        *,
        entry_id: str = "",
        duplicate: bool = False,
    ) -> Answer:
        """The answer for an accepted (forwarded or duplicate) request.

        `entry_id`: the stream entry of the event's first acceptance (for a duplicate, the one
        the forwarder found). Everything in the answer comes from the request and that entry:
        the capability token is issued as of the first acceptance (`acceptance_time`), so a
        copy of the request is answered with the same bytes, never a fresher token. In proxy
        mode a duplicate is POSTed to dispatch again, marked `gateway-duplicate-of: <entry id>`.
        """
        if not self.has_content(provider, kind):
            return EMPTY
        issued_at = acceptance_time(entry_id, now)
        if self.mode_for(provider, creds.config) == PROXY:
            duplicate_of = entry_id if duplicate and "-" in entry_id else None  # a stream entry id, not "held"
            return await self._proxy(provider, creds, inbound, event, idempotency_key, issued_at, duplicate_of)
        metrics.answer_counter(provider.value, "template").inc()
        return self._from_template(provider, creds, inbound, issued_at)

    # ---- template ---------------------------------------------------------

    def _from_template(
        self, provider: Provider, creds: PhoneCredentials, inbound: InboundRequest, now: float
    ) -> Answer:
        carrier = self._carriers[provider]
        phone_template = creds.config.get("answer_template")
        if isinstance(phone_template, str):
            compiled = self._phone_template(phone_template, xml=carrier.rules.xml)
        else:
            compiled = carrier.template
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
        call_id = CARRIERS[creds.provider].call_id(inbound) or ""
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
        duplicate_of: str | None = None,
    ) -> Answer:
        if self._dispatch is None:
            return self._fallback(provider, creds, inbound, now, "not_configured")
        started = time.perf_counter()
        reply = await self._dispatch.request_answer(
            event, webhook_id_of(event, idempotency_key), duplicate_of=duplicate_of
        )
        metrics.DISPATCH_LATENCY.observe(time.perf_counter() - started)
        if not reply.ok:
            return self._fallback(provider, creds, inbound, now, reply.result)
        rules = self._carriers[provider].rules
        if reply.status == 302:
            if not rules.redirect_means_branch:  # only Exotel's Passthru gives a 302 a meaning
                return self._fallback(provider, creds, inbound, now, "bad_status")
            metrics.answer_counter(provider.value, "proxied").inc()
            return Answer(302, b"", TEXT)
        metrics.answer_counter(provider.value, "proxied").inc()
        if reply.content_type:
            content_type = reply.content_type.encode("latin-1", "replace")
        else:
            content_type = XML if rules.xml else TEXT
        return Answer(200, reply.body, content_type)

    def _fallback(
        self, provider: Provider, creds: PhoneCredentials, inbound: InboundRequest, now: float, result: str
    ) -> Answer:
        metrics.answer_counter(provider.value, result).inc()
        self._log_fallback(provider, creds.phone_id, result)
        carrier = self._carriers[provider]
        if carrier.fallback is None or carrier.hangup is None:
            return carrier.status_fallback
        phone_fallback = creds.config.get("fallback_template")
        compiled = (
            self._phone_template(phone_fallback, xml=True) if isinstance(phone_fallback, str) else carrier.fallback
        )
        hold_round = current_hold_round(inbound)
        if "answer_url" in compiled.names and hold_round >= self._hold_rounds:
            compiled = carrier.hangup  # held long enough: hang up politely instead of looping
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
            loggable(phone_id),
            f" (and {self._fallbacks_unlogged} more since the last warning)" if self._fallbacks_unlogged else "",
        )
        self._fallback_log_at = current
        self._fallbacks_unlogged = 0


def acceptance_time(entry_id: str, default: float) -> float:
    """Unix seconds of an event's first acceptance: the millisecond part of its stream entry id
    (Redis's clock at the XADD, the same for the first answer and every duplicate's); `default`
    when the id has no time (an event held by the call-aware defence)."""
    millis = entry_id.partition("-")[0]
    return int(millis) / 1000 if millis.isascii() and millis.isdigit() else default


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
