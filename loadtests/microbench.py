"""In-process CPU cost of the request path, without HTTP: a quick loop for optimising.

    python -m loadtests.microbench [--requests 20000] [--kind plivo|telnyx] [--batch 32]

Runs the real app's WebhookHandler (real KeyStore on a private Redis, cache warm) on
pre-signed requests given as ASGI scopes, and prints CPU microseconds per request for:
  handler   the handler with the forwarder replaced by a stub that answers "forwarded"
            (verification, event building, metrics, logging, ASGI messages);
  forwarder Forwarder.forward() against the private Redis, `--batch` requests in flight
            (group commit), the client side only (Redis runs in its own process);
  full      both together, `--batch` requests in flight.
Not a throughput benchmark (bench_ceiling.py is): a profiler-friendly way to see what a
change saves, measured on this machine in this run. Add --profile to get a cProfile top list.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import logging
import pstats
import random
import sys
import time
from typing import Any

from gateway.app import GatewayApp
from gateway.forwarder import Outcome
from gateway.settings import from_env
from loadtests import harness, signed
from loadtests import phones as lt_phones

HOST = "127.0.0.1:8080"


def scope_for(request: signed.SignedRequest) -> tuple[dict[str, Any], bytes]:
    path, _, query = request.target.partition("?")
    headers = [(b"host", HOST.encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()]
    if request.method == "POST":
        headers.append((b"content-length", str(len(request.body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 40000 + random.randrange(20000)),
        "scheme": "http",
        "method": request.method,
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": headers,
        "state": {},
    }
    return scope, request.body


def build_requests(kind: str, n: int) -> list[tuple[dict[str, Any], bytes]]:
    run = random.getrandbits(40)
    out = []
    if kind == "plivo":
        group = [lt_phones.plivo_phone(i) for i in range(16)]
        for i in range(n):
            params = signed.plivo_status_params(signed.call_uuid(run, i))
            out.append(scope_for(signed.plivo_request(group[i % 16], "status", params, signed.nonce(run, i))))
    else:
        group = [lt_phones.telnyx_phone(i) for i in range(16)]
        now = int(time.time())
        for i in range(n):
            out.append(scope_for(signed.telnyx_request(group[i % 16], signed.call_uuid(run, i), now)))
    return out


class StubForwarder:
    async def forward(self, phone_id: str, event: bytes, **_options: Any) -> Any:
        return Outcome.FORWARDED, "0-0"


async def drive(handler: Any, route_of: Any, requests: list[tuple[dict[str, Any], bytes]], inflight: int) -> float:
    """CPU seconds per request with `inflight` requests running concurrently."""
    statuses: dict[int, int] = {}

    async def one(scope: dict[str, Any], body: bytes) -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1

        await handler(scope, receive, send, route_of(scope["path"]))

    start = time.process_time()
    for offset in range(0, len(requests), inflight):
        await asyncio.gather(*(one(s, b) for s, b in requests[offset : offset + inflight]))
    spent = time.process_time() - start
    if set(statuses) != {200}:
        raise RuntimeError(f"unexpected answers {statuses}")
    return spent / len(requests)


async def main_async(args: argparse.Namespace) -> None:
    from gateway.webhooks import match_route

    redis_server = harness.start_redis()
    try:
        env = harness.gateway_env(redis_server.url, **dict(a.split("=", 1) for a in args.env))
        settings = from_env(env, toml_path=None)
        app = GatewayApp(settings)
        async with app._lifespan(app._starlette):  # noqa: SLF001 - the same components uvicorn would start
            components = app.components
            assert components is not None
            groups = lt_phones.all_phones(16)
            for phone in groups["plivo"] + groups["telnyx"]:
                await components.keystore.put(phone.id, phone.admin_body())
            handler = components.webhooks
            real_forwarder = handler._forwarder  # noqa: SLF001
            warm = build_requests(args.kind, 200)
            await drive(handler, match_route, warm, args.batch)

            requests = build_requests(args.kind, args.requests)
            if args.gc_freeze:
                gc.collect()
                gc.freeze()
            handler._forwarder = StubForwarder()  # type: ignore[assignment]  # noqa: SLF001
            profiler = cProfile.Profile() if args.profile else None
            if profiler:
                profiler.enable()
            # The machine may be shared: the least disturbed of several rounds.
            round_size = max(1, len(requests) // args.rounds)
            per_handler = min(
                [
                    await drive(handler, match_route, requests[r * round_size : (r + 1) * round_size], args.batch)
                    for r in range(args.rounds)
                ]
            )
            if profiler:
                profiler.disable()
            handler._forwarder = real_forwarder  # noqa: SLF001

            requests = build_requests(args.kind, args.requests)
            events = [
                (f"lt_plivo_{i % 16:03d}", b"x" * 700, f"n{random.random()}", f"k{random.random()}")
                for i in range(args.requests)
            ]
            start = time.process_time()
            for offset in range(0, len(events), args.batch):
                chunk = events[offset : offset + args.batch]
                await asyncio.gather(
                    *(real_forwarder.forward(p, e, nonce=n, idempotency_key=k) for p, e, n, k in chunk)
                )
            per_forward = (time.process_time() - start) / len(events)
            per_full = min(
                [
                    await drive(handler, match_route, requests[r * round_size : (r + 1) * round_size], args.batch)
                    for r in range(args.rounds)
                ]
            )
    finally:
        redis_server.cleanup()
    sys.stdout.write(
        f"{args.kind}: handler {per_handler * 1e6:.1f} us/request, forwarder {per_forward * 1e6:.1f} us/request "
        f"(batch {args.batch}), full {per_full * 1e6:.1f} us/request\n"
    )
    if profiler:
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(35)
        sys.stdout.write(stream.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--kind", choices=["plivo", "telnyx"], default="plivo")
    parser.add_argument("--batch", type=int, default=32, help="requests in flight together")
    parser.add_argument("--rounds", type=int, default=5, help="the handler figure is the best of this many rounds")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() once warm, as the app does at start")
    parser.add_argument("--log-level", default="INFO", help="level of the root logger (gateway serve: INFO)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    # As `gateway serve` configures it; the access log goes to a discarded stream.
    logging.basicConfig(level=args.log_level, stream=io.StringIO())
    with contextlib.suppress(KeyboardInterrupt):
        import uvloop

        uvloop.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
