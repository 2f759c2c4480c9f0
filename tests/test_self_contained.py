"""The suite reads nothing outside the repository: a fresh clone with nothing beside it passes.

A static check over every test, benchmark and fuzz source (and CI's script): no path that
climbs out of the repository, and no absolute path of one machine.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.helpers.support import REPO, load_vectors, vectors_path

# What a reference to a place outside the repository looks like in our sources. Built from parts so
# that this file does not itself contain what it looks for (shared/hooks grep for the same).
UP = r"\.\./"
SIBLING = "sh" + "ared"
OUTSIDE = [
    re.compile(UP + f"(?:{SIBLING}|{UP})"),  # a sibling directory, or two levels up
    re.compile(r"\bREPO\.parent\b"),
    re.compile(r"\.parent\.parent\.parent\b"),  # from tests/x/y.py, the repository's parent
    re.compile(f"[\"']{SIBLING}[\"']\\s*/"),  # Path(...) / "<sibling>" / ...
    re.compile("/(?:wo" + "rk|root|home)/"),  # a path of one machine
]
SOURCES = ["tests", "loadtests", "fuzz", ".ci"]
ALLOWED: set[str] = set()  # this file builds its patterns from parts, so it is checked too


def _tracked(paths: list[str]) -> list[str]:
    out = subprocess.run(["git", "ls-files", *paths], cwd=REPO, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        pytest.skip("not a git checkout: cannot list tracked files")
    return [line for line in out.stdout.splitlines() if line and not line.startswith("loadtests/results/")]


def _offences(path: str) -> list[str]:
    try:
        text = (REPO / path).read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError):
        return []
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for pattern in OUTSIDE:
            if pattern.search(line):
                found.append(f"{path}:{number}: {line.strip()[:120]}")
    return found


def test_no_test_refers_to_a_path_outside_the_repository() -> None:
    sources = [path for path in _tracked(SOURCES) if path.endswith((".py", ".sh", ".toml", ".cfg", "run"))]
    assert sources, "no sources found"
    offences = [offence for path in sources if path not in ALLOWED for offence in _offences(path)]
    assert offences == []


def test_the_check_catches_a_climbing_path(tmp_path_factory: pytest.TempPathFactory) -> None:
    climbing = ".." + "/" + SIBLING + "/x.json"
    repo_parent = "REPO" + ".parent"
    samples = [f'json.loads(({repo_parent} / "{SIBLING}" / "vectors").read_text())', f'open("{climbing}")']
    for sample in samples:
        assert any(pattern.search(sample) for pattern in OUTSIDE), sample


def test_the_vectors_are_in_the_repository() -> None:
    path = vectors_path().resolve()
    assert path.is_relative_to(REPO.resolve())
    vectors = load_vectors()
    providers = {case["phone"]["provider"] for case in vectors["cases"]}
    assert providers >= {"plivo", "vobiz", "exotel", "telnyx", "twilio"}
