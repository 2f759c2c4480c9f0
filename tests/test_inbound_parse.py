"""parse_pairs is a hand-written parse_qsl (speed): it must agree with it on everything."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import Reason, Rejected
from gateway.inbound import FORM_CONTENT_TYPE, MAX_FORM_FIELDS, InboundRequest, parse_pairs

# Characters that matter to the parser, plus some text and bytes-as-latin-1 characters.
ALPHABET = st.sampled_from(
    list("&=+%;# aZ09-_.~")
    + ["%2B", "%2b", "%3D", "%3d", "%26", "%2526", "%7F", "%0", "%00", "%80", "%C3%A9", "%c3%a9", "%E2%82"]
    + ["%ZZ", "%", "é", "\x00"]
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


@settings(max_examples=1500)
@given(TEXT)
def test_agrees_with_parse_qsl(text: str) -> None:
    assert ours(text) == reference(text)


def _reference_params(query: list[tuple[str, str]], form: list[tuple[str, str]]) -> list[tuple[str, str]]:
    merged: dict[str, str] = {}
    for name, value in query:
        merged.setdefault(name, value)
    first: dict[str, str] = {}
    for name, value in form:
        first.setdefault(name, value)
    merged.update(first)
    return list(merged.items())


PAIRS = st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from(["", "1", "2"])), max_size=6)


@settings(max_examples=300)
@given(PAIRS, PAIRS)
def test_params_first_value_wins_form_over_query_in_order(
    query: list[tuple[str, str]], form: list[tuple[str, str]]
) -> None:
    inbound = InboundRequest(
        method="POST",
        scheme="https",
        netloc="hooks.example.com",
        raw_path="/x",
        query_string=urlencode(query),
        headers={"content-type": FORM_CONTENT_TYPE},
        body=urlencode(form).encode(),
        client_ip="192.0.2.1",
    )
    assert list(inbound.params().items()) == _reference_params(query, form)


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
