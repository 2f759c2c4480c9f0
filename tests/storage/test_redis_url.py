"""GATEWAY_REDIS_URL parsing (gateway/redis_url.py): pure, without the redis library.

The refusals (bad forms, passwords never echoed, cluster seeds) are also exercised
through the settings in tests/test_redis_ha.py.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from gateway.redis_url import cluster_seeds, is_sentinel, parse_sentinel_url, split_hosts, validate_url
from tests.helpers.support import REPO


def test_settings_and_url_parsing_do_not_import_redis() -> None:
    code = (
        "import sys, gateway.redis_url, gateway.settings; "
        "print(sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.') or m == 'gateway.redis_client'))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("url", "cluster"),
    [
        ("redis://127.0.0.1:6379/0", False),
        ("rediss://user:pw@redis.example.com:6380/2", False),
        ("unix:///run/redis.sock?db=1", False),
        ("redis+sentinel://192.0.2.1:26379,[2001:db8::1]:26380/mymaster", False),
        ("rediss+sentinel://:pw@sentinel.example.com/mymaster/3", False),
        ("redis://192.0.2.1:7000,192.0.2.2:7001/0", True),
        ("rediss://192.0.2.1:7000", True),
    ],
)
def test_valid_forms_are_accepted(url: str, cluster: bool) -> None:
    validate_url(url, cluster)


def test_sentinel_scheme_is_recognised() -> None:
    assert is_sentinel("redis+sentinel://h/svc") and is_sentinel("rediss+sentinel://h/svc")
    assert not is_sentinel("redis://h:6379/0") and not is_sentinel("unix:///run/redis.sock")


def test_default_ports() -> None:
    assert split_hosts("a,b:1", 26379, "sentinel") == [("a", 26379), ("b", 1)]
    assert parse_sentinel_url("redis+sentinel://s1/svc")[0] == [("s1", 26379)]
    assert cluster_seeds("redis://n1,n2:7001")[1] == [("n1", 6379), ("n2", 7001)]


def test_cluster_first_seed_keeps_ipv6_brackets_and_query() -> None:
    first, seeds = cluster_seeds("redis://[2001:db8::3]:7002,192.0.2.1:7000?ssl_cert_reqs=none")
    assert first == "redis://[2001:db8::3]:7002/0?ssl_cert_reqs=none"
    assert seeds == [("2001:db8::3", 7002), ("192.0.2.1", 7000)]


def test_errors_never_echo_the_password() -> None:
    with pytest.raises(ValueError, match="GATEWAY_REDIS_URL") as caught:
        parse_sentinel_url("redis+sentinel://user:hunter2-secret@192.0.2.1:26379")
    assert "hunter2" not in str(caught.value)


# Passwords written into the URL without percent-encoding: '/', '#', '@', '?' and ':' cut the URL
# elsewhere, so a piece of the password lands in the host, port, path, query or fragment.
PASSWORDS = ["p@ss/wo#rd", "secret#frag", "k@yz/qu1x", "pa/ssw0rd", "pa?ssw0rd", "s3:cr/3t"]
TEMPLATES = [
    ("redis://:{pw}@192.0.2.1:6379/0", False),
    ("redis://user:{pw}@redis.example.com/0", False),
    ("rediss+sentinel://:{pw}@192.0.2.1:26379/svc/1", False),
    ("redis://:{pw}@192.0.2.1:7000,192.0.2.2:7001/0", True),
    ("redis://:{pw}@[2001:db8::1]:6379/0", False),
]


def _other_letters(password: str) -> str:
    """The same password with every letter and digit replaced: the URL splits the same way."""
    return password.translate(
        str.maketrans("abcdefghijklmnopqrstuvwxyz0123456789", "bcdefghijklmnopqrstuvwxyza1234567890")
    )


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize(("template", "cluster"), TEMPLATES)
def test_errors_never_echo_any_part_of_the_url(template: str, cluster: bool, password: str) -> None:
    """No piece of the password in the message: it is the same whatever the password's letters are."""
    messages = []
    for pw in (password, _other_letters(password)):
        with pytest.raises(ValueError, match="GATEWAY_REDIS_URL") as caught:
            validate_url(template.format(pw=pw), cluster)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    for piece in re.split(r"[@/#?:]", password):
        assert len(piece) < 3 or piece not in messages[0]


@pytest.mark.parametrize(
    ("url", "part"),
    [
        ("redis://redis.example.com:63790x/0", "port"),
        ("redis://redis.example.com:99999/0", "bad server address"),
        ("redis://redis.example.com:6379/zero", "database"),
        ("redis://redis.example.com:6379/0?db=x", "database"),
        ("redis://:pw@/0", "empty server address"),
        ("redis://:secret#frag@redis.example.com:6379/0", "'#'"),
        ("unix://relative/redis.sock", "absolute socket path"),
        ("redis://bad host!:6379/0", "bad server address"),
    ],
)
def test_malformed_plain_urls_name_the_part_that_is_wrong(url: str, part: str) -> None:
    """redis-py would raise a bare ValueError on connect (port) or silently ignore the bad part (database)."""
    with pytest.raises(ValueError, match="GATEWAY_REDIS_URL") as caught:
        validate_url(url, False)
    assert part in str(caught.value)
    assert "63790x" not in str(caught.value) and "zero" not in str(caught.value)
