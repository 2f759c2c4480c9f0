"""Processes for the benchmarks: a private Redis, servers pinned to cores, wrk, CPU accounting.

Everything listens on 127.0.0.1 only; every wait is bounded; every process started here
is stopped here, by its own pid / process group.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from gateway.embedded_redis import EmbeddedRedis, free_port
from loadtests.phones import EXOTEL_ALLOWED_IPS, PUBLIC_BASE_URL

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "loadtests" / "results"
REPLAY_LUA = REPO / "loadtests" / "replay.lua"
ADMIN_TOKEN = "loadtest-admin-token-0123456789abcdef"
KEK = base64.b64encode(b"loadtest-kek-not-a-real-secret!!").decode()
CLK_TCK = os.sysconf("SC_CLK_TCK")


def start_redis() -> EmbeddedRedis:
    """A private server as in development mode (AOF, fsync every second), minus automatic
    AOF rewrites, whose fork would land in the middle of a measurement."""
    server = EmbeddedRedis(appendonly=True, extra_args=("--auto-aof-rewrite-percentage", "0"))
    return server.start()


def gateway_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in [n for n in env if n.startswith("GATEWAY_") or n == "PROMETHEUS_MULTIPROC_DIR"]:
        del env[name]
    env.update(
        {
            "GATEWAY_REDIS_URL": redis_url,
            "GATEWAY_KEK": KEK,
            "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
            "GATEWAY_PUBLIC_BASE_URL": PUBLIC_BASE_URL,
            "GATEWAY_TRUSTED_PROXIES": "127.0.0.1/32",
            "EXOTEL_ALLOWED_IPS": EXOTEL_ALLOWED_IPS,
            "PYTHONPATH": str(REPO),
        }
    )
    env.update(extra)
    return env


# ---- CPU accounting ---------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, utime+stime seconds) from /proc, or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu(root: int) -> float:
    """CPU seconds used so far by `root` and all its live descendants."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                parents[int(entry)], cpu[int(entry)] = stat
    total, frontier = 0.0, [root]
    while frontier:
        pid = frontier.pop()
        total += cpu.get(pid, 0.0)
        frontier.extend(child for child, parent in parents.items() if parent == pid)
    return total


def busy_cpu() -> float:
    """CPU seconds all cores have spent busy so far (user+nice+system+irq+softirq+steal)."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:9]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields)
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


# ---- servers ----------------------------------------------------------------------------------


@dataclass
class Server:
    """`python -m loadtests.serve APP` pinned with taskset; stopped by its own process group."""

    app: str
    env: dict[str, str]
    cpus: str
    workers: int = 1
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    src: Path | None = None  # another source tree of the gateway (e.g. a `git archive` of an older commit)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> Server:
        cmd = ["taskset", "-c", self.cpus, sys.executable, "-m", "loadtests.serve", self.app]
        cmd += ["--port", str(self.port), "--workers", str(self.workers)]
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = dict(self.env)
        env["PYTHONPATH"] = f"{self.src}:{REPO}" if self.src else str(REPO)
        # Not the repository as working directory: `python -m` puts the cwd first on sys.path,
        # which would shadow `src`.
        workdir = RESULTS / "tmp"
        workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        path = "/" if self.app == "bare" else "/healthz"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.app} server exited at start (log: {self.log_path})")
            try:
                with urllib.request.urlopen(self.base_url + path, timeout=1) as response:  # noqa: S310
                    if response.status < 500:
                        if self.app == "gateway":
                            self._wait_ready(deadline)
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.app} server did not answer within {timeout_s} s")

    def _wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.base_url + "/readyz", timeout=1) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)

    def cpu(self) -> float:
        assert self.process is not None
        return tree_cpu(self.process.pid)

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = _stat(int(entry))
                if stat is not None and stat[0] == self.process.pid:
                    pids.append(int(entry))
        return pids

    def serving_pids(self) -> list[int]:
        """The processes that serve requests: the server itself, or its uvicorn workers
        (not multiprocessing's resource tracker)."""
        assert self.process is not None
        if self.workers == 1:
            return [self.process.pid]
        return [pid for pid in self.worker_pids() if b"spawn_main" in _cmdline(pid)]

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


CPU_CGROUP = Path("/sys/fs/cgroup/cpu")  # the cgroup v1 CPU controller (this VM's kernel)


@contextlib.contextmanager
def cpu_quota(pids: list[int], share: float, period_us: int = 10_000) -> Iterator[None]:
    """Hold each process to `share` of one core (a CFS bandwidth quota, one cgroup per process).

    A 10 ms period keeps the throttling fine-grained: a process runs at most share x 10 ms in
    every 10 ms. Processes are moved back to the root group and the groups removed afterwards.
    """
    if not (CPU_CGROUP / "cgroup.procs").exists():
        raise RuntimeError(f"no cgroup v1 CPU controller at {CPU_CGROUP}: cannot set CPU quotas")
    groups: list[Path] = []
    try:
        for pid in pids:
            group = CPU_CGROUP / f"gateway-bench-{pid}"
            group.mkdir(exist_ok=True)
            groups.append(group)
            (group / "cpu.cfs_period_us").write_text(str(period_us))
            (group / "cpu.cfs_quota_us").write_text(str(int(period_us * share)))
            (group / "cgroup.procs").write_text(str(pid))
        yield
    finally:
        for group in groups:
            for member in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (CPU_CGROUP / "cgroup.procs").write_text(member)
            with contextlib.suppress(OSError):
                group.rmdir()


def metrics_text(base_url: str) -> str:
    with urllib.request.urlopen(base_url + "/metrics", timeout=5) as response:  # noqa: S310
        body: bytes = response.read()
        return body.decode()


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def stream_length(redis_url: str, stream: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.xlen(stream))
    finally:
        client.close()


def settle_stream(redis_url: str, stream: str, timeout_s: float = 10.0) -> int:
    """XLEN once it has stopped growing (requests in flight at wrk's stop finish first)."""
    deadline = time.monotonic() + timeout_s
    last = stream_length(redis_url, stream)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = stream_length(redis_url, stream)
        if now == last:
            return now
        last = now
    return last


# ---- wrk ----------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    non2xx: int
    socket_errors: int
    sent: int
    wrapped: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    cpu_s: float  # wrk's own CPU while sending (not loading its file)
    total_cpu_s: float  # wrk's CPU including loading its file
    wall_s: float  # wrk's whole life, loading included
    raw: str

    @property
    def cpu_share(self) -> float:
        """wrk's CPU use as a fraction of one core over the run."""
        return self.cpu_s / self.duration_s if self.duration_s else 0.0


def run_wrk(
    url: str,
    requests_file: Path,
    *,
    duration_s: float,
    connections: int = 64,
    threads: int = 1,
    cpus: str = "0",
    timeout_s: float = 5.0,
) -> WrkResult:
    cmd = ["taskset", "-c", cpus, "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s"]
    cmd += ["--latency", f"--timeout={timeout_s:g}s", "-s", str(REPLAY_LUA), url, "--", str(requests_file)]
    cmd.append(str(threads))
    out_path = RESULTS / "tmp" / f"wrk-{os.getpid()}-{time.monotonic_ns()}.txt"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with open(out_path, "wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + duration_s + 120
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                process.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("wrk did not finish")
            time.sleep(0.05)
    text = out_path.read_text()
    out_path.unlink()
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}): {text}")
    fields: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("REPLAY "):
            for item in line.split()[1:]:
                key, _, value = item.partition("=")
                fields[key] = float(value)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    duration = fields["duration_us"] / 1e6
    return WrkResult(
        requests=int(fields["requests"]),
        duration_s=duration,
        rps=fields["requests"] / duration,
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(g) for g in socket.groups()) if socket else 0,
        sent=int(fields["sent"]),
        wrapped=int(fields["wrapped"]),
        p50_ms=fields["p50"] / 1000,
        p90_ms=fields["p90"] / 1000,
        p99_ms=fields["p99"] / 1000,
        mean_ms=fields["mean_us"] / 1000,
        cpu_s=fields["cpu_s"],
        total_cpu_s=usage.ru_utime + usage.ru_stime,
        wall_s=time.monotonic() - began,
        raw=text,
    )


def register_naive_phones(redis_url: str, phones: list[Any]) -> None:
    """The naive app's own, plain-text phone table."""
    client = redis.Redis.from_url(redis_url)
    try:
        for phone in phones:
            mapping = {k: v for k, v in phone.credentials.items() if k in ("auth_token", "public_key")}
            client.hset(f"naive:phone:{phone.id}", mapping=mapping)
    finally:
        client.close()
