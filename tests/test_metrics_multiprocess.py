"""Multiprocess metrics: a stopped worker's live gauges disappear; its counters still count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.support import REPO

SCRIPT = """
import os
from gateway import metrics
metrics.STREAM_LENGTH.set(42)
metrics.FORWARDED.labels("plivo").inc(3)
if os.environ.get("RETIRE") == "1":
    metrics.retire_process()
"""


def run_worker(directory: Path, retire: bool) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "RETIRE": "1" if retire else "0"}
    subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=REPO, check=True, timeout=60)


def collect(directory: Path) -> str:
    code = "from gateway import metrics; print(metrics.render()[0].decode())"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, check=True, capture_output=True, text=True, timeout=60
    ).stdout


def test_retired_worker_gauges_are_dropped_counters_kept(tmp_path: Path) -> None:
    run_worker(tmp_path, retire=False)
    text = collect(tmp_path)
    assert "gateway_stream_length 42.0" in text
    for name in os.listdir(tmp_path):
        (tmp_path / name).unlink()
    run_worker(tmp_path, retire=True)
    text = collect(tmp_path)
    assert "gateway_stream_length 42.0" not in text
    assert 'gateway_forwarded_total{provider="plivo"} 3.0' in text
