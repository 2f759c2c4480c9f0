"""What an accepted webhook is answered with: an XML document for answer URLs, else empty."""

from __future__ import annotations

from string import Template
from xml.sax.saxutils import escape

from gateway.providers import Provider


class AnswerTemplates:
    """Renders `incoming` answers from templates with $phone_id and $call_id (XML-escaped)."""

    def __init__(self, plivo: str, twilio: str) -> None:
        self._defaults: dict[Provider, Template] = {
            Provider.PLIVO: Template(plivo),
            Provider.VOBIZ: Template(plivo),
            Provider.TWILIO: Template(twilio),
        }
        self._per_phone: dict[str, Template] = {}

    def render(
        self, provider: Provider, kind: str, phone_id: str, call_id: str | None, phone_template: str | None
    ) -> tuple[bytes, bytes]:
        """(body, content type). Status callbacks and non-XML carriers get an empty 200."""
        if kind != "incoming" or provider not in self._defaults:
            return b"", b"text/plain; charset=utf-8"
        template = self._defaults[provider]
        if phone_template is not None:
            template = self._per_phone.get(phone_template) or self._per_phone.setdefault(
                phone_template, Template(phone_template)
            )
        text = template.safe_substitute(phone_id=escape(phone_id), call_id=escape(call_id or ""))
        return text.encode("utf-8"), b"application/xml"
