"""The load-test phones: deterministic throw-away credentials, and their registration via the admin API.

Every secret here is derived from a public seed: they exist only to sign load-test
traffic against a gateway started for the load test. Never register them anywhere else.

    python -m loadtests.phones --host http://127.0.0.1:8080   # needs GATEWAY_ADMIN_TOKEN
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from nacl.signing import SigningKey

PUBLIC_BASE_URL = "https://hooks.example.com"  # what the gateway is told it is (GATEWAY_PUBLIC_BASE_URL)
EXOTEL_ALLOWED_IPS = "203.0.113.0/24"  # documentation range; the load test "is" Exotel from here
EXOTEL_SOURCE_IP = "203.0.113.10"
FORGED_SOURCE_IP = "198.51.100.66"  # not in the allowlist
SEED = "loadtest-v1"


def _derive(label: str, size: int = 32) -> bytes:
    return hashlib.blake2b(f"{SEED}:{label}".encode(), digest_size=size).digest()


def _token(label: str, length: int = 40) -> str:
    return base64.b32encode(_derive(label)).decode().rstrip("=")[:length]


@dataclass(frozen=True)
class Phone:
    id: str
    provider: str
    credentials: dict[str, str]
    config: dict[str, str] = field(default_factory=dict)
    signing_seed: bytes = b""  # Telnyx only: the private half of credentials["public_key"]

    def admin_body(self) -> dict[str, Any]:
        return {"provider": self.provider, "credentials": self.credentials, "config": self.config}

    @property
    def auth_token(self) -> str:
        return self.credentials["auth_token"]

    @property
    def webhook_token(self) -> str:
        return self.config["exotel_webhook_token"]

    @property
    def number(self) -> str:
        return self.config["number"]


def plivo_phone(i: int) -> Phone:
    return Phone(
        f"lt_plivo_{i:03d}",
        "plivo",
        {"auth_id": "MA" + _token(f"plivo-id-{i}", 18), "auth_token": _token(f"plivo-{i}")},
    )


def vobiz_phone(i: int) -> Phone:
    return Phone(
        f"lt_vobiz_{i:03d}",
        "vobiz",
        {"auth_id": "MA" + _token(f"vobiz-id-{i}", 18), "auth_token": _token(f"vobiz-{i}")},
    )


def twilio_phone(i: int) -> Phone:
    return Phone(
        f"lt_twilio_{i:03d}",
        "twilio",
        {"account_sid": "AC" + _derive(f"twilio-sid-{i}", 16).hex(), "auth_token": _derive(f"twilio-{i}", 16).hex()},
    )


def telnyx_phone(i: int) -> Phone:
    seed = _derive(f"telnyx-{i}")
    public = base64.b64encode(bytes(SigningKey(seed).verify_key)).decode()
    # +1 555 01xx: fictional numbers (NANP 555-0100..0199), one per phone for the by-number route.
    return Phone(f"lt_telnyx_{i:03d}", "telnyx", {"public_key": public}, {"number": f"+1202555{100 + i:04d}"}, seed)


def exotel_phone(i: int) -> Phone:
    return Phone(
        f"lt_exotel_{i:03d}",
        "exotel",
        {"api_key": _token(f"exotel-key-{i}", 20), "api_token": _token(f"exotel-api-{i}")},
        {"exotel_webhook_token": _token(f"exotel-hook-{i}", 32)},
    )


def all_phones(per_provider: int = 8) -> dict[str, list[Phone]]:
    return {
        "plivo": [plivo_phone(i) for i in range(per_provider)],
        "vobiz": [vobiz_phone(i) for i in range(per_provider)],
        "twilio": [twilio_phone(i) for i in range(per_provider)],
        "telnyx": [telnyx_phone(i) for i in range(per_provider)],
        "exotel": [exotel_phone(i) for i in range(per_provider)],
    }


def register(base_url: str, admin_token: str, phones: list[Phone], timeout_s: float = 10.0) -> int:
    """PUT every phone through the admin API (idempotent). Returns how many were written."""
    written = 0
    for phone in phones:
        request = urllib.request.Request(  # noqa: S310 - our own admin URL, http(s) only
            f"{base_url.rstrip('/')}/admin/phones/{phone.id}",
            data=json.dumps(phone.admin_body()).encode(),
            method="PUT",
            headers={"authorization": f"Bearer {admin_token}", "content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - our own admin URL
            if response.status not in (200, 201):
                raise RuntimeError(f"PUT {phone.id}: HTTP {response.status}")
        written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Register the load-test phones via the gateway's admin API.")
    parser.add_argument("--host", default="http://127.0.0.1:8080", help="gateway (or admin port) base URL")
    parser.add_argument("--per-provider", type=int, default=8)
    args = parser.parse_args(argv)
    token = os.environ.get("GATEWAY_ADMIN_TOKEN")
    if not token:
        sys.stderr.write("set GATEWAY_ADMIN_TOKEN (the gateway's admin token)\n")
        return 2
    phones = [p for group in all_phones(args.per_provider).values() for p in group]
    count = register(args.host, token, phones)
    sys.stdout.write(f"registered {count} phones at {args.host}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
