"""`gateway explain PHONE_ID FILE|-`: why does a captured request fail (or pass) verification?

Input: a raw HTTP/1.x request or a curl command line, from FILE or stdin
(gateway/diagnostics/capture.py). The phone's credentials come from Redis through the
KeyStore, like `gateway phones get`; the report is gateway/diagnostics/report.py.

Exit status: 0 the request verifies as captured, 1 it does not, 2 bad input or no such phone.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import cli_settings, settings_failure, with_keystore
from gateway.diagnostics.capture import parse_capture
from gateway.diagnostics.errors import CaptureError
from gateway.diagnostics.report import report
from gateway.keystore import KeyStore
from gateway.phone_records import InvalidRecord
from gateway.settings import SettingsError


def run(args: argparse.Namespace) -> int:
    try:  # a start-up error is a settings error, as for every command (exit 3)
        settings = cli_settings()
        options = settings.verifier_options()  # the allowlist and timestamp window the verifiers use
    except SettingsError as exc:
        return settings_failure(exc)
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        captured = parse_capture(data, args.input_format)

        async def lookup(store: KeyStore) -> int:
            creds = await store.credentials(args.phone_id)
            if creds is None:
                sys.stderr.write(f"gateway explain: no such phone: {args.phone_id}\n")
                return 2
            lines, status = report(
                captured,
                creds,
                public_base=settings.public_base,
                public_url=args.public_url,
                tolerance_s=options.timestamp_tolerance_s,
                allowlist=options.ip_allowlist,
                trusted_proxies=settings.trusted_proxies,
            )
            sys.stdout.write("\n".join(lines) + "\n")
            return status

        return asyncio.run(with_keystore(lookup))
    except (CaptureError, SettingsError, InvalidRecord, OSError) as exc:
        sys.stderr.write(f"gateway explain: {exc}\n")
        return 2


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "explain",
        help="explain why a captured request's signature fails (raw HTTP or a curl command)",
        description=(
            "Read a captured request (raw HTTP/1.x, or a curl command line) and the phone's credentials from "
            "Redis; print the URL the gateway rebuilds, whether the signature matches, what the carrier signs "
            "and which variant (scheme, host, port, path, query, body) would match. Never prints a key or a "
            "computed signature. Exit 0: matches, 1: does not, 2: error."
        ),
    )
    p.add_argument("phone_id")
    p.add_argument("file", help="the captured request: a file, or - for stdin")
    p.add_argument("--public-url", help="the callback URL configured at the carrier, e.g. https://hooks.example.com")
    p.add_argument(
        "--input-format",
        choices=["auto", "http", "curl"],
        default="auto",
        help="how to read the capture (default: curl if it starts with 'curl', else raw HTTP)",
    )
    p.set_defaults(func=run)
