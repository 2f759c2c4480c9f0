"""parse_pairs is a hand-written parse_qsl (speed): it must agree with it on everything."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import Reason, Rejected
from gateway.inbound import MAX_FORM_FIELDS, parse_pairs

# Characters that matter to the parser, plus some text and bytes-as-latin-1 characters.
ALPHABET = st.sampled_from(
    list("&=+%;# aZ09-_.~")
    + ["%2B", "%2b", "%3D", "%26", "%7F", "%0", "%00", "%80", "%C3%A9", "%c3%a9", "%E2%82", "%ZZ", "%", "é", "\x00"]
)
TEXT = st.lists(ALPHABET, max_size=40).map("".join)


def reference(text: str) -> list[tuple[str, str]] | str:
    try:
        return parse_qsl(
            text, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=MAX_FORM_FIELDS
        )
    except (ValueError, UnicodeDecodeError) as exc:
        return type(exc).__name__


def ours(text: str) -> list[tuple[str, str]] | str:
    try:
        return parse_pairs(text)
    except Rejected as rejection:
        assert rejection.reason is Reason.MALFORMED_REQUEST
        return rejection.detail


@given(TEXT)
def test_agrees_with_parse_qsl(text: str) -> None:
    assert ours(text) == reference(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "&",
        "a",
        "a=",
        "=b",
        "a=b=c",
        "a+b=c+d",
        "CallUUID=x&From=%2B918045678901&StartTime=2025-05-01+10%3A00%3A00",
        "bad=%C3%28",
        "&".join(["x=1"] * MAX_FORM_FIELDS),
        "&".join(["x=1"] * (MAX_FORM_FIELDS + 1)),
        "&" * MAX_FORM_FIELDS,
    ],
)
def test_edges(text: str) -> None:
    assert ours(text) == reference(text)
