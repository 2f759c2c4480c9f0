"""Command line: `gateway serve`, `gateway phones put|get|list|delete`, `gateway genkey`.

Every option has an environment variable (the same names as the settings); the
phones commands call the same KeyStore the admin API uses, against Redis directly.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import orjson

from gateway import __version__
from gateway.settings import Settings, SettingsError, from_env

STARTUP_FAILURE = 3
EMBEDDED_DIR = Path(os.environ.get("GATEWAY_EMBEDDED_DIR", ".gateway"))

log = logging.getLogger("gateway.cli")


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


# ---- serve ---------------------------------------------------------------------


def _bind(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def _embedded_session(env: dict[str, str]) -> Any:
    """Start a private server and session secrets when none are configured (one machine only)."""
    from gateway.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(EMBEDDED_DIR / "redis", unix_socket=True).start()
    env["GATEWAY_REDIS_URL"] = server.url
    notes = [f"embedded Redis (single machine only, data in {server.data_dir}): {server.url}"]
    if not env.get("GATEWAY_KEK"):
        kek_file = EMBEDDED_DIR / "kek"
        if not kek_file.exists():
            kek_file.parent.mkdir(parents=True, exist_ok=True)
            kek_file.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
            kek_file.chmod(0o600)
        env["GATEWAY_KEK"] = kek_file.read_text().strip()
        notes.append(f"GATEWAY_KEK generated and kept in {kek_file} (mode 600) so sealed tokens reopen")
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


def serve(args: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

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
            embedded = _embedded_session(env)
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
        sockets = [_bind(settings.host, settings.port, settings.backlog)]
        if settings.admin_port is not None:
            sockets.append(_bind(settings.admin_host, settings.admin_port, 128))
    except OSError as exc:
        sys.stderr.write(f"gateway: cannot listen: {exc.strerror}\n")
        return STARTUP_FAILURE
    config = uvicorn.Config(
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
    _configure_logging(settings.log_level)
    # After its graceful shutdown uvicorn re-raises the signal it caught, with the handler
    # that was there before it started. SIGTERM's default would kill us on the spot, before
    # the `finally` below stops the embedded Redis (left running, orphaned); as SystemExit
    # the cleanup runs and the exit status still says "terminated" (128 + 15).
    signal.signal(signal.SIGTERM, _exit_on_signal)
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


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")


# ---- phones ----------------------------------------------------------------------


def _cli_settings() -> Settings:
    env = dict(os.environ)
    if not env.get("GATEWAY_REDIS_URL"):
        sock = EMBEDDED_DIR / "redis" / "redis.sock"
        if sock.exists():
            env["GATEWAY_REDIS_URL"] = f"unix://{sock.resolve()}"  # relative would read as unix://host/path
        else:
            raise SettingsError("GATEWAY_REDIS_URL is not set (and no embedded server is running here)")
    if not env.get("GATEWAY_KEK") and (EMBEDDED_DIR / "kek").exists():
        env["GATEWAY_KEK"] = (EMBEDDED_DIR / "kek").read_text().strip()
    return from_env(env)


async def _with_keystore(action: Callable[[Any], Coroutine[Any, Any, int]]) -> int:
    from gateway.keystore import KeyStore
    from gateway.redis_client import connect
    from gateway.redis_keys import KeyNames
    from gateway.sealing import Sealer
    from gateway.settings import kek_bytes

    settings = _cli_settings()
    redis = connect(settings)
    try:
        sealer = Sealer(kek_bytes(settings.kek), tuple(kek_bytes(s) for s in settings.kek_previous))
        store = KeyStore(redis, sealer, KeyNames(settings.key_prefix, settings.stream))
        return await action(store)
    finally:
        await redis.aclose()


def _put_body(args: argparse.Namespace) -> dict[str, Any]:
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


def phones(args: argparse.Namespace) -> int:
    from gateway.keystore import Conflict
    from gateway.phone_records import InvalidRecord

    async def run(store: Any) -> int:
        if args.phones_command == "put":
            view = await store.put(args.phone_id, _put_body(args))
            _print_json(view)
        elif args.phones_command == "get":
            view = await store.get(args.phone_id)
            if view is None:
                sys.stderr.write(f"no such phone: {args.phone_id}\n")
                return 1
            _print_json(view)
        elif args.phones_command == "list":
            _print_json({"phones": await store.list()})
        elif args.phones_command == "delete":
            if not await store.delete(args.phone_id):
                sys.stderr.write(f"no such phone: {args.phone_id}\n")
                return 1
            sys.stdout.write(f"deleted {args.phone_id}\n")
        elif args.phones_command == "reseal":
            report = await store.reseal()
            _print_json(report)
            return 1 if report["failed"] or report["raced"] else 0
        return 0

    try:
        return asyncio.run(_with_keystore(run))
    except (SettingsError, InvalidRecord, Conflict, ValueError, OSError) as exc:
        sys.stderr.write(f"gateway phones: {exc}\n")
        return 2


def genkey(_args: argparse.Namespace) -> int:
    sys.stdout.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    return 0


# ---- parser ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Telephony webhook verification gateway.")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p_serve = sub.add_parser("serve", help="run the gateway (embedded Redis when GATEWAY_REDIS_URL is unset)")
    p_serve.add_argument("--host", help="listen address [env GATEWAY_HOST, default 127.0.0.1]")
    p_serve.add_argument("--port", type=int, help="listen port [env GATEWAY_PORT, default 8080]")
    p_serve.add_argument("--workers", type=int, help="worker processes [env GATEWAY_WORKERS, default 1]")
    p_serve.add_argument("--admin-port", type=int, help="serve /admin and /metrics only here [env GATEWAY_ADMIN_PORT]")
    p_serve.set_defaults(func=serve)

    p_phones = sub.add_parser("phones", help="manage per-phone credentials in Redis")
    phones_sub = p_phones.add_subparsers(dest="phones_command", required=True)
    p_put = phones_sub.add_parser("put", help="create or replace a phone (secrets are sealed with GATEWAY_KEK)")
    p_put.add_argument("phone_id")
    p_put.add_argument("--json", metavar="FILE", help='admin body {"provider","credentials","config"}; - for stdin')
    p_put.add_argument("--provider", choices=["plivo", "vobiz", "exotel", "telnyx", "twilio"])
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
    p_phones.set_defaults(func=phones)

    p_genkey = sub.add_parser("genkey", help="print a new random 32-byte key (for GATEWAY_KEK)")
    p_genkey.set_defaults(func=genkey)
    from gateway import consume_cli, explain_cli, sign_cli  # their own modules; imported here, they import this one

    explain_cli.add_parser(sub)
    sign_cli.add_parser(sub)
    consume_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
