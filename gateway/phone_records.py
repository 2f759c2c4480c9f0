"""Phone records: validation of the admin PUT body, sealing, and the public (fingerprint-only) view.

Stored record (JSON in Redis at KeyNames.phone(id)):
    {"phone_id", "provider", "credentials": {non-secret fields},
     "sealed": {secret field: sealed value},
     "config": {non-secret config},
     "keys": [{"kind", "fingerprint", "sealed" | "public", "created_at", "expires_at"}],
     "created_at", "updated_at"}
`keys` are the verification keys (newest first); other secrets (API tokens the
gateway does not use to verify) are only sealed, never unsealed on the request path.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import re
from collections.abc import Mapping
from typing import Any

import orjson
from nacl.signing import VerifyKey

from gateway.errors import GatewayError
from gateway.providers import Key, KeyKind, PhoneCredentials, Provider
from gateway.providers.registry import CARRIERS
from gateway.providers.spec import CredentialFields
from gateway.sealing import Sealer, SealError
from gateway.secrets import fingerprint

# Always used with fullmatch: `$` also matches before a trailing newline ("abc\n" would pass).
PHONE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
E164_RE = re.compile(r"\+[1-9][0-9]{1,14}")  # ITU-T E.164: at most 15 digits
# Exotel's ?token= is compared after URL decoding: characters that need escaping could never match.
URL_TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]{16,256}")
MAX_PREVIOUS_KEYS = 2  # current + 2 previous per kind: enough for overlapping rotations


class InvalidRecord(GatewayError, ValueError):
    """The admin body is invalid. Messages name fields, never echo values."""


class CorruptRecord(GatewayError, ValueError):
    """A stored record is not one this module wrote for that key (not JSON, a field missing or
    of the wrong type, or another phone's record copied here). Messages name fields, never values.
    A ValueError, so the CLI reports it like an invalid body."""


# Secret values that live in `config` rather than `credentials` (Exotel's webhook token), by field.
SECRET_CONFIG: dict[str, KeyKind] = {
    name: kind for spec in CARRIERS.values() for name, kind in spec.credentials.secret_config.items()
}
# Every config field a phone may have: the rest is refused (it would be stored and echoed in plain text).
CONFIG_FIELDS = frozenset({"number", "answer_template", "fallback_template", "answer_mode", "call_aware"}) | frozenset(
    SECRET_CONFIG
)
PUBLIC_KEY_KINDS = frozenset({KeyKind.PUBLIC_KEY})
TEMPLATE_MAX_CHARS = 16_384


def _decode_public_key(value: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRecord("credentials.public_key must be base64") from None
    if len(raw) != 32:
        raise InvalidRecord("credentials.public_key must decode to 32 bytes (Ed25519)")
    return raw


def _field_name(name: str) -> str:
    """A field name from a request, fit for a message: printable and at most 64 characters."""
    shown = "".join(c if c.isprintable() else "?" for c in name[:64])
    return shown + ("..." if len(name) > 64 else "")


def validate_phone_id(phone_id: str) -> str:
    if not isinstance(phone_id, str) or not PHONE_ID_RE.fullmatch(phone_id):
        raise InvalidRecord("phone_id must be 1-128 characters of A-Z a-z 0-9 _ . : - (starting alphanumeric)")
    return phone_id


def build_record(
    phone_id: str,
    body: Any,
    sealer: Sealer,
    previous: Mapping[str, Any] | None,
    now: float,
    fingerprint_key: bytes,
) -> dict[str, Any]:
    """Validate an admin PUT body and produce the stored record (secrets sealed).

    Rotation: `{"rotation": {"keep_previous_s": N}}` keeps the phone's current keys
    active for N more seconds when the new body brings different ones; without it
    the new keys replace the old ones at once. Whether an old key is one of the new
    ones is decided on the key itself, not on its fingerprint (fingerprints change
    with the fingerprint key: docs/operations.md "Fingerprints").
    """
    validate_phone_id(phone_id)
    if not isinstance(body, dict):
        raise InvalidRecord("body must be a JSON object")
    unknown = set(body) - {"provider", "credentials", "config", "rotation"}
    if unknown:
        raise InvalidRecord(f"unknown top-level fields: {', '.join(sorted(unknown))}")
    try:
        provider = Provider(str(body.get("provider")))
    except ValueError:
        raise InvalidRecord("provider must be one of: " + ", ".join(p.value for p in Provider)) from None
    carrier = CARRIERS[provider]
    spec: CredentialFields = carrier.credentials
    credentials = body.get("credentials")
    config = body.get("config", {}) or {}
    if not isinstance(credentials, dict):
        raise InvalidRecord("credentials must be an object")
    if not isinstance(config, dict):
        raise InvalidRecord("config must be an object")
    for name in spec.required:
        if not isinstance(credentials.get(name), str) or not credentials[name]:
            raise InvalidRecord(f"credentials.{name} is required for {provider.value} (a non-empty string)")
    extra = set(credentials) - set(spec.required) - set(spec.optional)
    if extra:
        raise InvalidRecord(f"credentials has fields not used by {provider.value}: {', '.join(sorted(extra))}")
    for name, value in credentials.items():
        if not isinstance(value, str):
            raise InvalidRecord(f"credentials.{name} must be a string")

    keep_previous_s = 0
    rotation = body.get("rotation")
    if rotation is not None:
        if not isinstance(rotation, dict) or set(rotation) - {"keep_previous_s"}:
            raise InvalidRecord('rotation must be {"keep_previous_s": seconds}')
        keep = rotation.get("keep_previous_s", 0)
        if not isinstance(keep, int) or isinstance(keep, bool) or not 0 <= keep <= 30 * 86_400:
            raise InvalidRecord("rotation.keep_previous_s must be an integer between 0 and 2592000")
        keep_previous_s = keep

    unknown_config = set(config) - CONFIG_FIELDS
    if unknown_config:
        names = ", ".join(sorted(_field_name(name) for name in unknown_config))
        raise InvalidRecord(f"unknown config fields: {names} (known: {', '.join(sorted(CONFIG_FIELDS))})")
    number = config.get("number")
    if number is not None and (not isinstance(number, str) or not E164_RE.fullmatch(number)):
        raise InvalidRecord("config.number must be an E.164 number such as +14155550100")
    for name in ("answer_template", "fallback_template"):
        template = config.get(name)
        if template is not None and (not isinstance(template, str) or len(template) > TEMPLATE_MAX_CHARS):
            raise InvalidRecord(f"config.{name} must be a string of at most {TEMPLATE_MAX_CHARS} characters")
    # docs/answers-and-forwards.md: answer mode of the phone's `incoming` route, call-aware opt-in/out.
    if "answer_mode" in config and config["answer_mode"] not in ("template", "proxy"):
        raise InvalidRecord('config.answer_mode must be "template" or "proxy"')
    if "answer_mode" in config and carrier.answer is None:
        raise InvalidRecord(f"config.answer_mode does not apply to {provider.value} phones (it has no answer URL)")
    if "call_aware" in config and not isinstance(config["call_aware"], bool):
        raise InvalidRecord("config.call_aware must be true or false")
    for name in SECRET_CONFIG:
        if name in config and (not isinstance(config[name], str) or not URL_TOKEN_RE.fullmatch(config[name])):
            raise InvalidRecord(f"config.{name} must be 16-256 characters of A-Z a-z 0-9 . _ ~ -")
    for name in SECRET_CONFIG:
        if name in config and name not in spec.secret_config:
            raise InvalidRecord(f"config.{name} does not apply to {provider.value} phones")

    # New verification keys from this body.
    new_values: list[tuple[KeyKind, str]] = []
    for field_name, kind in spec.key_fields.items():
        value = credentials.get(field_name)
        if value is None:
            continue
        new_values.append((kind, value))
    for field_name, kind in spec.secret_config.items():
        if field_name in config:
            new_values.append((kind, config[field_name]))
    new_keys = [_key_entry(phone_id, kind, value, sealer, now, fingerprint_key) for kind, value in new_values]

    keys = list(new_keys)
    if previous and keep_previous_s and previous.get("provider") == provider.value:
        kept: dict[str, int] = {}
        for old in previous.get("keys", []):
            if any(_same_key(phone_id, old, kind, value, sealer) for kind, value in new_values):
                continue
            expires = old.get("expires_at")
            if expires is not None and expires <= now:
                continue
            if kept.get(old["kind"], 0) >= MAX_PREVIOUS_KEYS:
                continue
            kept[old["kind"]] = kept.get(old["kind"], 0) + 1
            cap = now + keep_previous_s
            keys.append({**old, "expires_at": cap if expires is None else min(expires, cap)})

    plain_credentials = {k: v for k, v in credentials.items() if k not in spec.secret and k not in spec.key_fields}
    sealed = {
        k: sealer.seal(phone_id, v) for k, v in credentials.items() if k in spec.secret and k not in spec.key_fields
    }
    plain_config = {k: v for k, v in config.items() if k not in SECRET_CONFIG}
    created_at = previous.get("created_at", now) if previous else now
    return {
        "phone_id": phone_id,
        "provider": provider.value,
        "credentials": plain_credentials,
        "sealed": sealed,
        "config": plain_config,
        "keys": keys,
        "created_at": created_at,
        "updated_at": now,
    }


def _same_key(phone_id: str, old: Mapping[str, Any], kind: KeyKind, value: str, sealer: Sealer) -> bool:
    """Whether a stored key entry holds this key (compared on the key, in constant time)."""
    if old.get("kind") != kind.value:
        return False
    if kind in PUBLIC_KEY_KINDS:
        return hmac.compare_digest(str(old.get("public", "")).encode(), value.encode())
    try:
        material = sealer.open(phone_id, str(old.get("sealed", "")))
    except SealError:
        return False  # opens under no configured KEK: it verifies nothing here anyway
    return hmac.compare_digest(material.encode(), value.encode())


def _key_entry(
    phone_id: str, kind: KeyKind, value: str, sealer: Sealer, now: float, fingerprint_key: bytes
) -> dict[str, Any]:
    if kind in PUBLIC_KEY_KINDS:
        raw = _decode_public_key(value)
        return {
            "kind": kind.value,
            "fingerprint": fingerprint(raw, fingerprint_key),
            "public": value,
            "created_at": now,
            "expires_at": None,
        }
    return {
        "kind": kind.value,
        "fingerprint": fingerprint(value.encode(), fingerprint_key),
        "sealed": sealer.seal(phone_id, value),
        "created_at": now,
        "expires_at": None,
    }


def public_view(record: Mapping[str, Any]) -> dict[str, Any]:
    """What the admin API and CLI show: no secret, sealed or not; fingerprints only."""
    spec = CARRIERS[Provider(record["provider"])].credentials
    credentials: dict[str, Any] = dict(record.get("credentials", {}))
    for name in record.get("sealed", {}):
        credentials[name] = {"sealed": True}
    keys = [
        {k: v for k, v in key.items() if k in {"kind", "fingerprint", "created_at", "expires_at"}}
        for key in record.get("keys", [])
    ]
    for field_name, kind in spec.key_fields.items():
        current = next((k for k in record.get("keys", []) if k["kind"] == kind.value), None)
        if current is not None:
            credentials[field_name] = {"fingerprint": current["fingerprint"]}
    config: dict[str, Any] = dict(record.get("config", {}))
    for field_name, kind in SECRET_CONFIG.items():
        current = next((k for k in record.get("keys", []) if k["kind"] == kind.value), None)
        if current is not None:
            config[field_name] = {"fingerprint": current["fingerprint"]}
    return {
        "phone_id": record["phone_id"],
        "provider": record["provider"],
        "credentials": credentials,
        "config": config,
        "keys": keys,
        "created_at": record.get("created_at"),
        "updated_at": record.get("updated_at"),
    }


def to_credentials(record: Mapping[str, Any], sealer: Sealer, now: float) -> PhoneCredentials:
    """Unseal a stored record into what verifiers use (expired keys dropped, VerifyKeys prebuilt)."""
    phone_id = record["phone_id"]
    by_kind: dict[KeyKind, list[Key]] = {}
    for entry in record.get("keys", []):
        expires = entry.get("expires_at")
        if expires is not None and expires <= now:
            continue
        kind = KeyKind(entry["kind"])
        if kind in PUBLIC_KEY_KINDS:
            material = base64.b64decode(entry["public"])
            prepared: Any = VerifyKey(material)
        else:
            material = sealer.open(phone_id, entry["sealed"]).encode()
            prepared = None
        by_kind.setdefault(kind, []).append(
            Key(material=material, fingerprint=entry["fingerprint"], expires_at=expires, prepared=prepared)
        )
    return PhoneCredentials(
        phone_id=phone_id,
        provider=Provider(record["provider"]),
        keys={kind: tuple(keys) for kind, keys in by_kind.items()},
        config=dict(record.get("config", {})),
    )


def reseal_record(record: Mapping[str, Any], sealer: Sealer, fingerprint_key: bytes | None) -> dict[str, Any] | None:
    """The record with every sealed value re-sealed under the current KEK and every fingerprint
    recomputed under the current fingerprint key (when given), or None if nothing needed it.

    Raises SealError when a value opens under no configured KEK (GATEWAY_KEK_PREVIOUS incomplete).
    """
    phone_id = record["phone_id"]
    changed = False
    keys = []
    for entry in record.get("keys", []):
        if KeyKind(entry["kind"]) in PUBLIC_KEY_KINDS:
            material = base64.b64decode(entry["public"])
        else:
            sealed = entry["sealed"]
            secret = sealer.open(phone_id, sealed)
            material = secret.encode()
            if sealer.needs_reseal(sealed):
                entry = {**entry, "sealed": sealer.seal(phone_id, secret)}
                changed = True
        keyed = fingerprint(material, fingerprint_key) if fingerprint_key is not None else entry["fingerprint"]
        if not hmac.compare_digest(entry["fingerprint"].encode(), keyed.encode()):
            entry = {**entry, "fingerprint": keyed}
            changed = True
        keys.append(entry)
    other: dict[str, str] = {}
    for name, sealed in record.get("sealed", {}).items():
        if sealer.needs_reseal(sealed):
            sealed = sealer.seal(phone_id, sealer.open(phone_id, sealed))
            changed = True
        other[name] = sealed
    return {**record, "keys": keys, "sealed": other} if changed else None


def stored_record(phone_id: str, raw: bytes | str) -> dict[str, Any]:
    """The record stored at `phone_id`'s key, checked to be one `build_record` wrote for that id.

    Raises CorruptRecord otherwise: callers fail closed (a webhook is answered as for an unknown
    phone) or skip and report it (list, reseal). In particular a record copied to another id's key
    is refused: its secrets are sealed for its own id, and it would verify as that phone.
    """
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise CorruptRecord("not JSON") from None
    if not isinstance(record, dict):
        raise CorruptRecord("not a JSON object")
    if record.get("phone_id") != phone_id:
        raise CorruptRecord("phone_id differs from the id of its key")
    if record.get("provider") not in _PROVIDERS:
        raise CorruptRecord("provider missing or unknown")
    for name in ("credentials", "sealed"):
        value = record.get(name, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise CorruptRecord(f"{name} is not an object of strings")
    if not isinstance(record.get("config", {}), dict):
        raise CorruptRecord("config is not an object")
    keys = record.get("keys")
    if not isinstance(keys, list):
        raise CorruptRecord("keys missing or not a list")
    for entry in keys:
        _check_stored_key(entry)
    for name in ("created_at", "updated_at"):
        if name in record and not _is_time(record[name]):
            raise CorruptRecord(f"{name} is not a number")
    return record


_PROVIDERS = frozenset(p.value for p in Provider)
_KINDS = frozenset(k.value for k in KeyKind)


def _is_time(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_stored_key(entry: Any) -> None:
    if not isinstance(entry, dict) or entry.get("kind") not in _KINDS:
        raise CorruptRecord("a key has no known kind")
    if not isinstance(entry.get("fingerprint"), str):
        raise CorruptRecord("a key has no fingerprint")
    expires = entry.get("expires_at")
    if expires is not None and not _is_time(expires):
        raise CorruptRecord("a key's expires_at is not a number")
    if KeyKind(entry["kind"]) in PUBLIC_KEY_KINDS:
        try:
            raw = base64.b64decode(str(entry.get("public")), validate=True)
        except (binascii.Error, ValueError):
            raise CorruptRecord("a public key is not base64") from None
        if not isinstance(entry.get("public"), str) or len(raw) != 32:
            raise CorruptRecord("a public key is not 32 bytes of base64")
    elif not isinstance(entry.get("sealed"), str):
        raise CorruptRecord("a secret key is not sealed")
