"""Every shared conformance vector, through the real app on a real uvicorn socket.

Accept → 2xx, reject → 401/403, and the stream gains exactly one event for each
step marked `forwarded` and none for any other.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis

from tests.helpers.replies import stream_entries
from tests.helpers.support import Clock, RunningGateway, load_vectors, make_settings, run_gateway, send_as_carrier

VECTORS = load_vectors()
CASES = VECTORS["cases"]
STREAM = "gateway:events"


@pytest.fixture(scope="module")
def gateway(redis_server: str) -> Iterator[tuple[RunningGateway, Clock]]:
    clock = Clock()
    settings = make_settings(redis_server, EXOTEL_ALLOWED_IPS=",".join(VECTORS["exotel_allowed_ips"]))
    with run_gateway(settings, clock=clock) as gw:
        yield gw, clock


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_vector(case: dict[str, Any], gateway: tuple[RunningGateway, Clock], redis_server: str) -> None:
    gw, clock = gateway
    client = redis.Redis.from_url(redis_server)
    try:
        client.flushdb()
        phone = case["phone"]
        gw.put_phone(phone)  # "unknown phone" cases register it and call another id
        clock.now = case.get("now")
        for number, step in enumerate(case["steps"]):
            before = client.xlen(STREAM)
            response = send_as_carrier(gw, step["request"])
            if step["expected"] == "accept":
                assert 200 <= response.status_code < 300, (number, response.status_code, response.text)
            else:
                assert response.status_code in (401, 403), (number, response.status_code, response.text)
            added = client.xlen(STREAM) - before
            assert added == (1 if step["forwarded"] else 0), (number, added)
            if step["forwarded"]:
                _, fields = stream_entries(client.xrevrange(STREAM, count=1))[0]
                event = orjson.loads(fields[b"event"])
                assert event["phone_id"] == phone["id"]
                assert event["provider"] == phone["provider"]
                assert event["body"] == step["request"]["body"]
                assert event["method"] == step["request"]["method"]
    finally:
        clock.now = None
        client.close()
