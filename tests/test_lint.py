"""The code stays ruff-clean and mypy --strict clean (pyproject.toml holds both configurations)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.helpers.support import REPO

PATHS = ["gateway", "tests", "loadtests", "fuzz"]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(REPO / ".venv" / "bin")) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (it is in the 'test' extra)")
    return found


def test_ruff_check_and_format() -> None:
    ruff = _tool("ruff")
    check = subprocess.run([ruff, "check", *PATHS], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run([ruff, "format", "--check", *PATHS], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_strict_everywhere() -> None:
    """The package, its tests, the load tests and the fuzz target: one strict mypy run (pyproject.toml)."""
    pytest.importorskip("mypy")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "gateway", "tests", "loadtests", "fuzz"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
