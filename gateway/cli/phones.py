"""`gateway phones put|get|list|delete|reseal`: per-phone credentials, through the KeyStore the admin API uses."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from gateway.cli.common import print_json, settings_failure, with_keystore
from gateway.keystore import Conflict, KeyStore
from gateway.phone_records import InvalidRecord
from gateway.providers import Provider
from gateway.settings import SettingsError


def put_body(args: argparse.Namespace) -> dict[str, Any]:
    """The admin API's PUT body from --json, or from --provider, --credential, --config and --keep-previous."""
    if args.json is not None:
        raw = sys.stdin.buffer.read() if args.json == "-" else Path(args.json).read_bytes()
        loaded = orjson.loads(raw)
        if not isinstance(loaded, dict):
            raise ValueError("--json must hold a JSON object")
        return loaded
    if not args.provider:
        raise ValueError("give --json FILE (or - for stdin), or --provider with --credential/--config")
    body: dict[str, Any] = {"provider": args.provider, "credentials": {}, "config": {}}
    for target, items in (("credentials", args.credential), ("config", args.config)):
        for item in items or []:
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--{target[:-1] if target == 'credentials' else target} expects name=value")
            if value.startswith("env:"):
                env_value = os.environ.get(value[4:])
                if env_value is None:
                    raise ValueError(f"environment variable {value[4:]} is not set")
                value = env_value
            body[target][name] = value
    if args.keep_previous is not None:
        body["rotation"] = {"keep_previous_s": args.keep_previous}
    return body


def run(args: argparse.Namespace) -> int:
    async def act(store: KeyStore) -> int:
        if args.phones_command == "put":
            print_json(await store.put(args.phone_id, put_body(args)))
        elif args.phones_command == "get":
            view = await store.get(args.phone_id)
            if view is None:
                sys.stderr.write(f"no such phone: {args.phone_id}\n")
                return 1
            print_json(view)
        elif args.phones_command == "list":
            print_json(await store.listing())  # {"phones": [...], "invalid": [ids of invalid stored records]}
        elif args.phones_command == "delete":
            if not await store.delete(args.phone_id):
                sys.stderr.write(f"no such phone: {args.phone_id}\n")
                return 1
            sys.stdout.write(f"deleted {args.phone_id}\n")
        elif args.phones_command == "reseal":
            report = await store.reseal()
            print_json(report)
            return 1 if report["failed"] or report["raced"] or report.get("invalid") else 0
        return 0

    try:
        return asyncio.run(with_keystore(act))
    except SettingsError as exc:
        return settings_failure(exc)
    except (InvalidRecord, Conflict, ValueError, OSError) as exc:
        sys.stderr.write(f"gateway phones: {exc}\n")
        return 2


def add_parser(sub: Any) -> None:
    p_phones = sub.add_parser("phones", help="manage per-phone credentials in Redis")
    phones_sub = p_phones.add_subparsers(dest="phones_command", required=True)
    p_put = phones_sub.add_parser("put", help="create or replace a phone (secrets are sealed with GATEWAY_KEK)")
    p_put.add_argument("phone_id")
    p_put.add_argument("--json", metavar="FILE", help='admin body {"provider","credentials","config"}; - for stdin')
    p_put.add_argument("--provider", choices=[p.value for p in Provider])
    p_put.add_argument(
        "--credential",
        action="append",
        metavar="NAME=VALUE",
        help="a credential; VALUE may be env:VAR to read a secret from the environment",
    )
    p_put.add_argument("--config", action="append", metavar="NAME=VALUE", help="a config value (env:VAR allowed)")
    p_put.add_argument(
        "--keep-previous",
        type=int,
        metavar="SECONDS",
        help="rotation: keep the current keys valid this long alongside the new ones",
    )
    for name, text in (("get", "show a phone (fingerprints only)"), ("delete", "delete a phone")):
        p = phones_sub.add_parser(name, help=text)
        p.add_argument("phone_id")
    phones_sub.add_parser("list", help="list phones (fingerprints only)")
    phones_sub.add_parser(
        "reseal", help="after a KEK rotation: re-seal every secret under GATEWAY_KEK (old KEKs in GATEWAY_KEK_PREVIOUS)"
    )
    p_phones.set_defaults(func=run)
