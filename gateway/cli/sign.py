"""`gateway sign`: print a correctly signed carrier callback, as a curl command or raw HTTP.

The request is built by gateway/diagnostics/signing.py. Secrets never come from argv (it
is visible in `ps` and shell history): an environment variable (--token-env, --seed-env)
or the phone's record in Redis (--phone).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from gateway.cli.common import with_keystore
from gateway.diagnostics.errors import SignError
from gateway.diagnostics.signing import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    PROVIDERS,
    Secret,
    SignedRequest,
    as_curl,
    as_http,
    build,
    check_algorithm,
    parse_params,
    secret_from_env,
    secret_from_phone,
)
from gateway.keystore import KeyStore
from gateway.phone_records import InvalidRecord
from gateway.providers import Provider
from gateway.settings import SettingsError


def read_json(value: str) -> bytes:
    """--json BODY: the text itself, @FILE, or - for stdin."""
    if value == "-":
        return sys.stdin.buffer.read()
    if value.startswith("@"):
        return Path(value[1:]).read_bytes()
    return value.encode("utf-8")


def run(args: argparse.Namespace) -> int:
    try:
        algorithm = args.algorithm.upper()
        params = [] if args.no_sample else parse_params(args.param)
        if args.no_sample and args.param:
            raise SignError("--no-sample and --param exclude each other")
        json_body = read_json(args.json) if args.json is not None else None

        def make(provider: Provider, secret: Secret | None) -> SignedRequest:
            check_algorithm(provider, algorithm)
            return build(
                provider,
                args.url,
                secret=secret,
                method=args.method,
                params=params,
                json_body=json_body,
                nonce=args.nonce,
                timestamp=args.timestamp,
                algorithm=algorithm,
                client_ip=args.client_ip,
                target=args.target,
            )

        if args.phone:
            built: list[SignedRequest] = []

            async def lookup(store: KeyStore) -> int:
                creds = await store.credentials(args.phone)
                if creds is None:
                    raise SignError(f"no such phone: {args.phone}")
                if args.provider and args.provider != creds.provider.value:
                    raise SignError(f"phone {args.phone} is a {creds.provider.value} phone, not {args.provider}")
                built.append(make(creds.provider, secret_from_phone(creds, algorithm, time.time())))
                return 0

            asyncio.run(with_keystore(lookup))
            request = built[0]
        else:
            if not args.provider:
                raise SignError("give --provider (or --phone, whose record names it)")
            provider = Provider(args.provider)
            request = make(provider, secret_from_env(provider, token_env=args.token_env, seed_env=args.seed_env))
        if args.format == "http":
            sys.stdout.buffer.write(as_http(request))
            sys.stdout.buffer.flush()
        else:
            sys.stdout.write(as_curl(request))
            sys.stdout.flush()
        for note in request.notes:
            sys.stderr.write(f"note: {note}\n")
        return 0
    except (SignError, SettingsError, InvalidRecord, OSError, UnicodeDecodeError) as exc:
        sys.stderr.write(f"gateway sign: {exc}\n")
        return 2


class SecretRefused(argparse.Action):
    """`--token VALUE`/`--seed VALUE`: refused without echoing VALUE (argparse's own error would)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        parser.error(
            f"{self.option_strings[0]} is not accepted: secrets never come from the command line; use {self.help}"
        )


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sign",
        allow_abbrev=False,  # "--token X" must not silently mean "--token-env X"
        help="print a correctly signed carrier callback (curl command or raw HTTP)",
        description=(
            "Sign a callback as the carrier would, for integration tests. Secrets come from an environment "
            "variable or from the phone's record in Redis, never from the command line."
        ),
    )
    p.add_argument("--provider", choices=PROVIDERS, help="the carrier (optional with --phone)")
    p.add_argument("--url", required=True, help="the public callback URL the carrier calls (and signs)")
    p.add_argument("--method", default="POST", type=str.upper, choices=["GET", "POST"])
    p.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="a callback parameter (form body for POST, query for GET); default: a sample inbound call",
    )
    p.add_argument("--no-sample", action="store_true", help="send no parameters at all")
    p.add_argument(
        "--json",
        metavar="BODY",
        help="a JSON body (twilio: covered by bodySHA256; telnyx: the event); @FILE or - for stdin",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--token-env", metavar="VAR", help="environment variable holding the auth token")
    source.add_argument("--phone", metavar="ID", help="use the phone's key from Redis (GATEWAY_REDIS_URL, GATEWAY_KEK)")
    source.add_argument(
        "--seed-env", metavar="VAR", help="environment variable holding the Telnyx Ed25519 seed (base64)"
    )
    p.add_argument("--token", nargs="?", action=SecretRefused, help="--token-env VAR or --phone ID")
    p.add_argument("--seed", nargs="?", action=SecretRefused, help="--seed-env VAR")
    p.add_argument("--format", choices=["curl", "http"], default="curl")
    p.add_argument(
        "--target", metavar="URL", help="send to scheme://host[:port] instead (adds X-Forwarded-Proto/-Host)"
    )
    p.add_argument(
        "--client-ip", metavar="IP", help="add X-Forwarded-For (Exotel's allowlist, through a trusted proxy)"
    )
    p.add_argument("--nonce", help="Plivo/Vobiz nonce (default: random)")
    p.add_argument("--timestamp", type=int, help="Telnyx timestamp, unix seconds (default: now)")
    p.add_argument(
        "--algorithm",
        default=DEFAULT_ALGORITHM,
        choices=list(ALGORITHMS),
        help="twilio: HMAC_SHA256 signs with the shared webhook signing key (adds the settings header)",
    )
    p.set_defaults(func=run)
