"""`gateway consume`: the reference dispatch consumer (gateway/consumer.py) as a command.

    gateway consume --group dispatch --consumer worker-1 --handler print
    gateway consume --group dispatch --consumer worker-1 --handler post --url https://dispatch.example.com/events

Reads GATEWAY_REDIS_URL / GATEWAY_REDIS_CLUSTER / GATEWAY_STREAM and the Redis timeouts
like the gateway, from the environment or config/gateway.toml (in development mode, the
embedded server `gateway serve` started here);
the POST handler signs with GATEWAY_FORWARD_SIGNING_KEY. It needs no GATEWAY_KEK (it never
opens a phone record). SIGTERM or SIGINT: the entry in hand is finished (and acknowledged,
or left pending), then it exits 0.

Exit status: 0 stopped (or --once done), 2 bad arguments (--handler post without --url or
GATEWAY_FORWARD_SIGNING_KEY), 3 an invalid setting (`gateway: invalid setting: NAME ...`)
or Redis unreachable with --once.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from typing import Any
from urllib.parse import urlsplit

from gateway import consumer as consumer_mod
from gateway.cli.common import cli_settings, settings_failure
from gateway.redis_client import connect
from gateway.settings import Settings, SettingsError

log = logging.getLogger("gateway.consume")


def consume_settings() -> Settings:
    """The gateway's settings; GATEWAY_KEK is not required (a throwaway one stands in, never used)."""
    return cli_settings(kek_required=False)


def _handler(args: argparse.Namespace, settings: Settings) -> Any:
    if args.handler == "print":
        return consumer_mod.PrintHandler()
    if not args.url:
        raise SettingsError("--handler post needs --url")
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        raise SettingsError("--url must be http(s)://host[:port]/path without credentials")
    keys = settings.forward_signing_key_bytes()
    if not keys:
        raise SettingsError(
            "--handler post signs every request: set GATEWAY_FORWARD_SIGNING_KEY "
            "(generate: python -c 'from gateway.standard_webhooks import generate_key; print(generate_key())')"
        )
    return consumer_mod.PostHandler(args.url, keys, timeout_s=args.timeout)


async def _consume(args: argparse.Namespace, settings: Settings) -> int:
    # The blocking read must end before the socket timeout, or every idle round would be an error.
    block_ms = consumer_mod.DEFAULT_BLOCK_MS
    client_settings = dataclasses.replace(settings, redis_timeout_s=settings.redis_timeout_s + block_ms / 1000)
    redis = connect(client_settings)
    handler = _handler(args, settings)
    worker = consumer_mod.Consumer(
        redis,
        settings.stream,
        args.group,
        args.consumer,
        handler,
        max_deliveries=args.max_deliveries,
        claim_idle_ms=args.claim_idle_ms,
        batch=args.batch,
        block_ms=0 if args.once else block_ms,
        start_id=args.start,
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    try:
        if args.once:
            try:
                handled = await worker.run_once()
            except consumer_mod.TRANSIENT as exc:
                sys.stderr.write(f"gateway consume: redis unavailable ({type(exc).__name__})\n")
                return 3
            log.info("handled %d entries", handled)
        else:
            log.info("consuming %r as %s/%s (%s handler)", settings.stream, args.group, args.consumer, args.handler)
            await worker.run()
        stats = worker.stats
        log.info(
            "stopped: %d acknowledged, %d failed, %d dead-lettered, %d claimed",
            stats.acked,
            stats.failed,
            stats.dead_lettered,
            stats.claimed,
        )
        return 0
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        if isinstance(handler, consumer_mod.PostHandler):
            await handler.aclose()
        await redis.aclose()


def consume(args: argparse.Namespace) -> int:
    try:
        settings = consume_settings()
    except SettingsError as exc:
        return settings_failure(exc)
    try:
        _handler(args, settings)  # validate before connecting (a POST handler built twice is cheap)
    except SettingsError as exc:
        sys.stderr.write(f"gateway consume: {exc}\n")
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    return asyncio.run(_consume(args, settings))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "consume",
        help="reference dispatch consumer: read the event stream with a consumer group",
        description=(
            "Read GATEWAY_STREAM with a consumer group: XACK after the handler succeeds, XAUTOCLAIM entries "
            "idle too long (a dead consumer's, or failed ones), dead-letter to <stream>:dead after "
            "--max-deliveries. Handlers: print (one JSON line per event on stdout) or post (Standard Webhooks "
            "signed with GATEWAY_FORWARD_SIGNING_KEY)."
        ),
    )
    p.add_argument("--group", required=True, help="consumer group (created at the start of the stream if missing)")
    p.add_argument("--consumer", required=True, help="this consumer's name in the group (stable across restarts)")
    p.add_argument("--handler", choices=["print", "post"], default="print")
    p.add_argument("--url", help="--handler post: where to POST each event")
    p.add_argument("--timeout", type=float, default=5.0, help="--handler post: seconds per request [5]")
    p.add_argument(
        "--max-deliveries",
        type=_positive,
        default=consumer_mod.DEFAULT_MAX_DELIVERIES,
        help=f"deliveries before dead-lettering [{consumer_mod.DEFAULT_MAX_DELIVERIES}]",
    )
    p.add_argument(
        "--claim-idle-ms",
        type=_non_negative,
        default=consumer_mod.DEFAULT_CLAIM_IDLE_MS,
        help="claim entries pending this long (a dead consumer's, or failed ones: the retry delay) "
        f"[{consumer_mod.DEFAULT_CLAIM_IDLE_MS}]",
    )
    p.add_argument("--batch", type=_positive, default=consumer_mod.DEFAULT_BATCH, help="entries per read [32]")
    p.add_argument(
        "--start",
        default="0",
        help="where a NEW group starts: 0 = every entry in the stream [default], $ = only new ones",
    )
    p.add_argument("--once", action="store_true", help="one round without blocking, then exit")
    p.set_defaults(func=consume)
