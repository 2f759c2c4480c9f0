"""The inspector in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by Selenium.

Log in through the form, see a rejected Plivo request (signed for http://, received at the
https public base) with its `scheme` diagnosis, open its detail page, log out. Screenshots go
to $GATEWAY_TEST_ARTEFACTS/inspector/ (default: test-artefacts/inspector/ at the repository
root, ignored by git). Skipped, with the reason, where Chromium or chromedriver is absent.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.builders import new_token, plivo_phone, plivo_request
from tests.helpers.support import ADMIN_TOKEN, REPO
from tests.inspector.conftest import INSPECTOR, TwoPorts

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="browser test: chromium or chromedriver not found (Debian: apt-get install chromium chromium-driver)",
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,900",
)


def artefacts() -> Path:
    root = Path(os.environ.get("GATEWAY_TEST_ARTEFACTS") or REPO / "test-artefacts")
    path = root / "inspector"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, element_id: str) -> Any:
    """The element, once the page that has it has loaded (a click does not wait for the navigation)."""
    return WebDriverWait(driver, 15).until(expected_conditions.presence_of_element_located((By.ID, element_id)))


def screenshot(driver: Any, name: str) -> Path:
    """The whole page (the window grown to the document's height)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(600, min(int(height) + 200, 4000)))
    path = artefacts() / name
    assert driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def test_log_in_see_the_scheme_diagnosis_open_the_detail(gw: TwoPorts, browser: Any) -> None:
    phone_id, token = "ph_demo", new_token()
    gw.put_phone(plivo_phone(phone_id, token))
    signed_for_http = f"http://hooks.example.com/plivo/status/{phone_id}"
    assert gw.send(plivo_request(token, phone_id, signed_url=signed_for_http)).status_code == 403
    assert gw.send(plivo_request(token, phone_id)).status_code == 200

    browser.get(gw.admin_url + INSPECTOR)  # no cookie: 303 to the form
    assert browser.current_url.endswith(f"{INSPECTOR}/login")
    browser.find_element(By.NAME, "token").send_keys("not-the-admin-token-0123456789")
    browser.find_element(By.ID, "login").click()
    assert "not the admin token" in wait_for(browser, "login-error").text
    browser.find_element(By.NAME, "token").send_keys(ADMIN_TOKEN)
    browser.find_element(By.ID, "login").click()

    wait_for(browser, "worker")
    assert browser.current_url.endswith(INSPECTOR)
    (cookie,) = browser.get_cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and ADMIN_TOKEN not in cookie["value"]
    rejected = browser.find_element(By.ID, "rejected")
    assert phone_id in rejected.text and "403" in rejected.text
    assert "signature would match with scheme=http" in rejected.text
    assert signed_for_http in rejected.text
    assert phone_id in browser.find_element(By.ID, "accepted").text
    assert "Worker process" in browser.find_element(By.ID, "worker").text
    screenshot(browser, "inspector-list.png")

    rejected.find_element(By.CSS_SELECTOR, "td.when a").click()
    assert "scheme=http" in wait_for(browser, "diagnosis").text
    assert "/admin/inspector/requests/" in browser.current_url
    headers = browser.find_element(By.ID, "headers").text
    assert "x-plivo-signature-v3" in headers and "…" in headers
    assert "+*******0100" in browser.find_element(By.ID, "form").text
    assert f"gateway explain {phone_id} -" in browser.find_element(By.ID, "command").text
    assert token not in browser.page_source and "14155550100" not in browser.page_source
    screenshot(browser, "inspector-detail.png")

    browser.find_element(By.ID, "logout").click()
    wait_for(browser, "login")
    assert browser.current_url.endswith(f"{INSPECTOR}/login")
    assert browser.get_cookies() == []
    browser.get(gw.admin_url + INSPECTOR)
    wait_for(browser, "login")
    assert browser.current_url.endswith(f"{INSPECTOR}/login")
