"""Request-controlled text made safe for one log line: `loggable(value)`.

Every log call that includes something a client chose (a path, a method, a phone id
from a URL, a header-derived address) passes it through `loggable()`, so that:

* it cannot start a new line or forge another record: control characters (C0, DEL,
  C1), every other non-printable character (U+2028 LINE SEPARATOR, bidi overrides...),
  the backslash and the double quote (the access log quotes the request line) are
  written as Python escapes (`\\n`, `\\x1b`, `\\u2028`, `\\\\`, `\\"`);
* it cannot flood the log: at most `limit` characters (default 256) of the escaped
  text are kept, followed by `...[+N chars]` naming how many characters of the
  original were left out.

Text that is already short and printable is returned as it is (one `isprintable()`
and one `in` test: the cost on lines that need nothing).
"""

from __future__ import annotations

MAX_FIELD_CHARS = 256

_SHORT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def loggable(value: object, limit: int = MAX_FIELD_CHARS) -> str:
    """`value` as text fit for one field of one log line: escaped, and at most `limit` characters (+ a marker)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit and text.isprintable() and "\\" not in text and '"' not in text:
        return text
    parts: list[str] = []
    used = 0
    shown = 0
    for char in text:
        part = char if char.isprintable() and char not in _SHORT_ESCAPES else _escape(char)
        if used + len(part) > limit:
            break
        parts.append(part)
        used += len(part)
        shown += 1
    dropped = len(text) - shown
    kept = "".join(parts)
    return f"{kept}...[+{dropped} chars]" if dropped else kept
