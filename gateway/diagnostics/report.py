"""`gateway explain`'s report: why a captured request fails (or passes) verification.

Prints the URL the gateway would rebuild, whether the presented signature verifies,
what the carrier would have signed (the string-to-sign: it holds no secret), which
variant of the request would verify (gateway/diagnostics/mismatch.py) and which part
differs. Never a key, and never a signature it computed: for an arbitrary request that
would make this a signing oracle. Only "matches" / "does not match".

What differs between carriers (what is signed, a timestamp, a carrier that signs nothing)
comes from their specs (gateway/providers/registry.py).
"""

from __future__ import annotations

import dataclasses
import time
from urllib.parse import urlsplit

from gateway.diagnostics import mismatch, rejection, variants
from gateway.diagnostics.capture import Captured
from gateway.diagnostics.errors import CaptureError
from gateway.diagnostics.strings_to_sign import shown, strings_to_sign
from gateway.diagnostics.wire import text_url, wire_form
from gateway.errors import Rejected
from gateway.events import strip_query_params
from gateway.inbound import InboundRequest
from gateway.providers import PhoneCredentials, Verifier
from gateway.providers.allowlist import Allowlist, Network
from gateway.providers.registry import SECRET_PARAMS, spec_for
from gateway.providers.spec import CarrierSpec, ExplainInput, UrlSigning, VerifierOptions
from gateway.settings import PublicBase

# The CLI can afford more variants than the request path.
CLI_MAX_VARIANTS = 64


# ---- the request as the gateway sees it ---------------------------------------------------


def _first(value: str | None) -> str:
    return value.split(",", 1)[0].strip() if value else ""


def received_request(captured: Captured, public_base: PublicBase | None) -> tuple[InboundRequest, str]:
    """The InboundRequest the gateway would build, and where its URL came from."""
    headers: dict[str, str] = {}
    duplicates: set[str] = set()
    for name, value in captured.headers:
        lowered = name.lower()
        if lowered in headers:
            duplicates.add(lowered)
            continue
        headers[lowered] = value
    path, _, query = captured.target.partition("?")
    if public_base is not None:
        scheme, netloc, path = public_base.scheme, public_base.netloc, public_base.path_prefix + path
        how = "GATEWAY_PUBLIC_BASE_URL (X-Forwarded-* ignored, as the gateway does)"
    else:
        if captured.url is not None:
            parts = urlsplit(captured.url)
            scheme, netloc, how = parts.scheme, parts.netloc, f"the {captured.source} URL"
        else:
            scheme, netloc, how = "http", "", "the Host header, scheme http (not in a raw capture)"
        if "host" in headers:
            netloc = headers["host"]
            how = f"the Host header, scheme {scheme}"
        forwarded = [h for h in ("x-forwarded-proto", "x-forwarded-host") if _first(headers.get(h))]
        if forwarded:
            scheme = _first(headers.get("x-forwarded-proto")).lower() or scheme
            netloc = _first(headers.get("x-forwarded-host")) or netloc
            how += " + X-Forwarded-Proto/-Host (believed only from GATEWAY_TRUSTED_PROXIES)"
    client_ip = _first(headers.get("x-forwarded-for")) or "192.0.2.1"
    request = InboundRequest(
        method=captured.method,
        scheme=scheme,
        netloc=netloc,
        raw_path=wire_form(path or "/"),
        query_string=wire_form(query),
        headers=headers,
        body=captured.body,
        client_ip=client_ip,
        duplicate_headers=frozenset(duplicates),
    )
    return request, how


def configured_request(received: InboundRequest, public_url: str) -> InboundRequest:
    """`received` as if addressed to the callback URL configured at the carrier.

    A URL without a path keeps the captured path; without a query, the captured query.
    """
    parts = urlsplit(public_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CaptureError(f"--public-url {public_url!r}: expected http(s)://host[:port][/path][?query]")
    path = wire_form(parts.path) if parts.path not in ("", "/") else received.raw_path
    query = wire_form(parts.query) if parts.query else received.query_string
    return InboundRequest(
        method=received.method,
        scheme=parts.scheme,
        netloc=parts.netloc,
        raw_path=path,
        query_string=query,
        headers=received.headers,
        body=received.body,
        client_ip=received.client_ip,
        duplicate_headers=received.duplicate_headers,
    )


def differences(received: InboundRequest, configured: InboundRequest) -> list[str]:
    """Which parts of the URL differ, in words."""
    out: list[str] = []
    if received.scheme != configured.scheme:
        out.append(f"scheme: gateway sees {received.scheme}, carrier calls {configured.scheme}")
    if received.netloc != configured.netloc:
        same_host = variants.split_netloc(received.netloc)[0] == variants.split_netloc(configured.netloc)[0]
        kind = "port" if same_host else "host"
        out.append(f"{kind}: gateway sees {received.netloc}, carrier calls {configured.netloc}")
    if received.raw_path != configured.raw_path:
        out.append(f"path: gateway sees {received.raw_path}, carrier calls {configured.raw_path}")
    if received.query_string != configured.query_string:
        same = sorted(received.query_string.split("&")) == sorted(configured.query_string.split("&"))
        out.append("query: same parameters in another order" if same else "query: differs (values not shown)")
    return out


# ---- the report ---------------------------------------------------------------------------


def _verdict(verifier: Verifier, request: InboundRequest, creds: PhoneCredentials, now: float) -> tuple[bool, str]:
    try:
        verified = verifier.verify(request, creds, now)
    except Rejected as rejection:
        return False, rejection.reason.value
    return True, f"key {verified.key_fingerprint}"


def report(
    captured: Captured,
    creds: PhoneCredentials,
    *,
    public_base: PublicBase | None,
    public_url: str | None,
    tolerance_s: int = 300,
    now: float | None = None,
    allowlist: Allowlist | None = None,
    trusted_proxies: tuple[Network, ...] | None = None,
) -> tuple[list[str], int]:
    """The lines to print and the exit status (0 verifies as captured, 1 does not)."""
    now = time.time() if now is None else now
    provider = creds.provider
    spec = spec_for(provider)
    received, how = received_request(captured, public_base)
    lines: list[str] = []
    fingerprints = ", ".join(f"{kind.value} {key.fingerprint}" for kind, keys in creds.keys.items() for key in keys)
    lines.append(f"phone {creds.phone_id}: {provider.value} (keys: {fingerprints or 'none'})")
    # A carrier whose query may carry a secret (a URL token): the query is not shown.
    shown_url = text_url(received, with_query=not spec.secret_params)
    lines.append(f"request: {received.method} {shown_url}")
    lines.append(f"  URL as the gateway rebuilds it, from {how}")

    if spec.explain_unsigned is not None:  # it signs nothing: what the gateway checks instead
        redacted = strip_query_params(received.query_string, SECRET_PARAMS)
        data = ExplainInput(received, creds, now, redacted, allowlist=allowlist, trusted_proxies=trusted_proxies)
        more, passes = spec.explain_unsigned(data)
        return lines + more, 0 if passes else 1

    if spec.signature_headers and not any(received.headers.get(h.lower()) for h in spec.signature_headers):
        lines.append(f"signature: none ({', '.join(spec.signature_headers)} all absent): refused 401 missing_signature")
        lines += rejection.no_signature_lines(spec)
        return lines, 1

    verifier = spec.make_verifier(VerifierOptions(timestamp_tolerance_s=tolerance_s))
    check_now = now
    if spec.signed_at is not None:  # judge the signature at the moment it was made; the age is reported apart
        signed_at = spec.signed_at(received)
        if signed_at is not None:
            check_now = signed_at
    ok, detail = _verdict(verifier, received, creds, check_now)
    lines.append(f"signature as captured: {'MATCHES' if ok else 'does not match'} ({detail})")
    status = 0 if ok else 1
    if ok and abs(now - check_now) > tolerance_s:
        lines.append(
            f"  but {rejection.timestamp_skew(now, check_now, tolerance_s)}; "
            "the gateway rejects it as stale (a replayed capture, or clock skew)"
        )
        status = 1
    if not ok:
        lines += _key_lines(spec, verifier, received, creds, check_now)
    if spec.url_signing is UrlSigning.NONE:  # no URL variant can explain a failure
        for what, text in strings_to_sign(received, provider):
            lines += [f"the carrier signs, {what}:", f"  {shown(text)}"]
        if not ok:
            # The body as the carrier likely sent it (re-serialised JSON, a newline, an encoding).
            if spec.signed_body and _variants(lines, received, creds, verifier, check_now, None, "", body_only=True):
                return lines, status
            lines += spec.explain_hint
        return lines, status

    for what, text in strings_to_sign(received, provider):
        lines += [f"a carrier calling this URL signs, {what}:", f"  {shown(text)}"]
    if ok:
        return lines, status

    hint, hint_source = public_base, "GATEWAY_PUBLIC_BASE_URL"
    if public_url is not None:
        configured = configured_request(received, public_url)
        matches, why = _verdict(verifier, configured, creds, now)
        lines.append(f"with --public-url {text_url(configured)}: {'MATCHES' if matches else 'does not match'} ({why})")
        for part in differences(received, configured) or ["nothing: the same URL"]:
            lines.append(f"  differs: {part}")
        if matches:
            for what, text in strings_to_sign(configured, provider):
                lines += [f"the carrier signed, {what}:", f"  {shown(text)}"]
            return lines, status
        hint, hint_source = PublicBase(configured.scheme, configured.netloc, ""), "--public-url"

    if not _variants(lines, received, creds, verifier, now, hint, hint_source):
        lines.append(
            "diagnosis: no variant matches: the auth token differs (rotated? sub-account?), the body was changed "
            "on the way, or the request is forged."
            + ("" if public_url else " Try --public-url with the callback URL configured at the carrier.")
        )
    return lines, status


def _variants(
    lines: list[str],
    received: InboundRequest,
    creds: PhoneCredentials,
    verifier: Verifier,
    now: float,
    hint: PublicBase | None,
    hint_source: str,
    *,
    body_only: bool = False,
) -> bool:
    """Append the variants tried (gateway/diagnostics/variants.py) and the first match; True if one matched."""
    provider = creds.provider
    tried: list[tuple[variants.Variant, bool]] = []
    found: variants.Variant | None = None
    for variant, verified in mismatch.attempts(
        received, creds, verifier, now, public_base=hint, base_source=hint_source, limit=CLI_MAX_VARIANTS
    ):
        tried.append((variant, verified is not None))
        if verified is not None:
            found = variant
            break
    lines.append(f"{'body ' if body_only else ''}variants tried: {len(tried)}")
    for variant, matched in tried:
        lines.append(f"  {'MATCH' if matched else 'no   '}  [{variant.label}] {variant.description}")
    if found is None:
        return False
    lines.append(f"diagnosis: {mismatch.Diagnosis(provider, found, None, len(tried)).message()}")
    if not body_only:  # a body is not shown: it may hold personal data, and the capture has it
        for what, text in strings_to_sign(found.request, provider):
            lines += [f"the carrier signed, {what}:", f"  {shown(text)}"]
    return True


def _key_lines(
    spec: CarrierSpec, verifier: Verifier, request: InboundRequest, creds: PhoneCredentials, now: float
) -> list[str]:
    """Which keys were tried, and whether a key no longer active (its rotation window over) verifies."""
    lines: list[str] = []
    for kind, keys in creds.keys.items():
        active = [key.fingerprint for key in keys if key.active(now)]
        lines.append(f"  {kind.value} keys tried: {', '.join(active) or 'none active'}")
        for key in keys:
            if key.active(now):
                continue
            alone = dataclasses.replace(creds, keys={kind: (dataclasses.replace(key, expires_at=None),)})
            if _verdict(verifier, request, alone, now)[0]:
                lines.append(
                    f"  signed with {kind.value} {key.fingerprint}, retired at {key.expires_at:.0f} (rotation window "
                    f"over): {spec.title} still signs with the old key, or the capture is older than the rotation"
                )
    return lines
