"""Capability tokens ($stream_token): each test changes one thing and must fail verification."""

from __future__ import annotations

import base64

import pytest

from gateway.capability import InvalidToken, decode_key, mint_token, verify_token

KEY = bytes(range(32))
NOW = 1_800_000_000.0
CALL = "CA0123456789abcdef0123456789abcdef"
PHONE = "ph_support.main"


def token(**overrides: object) -> str:
    args: dict[str, object] = {"key": KEY, "call_id": CALL, "phone_id": PHONE, "now": NOW, "ttl_s": 300}
    args.update(overrides)
    return mint_token(**args)  # type: ignore[arg-type]


def test_valid_token_verifies_and_returns_expiry() -> None:
    assert verify_token(KEY, token(), CALL, PHONE, now=NOW + 1) == int(NOW) + 300


def test_format_is_url_safe() -> None:
    value = token()
    version, expiry, mac = value.split(".")
    assert (version, expiry) == ("v1", str(int(NOW) + 300))
    assert len(mac) == 43 and "=" not in mac and "+" not in mac and "/" not in mac


def test_key_given_as_hex_or_base64_text() -> None:
    value = token()
    assert verify_token(KEY.hex(), value, CALL, PHONE, now=NOW)
    assert verify_token(base64.b64encode(KEY).decode(), value, CALL, PHONE, now=NOW)
    with pytest.raises(ValueError):
        decode_key("too-short")


def test_expired() -> None:
    value = token(ttl_s=60)
    assert verify_token(KEY, value, CALL, PHONE, now=NOW + 59)
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(KEY, value, CALL, PHONE, now=NOW + 60)


@pytest.mark.parametrize(
    ("call_id", "phone_id"),
    [
        ("CA0123456789abcdef0123456789abcdeX", PHONE),  # another call
        (CALL, "ph_other"),  # another phone
        (CALL + "\nph_x", PHONE),  # no ambiguity from separators in the call id
        ("", PHONE),
    ],
)
def test_wrong_call_or_phone(call_id: str, phone_id: str) -> None:
    with pytest.raises(InvalidToken, match="not valid"):
        verify_token(KEY, token(), call_id, phone_id, now=NOW)


def test_wrong_key() -> None:
    with pytest.raises(InvalidToken):
        verify_token(bytes(32), token(), CALL, PHONE, now=NOW)


def _tamper_expiry(value: str) -> str:
    version, expiry, mac = value.split(".")
    return f"{version}.{int(expiry) + 3600}.{mac}"


def _flip_mac(value: str) -> str:
    head, mac = value.rsplit(".", 1)
    return f"{head}.{('B' if mac[0] == 'A' else 'A')}{mac[1:]}"


@pytest.mark.parametrize(
    "tamper",
    [
        _tamper_expiry,  # extend the lifetime
        _flip_mac,
        lambda v: v.replace("v1.", "v2.", 1),
        lambda v: v + "=",
        lambda v: v.rsplit(".", 1)[0],  # MAC missing
        lambda v: v.replace(".", ".-", 1),  # negative/non-digit expiry
        lambda v: "",
        lambda v: v + "." + v,
        lambda v: v[:-1] + "é",  # non-ASCII must not raise anything but InvalidToken
        lambda v: v + "A" * 200,
    ],
)
def test_tampered(tamper: object) -> None:
    with pytest.raises(InvalidToken):
        verify_token(KEY, tamper(token()), CALL, PHONE, now=NOW)  # type: ignore[operator]
