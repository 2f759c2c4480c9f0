"""The development KEK file (.gateway/kek) is created with mode 600 at once: no moment with the umask's mode."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.common import DevelopmentMode
from gateway.settings import parse_key32


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: a file created without an explicit mode would be world-readable (0o666)."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_the_kek_file_is_created_with_mode_600_by_open_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, open_umask: None
) -> None:
    development = DevelopmentMode(tmp_path / ".gateway")
    created: list[tuple[int, int]] = []
    real_open = os.open

    def spy_open(path: Any, flags: int, mode: int = 0o777, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, flags, mode, *args, **kwargs)
        if Path(path) == development.kek_file:
            info = os.fstat(fd)
            created.append((stat.S_IMODE(info.st_mode), info.st_size))  # the moment it exists, before any write
        return fd

    def no_chmod(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("the KEK file's mode is set after it was created")

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    development.keep_new_kek()

    assert created == [(0o600, 0)]  # created by os.open, already 600 and still empty
    assert stat.S_IMODE(development.kek_file.stat().st_mode) == 0o600
    kek = development.kek()
    assert kek is not None and len(parse_key32("GATEWAY_KEK", kek)) == 32


def test_an_existing_kek_is_kept(tmp_path: Path) -> None:
    development = DevelopmentMode(tmp_path / ".gateway")
    development.keep_new_kek()
    first = development.kek()
    development.keep_new_kek()
    assert development.kek() == first


def test_a_symlink_in_place_of_the_kek_file_is_not_followed(tmp_path: Path) -> None:
    """O_EXCL: an existing name (here a symlink planted to another file) is never opened for writing."""
    development = DevelopmentMode(tmp_path / ".gateway")
    development.directory.mkdir()
    target = tmp_path / "elsewhere"
    development.kek_file.symlink_to(target)
    development.keep_new_kek()
    assert not target.exists()
