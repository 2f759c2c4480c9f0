"""Files of pre-signed raw HTTP requests for wrk (loadtests/replay.lua) and the open-loop generator.

Format: for each request, its byte count as 10 ASCII digits, then the raw request.
Every request has its own nonce / event id / CallUUID (unique per run id and index),
so replaying a file once never hits the replay or duplicate paths.
"""

from __future__ import annotations

import multiprocessing
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from loadtests import phones as lt_phones
from loadtests import signed

Builder = Callable[[int], bytes]


def _plivo_status(run: int, host: str, phones: int) -> Builder:
    group = [lt_phones.plivo_phone(i) for i in range(phones)]

    def build(i: int) -> bytes:
        phone = group[i % len(group)]
        params = signed.plivo_status_params(signed.call_uuid(run, i))
        return signed.plivo_request(phone, "status", params, signed.nonce(run, i)).raw(host)

    return build


def _telnyx(run: int, host: str, phones: int, timestamp: int) -> Builder:
    group = [lt_phones.telnyx_phone(i) for i in range(phones)]

    def build(i: int) -> bytes:
        phone = group[i % len(group)]
        return signed.telnyx_request(phone, signed.call_uuid(run, i), timestamp).raw(host)

    return build


def builder(kind: str, run: int, host: str, phones: int, timestamp: int) -> Builder:
    if kind == "plivo":
        return _plivo_status(run, host, phones)
    if kind == "telnyx":
        return _telnyx(run, host, phones, timestamp)
    raise ValueError(f"unknown request kind {kind!r}")


def _write_part(args: tuple[str, str, int, str, int, int, int, int]) -> int:
    path, kind, run, host, phones, timestamp, start, stop = args
    build = builder(kind, run, host, phones, timestamp)
    written = 0
    with open(path, "wb") as out:
        chunk: list[bytes] = []
        for i in range(start, stop):
            raw = build(i)
            chunk.append(b"%010d" % len(raw))
            chunk.append(raw)
            if len(chunk) >= 8192:
                out.write(b"".join(chunk))
                chunk.clear()
            written += 1
        out.write(b"".join(chunk))
    return written


def write(
    path: Path,
    kind: str,
    *,
    run: int,
    host: str,
    count: int,
    start: int = 0,
    phones: int = 16,
    timestamp: int | None = None,
    processes: int = 2,
) -> float:
    """Write `count` requests (indexes start..start+count) to `path`; returns seconds taken."""
    began = time.monotonic()
    stamp = int(time.time()) if timestamp is None else timestamp
    step = -(-count // processes)
    parts = []
    for p in range(processes):
        lo, hi = start + p * step, min(start + count, start + (p + 1) * step)
        if lo < hi:
            parts.append((f"{path}.part{p}", kind, run, host, phones, stamp, lo, hi))
    with multiprocessing.get_context("fork").Pool(len(parts)) as pool:
        pool.map(_write_part, parts)
    with open(path, "wb") as out:
        for part in parts:
            with open(part[0], "rb") as source:
                shutil.copyfileobj(source, out, 1 << 20)
            Path(part[0]).unlink()
    return time.monotonic() - began


def read(path: Path) -> Iterator[bytes]:
    data = Path(path).read_bytes()
    pos = 0
    while pos < len(data):
        length = int(data[pos : pos + 10])
        yield data[pos + 10 : pos + 10 + length]
        pos += 10 + length
