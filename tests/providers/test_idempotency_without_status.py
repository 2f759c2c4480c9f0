"""Exotel idempotency: status callbacks by CallSid+Status; passthru applets (no status) by their parameters."""

from __future__ import annotations

from gateway.inbound import InboundRequest
from gateway.providers import exotel


def request(query: str) -> InboundRequest:
    return InboundRequest(
        method="GET",
        scheme="https",
        netloc="hooks.example.com",
        raw_path="/exotel/incoming/ph_1",
        query_string=query,
        headers={},
        body=b"",
        client_ip="203.0.113.5",
    )


def test_status_callbacks_keyed_by_call_and_status() -> None:
    a = exotel.idempotency_key(request("CallSid=c1&Status=busy&CurrentTime=1"), "status")
    b = exotel.idempotency_key(request("CallSid=c1&Status=busy&CurrentTime=2"), "status")
    c = exotel.idempotency_key(request("CallSid=c1&Status=completed"), "status")
    assert a == b != c


def test_passthru_retry_is_duplicate_but_next_applet_is_not() -> None:
    first = exotel.idempotency_key(request("CallSid=c1&CurrentTime=2026-11-24+10:00:01&flow_id=1"), "incoming")
    retry = exotel.idempotency_key(request("CallSid=c1&CurrentTime=2026-11-24+10:00:01&flow_id=1"), "incoming")
    next_applet = exotel.idempotency_key(request("CallSid=c1&CurrentTime=2026-11-24+10:00:09&flow_id=1"), "incoming")
    assert first == retry != next_applet


def test_token_does_not_enter_the_key() -> None:
    with_token = exotel.idempotency_key(request("CallSid=c1&digits=1&token=abcdefghijklmnop"), "incoming")
    other_token = exotel.idempotency_key(request("CallSid=c1&digits=1&token=qrstuvwxyzabcdef"), "incoming")
    assert with_token == other_token
    assert with_token is not None and "abcdefghijklmnop" not in with_token


def test_no_call_sid_no_key() -> None:
    assert exotel.idempotency_key(request("Status=busy"), "status") is None


def test_plivo_callbacks_without_status_are_told_apart() -> None:
    from gateway.providers import plivo

    def key_for(query: str) -> str | None:
        inbound = InboundRequest(
            method="GET",
            scheme="https",
            netloc="hooks.example.com",
            raw_path="/plivo/status/ph_1",
            query_string=query,
            headers={},
            body=b"",
            client_ip="198.51.100.20",
        )
        return plivo.idempotency_key(inbound, "status")

    first = key_for("CallUUID=u1&RecordUrl=https%3A%2F%2Fexample.com%2Fr1")
    assert first == key_for("CallUUID=u1&RecordUrl=https%3A%2F%2Fexample.com%2Fr1")
    assert first != key_for("CallUUID=u1&RecordUrl=https%3A%2F%2Fexample.com%2Fr2")
