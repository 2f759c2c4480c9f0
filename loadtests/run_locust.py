"""One command for the Locust scenario: private Redis, gateway, phones, headless Locust, checks.

    python -m loadtests.run_locust [--users 50] [--spawn-rate 10] [--duration 60s]

Starts a private Redis (loadtests/harness.py) and `gateway serve` (through loadtests/serve.py)
with the settings the scenario needs:
  GATEWAY_TRUSTED_PROXIES=127.0.0.1/32   the load generator is the "proxy": its X-Forwarded-For
                                         (the carrier's address) is believed, which is how
                                         Exotel's source-IP allowlist is exercised from 127.0.0.1;
  EXOTEL_ALLOWED_IPS=203.0.113.0/24      the documentation range the scenario's Exotel sends from;
  GATEWAY_PUBLIC_BASE_URL=https://hooks.example.com   the URL the requests are signed for;
  GATEWAY_ADMIN_TOKEN                    so the locustfile registers its phones at test start.
Then runs Locust headless, writing loadtests/results/locust_*.csv and locust.html, and checks:
no failures at all (a forged request answered 2xx is one), the stream grew by exactly
the gateway's accepted count, which is at least the valid requests Locust saw answered 200,
and every exact copy of an accepted request (REPLAYED) was answered 200 as a duplicate,
counted as one (outcome="duplicate"), and added nothing to the stream.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

from loadtests import harness
from loadtests.signed import FORGED_ACCEPTED, REPLAYED  # not from the locustfile: importing locust monkey-patches

STREAM = "gateway:events"


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--spawn-rate", type=float, default=10)
    parser.add_argument("--duration", default="60s")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    args = parser.parse_args(argv)
    prefix = harness.RESULTS / "locust"
    redis_server = harness.start_redis()
    try:
        env = harness.gateway_env(redis_server.url)
        log = harness.RESULTS / "tmp" / "locust-gateway.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with harness.Server("gateway", env, "0-1", workers=args.workers, log_path=log) as gateway:
            before = harness.stream_length(redis_server.url, STREAM)
            metrics_before = harness.metrics_text(gateway.base_url)
            accepted_before = harness.metric_sum(metrics_before, "gateway_requests_total", outcome="accepted")
            duplicates_before = harness.metric_sum(metrics_before, "gateway_requests_total", outcome="duplicate")
            cmd = [sys.executable, "-m", "locust", "-f", str(harness.REPO / "loadtests" / "locustfile.py")]
            cmd += ["--headless", "-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.duration]
            cmd += ["--host", gateway.base_url, "--csv", str(prefix), "--html", f"{prefix}.html", "--only-summary"]
            cmd += ["--json-file", str(prefix)]  # final figures (the CSV files are written periodically)
            locust_env = {**env, "PYTHONPATH": str(harness.REPO)}
            done = subprocess.run(cmd, cwd=harness.REPO, env=locust_env, timeout=3600, check=False)
            growth = harness.settle_stream(redis_server.url, STREAM) - before
            metrics_after = harness.metrics_text(gateway.base_url)
            accepted = harness.metric_sum(metrics_after, "gateway_requests_total", outcome="accepted") - accepted_before
            duplicates = (
                harness.metric_sum(metrics_after, "gateway_requests_total", outcome="duplicate") - duplicates_before
            )
    finally:
        redis_server.cleanup()

    stats = json.loads(Path(f"{prefix}.json").read_text())
    forged = [e for e in stats if "FORGED" in e["name"]]
    replayed = [e for e in stats if e["name"] == REPLAYED]
    valid = [e for e in stats if e not in forged and e not in replayed]
    failed = sum(e["num_failures"] for e in stats)
    total = sum(e["num_requests"] for e in stats)
    valid_ok = sum(e["num_requests"] - e["num_failures"] for e in valid)
    refused = sum(e["num_requests"] - e["num_failures"] for e in forged)
    forged_accepted = sum(
        int(r["Occurrences"]) for r in _rows(Path(f"{prefix}_failures.csv")) if FORGED_ACCEPTED in r["Error"]
    )
    print(f"\nrequests {total}, failures {failed} (forged accepted: {forged_accepted}), forged refused {refused}")
    replays_ok = sum(e["num_requests"] - e["num_failures"] for e in replayed)
    print(f"valid answered 200: {valid_ok}; gateway accepted {accepted:.0f}; stream grew {growth}")
    print(f"replays answered 200: {replays_ok}; gateway duplicates {duplicates:.0f}")
    problems = []
    if done.returncode not in (0, 1):
        problems.append(f"locust exited {done.returncode}")
    if failed or forged_accepted:
        not_refused = sum(e["num_failures"] for e in forged)
        problems.append(f"{failed} failures ({not_refused} forged requests not refused with 401/403)")
    if not (accepted == growth and valid_ok <= growth <= valid_ok + args.users):
        problems.append("stream growth does not match the accepted requests")
    if not refused:
        problems.append("no forged request was sent")
    if duplicates != replays_ok:
        problems.append("the replays answered 200 are not the gateway's duplicates")
    print("checks: " + ("OK" if not problems else "FAILED: " + "; ".join(problems)))
    print(f"results: {prefix}_stats.csv, {prefix}_failures.csv, {prefix}.html, {prefix}.json")
    return 0 if not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
