"""A small open-loop (fixed-rate) HTTP load generator, for latency at a given rate.

    python -m loadtests.openloop --url http://127.0.0.1:8080 --file REQUESTS --rate 8000 --duration 10

wrk is closed-loop (each connection waits for its answer before sending again), so its
latencies hide queueing ("coordinated omission"); wrk2 is not packaged in Debian. This
generator sends request i at t0 + i/rate whatever happened before, on any idle
keep-alive connection (queueing in the generator when all are busy), and measures each
latency from the request's *intended* send time, as wrk2 does. Timers have 1 ms
resolution (libuv), so requests due within the same millisecond leave together: the
figures include up to 1 ms of that quantisation, equally for every server measured, and
the schedule lag (write time - intended time) is reported so the generator can be seen
to keep up. Requests come from a pre-signed file (loadtests/requests_file.py): no crypto
here. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import resource
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from loadtests import requests_file

perf = time.perf_counter


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[index]


class Generator:
    def __init__(self, requests: list[bytes], rate: float, duration_s: float, warmup_s: float) -> None:
        self.requests = requests
        self.rate = rate
        self.total = min(len(requests), int(rate * (duration_s + warmup_s)))
        self.warmup_n = int(rate * warmup_s)
        self.idle: collections.deque[Connection] = collections.deque()
        self.backlog: collections.deque[tuple[int, float]] = collections.deque()
        self.latency: list[float] = []  # from intended send time (open-loop)
        self.service: list[float] = []  # from the actual write
        self.lag: list[float] = []  # write time - intended time
        self.statuses: collections.Counter[int] = collections.Counter()
        self.completed = 0
        self.done = asyncio.get_running_loop().create_future()

    def dispatch(self, index: int, intended: float) -> None:
        if self.idle:
            self.idle.popleft().send(index, intended)
        else:
            self.backlog.append((index, intended))

    def finished(self, conn: Connection, index: int, intended: float, written: float, status: int) -> None:
        now = perf()
        self.completed += 1
        self.statuses[status] += 1
        if index >= self.warmup_n:
            self.latency.append(now - intended)
            self.service.append(now - written)
            self.lag.append(written - intended)
        if self.backlog:
            conn.send(*self.backlog.popleft())
        else:
            self.idle.append(conn)
        if self.completed == self.total and not self.done.done():
            self.done.set_result(None)

    async def pace(self) -> float:
        t0 = perf() + 0.01
        sent = 0
        while sent < self.total:
            now = perf()
            due = min(self.total, int((now - t0) * self.rate) + 1) if now >= t0 else 0
            while sent < due:
                self.dispatch(sent, t0 + sent / self.rate)
                sent += 1
            await asyncio.sleep(0.001)
        return t0


class Connection(asyncio.Protocol):
    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.current: tuple[int, float, float] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def send(self, index: int, intended: float) -> None:
        assert self.transport is not None
        self.current = (index, intended, perf())
        self.transport.write(self.gen.requests[index])

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            status = int(head[9:12])
            current, self.current = self.current, None
            if current is not None:
                self.gen.finished(self, current[0], current[1], current[2], status)


async def run(
    url: str, requests: list[bytes], rate: float, duration_s: float, warmup_s: float, conns: int
) -> dict[str, object]:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    gen = Generator(requests, rate, duration_s, warmup_s)
    connections = []
    for _ in range(conns):
        _transport, protocol = await loop.create_connection(
            lambda: Connection(gen), parts.hostname or "127.0.0.1", parts.port or 80
        )
        connections.append(protocol)
        gen.idle.append(protocol)
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = await gen.pace()
    try:
        await asyncio.wait_for(gen.done, timeout=30)
    except TimeoutError:
        pass
    elapsed = perf() - t0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    for protocol in connections:
        if protocol.transport is not None:
            protocol.transport.close()
    cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)

    def ms(values: list[float], p: float) -> float:
        return round(percentile(values, p) * 1000, 3)

    return {
        "rate_target": rate,
        "sent": gen.total,
        "completed": gen.completed,
        "achieved_rate": round(gen.completed / elapsed, 1) if elapsed else 0.0,
        "statuses": {str(k): v for k, v in sorted(gen.statuses.items())},
        "measured": len(gen.latency),
        "p50_ms": ms(gen.latency, 50),
        "p90_ms": ms(gen.latency, 90),
        "p99_ms": ms(gen.latency, 99),
        "p999_ms": ms(gen.latency, 99.9),
        "max_ms": round(max(gen.latency) * 1000, 3) if gen.latency else None,
        "service_p50_ms": ms(gen.service, 50),
        "service_p99_ms": ms(gen.service, 99),
        "lag_p50_ms": ms(gen.lag, 50),
        "lag_p99_ms": ms(gen.lag, 99),
        "generator_cpu_share": round(cpu / elapsed, 3) if elapsed else None,
        "lost_connections": sum(1 for c in connections if c.lost),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--file", required=True, type=Path)
    parser.add_argument("--rate", required=True, type=float, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds sent first and not measured")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    requests = list(requests_file.read(args.file))
    needed = int(args.rate * (args.duration + args.warmup))
    if len(requests) < needed:
        sys.stderr.write(f"openloop: {args.file} holds {len(requests)} requests, {needed} needed\n")
        return 2
    import uvloop  # comes with uvicorn[standard], as the server uses it

    # The generator's own pauses would show up as latency: its data (request bytes, floats)
    # holds no reference cycles, so the cyclic GC is switched off for the run.
    gc.collect()
    gc.disable()

    result = uvloop.run(run(args.url, requests, args.rate, args.duration, args.warmup, args.connections))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
