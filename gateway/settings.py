"""Settings from the environment (or config/gateway.toml), validated once at start-up.

Every setting has one name, the environment variable's (e.g. GATEWAY_REDIS_URL);
a TOML file may set the same names in a `[gateway]` table, and the environment
wins. Any invalid value stops start-up with a message naming the variable.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from gateway.errors import GatewayError
from gateway.providers.allowlist import Allowlist
from gateway.providers.spec import VerifierOptions
from gateway.redis_url import validate_url
from gateway.secrets import Secret
from gateway.standard_webhooks import decode_key as decode_signing_key

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_TOML = Path("config/gateway.toml")
# Package data (gateway/data/), found through importlib.resources: in a wheel as in a checkout.
DEFAULT_EXOTEL_IPS_FILE = Path(str(resources.files("gateway").joinpath("data", "exotel_allowed_ips.txt")))

DEFAULT_PLIVO_ANSWER = '<?xml version="1.0" encoding="UTF-8"?>\n<Response></Response>\n'
DEFAULT_TWILIO_ANSWER = '<?xml version="1.0" encoding="UTF-8"?>\n<Response></Response>\n'


class SettingsError(GatewayError, ValueError):
    """An invalid setting; the message names the variable and never echoes a secret."""


@dataclass(frozen=True, slots=True)
class PublicBase:
    scheme: str
    netloc: str
    path_prefix: str  # "" or "/prefix" without trailing slash


@dataclass(frozen=True, slots=True)
class Settings:
    kek: Secret
    redis_url: str | None = None  # None → embedded server (single machine only)
    redis_cluster: bool = False
    redis_wait_replicas: int = 0  # replicas that must confirm each forwarded batch before its 2xx (WAIT)
    public_base: PublicBase | None = None
    trusted_proxies: tuple[IPNetwork, ...] = ()
    exotel_allowed_ips: str | None = None  # raw EXOTEL_ALLOWED_IPS; None → built-in list file
    exotel_allowed_ips_file: Path = DEFAULT_EXOTEL_IPS_FILE
    admin_token: Secret | None = None
    admin_port: int | None = None
    admin_host: str = "127.0.0.1"
    kek_previous: tuple[Secret, ...] = ()
    stream: str = "gateway:events"
    stream_maxlen: int = 0  # 0 = never trim (trimming could drop unconsumed events)
    key_prefix: str = "gateway"
    max_body_bytes: int = 64 * 1024
    telnyx_tolerance_s: int = 300  # telnyx-python webhook_verification.py default
    unlisted_sources_ttl_s: int = 7 * 86_400  # allowlist discovery: how long a source is kept (gateway/source_log.py)
    nonce_ttl_s: int = 86_400
    idempotency_ttl_s: int = 86_400
    cache_ttl_s: float = 5.0
    negative_cache_ttl_s: float = 1.0
    cache_max_entries: int = 10_000
    redis_timeout_s: float = 1.0
    redis_connect_timeout_s: float = 0.5
    redis_max_connections: int = 64
    plivo_answer_template: str = DEFAULT_PLIVO_ANSWER
    twilio_answer_template: str = DEFAULT_TWILIO_ANSWER
    explain_mismatches: bool = True  # diagnose failed signatures: gateway/diagnostics/explainer.py
    # The request inspector on the admin port (gateway/inspector/; parsed by _parse_inspector).
    inspector: bool = True
    inspector_max_requests: int = 200  # kept per worker, of rejected and of accepted requests each
    inspector_mask_numbers: bool = True
    # Answer modes, dispatch proxy, signed forwards, capability tokens, call-aware replay
    # defence: see docs/answers-and-forwards.md (parsed by _parse_answers_and_forwards).
    answer_mode: str = "template"  # template | proxy, for providers without an override
    provider_answer_modes: Mapping[str, str] = field(default_factory=dict)  # e.g. {"twilio": "proxy"}
    exotel_answer_template: str = ""  # Exotel Passthru branches on the status code only; body optional
    answer_fallback: str = "hangup"  # hangup | hold: built-in fallback when dispatch does not answer
    plivo_fallback_template: str | None = None  # replaces the built-in fallback (Plivo and Vobiz)
    twilio_fallback_template: str | None = None
    exotel_fallback_status: int = 302  # Exotel Passthru: 200 = first branch, 302 = second branch
    answer_hold_rounds: int = 3  # "hold" fallback: redirects back at most this many times, then hangs up
    dispatch_url: str | None = None
    dispatch_timeout_s: float = 2.0  # well under every carrier's answer timeout (Vobiz: 3 s)
    dispatch_max_connections: int = 64
    forward_signing_keys: tuple[Secret, ...] = ()  # Standard Webhooks whsec_ keys, newest first
    capability_key: Secret | None = None  # base64 of 32 bytes; None: $stream_token renders empty
    capability_ttl_s: int = 300
    call_aware: bool = False
    call_aware_window_s: int = 60
    call_aware_late_s: int = 900
    call_aware_ttl_s: int = 86_400
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    log_level: str = "info"
    access_log: str = "failed"  # GATEWAY_ACCESS_LOG: all | failed (answers other than 2xx) | off
    timeout_keep_alive_s: int = 5
    head_timeout_s: float = 10.0  # gateway/http_protocol.py: connect (or a request's first byte) to end of head
    body_timeout_s: float = 10.0  # end of head to end of body
    limit_concurrency: int = 2048
    backlog: int = 2048
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # dataclass repr is fine (Secrets mask themselves) but keep it short
        return f"Settings(redis_url={'set' if self.redis_url else 'embedded'}, stream={self.stream!r}, ...)"

    def answer_mode_for(self, provider: str) -> str:
        """The configured answer mode of a provider's `incoming` route (a phone's config may override it)."""
        return self.provider_answer_modes.get(provider, self.answer_mode)

    def answer_template_for(self, settings_key: str) -> str:
        """GATEWAY_<KEY>_ANSWER_TEMPLATE for a carrier's `AnswerRules.settings_key` (plivo, twilio, exotel)."""
        return {
            "plivo": self.plivo_answer_template,
            "twilio": self.twilio_answer_template,
            "exotel": self.exotel_answer_template,
        }[settings_key]

    def fallback_template_for(self, settings_key: str) -> str | None:
        """GATEWAY_<KEY>_FALLBACK_TEMPLATE, or None for the carrier's built-in fallback."""
        return {"plivo": self.plivo_fallback_template, "twilio": self.twilio_fallback_template}.get(settings_key)

    def verifier_options(self) -> VerifierOptions:
        """What the carriers' verifiers need: the Telnyx window, the Exotel allowlist (loaded here).

        EXOTEL_ALLOWED_IPS when set (even empty), else the built-in data file; a file that
        cannot be read or parsed is a SettingsError naming GATEWAY_EXOTEL_ALLOWED_IPS_FILE.
        """
        if self.exotel_allowed_ips is not None:
            allowlist = Allowlist.parse(self.exotel_allowed_ips)  # validated by from_env()
        else:
            try:
                allowlist = Allowlist.load_file(self.exotel_allowed_ips_file)
            except (OSError, ValueError) as exc:
                raise SettingsError(f"GATEWAY_EXOTEL_ALLOWED_IPS_FILE: {exc}") from None
        return VerifierOptions(timestamp_tolerance_s=self.telnyx_tolerance_s, ip_allowlist=allowlist)

    def verifier_warnings(self, options: VerifierOptions) -> list[str]:
        if options.ip_allowlist:
            return []
        source = "EXOTEL_ALLOWED_IPS" if self.exotel_allowed_ips is not None else str(self.exotel_allowed_ips_file)
        return [
            f"Exotel allowlist is empty ({source}): every /exotel/ request will be rejected. "
            "Exotel does not publish its callback IPs; ask Exotel support for them and set EXOTEL_ALLOWED_IPS."
        ]

    @staticmethod
    def readiness_details(options: VerifierOptions) -> dict[str, Any]:
        """What /readyz reports about the verifiers' settings."""
        return {"exotel_allowlist_entries": len(options.ip_allowlist)}

    def fallback_status_for(self, settings_key: str) -> int:
        """The bare status answered as the fallback of a carrier without a fallback template (Exotel's Passthru)."""
        return self.exotel_fallback_status if settings_key == "exotel" else 200

    def forward_signing_key_bytes(self) -> tuple[bytes, ...]:
        """GATEWAY_FORWARD_SIGNING_KEY decoded for standard_webhooks.headers(), newest first."""
        return tuple(decode_signing_key(key.reveal()) for key in self.forward_signing_keys)

    def capability_key_bytes(self) -> bytes | None:
        return base64.b64decode(self.capability_key.reveal()) if self.capability_key is not None else None


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise SettingsError(f"{name} has value {raw!r}: not a valid boolean (use true/false)")


def _parse_int(name: str, raw: str, *, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} has value {raw!r}: not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise SettingsError(f"{name} has value {value}: must be {bound}")
    return value


def _parse_float(name: str, raw: str, *, minimum: float) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} has value {raw!r}: not a number") from None
    if not value >= minimum:  # also rejects NaN
        raise SettingsError(f"{name} has value {raw!r}: must be >= {minimum}")
    return value


def parse_networks(name: str, raw: str) -> tuple[IPNetwork, ...]:
    """Comma-separated IPs/CIDRs; an invalid entry is an error, never silently dropped."""
    networks: list[IPNetwork] = []
    for entry in raw.split(","):
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=True))
        except ValueError:
            raise SettingsError(f"{name} has an invalid entry {entry!r}: expected an IP address or CIDR") from None
    return tuple(networks)


def parse_key32(name: str, raw: str) -> bytes:
    """A 32-byte key given as 64 hex characters or (url-safe) base64."""
    text = raw.strip()
    candidates: list[bytes] = []
    if len(text) == 64:
        try:
            candidates.append(bytes.fromhex(text))
        except ValueError:
            pass
    padded = text + "=" * (-len(text) % 4)
    for alphabet in (None, b"-_"):  # standard, then url-safe; strictly (no ignored characters)
        try:
            candidates.append(base64.b64decode(padded, altchars=alphabet, validate=True))
        except (binascii.Error, ValueError):
            pass
    for candidate in candidates:
        if len(candidate) == 32:
            return candidate
    raise SettingsError(f"{name} must be 32 random bytes as 64 hex characters or base64 (generate: gateway genkey)")


def _urlsplit(name: str, raw: str) -> SplitResult:
    try:
        return urlsplit(raw.strip())
    except ValueError:  # e.g. an unbalanced '['
        raise SettingsError(f"{name} is not a valid URL") from None


def parse_public_base(name: str, raw: str) -> PublicBase:
    parts = _urlsplit(name, raw)
    if parts.scheme not in {"http", "https"} or not parts.netloc or parts.query or parts.fragment:
        raise SettingsError(
            f"{name} has value {raw!r}: expected scheme://host[:port][/prefix], e.g. https://hooks.example.com"
        )
    if "@" in parts.netloc:
        raise SettingsError(f"{name} must not contain credentials")
    return PublicBase(parts.scheme, parts.netloc, parts.path.rstrip("/"))


def _read_template(name: str, raw: str) -> str:
    """Inline template text, or @/path/to/file."""
    if raw.startswith("@"):
        try:
            return Path(raw[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(f"{name}: cannot read template file {raw[1:]!r}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SettingsError(f"{name}: template file {raw[1:]!r} is not UTF-8") from None
    return raw


def load_toml(path: Path) -> dict[str, str]:
    """The `[gateway]` table of a TOML file, values as strings (same names as the environment)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"GATEWAY_CONFIG: cannot read {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"GATEWAY_CONFIG: {str(path)!r} is not valid TOML: {exc}") from None
    table = data.get("gateway", {})
    if not isinstance(table, dict):
        raise SettingsError(f"GATEWAY_CONFIG: {str(path)!r} must have a [gateway] table")
    out: dict[str, str] = {}
    for key, value in table.items():
        if key not in KNOWN_NAMES:
            raise SettingsError(f"GATEWAY_CONFIG: unknown setting {key!r} in {str(path)!r}")
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, list):
            out[key] = ",".join(str(v) for v in value)
        else:
            out[key] = str(value)
    return out


KNOWN_NAMES = frozenset(
    {
        "GATEWAY_REDIS_URL",
        "GATEWAY_REDIS_CLUSTER",
        "GATEWAY_REDIS_WAIT_REPLICAS",
        "GATEWAY_PUBLIC_BASE_URL",
        "GATEWAY_TRUSTED_PROXIES",
        "EXOTEL_ALLOWED_IPS",
        "GATEWAY_EXOTEL_ALLOWED_IPS_FILE",
        "GATEWAY_ADMIN_TOKEN",
        "GATEWAY_ADMIN_PORT",
        "GATEWAY_ADMIN_HOST",
        "GATEWAY_KEK",
        "GATEWAY_KEK_PREVIOUS",
        "GATEWAY_STREAM",
        "GATEWAY_STREAM_MAXLEN",
        "GATEWAY_KEY_PREFIX",
        "GATEWAY_MAX_BODY_BYTES",
        "GATEWAY_TELNYX_TOLERANCE_S",
        "GATEWAY_NONCE_TTL_S",
        "GATEWAY_IDEMPOTENCY_TTL_S",
        "GATEWAY_CACHE_TTL_S",
        "GATEWAY_NEGATIVE_CACHE_TTL_S",
        "GATEWAY_CACHE_MAX_ENTRIES",
        "GATEWAY_REDIS_TIMEOUT_S",
        "GATEWAY_REDIS_CONNECT_TIMEOUT_S",
        "GATEWAY_REDIS_MAX_CONNECTIONS",
        "GATEWAY_PLIVO_ANSWER_TEMPLATE",
        "GATEWAY_TWILIO_ANSWER_TEMPLATE",
        "GATEWAY_HOST",
        "GATEWAY_PORT",
        "GATEWAY_WORKERS",
        "GATEWAY_LOG_LEVEL",
        "GATEWAY_ACCESS_LOG",
        "GATEWAY_TIMEOUT_KEEP_ALIVE_S",
        "GATEWAY_HEAD_TIMEOUT_S",
        "GATEWAY_BODY_TIMEOUT_S",
        "GATEWAY_LIMIT_CONCURRENCY",
        "GATEWAY_BACKLOG",
        "GATEWAY_EXPLAIN_MISMATCHES",
        "GATEWAY_UNLISTED_SOURCES_TTL_S",
        "GATEWAY_INSPECTOR",
        "GATEWAY_INSPECTOR_MAX_REQUESTS",
        "GATEWAY_INSPECTOR_MASK_NUMBERS",
        # docs/answers-and-forwards.md
        "GATEWAY_ANSWER_MODE",
        "GATEWAY_PLIVO_ANSWER_MODE",
        "GATEWAY_VOBIZ_ANSWER_MODE",
        "GATEWAY_TWILIO_ANSWER_MODE",
        "GATEWAY_EXOTEL_ANSWER_MODE",
        "GATEWAY_EXOTEL_ANSWER_TEMPLATE",
        "GATEWAY_ANSWER_FALLBACK",
        "GATEWAY_PLIVO_FALLBACK_TEMPLATE",
        "GATEWAY_TWILIO_FALLBACK_TEMPLATE",
        "GATEWAY_EXOTEL_FALLBACK_STATUS",
        "GATEWAY_ANSWER_HOLD_ROUNDS",
        "GATEWAY_DISPATCH_URL",
        "GATEWAY_DISPATCH_TIMEOUT_S",
        "GATEWAY_DISPATCH_MAX_CONNECTIONS",
        "GATEWAY_FORWARD_SIGNING_KEY",
        "GATEWAY_CAPABILITY_KEY",
        "GATEWAY_CAPABILITY_TTL_S",
        "GATEWAY_CALL_AWARE",
        "GATEWAY_CALL_AWARE_WINDOW_S",
        "GATEWAY_CALL_AWARE_LATE_S",
        "GATEWAY_CALL_AWARE_TTL_S",
    }
)

ANSWER_MODES = ("template", "proxy")
# Telnyx has no answer URL (Call Control acts through its REST API and ignores webhook answer
# bodies), so answer modes exist for the four carriers with an `incoming` route.
ANSWER_MODE_PROVIDERS = ("plivo", "vobiz", "twilio", "exotel")


def parse_answer_mode(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in ANSWER_MODES:
        raise SettingsError(f"{name} has value {raw!r}: use template or proxy")
    return value


def _parse_answers_and_forwards(get: Callable[[str], str | None], kwargs: dict[str, Any]) -> None:
    """Answer modes, the dispatch proxy, signed forwards, capability tokens, call-aware (validated together)."""
    if (raw := get("GATEWAY_ANSWER_MODE")) is not None:
        kwargs["answer_mode"] = parse_answer_mode("GATEWAY_ANSWER_MODE", raw)
    overrides: dict[str, str] = {}
    for provider in ANSWER_MODE_PROVIDERS:
        name = f"GATEWAY_{provider.upper()}_ANSWER_MODE"
        if (raw := get(name)) is not None:
            overrides[provider] = parse_answer_mode(name, raw)
    if overrides:
        kwargs["provider_answer_modes"] = overrides
    for name, attr in (
        ("GATEWAY_EXOTEL_ANSWER_TEMPLATE", "exotel_answer_template"),
        ("GATEWAY_PLIVO_FALLBACK_TEMPLATE", "plivo_fallback_template"),
        ("GATEWAY_TWILIO_FALLBACK_TEMPLATE", "twilio_fallback_template"),
    ):
        if (raw := get(name)) is not None:
            kwargs[attr] = _read_template(name, raw)
    if (raw := get("GATEWAY_ANSWER_FALLBACK")) is not None:
        if raw.strip().lower() not in ("hangup", "hold"):
            raise SettingsError(f"GATEWAY_ANSWER_FALLBACK has value {raw!r}: use hangup or hold")
        kwargs["answer_fallback"] = raw.strip().lower()
    if (raw := get("GATEWAY_EXOTEL_FALLBACK_STATUS")) is not None:
        status = _parse_int("GATEWAY_EXOTEL_FALLBACK_STATUS", raw, minimum=200, maximum=302)
        if status not in (200, 302):
            raise SettingsError(
                "GATEWAY_EXOTEL_FALLBACK_STATUS must be 200 or 302 (the Passthru applet's two branches)"
            )
        kwargs["exotel_fallback_status"] = status
    for name, attr, minimum, maximum in (
        ("GATEWAY_ANSWER_HOLD_ROUNDS", "answer_hold_rounds", 0, 20),
        ("GATEWAY_DISPATCH_MAX_CONNECTIONS", "dispatch_max_connections", 1, 10_000),
        ("GATEWAY_CAPABILITY_TTL_S", "capability_ttl_s", 10, 86_400),
        ("GATEWAY_CALL_AWARE_WINDOW_S", "call_aware_window_s", 0, 3600),
        ("GATEWAY_CALL_AWARE_LATE_S", "call_aware_late_s", 0, 86_400),
        ("GATEWAY_CALL_AWARE_TTL_S", "call_aware_ttl_s", 300, 30 * 86_400),
    ):
        if (raw := get(name)) is not None:
            kwargs[attr] = _parse_int(name, raw, minimum=minimum, maximum=maximum)
    if (raw := get("GATEWAY_DISPATCH_TIMEOUT_S")) is not None:
        timeout = _parse_float("GATEWAY_DISPATCH_TIMEOUT_S", raw, minimum=0.05)
        if timeout > 10.0:
            raise SettingsError(
                f"GATEWAY_DISPATCH_TIMEOUT_S has value {raw!r}: must be at most 10 "
                "(carriers give up on an answer URL after 3-15 s, Vobiz after 3 s)"
            )
        kwargs["dispatch_timeout_s"] = timeout
    if (raw := get("GATEWAY_DISPATCH_URL")) is not None:
        parts = _urlsplit("GATEWAY_DISPATCH_URL", raw)
        if parts.scheme not in {"http", "https"} or not parts.netloc or parts.fragment:
            raise SettingsError(f"GATEWAY_DISPATCH_URL has value {raw!r}: expected http(s)://host[:port]/path")
        if "@" in parts.netloc:
            raise SettingsError("GATEWAY_DISPATCH_URL must not contain credentials (requests are signed instead)")
        kwargs["dispatch_url"] = raw.strip()
    if (raw := get("GATEWAY_FORWARD_SIGNING_KEY")) is not None:
        keys: list[Secret] = []
        for part in raw.split(","):
            if not part.strip():
                continue
            try:
                decode_signing_key(part.strip())
            except ValueError as exc:
                raise SettingsError(
                    f"GATEWAY_FORWARD_SIGNING_KEY: {exc} "
                    "(generate: python -c 'from gateway.standard_webhooks import generate_key; print(generate_key())')"
                ) from None
            keys.append(Secret(part.strip()))
        kwargs["forward_signing_keys"] = tuple(keys)
    if (raw := get("GATEWAY_CAPABILITY_KEY")) is not None:
        kwargs["capability_key"] = Secret(base64.b64encode(parse_key32("GATEWAY_CAPABILITY_KEY", raw)).decode())
    if (raw := get("GATEWAY_CALL_AWARE")) is not None:
        kwargs["call_aware"] = _parse_bool("GATEWAY_CALL_AWARE", raw)

    ttl = kwargs.get("call_aware_ttl_s", 86_400)
    if ttl < max(kwargs.get("call_aware_window_s", 60), kwargs.get("call_aware_late_s", 900)):
        raise SettingsError("GATEWAY_CALL_AWARE_TTL_S must be at least GATEWAY_CALL_AWARE_WINDOW_S and _LATE_S")
    modes = {kwargs.get("answer_mode", "template"), *overrides.values()}
    if "proxy" in modes and "dispatch_url" not in kwargs:
        raise SettingsError("an answer mode is proxy but GATEWAY_DISPATCH_URL is not set")
    if "dispatch_url" in kwargs and not kwargs.get("forward_signing_keys"):
        raise SettingsError(
            "GATEWAY_DISPATCH_URL is set but GATEWAY_FORWARD_SIGNING_KEY is not: the gateway never sends dispatch "
            "an unsigned event "
            "(generate: python -c 'from gateway.standard_webhooks import generate_key; print(generate_key())')"
        )


def _parse_inspector(get: Callable[[str], str | None], kwargs: dict[str, Any]) -> None:
    """The request inspector (gateway/inspector/, docs/why-did-my-callback-fail.md)."""
    if (raw := get("GATEWAY_INSPECTOR")) is not None:
        kwargs["inspector"] = _parse_bool("GATEWAY_INSPECTOR", raw)
    if (raw := get("GATEWAY_INSPECTOR_MAX_REQUESTS")) is not None:
        kwargs["inspector_max_requests"] = _parse_int("GATEWAY_INSPECTOR_MAX_REQUESTS", raw, minimum=1, maximum=10_000)
    if (raw := get("GATEWAY_INSPECTOR_MASK_NUMBERS")) is not None:
        kwargs["inspector_mask_numbers"] = _parse_bool("GATEWAY_INSPECTOR_MASK_NUMBERS", raw)


def _check_redis_topology(get: Callable[[str], str | None], kwargs: dict[str, Any]) -> None:
    """GATEWAY_REDIS_URL's form against GATEWAY_REDIS_CLUSTER, and GATEWAY_REDIS_WAIT_REPLICAS."""
    if "redis_url" in kwargs:
        try:
            validate_url(kwargs["redis_url"], kwargs.get("redis_cluster", False))
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
    if (raw := get("GATEWAY_REDIS_WAIT_REPLICAS")) is not None:
        kwargs["redis_wait_replicas"] = _parse_int("GATEWAY_REDIS_WAIT_REPLICAS", raw, minimum=0, maximum=16)


def configured(environ: Mapping[str, str] | None = None, toml_path: Path | None = None) -> dict[str, str]:
    """Every setting as configured: the TOML file's `[gateway]` table, then the environment over it.

    The file is `toml_path`, else GATEWAY_CONFIG, else config/gateway.toml in the working
    directory when it exists. Values are raw (not validated); unknown names are dropped.
    """
    env = os.environ if environ is None else environ
    path = toml_path or (Path(env["GATEWAY_CONFIG"]) if env.get("GATEWAY_CONFIG") else None)
    if path is None and DEFAULT_TOML.is_file():
        path = DEFAULT_TOML
    values: dict[str, str] = load_toml(path) if path is not None else {}
    values.update({k: v for k, v in env.items() if k in KNOWN_NAMES})
    return values


def _check_replay_windows(settings: Settings) -> None:
    """The duplicate window covers every window in which a copy of a request still verifies.

    A Plivo/Vobiz nonce is refused for GATEWAY_NONCE_TTL_S; a retry with a seen nonce is
    answered as the duplicate of its event only while that event's idempotency record lives,
    and after it the copy would be a 403 replay instead of the first answer. A Telnyx request
    verifies while its timestamp is within ±GATEWAY_TELNYX_TOLERANCE_S of the clock, a span of
    twice the tolerance: a copy inside it is caught by data.id only while that is remembered.
    docs/limits.md ("Replay windows").
    """
    idempotency, nonce, tolerance = settings.idempotency_ttl_s, settings.nonce_ttl_s, settings.telnyx_tolerance_s
    if idempotency < nonce:
        raise SettingsError(
            f"GATEWAY_IDEMPOTENCY_TTL_S ({idempotency}) must be at least GATEWAY_NONCE_TTL_S ({nonce}): "
            "a retry with a seen nonce is answered as a duplicate only while its event is remembered"
        )
    if idempotency < 2 * tolerance:
        raise SettingsError(
            f"GATEWAY_IDEMPOTENCY_TTL_S ({idempotency}) must be at least twice GATEWAY_TELNYX_TOLERANCE_S "
            f"({tolerance}): a Telnyx copy verifies for ±{tolerance} s and must be caught as a duplicate all that time"
        )


def from_env(environ: Mapping[str, str] | None = None, toml_path: Path | None = None) -> Settings:
    """Build and validate Settings (`configured()`). Raises SettingsError naming the first bad variable."""
    values = configured(environ, toml_path)

    def get(name: str) -> str | None:
        value = values.get(name)
        return value if value not in (None, "") else None

    kek_raw = get("GATEWAY_KEK")
    if kek_raw is None:
        raise SettingsError("GATEWAY_KEK is not set: it encrypts auth tokens at rest (generate: gateway genkey)")
    kek = Secret(base64.b64encode(parse_key32("GATEWAY_KEK", kek_raw)).decode())
    previous = tuple(
        Secret(base64.b64encode(parse_key32("GATEWAY_KEK_PREVIOUS", part)).decode())
        for part in (get("GATEWAY_KEK_PREVIOUS") or "").split(",")
        if part.strip()
    )

    kwargs: dict[str, Any] = {"kek": kek, "kek_previous": previous}
    if (url := get("GATEWAY_REDIS_URL")) is not None:
        kwargs["redis_url"] = url  # validated with GATEWAY_REDIS_CLUSTER (never echoed: it may hold a password)
    if (raw := get("GATEWAY_REDIS_CLUSTER")) is not None:
        kwargs["redis_cluster"] = _parse_bool("GATEWAY_REDIS_CLUSTER", raw)
    _check_redis_topology(get, kwargs)
    if (raw := get("GATEWAY_EXPLAIN_MISMATCHES")) is not None:
        kwargs["explain_mismatches"] = _parse_bool("GATEWAY_EXPLAIN_MISMATCHES", raw)
    if (raw := get("GATEWAY_PUBLIC_BASE_URL")) is not None:
        kwargs["public_base"] = parse_public_base("GATEWAY_PUBLIC_BASE_URL", raw)
    if (raw := get("GATEWAY_TRUSTED_PROXIES")) is not None:
        kwargs["trusted_proxies"] = parse_networks("GATEWAY_TRUSTED_PROXIES", raw)
    if "EXOTEL_ALLOWED_IPS" in values:  # set but empty is meaningful: "allow nobody"
        parse_networks("EXOTEL_ALLOWED_IPS", values["EXOTEL_ALLOWED_IPS"])
        kwargs["exotel_allowed_ips"] = values["EXOTEL_ALLOWED_IPS"]
    if (raw := get("GATEWAY_EXOTEL_ALLOWED_IPS_FILE")) is not None:
        kwargs["exotel_allowed_ips_file"] = Path(raw)
    if (raw := get("GATEWAY_ADMIN_TOKEN")) is not None:
        if len(raw) < 24:
            raise SettingsError("GATEWAY_ADMIN_TOKEN is too short: use at least 24 random characters")
        kwargs["admin_token"] = Secret(raw)
    if (raw := get("GATEWAY_STREAM")) is not None:
        kwargs["stream"] = raw
    if (raw := get("GATEWAY_KEY_PREFIX")) is not None:
        if "{" in raw or "}" in raw:
            raise SettingsError("GATEWAY_KEY_PREFIX must not contain braces (they are Redis Cluster hash tags)")
        kwargs["key_prefix"] = raw
    for name, attr in (
        ("GATEWAY_PLIVO_ANSWER_TEMPLATE", "plivo_answer_template"),
        ("GATEWAY_TWILIO_ANSWER_TEMPLATE", "twilio_answer_template"),
    ):
        if (raw := get(name)) is not None:
            kwargs[attr] = _read_template(name, raw)
    if (raw := get("GATEWAY_HOST")) is not None:
        kwargs["host"] = raw
    if (raw := get("GATEWAY_ADMIN_HOST")) is not None:
        kwargs["admin_host"] = raw
    if (raw := get("GATEWAY_LOG_LEVEL")) is not None:
        if raw.lower() not in {"critical", "error", "warning", "info", "debug"}:
            raise SettingsError(f"GATEWAY_LOG_LEVEL has value {raw!r}: use critical, error, warning, info or debug")
        kwargs["log_level"] = raw.lower()
    if (raw := get("GATEWAY_ACCESS_LOG")) is not None:
        if raw.lower() not in {"all", "failed", "off"}:
            raise SettingsError(f"GATEWAY_ACCESS_LOG has value {raw!r}: use all, failed or off")
        kwargs["access_log"] = raw.lower()

    int_settings: list[tuple[str, str, int, int | None]] = [
        ("GATEWAY_ADMIN_PORT", "admin_port", 1, 65535),
        ("GATEWAY_STREAM_MAXLEN", "stream_maxlen", 0, None),
        ("GATEWAY_MAX_BODY_BYTES", "max_body_bytes", 1024, 16 * 1024 * 1024),
        ("GATEWAY_TELNYX_TOLERANCE_S", "telnyx_tolerance_s", 1, 3600),
        ("GATEWAY_NONCE_TTL_S", "nonce_ttl_s", 60, None),
        ("GATEWAY_IDEMPOTENCY_TTL_S", "idempotency_ttl_s", 60, None),
        ("GATEWAY_UNLISTED_SOURCES_TTL_S", "unlisted_sources_ttl_s", 60, 366 * 86_400),
        ("GATEWAY_CACHE_MAX_ENTRIES", "cache_max_entries", 1, None),
        ("GATEWAY_REDIS_MAX_CONNECTIONS", "redis_max_connections", 2, None),
        ("GATEWAY_PORT", "port", 0, 65535),
        ("GATEWAY_WORKERS", "workers", 1, 256),
        ("GATEWAY_TIMEOUT_KEEP_ALIVE_S", "timeout_keep_alive_s", 1, 3600),
        ("GATEWAY_LIMIT_CONCURRENCY", "limit_concurrency", 1, None),
        ("GATEWAY_BACKLOG", "backlog", 1, None),
    ]
    for name, attr, minimum, maximum in int_settings:
        if (raw := get(name)) is not None:
            kwargs[attr] = _parse_int(name, raw, minimum=minimum, maximum=maximum)
    float_settings: list[tuple[str, str, float]] = [
        ("GATEWAY_CACHE_TTL_S", "cache_ttl_s", 0.0),
        ("GATEWAY_NEGATIVE_CACHE_TTL_S", "negative_cache_ttl_s", 0.0),
        ("GATEWAY_REDIS_TIMEOUT_S", "redis_timeout_s", 0.01),
        ("GATEWAY_REDIS_CONNECT_TIMEOUT_S", "redis_connect_timeout_s", 0.01),
        ("GATEWAY_HEAD_TIMEOUT_S", "head_timeout_s", 0.1),
        ("GATEWAY_BODY_TIMEOUT_S", "body_timeout_s", 0.1),
    ]
    for name, attr, fminimum in float_settings:
        if (raw := get(name)) is not None:
            kwargs[attr] = _parse_float(name, raw, minimum=fminimum)
    _parse_answers_and_forwards(get, kwargs)
    _parse_inspector(get, kwargs)
    settings = Settings(**kwargs)
    if settings.admin_port is not None and settings.admin_port == settings.port:
        raise SettingsError("GATEWAY_ADMIN_PORT must differ from GATEWAY_PORT")
    _check_replay_windows(settings)
    settings.verifier_options()  # a missing or invalid allowlist file is a start-up error of every command
    return settings


def kek_bytes(secret: Secret) -> bytes:
    return base64.b64decode(secret.reveal())
