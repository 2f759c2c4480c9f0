"""Exotel: the allowlist (parsing, membership, the data file) and the fail-closed verifier."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import Reason, Rejected
from gateway.inbound import InboundRequest
from gateway.providers import Key, KeyKind, PhoneCredentials, Provider
from gateway.providers.allowlist import Allowlist
from gateway.providers.exotel import ExotelVerifier, idempotency_key
from tests.helpers.inbound_builders import (
    NOW,
    Req,
    accepted,
    creds,
    creds_from_vector,
    inbound_from_vector,
    key,
    rejection,
)
from tests.providers.conftest import VectorStep

VECTOR_PROVIDERS = ("exotel",)

URL = "https://hooks.example.com/exotel/status/ph_test"
QUERY = "?CallSid=c0ffee&Status=completed&CallFrom=09876543210"
TOKEN = "5F7F2AYRdRyyXov2exVYdzHe"
ALLOWED = Allowlist.parse("203.0.113.0/24, 2001:db8::/32")
REPO_ROOT = Path(__file__).resolve().parents[2]

verifier = ExotelVerifier(ALLOWED)


def exotel_request(query: str = QUERY, client_ip: str = "203.0.113.7", method: str = "GET") -> Req:
    return Req(url=URL + query, method=method, client_ip=client_ip)


def phone(*tokens: Key) -> PhoneCredentials:
    return creds(Provider.EXOTEL, {KeyKind.EXOTEL_WEBHOOK_TOKEN: tokens} if tokens else {})


def reason(request: Req, phone_: PhoneCredentials | None = None, verifier_: ExotelVerifier = verifier) -> Reason:
    return rejection(verifier_, request, phone_ or phone(), NOW)


def fingerprint(request: Req, phone_: PhoneCredentials | None = None) -> str | None:
    return accepted(verifier, request, phone_ or phone(), NOW).key_fingerprint


# --- (1) shared vectors, with the allowlist their verdicts assume ---


def test_vector_step(vector_step: VectorStep, vectors: Mapping[str, Any]) -> None:
    allowlist = Allowlist.parse(",".join(vectors["exotel_allowed_ips"]))
    request = inbound_from_vector(vector_step.request)
    phone_ = creds_from_vector(vector_step.case["phone"])
    if vector_step.expected == "accept":
        ExotelVerifier(allowlist).verify(request, phone_, NOW)
    else:
        with pytest.raises(Rejected):
            ExotelVerifier(allowlist).verify(request, phone_, NOW)


# --- (2) allowlist ---


class TestAllowlistParsing:
    def test_ipv4_ipv6_addresses_and_cidrs(self) -> None:
        allowlist = Allowlist.parse("203.0.113.0/24,198.51.100.7, 2001:db8::/32 ,2001:db8:1::5")
        assert [str(n) for n in allowlist.networks] == [
            "203.0.113.0/24",
            "198.51.100.7/32",
            "2001:db8::/32",
            "2001:db8:1::5/128",
        ]

    def test_blank_items_are_ignored(self) -> None:
        assert len(Allowlist.parse(" , 203.0.113.0/24,,")) == 1
        assert not Allowlist.parse("")

    def test_duplicates_collapse(self) -> None:
        assert len(Allowlist.parse("203.0.113.0/24,203.0.113.0/24")) == 1

    @pytest.mark.parametrize(
        "entry", ["203.0.113.7/24", "2001:db8::1/32", "not-an-ip", "203.0.113.256", "203.0.113.0/33", "203.0.113.0/"]
    )
    def test_invalid_entry_is_named(self, entry: str) -> None:
        with pytest.raises(ValueError, match="invalid allowlist entry") as info:
            Allowlist.parse(f"198.51.100.0/24,{entry}")
        assert repr(entry) in str(info.value)

    @pytest.mark.parametrize("entry", ["0.0.0.0/0", "::/0"])
    def test_match_everything_is_refused(self, entry: str) -> None:
        with pytest.raises(ValueError, match="matches every address"):
            Allowlist.parse(entry)


class TestAllowlistMembership:
    @pytest.mark.parametrize(
        "ip", ["203.0.113.0", "203.0.113.255", "203.0.113.42", "2001:db8::", "2001:db8:ffff:ffff::1", "2001:DB8::A"]
    )
    def test_inside(self, ip: str) -> None:
        assert ALLOWED.contains(ip)

    @pytest.mark.parametrize("ip", ["203.0.112.255", "203.0.114.0", "198.51.100.7", "2001:db7:ffff::1", "2001:db9::"])
    def test_outside(self, ip: str) -> None:
        assert not ALLOWED.contains(ip)

    def test_ipv4_mapped_ipv6_is_judged_as_ipv4(self) -> None:
        assert ALLOWED.contains("::ffff:203.0.113.9")
        assert not ALLOWED.contains("::ffff:198.51.100.9")

    def test_ipv4_entries_do_not_match_other_ipv6(self) -> None:
        # 203.0.113.0/24 as an integer range must not leak into IPv6 space.
        assert not ALLOWED.contains(str(ipaddress.IPv6Address(int(ipaddress.IPv4Address("203.0.113.9")))))

    def test_single_address_entry(self) -> None:
        allowlist = Allowlist.parse("198.51.100.7")
        assert allowlist.contains("198.51.100.7")
        assert not allowlist.contains("198.51.100.8")

    @pytest.mark.parametrize(
        "ip",
        [
            "",
            " 203.0.113.7",
            "203.0.113.7 ",
            "203.0.113.07",
            "203.0.113.7:443",
            "[2001:db8::1]",
            "203.0.113.7/32",
            "localhost",
            "2001:db8::1::2",
            "203.0.113.7\x00",
        ],
    )
    def test_garbage_is_never_a_member(self, ip: str) -> None:
        assert not ALLOWED.contains(ip)

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=60))
    def test_contains_never_raises(self, ip: str) -> None:
        ALLOWED.contains(ip)

    @settings(max_examples=200, deadline=None)
    @given(st.ip_addresses())
    def test_agrees_with_ipaddress(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        expected = any(address in network for network in ALLOWED.networks if network.version == address.version)
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:
            expected = expected or any(mapped in network for network in ALLOWED.networks if network.version == 4)
        assert ALLOWED.contains(str(address)) is expected


class TestAllowlistFile:
    def test_shipped_default_is_empty_and_loads(self) -> None:
        # Exotel publishes no callback IPs: the built-in list must not invent any.
        allowlist = Allowlist.load_file(REPO_ROOT / "gateway" / "data" / "exotel_allowed_ips.txt")
        assert not allowlist

    def test_shipped_default_explains_itself(self) -> None:
        text = (REPO_ROOT / "gateway" / "data" / "exotel_allowed_ips.txt").read_text(encoding="utf-8")
        assert "EXOTEL_ALLOWED_IPS" in text and "support" in text

    def test_entries_with_region_source_and_date(self, tmp_path: Path) -> None:
        path = tmp_path / "ips.txt"
        path.write_text(
            "# comment\n"
            "\n"
            "203.0.113.0/24, ap-south-1 (Mumbai), https://support.example.com/ticket#123, 2026-11-24\n"
            "  2001:db8::/32 , us-west-2, Exotel support ticket 456, 2026-11-25  \n",
            encoding="utf-8",
        )
        allowlist = Allowlist.load_file(path)
        assert allowlist.contains("203.0.113.9") and allowlist.contains("2001:db8::9")
        assert len(allowlist) == 2

    @pytest.mark.parametrize(
        "line",
        [
            "203.0.113.0/24",
            "203.0.113.0/24, ap-south-1, , 2026-11-24",
            "203.0.113.0/24, ap-south-1, ticket 1",
            "203.0.113.0/24, ap-south-1, ticket 1, yesterday",
            "203.0.113.7/24, ap-south-1, ticket 1, 2026-11-24",
            "0.0.0.0/0, everywhere, nobody, 2026-11-24",
        ],
    )
    def test_untraceable_or_invalid_entries_name_the_line(self, tmp_path: Path, line: str) -> None:
        path = tmp_path / "ips.txt"
        path.write_text(f"# header\n{line}\n", encoding="utf-8")
        with pytest.raises(ValueError, match=r"ips\.txt:2: "):
            Allowlist.load_file(path)


# --- (3) the verifier ---


class TestSourceAddress:
    def test_allowed_ipv4(self) -> None:
        assert fingerprint(exotel_request()) is None  # IP-only: no key vouched for it

    def test_allowed_ipv6(self) -> None:
        assert fingerprint(exotel_request(client_ip="2001:db8::1")) is None

    def test_allowed_ipv4_mapped(self) -> None:
        assert fingerprint(exotel_request(client_ip="::ffff:203.0.113.7")) is None

    def test_disallowed_ipv4(self) -> None:
        assert reason(exotel_request(client_ip="198.51.100.7")) is Reason.IP_NOT_ALLOWED

    def test_disallowed_ipv6(self) -> None:
        assert reason(exotel_request(client_ip="2001:db9::1")) is Reason.IP_NOT_ALLOWED

    @pytest.mark.parametrize("ip", ["203.0.112.255", "203.0.114.0"])
    def test_just_outside_the_range(self, ip: str) -> None:
        assert reason(exotel_request(client_ip=ip)) is Reason.IP_NOT_ALLOWED

    def test_garbage_client_ip(self) -> None:
        assert reason(exotel_request(client_ip="unknown")) is Reason.IP_NOT_ALLOWED

    def test_empty_allowlist_rejects_everything(self) -> None:
        closed = ExotelVerifier(Allowlist())
        assert reason(exotel_request(), verifier_=closed) is Reason.IP_NOT_ALLOWED
        assert reason(exotel_request(f"{QUERY}&token={TOKEN}"), phone(key(TOKEN)), closed) is Reason.IP_NOT_ALLOWED

    def test_post_status_callback(self) -> None:
        request = Req(
            url=URL,
            client_ip="203.0.113.200",
            headers=(("Content-Type", "application/x-www-form-urlencoded"),),
            body=b"CallSid=c1&Status=completed",
        )
        assert fingerprint(request) is None


class TestToken:
    def test_matching_token(self) -> None:
        assert fingerprint(exotel_request(f"{QUERY}&token={TOKEN}"), phone(key(TOKEN, "fp-token"))) == "fp-token"

    def test_token_missing(self) -> None:
        assert reason(exotel_request(), phone(key(TOKEN))) is Reason.MISSING_TOKEN

    def test_token_empty(self) -> None:
        assert reason(exotel_request(f"{QUERY}&token="), phone(key(TOKEN))) is Reason.MISSING_TOKEN

    def test_token_wrong(self) -> None:
        assert reason(exotel_request(f"{QUERY}&token={TOKEN[:-1]}A"), phone(key(TOKEN))) is Reason.INVALID_TOKEN

    def test_token_prefix_is_wrong(self) -> None:
        assert reason(exotel_request(f"{QUERY}&token={TOKEN[:-1]}"), phone(key(TOKEN))) is Reason.INVALID_TOKEN

    def test_token_given_twice(self) -> None:
        request = exotel_request(f"{QUERY}&token={TOKEN}&token={TOKEN}")
        assert reason(request, phone(key(TOKEN))) is Reason.INVALID_TOKEN

    def test_token_in_the_body_does_not_count(self) -> None:
        request = Req(
            url=URL,
            client_ip="203.0.113.7",
            headers=(("Content-Type", "application/x-www-form-urlencoded"),),
            body=f"CallSid=c1&token={TOKEN}".encode(),
        )
        assert reason(request, phone(key(TOKEN))) is Reason.MISSING_TOKEN

    def test_token_percent_encoded_is_decoded(self) -> None:
        token = "a b/c"
        assert fingerprint(exotel_request(f"{QUERY}&token=a%20b%2Fc"), phone(key(token, "fp-t"))) == "fp-t"

    def test_right_token_from_a_disallowed_address(self) -> None:
        request = exotel_request(f"{QUERY}&token={TOKEN}", client_ip="192.0.2.1")
        assert reason(request, phone(key(TOKEN))) is Reason.IP_NOT_ALLOWED

    def test_two_active_tokens_both_work(self) -> None:
        phone_ = phone(key("new-token", "fp-new"), key(TOKEN, "fp-old", expires_at=NOW + 60))
        assert fingerprint(exotel_request(f"{QUERY}&token=new-token"), phone_) == "fp-new"
        assert fingerprint(exotel_request(f"{QUERY}&token={TOKEN}"), phone_) == "fp-old"

    def test_expired_token_no_longer_works(self) -> None:
        phone_ = phone(key("new-token", "fp-new"), key(TOKEN, "fp-old", expires_at=NOW))
        assert reason(exotel_request(f"{QUERY}&token={TOKEN}"), phone_) is Reason.INVALID_TOKEN

    def test_all_tokens_expired_does_not_fall_back_to_ip_only(self) -> None:
        phone_ = phone(key(TOKEN, "fp-old", expires_at=NOW - 1))
        assert reason(exotel_request(), phone_) is Reason.MISSING_TOKEN
        assert reason(exotel_request(f"{QUERY}&token={TOKEN}"), phone_) is Reason.INVALID_TOKEN

    def test_malformed_query_is_rejected_not_a_crash(self) -> None:
        assert reason(exotel_request("?token=%FF"), phone(key(TOKEN))) is Reason.MALFORMED_REQUEST

    @settings(max_examples=150, deadline=None)
    @given(query=st.text(alphabet=st.characters(max_codepoint=255), max_size=80), client_ip=st.text(max_size=40))
    def test_random_requests_are_never_accepted(self, query: str, client_ip: str) -> None:
        request = InboundRequest(
            method="GET",
            scheme="https",
            netloc="hooks.example.com",
            raw_path="/exotel/status/ph_test",
            query_string=query,
            headers={},
            body=b"",
            client_ip=client_ip,
        )
        # Whatever the address, the phone's token is required and random text never holds
        # it: every such request is a Rejected, never an acceptance or another exception.
        with pytest.raises(Rejected):
            ExotelVerifier(Allowlist.parse("198.51.100.0/24")).verify(request, phone(key(TOKEN)), NOW)


class TestIdempotencyKey:
    def test_call_sid_and_status(self) -> None:
        assert idempotency_key(exotel_request().build(), "status") == "status:c0ffee:completed"

    def test_call_status_when_no_status(self) -> None:
        request = exotel_request("?CallSid=c1&CallStatus=ringing").build()
        assert idempotency_key(request, "incoming") == "incoming:c1:ringing"

    def test_none_without_call_sid(self) -> None:
        assert idempotency_key(exotel_request("?Status=free").build(), "incoming") is None
