"""The event envelope appended to the dispatch stream: the contract with dispatch.

Stream entry: one field `event` holding this JSON object (schema: docs/event.schema.json):
  schema_version  1
  id              gateway-assigned event id (32 hex chars, random)
  received_at     unix seconds (float) when the request arrived
  provider        plivo | vobiz | exotel | telnyx | twilio
  phone_id        the phone record that verified it
  kind            incoming | status | voice
  method          GET | POST
  path            raw request path as the carrier called it
  query           raw query string (Exotel's ?token= removed)
  content_type    the request's Content-Type header ("" when absent)
  body            the raw body as text, when it is valid UTF-8 (else null)
  body_base64     the raw body as base64, when it is not valid UTF-8 (else null)
  params          decoded query + form parameters, first value of each name (token removed)
  source_ip       the client address the gateway believed
  idempotency_key the carrier's event identity (Plivo CallUUID+status, Telnyx data.id, ...) or null
  key_fingerprint which key verified it (null for Exotel IP-only phones)
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import unquote_plus

import orjson

from gateway.inbound import InboundRequest
from gateway.random_ids import event_ids

SCHEMA_VERSION = 1


def strip_query_params(query: str, names: frozenset[str]) -> str:
    """Remove name=value pairs from a raw query string without re-encoding the rest.

    Names are compared decoded, as the verifiers see them (parse_qsl): `%74oken=` is `token=`.
    """
    if not query:
        return query
    kept = [part for part in query.split("&") if unquote_plus(part.split("=", 1)[0], errors="replace") not in names]
    return "&".join(kept)


def build_event(
    inbound: InboundRequest,
    *,
    provider: str,
    phone_id: str,
    kind: str,
    received_at: float,
    idempotency_key: str | None,
    key_fingerprint: str | None,
    redact: frozenset[str] = frozenset(),
) -> bytes:
    body_text: str | None
    body_b64: str | None = None
    try:
        body_text = inbound.body.decode("utf-8")
    except UnicodeDecodeError:
        body_text = None
        body_b64 = base64.b64encode(inbound.body).decode()
    params = inbound.params()
    query = inbound.query_string
    if redact:  # a carrier's secret parameters (Exotel's ?token=) are never forwarded
        params = {k: v for k, v in params.items() if k not in redact}
        query = strip_query_params(query, redact)
    envelope: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "id": event_ids.next_hex(),
        "received_at": received_at,
        "provider": provider,
        "phone_id": phone_id,
        "kind": kind,
        "method": inbound.method,
        "path": inbound.raw_path,
        "query": query,
        "content_type": inbound.headers.get("content-type", ""),
        "body": body_text,
        "body_base64": body_b64,
        "params": params,
        "source_ip": inbound.client_ip,
        "idempotency_key": idempotency_key,
        "key_fingerprint": key_fingerprint,
    }
    return orjson.dumps(envelope)
