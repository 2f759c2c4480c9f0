"""`gateway serve`: run the gateway under uvicorn (an embedded Redis when GATEWAY_REDIS_URL is unset)."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from gateway.cli.common import STARTUP_FAILURE, development_mode
from gateway.embedded_redis import EmbeddedRedis
from gateway.settings import SettingsError, from_env


def bind(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def embedded_session(env: dict[str, str]) -> EmbeddedRedis:
    """Start a private server and session secrets when none are configured (one machine only)."""
    development = development_mode()
    server = EmbeddedRedis(development.redis_dir, unix_socket=True).start()
    env["GATEWAY_REDIS_URL"] = server.url
    notes = [f"embedded Redis (single machine only, data in {server.data_dir}): {server.url}"]
    if not env.get("GATEWAY_KEK"):
        development.keep_new_kek()
        env["GATEWAY_KEK"] = development.kek() or ""
        notes.append(f"GATEWAY_KEK generated and kept in {development.kek_file} (mode 600) so sealed tokens reopen")
    if not env.get("GATEWAY_ADMIN_TOKEN"):
        env["GATEWAY_ADMIN_TOKEN"] = secrets.token_urlsafe(32)
        notes.append(f"GATEWAY_ADMIN_TOKEN for this session: {env['GATEWAY_ADMIN_TOKEN']}")
    sys.stderr.write(
        "\n".join(
            [
                "",
                "*** gateway: development mode ***",
                *notes,
                "Set GATEWAY_REDIS_URL, GATEWAY_KEK and GATEWAY_ADMIN_TOKEN for production.",
                "",
            ]
        )
        + "\n"
    )
    return server


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    for name, value in (
        ("GATEWAY_HOST", args.host),
        ("GATEWAY_PORT", args.port),
        ("GATEWAY_WORKERS", args.workers),
        ("GATEWAY_ADMIN_PORT", args.admin_port),
    ):
        if value is not None:
            env[name] = str(value)
    embedded = None
    if not env.get("GATEWAY_REDIS_URL"):
        try:
            embedded = embedded_session(env)
        except Exception as exc:
            sys.stderr.write(f"gateway: cannot start the embedded Redis: {exc}\n")
            return STARTUP_FAILURE
    try:
        settings = from_env(env)
    except SettingsError as exc:
        sys.stderr.write(f"gateway: invalid setting: {exc}\n")
        if embedded is not None:
            embedded.stop()
        return STARTUP_FAILURE
    os.environ.update(env)  # workers re-read the settings from the environment
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")
    try:
        sockets = [bind(settings.host, settings.port, settings.backlog)]
        if settings.admin_port is not None:
            sockets.append(bind(settings.admin_host, settings.admin_port, 128))
    except OSError as exc:
        sys.stderr.write(f"gateway: cannot listen: {exc.strerror}\n")
        return STARTUP_FAILURE
    config = uvicorn.Config(  # looked up at call time: loadtests/serve.py swaps the application through it
        "gateway.app:create_app",
        factory=True,
        workers=settings.workers,
        log_level=settings.log_level,
        proxy_headers=False,  # gateway.proxy decides whom to believe (GATEWAY_TRUSTED_PROXIES)
        server_header=False,
        access_log=False,  # ours strips the query string (Exotel's ?token= is a secret)
        # httptools plus the request-head size cap and deadline uvicorn lacks (docs/limits.md).
        http="gateway.http_protocol:EdgeHttpToolsProtocol",
        loop="uvloop",
        lifespan="on",
        timeout_keep_alive=settings.timeout_keep_alive_s,
        timeout_graceful_shutdown=30,
        limit_concurrency=settings.limit_concurrency,
        backlog=settings.backlog,
        h11_max_incomplete_event_size=16 * 1024,  # the request-head cap, for EdgeHttpToolsProtocol too
    )
    configure_logging(settings.log_level)
    # After its graceful shutdown uvicorn re-raises the signal it caught, with the handler
    # that was there before it started. SIGTERM's default would kill us on the spot, before
    # the `finally` below stops the embedded Redis (left running, orphaned); as SystemExit
    # the cleanup runs and the exit status still says "terminated" (128 + 15).
    signal.signal(signal.SIGTERM, exit_on_signal)
    try:
        if settings.workers > 1:
            Multiprocess(config, sockets=sockets).run()
        else:
            server = uvicorn.Server(config)
            server.run(sockets=sockets)
            if not server.started:
                return STARTUP_FAILURE
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the gateway (embedded Redis when GATEWAY_REDIS_URL is unset)")
    p.add_argument("--host", help="listen address [env GATEWAY_HOST, default 127.0.0.1]")
    p.add_argument("--port", type=int, help="listen port [env GATEWAY_PORT, default 8080]")
    p.add_argument("--workers", type=int, help="worker processes [env GATEWAY_WORKERS, default 1]")
    p.add_argument("--admin-port", type=int, help="serve /admin and /metrics only here [env GATEWAY_ADMIN_PORT]")
    p.set_defaults(func=run)
