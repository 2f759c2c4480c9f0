from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import SettingsError, configured, from_env
from tests.helpers.support import KEK

BASE = {"GATEWAY_KEK": KEK}


def test_defaults() -> None:
    settings = from_env(BASE, toml_path=None)
    assert settings.stream == "gateway:events"
    assert settings.redis_url is None
    assert settings.telnyx_tolerance_s == 300
    assert settings.max_body_bytes == 64 * 1024
    assert settings.admin_token is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_MAX_BODY_BYTES", "lots"),
        ("GATEWAY_MAX_BODY_BYTES", "10"),
        ("GATEWAY_TELNYX_TOLERANCE_S", "-1"),
        ("GATEWAY_TRUSTED_PROXIES", "10.0.0.0/33"),
        ("GATEWAY_TRUSTED_PROXIES", "10.0.0.1/8"),  # host bits set: strict parsing
        ("EXOTEL_ALLOWED_IPS", "203.0.113.0/24,not-an-ip"),
        ("GATEWAY_PUBLIC_BASE_URL", "hooks.example.com"),
        ("GATEWAY_PUBLIC_BASE_URL", "ftp://hooks.example.com"),
        ("GATEWAY_REDIS_URL", "http://localhost:6379"),
        ("GATEWAY_REDIS_CLUSTER", "maybe"),
        ("GATEWAY_CACHE_TTL_S", "nan"),
        ("GATEWAY_LOG_LEVEL", "loud"),
        ("GATEWAY_ACCESS_LOG", "sometimes"),
        ("GATEWAY_HEAD_TIMEOUT_S", "0"),
        ("GATEWAY_BODY_TIMEOUT_S", "soon"),
        ("GATEWAY_REDIS_URL", "redis://redis:63790x/0"),  # was accepted, then a traceback in redis-py
        ("GATEWAY_REDIS_URL", "redis://[2001:db8::1/0"),  # urllib's ValueError
        ("GATEWAY_PUBLIC_BASE_URL", "https://[2001:db8::1/"),
        ("GATEWAY_EXOTEL_ALLOWED_IPS_FILE", "/nonexistent/exotel_allowed_ips.txt"),
    ],
)
def test_invalid_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as excinfo:
        from_env({**BASE, name: value}, toml_path=None)
    assert name in str(excinfo.value)


def test_kek_required_and_validated() -> None:
    with pytest.raises(SettingsError, match="GATEWAY_KEK"):
        from_env({}, toml_path=None)
    with pytest.raises(SettingsError, match="GATEWAY_KEK") as excinfo:
        from_env({"GATEWAY_KEK": "c2hvcnQ="}, toml_path=None)
    assert "c2hvcnQ" not in str(excinfo.value)  # never echo a secret


def test_kek_with_trailing_garbage_is_refused() -> None:
    with pytest.raises(SettingsError, match="GATEWAY_KEK"):
        from_env({"GATEWAY_KEK": KEK + "!!"}, toml_path=None)
    with pytest.raises(SettingsError, match="GATEWAY_KEK"):
        from_env({"GATEWAY_KEK": KEK.rstrip("=") + " x"}, toml_path=None)


def test_kek_accepts_hex_and_base64() -> None:
    assert from_env({"GATEWAY_KEK": "ab" * 32}, toml_path=None).kek
    assert from_env(BASE, toml_path=None).kek


def test_secrets_do_not_print() -> None:
    token = "admin-token-that-must-not-print-123"
    settings = from_env({**BASE, "GATEWAY_ADMIN_TOKEN": token}, toml_path=None)
    assert token not in repr(settings)
    assert token not in repr(settings.admin_token)
    assert token not in str(settings.admin_token)
    assert KEK not in repr(settings.kek)
    assert settings.admin_token is not None and settings.admin_token.reveal() == token


def test_short_admin_token_rejected() -> None:
    with pytest.raises(SettingsError, match="GATEWAY_ADMIN_TOKEN"):
        from_env({**BASE, "GATEWAY_ADMIN_TOKEN": "short"}, toml_path=None)


def test_toml_file_and_env_precedence(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[gateway]\nGATEWAY_STREAM = "from:toml"\nGATEWAY_MAX_BODY_BYTES = 2048\n'
        'GATEWAY_TRUSTED_PROXIES = ["10.0.0.0/8", "192.0.2.1"]\n'
    )
    settings = from_env({**BASE, "GATEWAY_MAX_BODY_BYTES": "4096"}, toml_path=path)
    assert settings.stream == "from:toml"
    assert settings.max_body_bytes == 4096
    assert len(settings.trusted_proxies) == 2


def test_toml_unknown_key_rejected(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nGATEWAY_STRAEM = "typo"\n')
    with pytest.raises(SettingsError, match="GATEWAY_STRAEM"):
        from_env(BASE, toml_path=path)


def test_empty_exotel_allowlist_is_explicit() -> None:
    settings = from_env({**BASE, "EXOTEL_ALLOWED_IPS": ""}, toml_path=None)
    assert settings.exotel_allowed_ips == ""


def test_public_base_url_parsed() -> None:
    settings = from_env({**BASE, "GATEWAY_PUBLIC_BASE_URL": "https://hooks.example.com:8443/edge/"}, toml_path=None)
    assert settings.public_base is not None
    assert (settings.public_base.scheme, settings.public_base.netloc, settings.public_base.path_prefix) == (
        "https",
        "hooks.example.com:8443",
        "/edge",
    )


def test_an_invalid_allowlist_file_is_refused_by_from_env(tmp_path: Path) -> None:
    """Every command builds its settings with from_env: a bad file stops them all, not only the app."""
    path = tmp_path / "allowlist.txt"
    path.write_text("203.0.113.0/24\n")  # no region, source or date
    with pytest.raises(SettingsError, match="GATEWAY_EXOTEL_ALLOWED_IPS_FILE"):
        from_env({**BASE, "GATEWAY_EXOTEL_ALLOWED_IPS_FILE": str(path)}, toml_path=None)
    path.write_text("203.0.113.0/24, test, https://example.com/exotel, 2024-01-01\n")
    assert from_env({**BASE, "GATEWAY_EXOTEL_ALLOWED_IPS_FILE": str(path)}, toml_path=None)


def test_configured_merges_the_toml_file_under_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nGATEWAY_REDIS_URL = "redis://192.0.2.1:6379/0"\nGATEWAY_STREAM = "from:toml"\n')
    values = configured({"GATEWAY_CONFIG": str(path), "GATEWAY_STREAM": "from:env", "HOME": "/x"})
    assert values == {"GATEWAY_REDIS_URL": "redis://192.0.2.1:6379/0", "GATEWAY_STREAM": "from:env"}


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GATEWAY_NONCE_TTL_S": "7200", "GATEWAY_IDEMPOTENCY_TTL_S": "3600"}, "GATEWAY_NONCE_TTL_S"),
        ({"GATEWAY_NONCE_TTL_S": "60", "GATEWAY_IDEMPOTENCY_TTL_S": "60"}, "GATEWAY_TELNYX_TOLERANCE_S"),  # 60 < 600
        (
            {"GATEWAY_NONCE_TTL_S": "600", "GATEWAY_IDEMPOTENCY_TTL_S": "1199", "GATEWAY_TELNYX_TOLERANCE_S": "600"},
            "GATEWAY_TELNYX_TOLERANCE_S",
        ),
    ],
)
def test_the_duplicate_window_must_cover_the_replay_windows(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        from_env({**BASE, **env}, toml_path=None)
    assert "GATEWAY_IDEMPOTENCY_TTL_S" in str(caught.value) and named in str(caught.value)


def test_windows_that_fit_together_are_accepted() -> None:
    settings = from_env(
        {**BASE, "GATEWAY_NONCE_TTL_S": "600", "GATEWAY_IDEMPOTENCY_TTL_S": "600", "GATEWAY_TELNYX_TOLERANCE_S": "300"},
        toml_path=None,
    )
    assert (settings.idempotency_ttl_s, settings.nonce_ttl_s, settings.telnyx_tolerance_s) == (600, 600, 300)
