"""The inspector's memory: the most recent webhook requests of this worker, bounded by count and bytes.

The request path calls `InspectorStore.record` once per webhook request (from
`WebhookHandler.__call__`'s `finally`). It appends one small tuple of references to
what the request already built (no copy, no parsing, no redaction: those happen when
a page is rendered, gateway/inspector/redaction.py) and evicts the oldest entries
past the bounds. Accepted (2xx) and every other answer are kept apart, so a flood of
accepted callbacks never pushes the last rejection out.

Per worker process: each uvicorn worker keeps and shows its own requests.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from gateway.inbound import InboundRequest

# Where the request path leaves what a record needs in the ASGI scope (extension keys, per request).
INBOUND_KEY = "gateway.inbound"
DIAGNOSIS_KEY = "gateway.diagnosis"
# Names of parameters that held one of the phone's secrets under another name (Exotel's token as ?tok=):
# set by the request path on refusals that can have one, redacted like the carriers' secret parameters.
SECRET_NAMES_KEY = "gateway.secret_names"

DEFAULT_MAX_REQUESTS = 200
DEFAULT_MAX_BYTES = 4 * 1024 * 1024  # per kind (accepted / rejected), per worker
# A body larger than this is not kept (the record says how large it was).
MAX_BODY_KEPT = 64 * 1024
# Rough cost of a record's own objects and of each header (two str objects and a dict slot).
# Body and query are charged 4 times: the request keeps what was parsed from them.
_PARSED = 4
_RECORD_OVERHEAD = 600
_PER_HEADER = 120
_DIAGNOSIS_OVERHEAD = 2048


class Record(NamedTuple):
    """One request as the request path left it. Raw: redact before showing anything."""

    id: int
    at: float  # time.time() when answered
    provider: str  # carrier label (the route family's when the phone is unknown)
    kind: str  # incoming | status | voice
    phone_id: str | None  # from the path; None on routes that find the phone by number
    status: int
    outcome: str
    reason: str
    method: str
    path: str  # scope path (no query)
    client: str  # socket peer (the resolved client address is in `request`)
    request: InboundRequest | None  # None when refused before it was built (405, 413)
    body_size: int  # bytes received; the body itself is dropped above MAX_BODY_KEPT
    diagnosis: object  # what the mismatch explainer returned (gateway/diagnostics/explainer.py), or None
    size: int  # bytes charged against the bound
    secret_names: frozenset[str] = frozenset()  # parameters that held one of the phone's secrets (redacted)

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class Snapshot:
    accepted: list[Record]  # newest first
    rejected: list[Record]
    max_requests: int
    max_bytes: int
    pid: int


class _Ring:
    """Newest-last records, at most `max_requests` of them and `max_bytes` charged."""

    __slots__ = ("bytes", "items", "max_bytes", "max_requests")

    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self.items: deque[Record] = deque()
        self.bytes = 0
        self.max_requests = max_requests
        self.max_bytes = max_bytes

    def add(self, record: Record) -> None:
        items = self.items
        items.append(record)
        self.bytes += record.size
        while len(items) > self.max_requests or (self.bytes > self.max_bytes and len(items) > 1):
            self.bytes -= items.popleft().size


class InspectorStore:
    def __init__(
        self,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._accepted = _Ring(max_requests, max_bytes)
        self._rejected = _Ring(max_requests, max_bytes)
        self._ids = itertools.count(1)
        self._clock = clock
        self.max_requests = max_requests
        self.max_bytes = max_bytes

    def record(
        self,
        scope: Mapping[str, Any],
        kind: str,
        phone_id: str | None,
        status: int,
        outcome: str,
        reason: str,
        provider: str,
    ) -> None:
        """Called on the request path for every webhook request: O(1) (headers counted, not copied)."""
        inbound: InboundRequest | None = scope.get(INBOUND_KEY)
        diagnosis = scope.get(DIAGNOSIS_KEY)
        size = _RECORD_OVERHEAD
        body_size = 0
        if inbound is not None:
            body_size = len(inbound.body)
            if body_size > MAX_BODY_KEPT:
                inbound = _without_body(inbound)
            size += _PARSED * (len(inbound.body) + len(inbound.query_string)) + len(inbound.raw_path)
            size += _PER_HEADER * len(inbound.headers) + sum(map(len, inbound.headers.values()))
        if diagnosis is not None:
            size += _DIAGNOSIS_OVERHEAD
        client = scope.get("client")
        record = Record(
            next(self._ids),
            self._clock(),
            provider,
            kind,
            phone_id,
            status,
            outcome,
            reason,
            scope.get("method", "-"),
            scope.get("path", "-"),
            client[0] if client else "-",
            inbound,
            body_size,
            diagnosis,
            size,
            scope.get(SECRET_NAMES_KEY) or frozenset(),
        )
        (self._accepted if 200 <= status < 300 else self._rejected).add(record)

    def snapshot(self) -> Snapshot:
        return Snapshot(
            list(reversed(self._accepted.items)),
            list(reversed(self._rejected.items)),
            self.max_requests,
            self.max_bytes,
            os.getpid(),
        )

    def find(self, record_id: int) -> Record | None:
        for record in self._all():
            if record.id == record_id:
                return record
        return None

    def charged_bytes(self) -> tuple[int, int]:
        """(accepted, rejected) bytes currently charged against the bounds."""
        return self._accepted.bytes, self._rejected.bytes

    def _all(self) -> Iterator[Record]:
        yield from self._rejected.items
        yield from self._accepted.items


def _without_body(inbound: InboundRequest) -> InboundRequest:
    """The request without its (too large) body; the record keeps the body's size."""
    return InboundRequest(
        method=inbound.method,
        scheme=inbound.scheme,
        netloc=inbound.netloc,
        raw_path=inbound.raw_path,
        query_string=inbound.query_string,
        headers=inbound.headers,
        body=b"",
        client_ip=inbound.client_ip,
        duplicate_headers=inbound.duplicate_headers,
    )
