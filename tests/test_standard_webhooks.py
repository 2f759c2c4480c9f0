from __future__ import annotations

import pytest

from gateway import standard_webhooks as sw

PAYLOAD = b'{"id":"evt_1"}'


def test_round_trip_and_rotation() -> None:
    old, new = sw.generate_key(), sw.generate_key()
    h = sw.headers([sw.decode_key(new), sw.decode_key(old)], "evt_1", PAYLOAD, timestamp=1_800_000_000)
    sw.verify(new, PAYLOAD, h, now=1_800_000_000)
    sw.verify(old, PAYLOAD, h, now=1_800_000_100)


@pytest.mark.parametrize(
    "change",
    [
        lambda h, p: (h | {"webhook-id": "evt_2"}, p),
        lambda h, p: (h, p + b" "),
        lambda h, p: (h | {"webhook-timestamp": "1800000001"}, p),
        lambda h, p: ({k: v for k, v in h.items() if k != "webhook-signature"}, p),
        lambda h, p: (h | {"webhook-timestamp": "soon"}, p),
    ],
)
def test_one_change_fails(change: object) -> None:
    key = sw.generate_key()
    h = sw.headers([sw.decode_key(key)], "evt_1", PAYLOAD, timestamp=1_800_000_000)
    changed_headers, changed_payload = change(h, PAYLOAD)  # type: ignore[operator]
    with pytest.raises(sw.WebhookVerificationError):
        sw.verify(key, changed_payload, changed_headers, now=1_800_000_000)


def test_stale_and_wrong_key() -> None:
    key = sw.generate_key()
    h = sw.headers([sw.decode_key(key)], "evt_1", PAYLOAD, timestamp=1_800_000_000)
    with pytest.raises(sw.WebhookVerificationError):
        sw.verify(key, PAYLOAD, h, now=1_800_000_301)
    with pytest.raises(sw.WebhookVerificationError):
        sw.verify(sw.generate_key(), PAYLOAD, h, now=1_800_000_000)
