"""A wheel works: built from the sources, installed (not editable) into a fresh venv, served
from an empty directory.

Offline, so the fresh venv gets the project's dependencies from this test run's own
environment through a `.pth` line (site-packages of the running interpreter), after its
own site-packages: the wheel's `gateway` must win over the editable checkout, which the
test checks (`gateway.__file__` inside the fresh venv). Slow (~10 s):

    .venv/bin/python -m pytest -m slow tests/install
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.helpers.support import KEK, REPO

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_wheel(tmp_path: Path) -> Path:
    """`pip wheel` on a copy of the sources (an in-tree build would write build/ into the checkout)."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "gateway", source / "gateway", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), "."],
        cwd=source,
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("*.whl")
    return wheel


def test_wheel_installs_and_serves_from_an_empty_directory(tmp_path: Path, redis_url: str) -> None:
    wheel = build_wheel(tmp_path)
    assert "gateway/data/exotel_allowed_ips.txt" in zipfile.ZipFile(wheel).namelist()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        timeout=300,
    )
    purelib = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # The dependencies (not the project: the editable finder is a .pth *file*, which a .pth line does not run).
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    empty = tmp_path / "empty"
    empty.mkdir()
    location = subprocess.run(
        [str(python), "-c", "import gateway; print(gateway.__file__)"],
        cwd=empty,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert Path(location).is_relative_to(venv), f"the checkout shadows the wheel: {location}"

    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GATEWAY_", "EXOTEL_", "PYTHON")) and key != "VIRTUAL_ENV"
    }
    env.update(GATEWAY_REDIS_URL=redis_url, GATEWAY_KEK=KEK, GATEWAY_PORT=str(port))
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(venv / "bin" / "gateway"), "serve"], cwd=empty, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        status = None
        while status != 200:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                status = response.status_code
            except httpx.HTTPError:
                time.sleep(0.1)
        assert response.json()["exotel_allowlist_entries"] == 0  # the built-in (empty) list was read
    finally:
        process.terminate()
        process.wait(timeout=60)
    log_text = log_path.read_text()
    assert "Traceback" not in log_text
    assert not list(empty.iterdir()), "serve wrote into the working directory without embedded mode"
