"""Build validly signed carrier requests (vector-shaped dicts), one thing changeable at a time."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlencode

from gateway.providers import plivo

PUBLIC = "https://hooks.example.com"
CARRIER_IP = "198.51.100.20"


def plivo_params(call_uuid: str | None = None, status: str = "ringing") -> list[tuple[str, str]]:
    return [
        ("CallUUID", call_uuid or f"{secrets.token_hex(8)}-1"),
        ("CallStatus", status),
        ("From", "+14155550100"),
        ("To", "+14155550101"),
        ("Direction", "inbound"),
        ("Event", "StartApp"),
    ]


def plivo_request(
    token: str,
    phone_id: str,
    *,
    kind: str = "status",
    params: list[tuple[str, str]] | None = None,
    query: str = "",
    method: str = "POST",
    nonce: str | None = None,
    signed_url: str | None = None,
    base: str = PUBLIC,
) -> dict[str, Any]:
    """A Plivo V3 signed request; `signed_url` signs a different URL than the one called."""
    params = plivo_params() if params is None else params
    url = f"{base}/plivo/{kind}/{phone_id}" + (f"?{query}" if query else "")
    nonce = nonce or str(secrets.randbelow(10**24))
    body = urlencode(params) if method == "POST" else ""
    signature = plivo.sign_v3(token, method, signed_url or url, params if method == "POST" else None, nonce)
    headers = {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce}
    if method == "POST":
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    return {"method": method, "url": url, "headers": headers, "body": body, "client_ip": CARRIER_IP}


def plivo_phone(phone_id: str, token: str, provider: str = "plivo", **config: Any) -> dict[str, Any]:
    return {
        "id": phone_id,
        "provider": provider,
        "credentials": {"auth_id": "MAEXAMPLE0000000000", "auth_token": token},
        "config": config,
    }


def new_token() -> str:
    return secrets.token_urlsafe(30)
