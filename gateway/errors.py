"""Failure types, and the one place that maps them to the public port's HTTP answers.

Every status the public port can answer is decided here or indexed here:

  200, 302  accepted: the answer (gateway/answers.py; 302 only as Exotel's Passthru branch)
  401, 403, 400, 405, 413   rejections, by `Reason` (answer_for below)
  503       UNAVAILABLE_ANSWER: Redis or dispatch could not confirm (with Retry-After), also
            sent by the edge protocol at limit_concurrency (gateway/http_protocol.py)
  408, 431  EDGE_REFUSALS: the edge protocol's head/body deadlines and head size limit,
            answered before the app is called (gateway/http_protocol.py)
  404       not a webhook route, with a separate admin port (gateway/app.py)
  499       CLIENT_CLOSED: never sent; logged and counted when the carrier hung up first
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    """Why a webhook was refused. A fixed vocabulary: it is a metric label."""

    MISSING_SIGNATURE = "missing_signature"  # no proof at all: unsigned, or nonce/timestamp missing
    MALFORMED_SIGNATURE = "malformed_signature"  # header present but unparsable (bad base64, wrong length)
    INVALID_SIGNATURE = "invalid_signature"  # well-formed, but no active key verifies it
    UNKNOWN_PHONE = "unknown_phone"  # answered exactly like INVALID_SIGNATURE
    WRONG_PROVIDER = "wrong_provider"  # phone exists but belongs to another carrier's route
    STALE_TIMESTAMP = "stale_timestamp"  # outside the tolerance window (either direction)
    REPLAYED_NONCE = "replayed_nonce"  # a single-use nonce seen before
    IP_NOT_ALLOWED = "ip_not_allowed"  # Exotel: source address outside the allowlist
    MISSING_TOKEN = "missing_token"  # Exotel: phone has a token, request has none
    INVALID_TOKEN = "invalid_token"  # Exotel: token does not match
    MALFORMED_REQUEST = "malformed_request"  # body/query that cannot be parsed (invalid UTF-8, JSON, too many fields)
    BODY_TOO_LARGE = "body_too_large"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    # Call-aware replay defence (opt-in; docs/answers-and-forwards.md):
    UNKNOWN_CALL = "unknown_call"  # a callback for a call the gateway never saw answered within the window
    CALL_ENDED = "call_ended"  # a callback for a call whose terminal status is older than the window


# The body is deliberately generic: it must not tell an attacker which check failed
# (or whether the phone id exists). The reason goes to metrics and the log only.
_UNAUTHORIZED = (401, b"unauthorized\n")
_FORBIDDEN = (403, b"forbidden\n")

_ANSWERS: dict[Reason, tuple[int, bytes]] = {
    Reason.MISSING_SIGNATURE: _UNAUTHORIZED,
    Reason.MISSING_TOKEN: _FORBIDDEN,
    Reason.MALFORMED_SIGNATURE: _FORBIDDEN,
    Reason.INVALID_SIGNATURE: _FORBIDDEN,
    Reason.UNKNOWN_PHONE: _FORBIDDEN,
    Reason.WRONG_PROVIDER: _FORBIDDEN,
    Reason.STALE_TIMESTAMP: _FORBIDDEN,
    Reason.REPLAYED_NONCE: _FORBIDDEN,
    Reason.IP_NOT_ALLOWED: _FORBIDDEN,
    Reason.INVALID_TOKEN: _FORBIDDEN,
    Reason.MALFORMED_REQUEST: (400, b"bad request\n"),
    Reason.BODY_TOO_LARGE: (413, b"payload too large\n"),
    Reason.METHOD_NOT_ALLOWED: (405, b"method not allowed\n"),
    Reason.UNKNOWN_CALL: _FORBIDDEN,
    Reason.CALL_ENDED: _FORBIDDEN,
}


class GatewayError(Exception):
    """The base of every exception the gateway raises on purpose. Messages never carry a secret."""


class Rejected(GatewayError):
    """The request is not authentic (or not acceptable). Never carries secrets."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(reason.value if not detail else f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class Unavailable(GatewayError):
    """A dependency (Redis, the forward target) failed: answer 503 so the carrier retries."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class NotReplicated(GatewayError):
    """Redis ran the write but fewer replicas than GATEWAY_REDIS_WAIT_REPLICAS confirmed it in time."""


RETRY_AFTER_S = 1
UNAVAILABLE_ANSWER = (503, b"service unavailable\n")
HEAD_TOO_LARGE = 431  # the request head is over the edge's limit
REQUEST_TIMEOUT = 408  # the head or body did not arrive within its deadline
EDGE_REFUSALS = {HEAD_TOO_LARGE: "Request Header Fields Too Large", REQUEST_TIMEOUT: "Request Timeout"}
CLIENT_CLOSED = 499  # nginx's convention, for the log and metrics only: nobody is left to answer
NOT_FOUND = (404, b"not found\n")


def answer_for(reason: Reason) -> tuple[int, bytes]:
    """HTTP status and body for a rejection."""
    return _ANSWERS[reason]
