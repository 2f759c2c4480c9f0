"""The live diagnosis of a refusal other than a failed signature reaches the inspector (issue 15 part 3)."""

from __future__ import annotations

from tests.helpers.builders import exotel_phone, exotel_request, exotel_token
from tests.inspector.conftest import INSPECTOR, TwoPorts


def test_an_exotel_token_under_another_name_is_diagnosed_on_the_page(gw: TwoPorts) -> None:
    token, phone_id = exotel_token(), "ph_live_diag"
    gw.put_phone(exotel_phone(phone_id, token))
    refused = gw.send(exotel_request(phone_id, query=f"tok={token}", client_ip="198.51.100.9"))
    assert refused.status_code == 403
    gw.login()
    page = gw.admin.get(INSPECTOR).text
    assert "exotel request refused (ip_not_allowed)" in page
    assert "the phone&#39;s token is in the query parameter &#39;tok&#39;" in page
    assert "198.51.100.9" not in page  # the listing names no address; the detail page does
    assert token not in page
    record_id = page.split(f"{INSPECTOR}/requests/", 1)[1].split('"', 1)[0]
    detail = gw.admin.get(f"{INSPECTOR}/requests/{record_id}").text
    assert "198.51.100.9 is NOT in the allowlist" in detail
    assert token not in detail  # the parameter that held the phone's token is redacted like `token`


def test_a_token_under_another_name_from_an_allowlisted_address_is_redacted_everywhere(gw: TwoPorts) -> None:
    """missing_token: the token sent as ?tok= and as a form field; neither value reaches any page."""
    token, phone_id = exotel_token(), "ph_live_tok"
    gw.put_phone(exotel_phone(phone_id, token))
    sent = exotel_request(phone_id, query=f"tok={token}", params=[("CallSid", "CAexample1"), ("secret_copy", token)])
    assert gw.send(sent).status_code == 403
    gw.login()
    page = gw.admin.get(INSPECTOR).text
    record_id = page.split(f"{INSPECTOR}/requests/", 1)[1].split('"', 1)[0]
    detail = gw.admin.get(f"{INSPECTOR}/requests/{record_id}").text
    assert "missing_token" in page and "CAexample1" in detail  # the rest of the request is shown
    assert token not in page and token not in detail
