"""`gateway serve`: run the gateway under uvicorn (an embedded Redis when GATEWAY_REDIS_URL is unset).

Start-up, in this order, so nothing is started that a later failure would leave behind:
development mode takes its directory's lock (one embedded server per directory), the
settings are validated, the ports are bound (an address in use is named, exit 3), and
only then is the embedded server started and the banner printed.

Several workers (GATEWAY_WORKERS > 1): each worker is a uvicorn.Server in a process of
its own. Where the OS has SO_REUSEPORT (Linux), each worker gets a listening socket of
its own on the public port and the kernel spreads new connections over them; a shared
socket lets whichever worker wakes first accept a whole burst (loadtests/README.md,
"Two workers"). Elsewhere they share one socket. The admin port's socket is shared.
`Supervisor` restarts a worker that dies after it started serving; one that fails to
start stops the whole `gateway serve` (exit 3): a broken app would fail every restart.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

import uvicorn
from prometheus_client import multiprocess
from uvicorn.supervisors.multiprocess import Process

from gateway.cli.common import STARTUP_FAILURE, DevelopmentMode, development_mode, development_needed, generate_key
from gateway.embedded_redis import EmbeddedRedis, EmbeddedRedisError, ServerLock
from gateway.settings import Settings, SettingsError, configured, from_env

LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s %(message)s"  # the pid tells workers apart
log = logging.getLogger("gateway.serve")


def log_config(level: str) -> dict[str, Any]:
    """The one logging configuration, applied by uvicorn in the parent and again in every worker
    (spawned workers start with logging unconfigured: no access line, bare warnings)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"gateway": {"format": LOG_FORMAT}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "gateway", "stream": "ext://sys.stderr"}
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        # uvicorn's own loggers go through the root handler, in the same format.
        "loggers": {name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.error")},
    }


@dataclass
class Listeners:
    """The bound sockets: one per worker on the public port (SO_REUSEPORT) or one shared; admin shared."""

    public: list[socket.socket]
    admin: socket.socket | None

    def for_worker(self, index: int) -> list[socket.socket]:
        sockets = [self.public[index % len(self.public)]]
        return sockets + ([self.admin] if self.admin is not None else [])

    def all(self) -> list[socket.socket]:
        return self.public + ([self.admin] if self.admin is not None else [])

    def close(self) -> None:
        for sock in self.all():
            sock.close()


class ListenError(Exception):
    def __init__(self, address: str, exc: OSError) -> None:
        reason = "address in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc)).lower()
        super().__init__(f"cannot listen on {address}: {reason}")


def show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind(host: str, port: int, backlog: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ListenError(show(host, port), exc) from None
    sock.set_inheritable(True)
    return sock


def listen(settings: Settings) -> Listeners:
    count = settings.workers if settings.workers > 1 and hasattr(socket, "SO_REUSEPORT") else 1
    first = bind(settings.host, settings.port, settings.backlog)
    public = [first]
    if count > 1:
        # Sockets with SO_REUSEPORT would happily join another server's on this port: `first`
        # (without it) proved the port free, and names the port chosen when it is 0.
        port = first.getsockname()[1]
        first.close()
        public = []
        try:
            for _ in range(count):
                public.append(bind(settings.host, port, settings.backlog, reuse_port=True))
        except ListenError:
            for sock in public:
                sock.close()
            raise
    try:
        admin = bind(settings.admin_host, settings.admin_port, 128) if settings.admin_port is not None else None
    except ListenError:
        for sock in public:
            sock.close()
        raise
    return Listeners(public, admin)


class Supervisor:
    """N uvicorn workers (uvicorn's worker `Process`: spawned, health-checked through a pipe),
    each with its own sockets. A worker that dies after starting is restarted on the same
    sockets (connections the kernel queued on them meanwhile are served by its successor);
    one that fails to start stops every worker. SIGTERM/SIGINT: every worker shuts down
    gracefully (uvicorn drains), then the supervisor exits 128 + the signal."""

    def __init__(self, config: uvicorn.Config, listeners: Listeners) -> None:
        self.config = config
        self.listeners = listeners
        self.processes: list[Process] = []
        self.stopping = threading.Event()
        self.signals: list[int] = []

    def _spawn(self, index: int) -> Process:
        process = Process(self.config, self.listeners.for_worker(index))
        process.start()
        return process

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)
        self.stopping.set()

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        log.info("supervisor [%d]: %d workers", os.getpid(), self.config.workers)
        self.processes = [self._spawn(index) for index in range(self.config.workers)]
        failed = False
        while not self.stopping.wait(0.5):
            failed = not self._keep_alive()
            if failed:
                break
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.join()
        if self.signals:
            return 128 + self.signals[0]
        return STARTUP_FAILURE if failed else 0

    def _keep_alive(self) -> bool:
        for index, process in enumerate(self.processes):
            if self.stopping.is_set():
                return True
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # dead or hung
            process.join()
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and process.pid is not None:
                multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]  # its live gauges go
            if process.exitcode == STARTUP_FAILURE:
                log.error("worker %d [%s] failed to start: stopping", index, process.pid)
                return False
            log.warning("worker %d [%s] died (exit code %s): restarting it", index, process.pid, process.exitcode)
            self.processes[index] = self._spawn(index)
        return True


@dataclass
class Development:
    """Development mode's session: the lock, the KEK (generated now or reused) and the admin token."""

    mode: DevelopmentMode
    lock: ServerLock
    kek: str | None  # "generated" or "reused" (from the KEK file); None: GATEWAY_KEK was given
    admin_token_generated: bool


def prepare_development(env: dict[str, str], *, kek_needed: bool, admin_token_needed: bool) -> Development:
    """Lock the directory (EmbeddedRedisBusy when a server runs here) and complete `env` with the
    server's URL and the session secrets that neither the environment nor the TOML file sets.
    Nothing is started or written yet but the lock file."""
    mode = development_mode()
    url = f"unix://{mode.socket.resolve()}"  # where EmbeddedRedis(mode.redis_dir, unix_socket=True) listens
    lock = ServerLock(mode.redis_dir).acquire(url)
    env["GATEWAY_REDIS_URL"] = url
    kek = None
    if kek_needed:
        kept = mode.kek()
        kek = "reused" if kept is not None else "generated"
        env["GATEWAY_KEK"] = kept or generate_key()  # validated now, kept once the port is bound
    admin_token_generated = admin_token_needed
    if admin_token_generated:
        env["GATEWAY_ADMIN_TOKEN"] = secrets.token_urlsafe(32)
    return Development(mode, lock, kek, admin_token_generated)


def development_unusable(exc: OSError) -> str:
    """Why development mode cannot keep its state where it is configured to, and what to do."""
    where = development_mode().directory
    reason = exc.strerror or type(exc).__name__
    return (
        f"GATEWAY_REDIS_URL is not set, and development mode cannot keep its embedded Redis in {where} "
        f"({reason}): set GATEWAY_REDIS_URL (production), or run from a writable directory, or set "
        "GATEWAY_EMBEDDED_DIR to one"
    )


def start_development(development: Development, env: dict[str, str]) -> EmbeddedRedis:
    mode = development.mode
    server = EmbeddedRedis(mode.redis_dir, unix_socket=True, lock=development.lock).start()
    notes = [f"embedded Redis (single machine only, data in {server.data_dir}): {server.url}"]
    if development.kek == "generated":
        mode.keep_new_kek()
        env["GATEWAY_KEK"] = mode.kek() or ""
        notes.append(f"GATEWAY_KEK generated and kept in {mode.kek_file} (mode 600) so sealed tokens reopen")
    elif development.kek == "reused":
        notes.append(f"GATEWAY_KEK reused from {mode.kek_file} (generated by an earlier run)")
    if development.admin_token_generated:
        notes.append(f"GATEWAY_ADMIN_TOKEN for this session: {env['GATEWAY_ADMIN_TOKEN']}")
    banner = ["", "*** gateway: development mode ***", *notes]
    banner += ["Set GATEWAY_REDIS_URL, GATEWAY_KEK and GATEWAY_ADMIN_TOKEN for production.", ""]
    sys.stderr.write("\n".join(banner) + "\n")
    return server


def announce(settings: Settings, listeners: Listeners) -> None:
    host, port = settings.host, listeners.public[0].getsockname()[1]
    where = "webhooks, /healthz, /readyz" + ("" if listeners.admin is not None else ", /admin, /metrics")
    lines = [f"gateway: listening on http://{show(host, port)} ({where})"]
    if listeners.admin is not None:
        lines.append(f"gateway: admin on http://{show(settings.admin_host, listeners.admin.getsockname()[1])}")
        lines[-1] += " (/admin, /metrics)"
    if settings.public_base is not None:
        base = settings.public_base
        lines.append(f"gateway: carriers call {base.scheme}://{base.netloc}{base.path_prefix}")
    if len(listeners.public) > 1:
        lines.append(f"gateway: {settings.workers} workers, a listening socket each (SO_REUSEPORT)")
    sys.stderr.write("\n".join(lines) + "\n")


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
    development = None
    try:
        # Development mode fills in only what neither the environment nor config/gateway.toml sets.
        missing = development_needed(env)
        admin_token_needed = not configured(env).get("GATEWAY_ADMIN_TOKEN")
    except SettingsError as exc:
        sys.stderr.write(f"gateway: invalid setting: {exc}\n")
        return STARTUP_FAILURE
    if "GATEWAY_REDIS_URL" in missing:
        try:
            development = prepare_development(
                env, kek_needed="GATEWAY_KEK" in missing, admin_token_needed=admin_token_needed
            )
        except EmbeddedRedisError as exc:
            sys.stderr.write(f"gateway: {exc}\n")
            return STARTUP_FAILURE
        except OSError as exc:  # e.g. a read-only working directory (a container's WORKDIR)
            sys.stderr.write(f"gateway: {development_unusable(exc)}\n")
            return STARTUP_FAILURE
    embedded: EmbeddedRedis | None = None
    metrics_dir: str | None = None
    try:
        try:
            settings = from_env(env)
            settings.verifier_options()  # the Exotel allowlist file is read and checked now
        except SettingsError as exc:
            sys.stderr.write(f"gateway: invalid setting: {exc}\n")
            return STARTUP_FAILURE
        try:
            listeners = listen(settings)
        except ListenError as exc:
            sys.stderr.write(f"gateway: {exc}\n")
            return STARTUP_FAILURE
        if development is not None:
            try:
                embedded = start_development(development, env)
            except EmbeddedRedisError as exc:
                sys.stderr.write(f"gateway: cannot start the embedded Redis: {exc}\n")
                listeners.close()
                return STARTUP_FAILURE
            except OSError as exc:  # its data directory or the KEK file cannot be written
                sys.stderr.write(f"gateway: {development_unusable(exc)}\n")
                listeners.close()
                return STARTUP_FAILURE
        announce(settings, listeners)
        os.environ.update(env)  # workers re-read the settings from the environment
        if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        return serve(settings, listeners)
    finally:
        if embedded is not None:
            embedded.stop()
        if development is not None:
            development.lock.release()
        if metrics_dir is not None:  # ours: created for this run, removed with it
            shutil.rmtree(metrics_dir, ignore_errors=True)
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


def serve(settings: Settings, listeners: Listeners) -> int:
    config = uvicorn.Config(  # looked up at call time: loadtests/serve.py swaps the application through it
        "gateway.app:create_app",
        factory=True,
        workers=settings.workers,
        log_config=log_config(settings.log_level),
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
    if settings.workers > 1:
        return Supervisor(config, listeners).run()
    # After its graceful shutdown uvicorn re-raises the signal it caught, with the handler
    # that was there before it started. SIGTERM's default would kill us on the spot, before
    # run()'s `finally` stops the embedded Redis (left running, orphaned); as SystemExit
    # the cleanup runs and the exit status still says "terminated" (128 + 15).
    signal.signal(signal.SIGTERM, exit_on_signal)
    server = uvicorn.Server(config)
    server.run(sockets=listeners.all())
    return 0 if server.started else STARTUP_FAILURE


def exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the gateway (embedded Redis when GATEWAY_REDIS_URL is unset)")
    p.add_argument("--host", help="listen address [env GATEWAY_HOST, default 127.0.0.1]")
    p.add_argument("--port", type=int, help="listen port [env GATEWAY_PORT, default 8080]")
    p.add_argument("--workers", type=int, help="worker processes [env GATEWAY_WORKERS, default 1]")
    p.add_argument("--admin-port", type=int, help="serve /admin and /metrics only here [env GATEWAY_ADMIN_PORT]")
    p.set_defaults(func=run)
