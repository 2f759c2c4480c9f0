"""Profile the gateway under wrk load with py-spy: a flame graph and a text summary.

    python -m loadtests.profile_gateway --label before [--kind plivo|telnyx] [--duration 10]

Same layout as the ceiling benchmark (gateway on CPU 1, wrk + Redis on CPU 0, 64
connections, pre-signed requests each sent once). py-spy samples the gateway process
(--nonblocking, so the process is never paused) in two back-to-back runs: one writes the
flame graph (loadtests/results/profile-LABEL-KIND.svg), one the collapsed stacks that
are summarised (self and inclusive share of the samples, top functions) into
loadtests/results/profile-LABEL-KIND.txt.
"""

from __future__ import annotations

import argparse
import collections
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtests import harness, requests_file
from loadtests import phones as lt_phones


def _pyspy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is required: pip install py-spy")
    return found


def summarise(collapsed: Path, top: int = 40) -> str:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        self_counts[frames[-1]] += count
        for frame in set(frames):
            incl_counts[frame] += count
    lines = [f"{total} samples (active time only; idle epoll waits excluded)", "", "## self time", ""]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in self_counts.most_common(top)]
    lines += ["", "## inclusive time", ""]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in incl_counts.most_common(top)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="run")
    parser.add_argument("--kind", choices=["plivo", "telnyx"], default="plivo")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--requests", type=int, default=250_000, help="pre-signed requests per run (never reused)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra gateway setting")
    args = parser.parse_args(argv)
    pyspy = _pyspy()
    tmp = Path(tempfile.mkdtemp(prefix="gateway-profile-"))
    redis_server = harness.start_redis()
    assert redis_server.process is not None
    subprocess.run(["taskset", "-a", "-p", "-c", "0", str(redis_server.process.pid)], check=True, capture_output=True)
    env = harness.gateway_env(redis_server.url, **dict(a.split("=", 1) for a in args.env))
    out_base = harness.RESULTS / f"profile-{args.label}-{args.kind}"
    run_id, index = random.getrandbits(40), 0
    try:
        with harness.Server("gateway", env, "1", log_path=harness.RESULTS / "tmp" / "profile-gateway.log") as gw:
            groups = lt_phones.all_phones(16)
            lt_phones.register(gw.base_url, harness.ADMIN_TOKEN, groups["plivo"] + groups["telnyx"])
            host = f"127.0.0.1:{gw.port}"
            assert gw.process is not None
            pid = gw.process.pid
            for output, fmt in ((out_base.with_suffix(".svg"), "flamegraph"), (tmp / "collapsed.txt", "raw")):
                path = tmp / f"{fmt}.req"
                count = args.requests
                requests_file.write(path, args.kind, run=run_id, host=host, count=count, start=index)
                index += count
                spy = subprocess.Popen(
                    [pyspy, "record", "--pid", str(pid), "--rate", str(args.rate), "--nonblocking"]
                    + ["--duration", f"{args.duration + 1:.0f}", "--format", fmt, "--output", str(output)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(0.5)
                wrk = harness.run_wrk(gw.base_url, path, duration_s=args.duration)
                spy.wait(timeout=args.duration + 60)
                sys.stderr.write(
                    f"[profile] {fmt}: {wrk.rps:,.0f} req/s under py-spy, non-2xx {wrk.non2xx}, wrapped {wrk.wrapped}\n"
                )
        # py-spy writes its command line (absolute paths of this machine) into the graph's title: keep the
        # committed file the same on anyone's machine.
        svg = out_base.with_suffix(".svg")
        svg.write_text(svg.read_text(encoding="utf-8").replace(str(harness.REPO) + "/", ""), encoding="utf-8")
        text = f"gateway {args.kind} under wrk (py-spy --rate {args.rate}, {args.duration:g} s)\n\n"
        text += summarise(tmp / "collapsed.txt")
        out_base.with_suffix(".txt").write_text(text)
        sys.stdout.write(text)
        sys.stdout.write(f"\nflame graph: {out_base.with_suffix('.svg')}\n")
    finally:
        redis_server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
