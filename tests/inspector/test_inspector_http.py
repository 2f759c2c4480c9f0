"""The inspector through the real app on two real sockets: admin port only, login, cookies, redaction, bounds, off."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from http.cookies import SimpleCookie

import httpx
import pytest

from gateway.inspector.session import COOKIE_NAME
from tests.helpers.builders import (
    exotel_phone,
    exotel_request,
    exotel_token,
    new_token,
    plivo_phone,
    plivo_request,
    twilio_phone,
    twilio_request,
)
from tests.helpers.support import ADMIN_TOKEN, run_gateway
from tests.inspector.conftest import INSPECTOR, TwoPorts

Factory = Callable[..., AbstractContextManager[TwoPorts]]
PAGES = (INSPECTOR, f"{INSPECTOR}/requests/1", f"{INSPECTOR}/login")


def set_cookie(response: httpx.Response) -> str:
    (header,) = response.headers.get_list("set-cookie")
    return header


def scheme_mismatch(gw: TwoPorts) -> tuple[str, str]:
    """A Plivo request signed for http:// sent to the https public base: rejected, diagnosed as `scheme`."""
    phone_id, token = f"ph_{new_token()[:8].lower()}", new_token()
    gw.put_phone(plivo_phone(phone_id, token))
    signed = f"http://hooks.example.com/plivo/status/{phone_id}"
    response = gw.send(plivo_request(token, phone_id, signed_url=signed))
    assert response.status_code == 403
    return phone_id, token


def record_links(page: str) -> list[int]:
    return [int(n) for n in re.findall(r'href="/admin/inspector/requests/(\d+)"', page)]


# ---- where it is served ----------------------------------------------------------------------


def test_the_public_port_answers_404_for_every_inspector_path(gw: TwoPorts) -> None:
    for path in PAGES:
        assert gw.public.get(path).status_code == 404
    assert gw.public.post(f"{INSPECTOR}/login", data={"token": ADMIN_TOKEN}).status_code == 404
    assert gw.public.post(f"{INSPECTOR}/logout").status_code == 404
    assert "set-cookie" not in gw.public.post(f"{INSPECTOR}/login", data={"token": ADMIN_TOKEN}).headers


def test_without_an_admin_port_there_is_no_inspector_and_nothing_is_recorded(redis_url: str) -> None:
    from tests.helpers.support import make_settings

    with run_gateway(make_settings(redis_url)) as single:
        assert single.app.components is not None and single.app.components.webhooks._inspect is None
        for path in PAGES:
            assert single.client.get(path).status_code == 404


def test_off_switch_no_pages_no_recording(gateway_factory: Factory) -> None:
    with gateway_factory(GATEWAY_INSPECTOR="off") as off:
        assert off.app.components is not None and off.app.components.webhooks._inspect is None
        for path in PAGES:
            assert off.admin.get(path).status_code == 404
        assert off.admin.post(f"{INSPECTOR}/login", data={"token": ADMIN_TOKEN}).status_code in (404, 405)


# ---- login ------------------------------------------------------------------------------------


def test_every_page_redirects_to_the_form_without_a_cookie(gw: TwoPorts) -> None:
    for path in (INSPECTOR, f"{INSPECTOR}/requests/1"):
        response = gw.admin.get(path)
        assert response.status_code == 303 and response.headers["location"] == f"{INSPECTOR}/login"
    form = gw.admin.get(f"{INSPECTOR}/login")
    assert form.status_code == 200 and 'name="token"' in form.text and 'method="post"' in form.text
    assert "set-cookie" not in form.headers
    assert (
        form.headers["cache-control"] == "no-store"
        and "frame-ancestors 'none'" in form.headers["content-security-policy"]
    )


def test_a_wrong_token_answers_the_form_again_with_401(gw: TwoPorts, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        for wrong in ("", ADMIN_TOKEN[:-1], ADMIN_TOKEN + "x", "x" * 100):
            response = gw.admin.post(f"{INSPECTOR}/login", data={"token": wrong})
            assert response.status_code == 401 and 'name="token"' in response.text
            assert "set-cookie" not in response.headers
        assert gw.admin.post(f"{INSPECTOR}/login", data={"other": ADMIN_TOKEN}).status_code == 401
    assert gw.admin.get(INSPECTOR).status_code == 303
    assert ADMIN_TOKEN not in caplog.text and ADMIN_TOKEN[:-1] not in caplog.text


def test_the_token_in_a_url_never_logs_in(gw: TwoPorts) -> None:
    for path in (f"{INSPECTOR}/login?token={ADMIN_TOKEN}", f"{INSPECTOR}?token={ADMIN_TOKEN}"):
        response = gw.admin.get(path)
        assert "set-cookie" not in response.headers
    assert gw.admin.post(f"{INSPECTOR}/login?token={ADMIN_TOKEN}").status_code == 401


def test_a_login_body_is_bounded(gw: TwoPorts) -> None:
    assert gw.admin.post(f"{INSPECTOR}/login", content=b"token=" + b"x" * 10_000).status_code == 413


def test_login_sets_a_strict_httponly_expiring_cookie_that_is_not_the_token(gw: TwoPorts) -> None:
    response = gw.login()
    assert response.headers["location"] == INSPECTOR
    header = set_cookie(response)
    cookie = SimpleCookie(header)[COOKIE_NAME]
    assert ADMIN_TOKEN not in header and cookie.value != ADMIN_TOKEN
    assert cookie["httponly"] and cookie["samesite"].lower() == "strict"
    assert cookie["path"] == INSPECTOR and int(cookie["max-age"]) > 0
    assert not cookie["secure"]  # plain http to the admin port
    assert gw.admin.get(INSPECTOR).status_code == 200


def test_the_cookie_is_secure_over_https_from_a_trusted_proxy_only(gw: TwoPorts, gateway_factory: Factory) -> None:
    https = {"x-forwarded-proto": "https"}
    trusted = gw.admin.post(f"{INSPECTOR}/login", data={"token": ADMIN_TOKEN}, headers=https)
    assert SimpleCookie(set_cookie(trusted))[COOKIE_NAME]["secure"]
    with gateway_factory(GATEWAY_TRUSTED_PROXIES="192.0.2.0/24") as untrusting:
        claimed = untrusting.admin.post(f"{INSPECTOR}/login", data={"token": ADMIN_TOKEN}, headers=https)
        assert not SimpleCookie(set_cookie(claimed))[COOKIE_NAME]["secure"]


def test_a_forged_or_foreign_cookie_is_refused(gw: TwoPorts, gateway_factory: Factory) -> None:
    for value in (ADMIN_TOKEN, "v1.99999999999.00", "v1.1.abc"):
        client = httpx.Client(base_url=gw.admin_url, cookies={COOKIE_NAME: value})
        with client:
            assert client.get(INSPECTOR).status_code == 303
    other_token = "another-admin-token-" + "y" * 16
    with gateway_factory(GATEWAY_ADMIN_TOKEN=other_token) as other:
        response = other.admin.post(f"{INSPECTOR}/login", data={"token": other_token})
        foreign = SimpleCookie(set_cookie(response))[COOKIE_NAME].value
    with httpx.Client(base_url=gw.admin_url, cookies={COOKIE_NAME: foreign}) as client:
        assert client.get(INSPECTOR).status_code == 303


def test_logout_clears_the_cookie_and_get_changes_nothing(gw: TwoPorts) -> None:
    gw.login()
    assert gw.admin.get(f"{INSPECTOR}/logout").status_code == 405  # no state change on GET
    assert gw.admin.get(INSPECTOR).status_code == 200
    response = gw.admin.post(f"{INSPECTOR}/logout")
    assert response.status_code == 303 and response.headers["location"] == f"{INSPECTOR}/login"
    cleared = SimpleCookie(set_cookie(response))[COOKIE_NAME]
    assert cleared.value == "" and int(cleared["max-age"]) == 0
    assert gw.admin.get(INSPECTOR).status_code == 303


def test_a_copied_cookie_is_refused_after_logout_by_every_instance(gw: TwoPorts, gateway_factory: Factory) -> None:
    copied = SimpleCookie(set_cookie(gw.login()))[COOKIE_NAME].value
    with httpx.Client(base_url=gw.admin_url) as another_browser:
        kept = SimpleCookie(set_cookie(gw.login(another_browser)))[COOKIE_NAME].value
    with gateway_factory() as second:  # another instance (or worker): same admin token, same Redis
        for base in (gw.admin_url, second.admin_url):
            with httpx.Client(base_url=base, cookies={COOKIE_NAME: copied}) as client:
                assert client.get(INSPECTOR).status_code == 200
        assert gw.admin.post(f"{INSPECTOR}/logout").status_code == 303
        for base in (gw.admin_url, second.admin_url):
            with httpx.Client(base_url=base, cookies={COOKIE_NAME: copied}) as client:
                assert client.get(INSPECTOR).status_code == 303  # the copy is logged out too
            with httpx.Client(base_url=base, cookies={COOKIE_NAME: kept}) as client:
                assert client.get(INSPECTOR).status_code == 200  # another login is another session


# ---- what the pages show --------------------------------------------------------------------------


def test_a_scheme_mismatch_is_listed_with_its_diagnosis_and_detail(gw: TwoPorts) -> None:
    phone_id, token = scheme_mismatch(gw)
    assert gw.send(plivo_request(token, phone_id)).status_code == 200
    gw.login()
    page = gw.admin.get(INSPECTOR).text
    rejected, accepted = page.split('id="accepted"')
    assert phone_id in rejected and "invalid_signature" in rejected
    assert (
        "would match with scheme=http" in rejected and f"http://hooks.example.com/plivo/status/{phone_id}" in rejected
    )
    assert phone_id in accepted and "200" in accepted
    assert "Worker process" in page
    rejected_id = record_links(rejected)[0]
    detail = gw.admin.get(f"{INSPECTOR}/requests/{rejected_id}")
    assert detail.status_code == 200
    assert "x-plivo-signature-v3</th>" in detail.text and "+*******0100" in detail.text
    assert "14155550100" not in detail.text
    assert f"gateway explain {phone_id} - &lt;&lt;&#39;EOF&#39;" in detail.text
    assert gw.admin.get(f"{INSPECTOR}/requests/999999").status_code == 404


def test_no_secret_of_any_kind_in_any_page(gw: TwoPorts) -> None:
    # Plivo: signature; Twilio: signature; Exotel: the URL token (query and a proxy's X-Original-URI).
    phone_id, token = scheme_mismatch(gw)
    signatures = []
    plivo = plivo_request(token, phone_id)
    signatures.append(plivo["headers"]["X-Plivo-Signature-V3"])
    gw.send(plivo, authorization="Bearer should-never-show-0123456789", cookie="sid=never-show-cookie")
    twilio_id, twilio_token = "ph_tw_inspect", new_token()
    gw.put_phone(twilio_phone(twilio_id, twilio_token))
    twilio = twilio_request(twilio_token, twilio_id, signed_url="http://hooks.example.com/elsewhere")
    signatures.append(twilio["headers"]["X-Twilio-Signature"])
    assert gw.send(twilio).status_code == 403
    exotel_id, exotel_secret = "ph_ex_inspect", exotel_token()
    gw.put_phone(exotel_phone(exotel_id, exotel_secret))
    exotel = exotel_request(exotel_id, token=exotel_secret)
    uri = f"/exotel/status/{exotel_id}?token={exotel_secret}"
    assert gw.send(exotel, **{"x-original-uri": uri}).status_code == 200
    wrong = exotel_request(exotel_id, token=exotel_secret + "x")
    assert gw.send(wrong).status_code == 403
    gw.login()
    pages = [gw.admin.get(INSPECTOR).text]
    pages += [gw.admin.get(f"{INSPECTOR}/requests/{n}").text for n in record_links(pages[0])]
    assert len(pages) >= 6
    text = "\n".join(pages)
    secrets = [token, twilio_token, exotel_secret, ADMIN_TOKEN, "should-never-show", "never-show-cookie", *signatures]
    for secret in secrets:
        assert secret not in text
    for signature in signatures:
        assert signature[:6] + "…" in text
    assert "14155550100" not in text and "+*******0100" in text


def test_numbers_shown_when_masking_is_off(gateway_factory: Factory) -> None:
    with gateway_factory(
        GATEWAY_PUBLIC_BASE_URL="https://hooks.example.com", GATEWAY_INSPECTOR_MASK_NUMBERS="false"
    ) as gw:
        scheme_mismatch(gw)
        gw.login()
        link = record_links(gw.admin.get(INSPECTOR).text)[0]
        assert "+14155550100" in gw.admin.get(f"{INSPECTOR}/requests/{link}").text


def test_memory_is_bounded_by_count(gateway_factory: Factory) -> None:
    with gateway_factory(GATEWAY_INSPECTOR_MAX_REQUESTS="3") as gw:
        for n in range(5):
            assert 400 <= gw.public.post(f"/plivo/status/ph_unknown_{n}", content=b"x=1").status_code < 500
        gw.login()
        page = gw.admin.get(INSPECTOR).text
        assert "Rejected or failed (3)" in page
        assert "ph_unknown_4" in page and "ph_unknown_2" in page and "ph_unknown_1" not in page
        assert page.index("ph_unknown_4") < page.index("ph_unknown_3")  # newest first
        assert "unknown_phone" in page or "malformed_request" in page


# ---- allowlist discovery (issue 15 part 2): the unlisted sources, shared through Redis -------------


def test_the_index_lists_unlisted_sources_with_a_valid_token(gw: TwoPorts) -> None:
    phone_id, token = f"ph_{new_token()[:8].lower()}", exotel_token()
    gw.put_phone(exotel_phone(phone_id, token))
    refused = gw.send(exotel_request(phone_id, token=token, client_ip="198.51.100.77"))
    assert refused.status_code == 403
    wrong = gw.send(exotel_request(phone_id, token=exotel_token(), client_ip="192.0.2.55"))
    assert wrong.status_code == 403
    gw.login()
    page = ""
    for _ in range(50):  # the source is written after the answer (fire and forget): a few ms
        page = gw.admin.get(INSPECTOR).text
        if "198.51.100.0/24" in page:
            break
        time.sleep(0.05)
    section = page.split('id="unlisted-exotel"', 1)[1]
    assert "198.51.100.0/24" in section
    assert "192.0.2.0/24" not in section  # a wrong token proves nothing: not recorded
    assert "198.51.100.77" not in page  # networks only, never the address
