"""`gateway <carrier> sources`: allowlist discovery, for each carrier checked by source address.

Prints what `GET /admin/<carrier>/sources` answers (gateway/source_log.py): the networks of
requests refused for their address that proved their phone otherwise (Exotel's `?token=`),
most recently seen first. Reads Redis directly (`cli_settings()`); needs no KEK.
The command names come from the carrier specs (`CarrierSpec.proof_without_source`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from gateway.cli.common import cli_settings, print_json, settings_failure
from gateway.providers import Provider
from gateway.providers.registry import spec_for
from gateway.redis_client import connect
from gateway.redis_errors import OUTAGES
from gateway.redis_keys import KeyNames
from gateway.settings import SettingsError
from gateway.source_log import DISCOVERABLE, SourceLog


async def _sources(provider: Provider) -> list[dict[str, Any]]:
    settings = cli_settings(kek_required=False)
    redis = connect(settings)
    try:
        log = SourceLog(redis, KeyNames.from_settings(settings), ttl_s=settings.unlisted_sources_ttl_s)
        return await log.sources(provider, time.time())
    finally:
        await redis.aclose()


def run(args: argparse.Namespace) -> int:
    provider = Provider(args.command)
    try:
        sources = asyncio.run(_sources(provider))
    except SettingsError as exc:
        return settings_failure(exc)
    except OUTAGES as exc:
        sys.stderr.write(f"gateway {provider.value} sources: Redis unavailable ({type(exc).__name__})\n")
        return 2
    print_json({"sources": sources})
    return 0


def add_parser(sub: Any) -> None:
    for provider in sorted(DISCOVERABLE, key=lambda p: p.value):
        title = spec_for(provider).title or provider.value
        p = sub.add_parser(provider.value, help=f"{title}: allowlist discovery")
        commands = p.add_subparsers(dest="carrier_command", required=True)
        listing = commands.add_parser(
            "sources",
            help=f"networks of {title} requests refused for their address that carried the phone's proof",
            description=(
                f"Print (JSON) the networks (/24, /48) of {title} requests that were refused because their "
                "address is not allowlisted but proved their phone otherwise, most recently seen first. Confirm a "
                "network with the carrier before adding it to the allowlist: nothing is ever added automatically."
            ),
        )
        listing.set_defaults(func=run)
