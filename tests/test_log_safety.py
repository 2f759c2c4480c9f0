"""The log cannot be forged or flooded (issue 14, item 7).

Request-controlled text in a log line is escaped and capped (gateway/log_safety.py). The
HTTP tests send hostile paths through a real socket and read the lines the gateway's
loggers wrote, formatted as a log file would hold them.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from gateway.log_safety import MAX_FIELD_CHARS, loggable
from tests.helpers.builders import new_token, plivo_phone, plivo_request
from tests.helpers.support import make_settings, random_id, run_gateway, send_as_carrier


@pytest.fixture
def log_file() -> Iterator[io.StringIO]:
    """Every gateway logger, formatted one record per line, as a log file holds them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("gateway")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def test_short_printable_text_is_unchanged() -> None:
    assert loggable("/plivo/status/ph_1") == "/plivo/status/ph_1"
    assert loggable(403) == "403"


@pytest.mark.parametrize(
    ("raw", "logged"),
    [
        ("a\nb", "a\\nb"),
        ("a\r\nb", "a\\r\\nb"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("a\u2028b", "a\\u2028b"),  # a line separator to some log viewers
        ("\x85", "\\x85"),  # C1 NEXT LINE
        ('say "hi"', 'say \\"hi\\"'),  # the access log quotes the request line
        ("back\\slash", "back\\\\slash"),  # so that an escape in the log is never ambiguous
    ],
)
def test_control_characters_are_escaped(raw: str, logged: str) -> None:
    assert loggable(raw) == logged


def test_long_text_is_capped_and_says_how_much_was_left_out() -> None:
    assert loggable("x" * 15_000) == "x" * MAX_FIELD_CHARS + f"...[+{15_000 - MAX_FIELD_CHARS} chars]"
    escaped = loggable("\n" * 1000)  # escapes count toward the cap
    assert escaped == "\\n" * (MAX_FIELD_CHARS // 2) + f"...[+{1000 - MAX_FIELD_CHARS // 2} chars]"


def test_a_newline_in_the_path_cannot_write_a_second_log_line(redis_url: str, log_file: io.StringIO) -> None:
    # No "/" in the forged part: the whole of it is the phone id of a webhook route.
    forged = "/plivo/status/ph_x%0A2026-01-01 00:00:00,000 INFO gateway.access 192.0.2.1 POST 200 plivo accepted"
    with run_gateway(make_settings(redis_url, GATEWAY_ACCESS_LOG="failed")) as gw:
        response = gw.client.post(forged, content=b"")
        assert response.status_code in (401, 403)
    lines = [line for line in log_file.getvalue().splitlines() if "gateway.access" in line]
    assert len(lines) == 1, lines  # one request, one line: the forged record is not a line of its own
    assert "ph_x\\n2026-01-01" in lines[0]
    assert " 200" not in lines[0].split('"')[-1]  # the status field is the true one


def test_a_huge_path_makes_a_bounded_line(redis_url: str, log_file: io.StringIO) -> None:
    with run_gateway(make_settings(redis_url, GATEWAY_ACCESS_LOG="failed")) as gw:
        response = gw.client.post("/plivo/status/" + "p" * 15_000, content=b"")
        assert response.status_code in (401, 403)
    (line,) = [line for line in log_file.getvalue().splitlines() if "gateway.access" in line]
    assert len(line) < 2 * MAX_FIELD_CHARS + 200, len(line)
    assert "...[+" in line


def test_an_accepted_request_is_logged_as_before(redis_url: str, log_file: io.StringIO) -> None:
    phone_id, token = random_id(), new_token()
    with run_gateway(make_settings(redis_url)) as gw:
        gw.put_phone(plivo_phone(phone_id, token))
        assert send_as_carrier(gw, plivo_request(token, phone_id)).status_code == 200
    (line,) = [line for line in log_file.getvalue().splitlines() if "gateway.access" in line]
    assert f'"POST /plivo/status/{phone_id}" 200 plivo accepted' in line
