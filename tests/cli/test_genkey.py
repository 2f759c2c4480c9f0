"""`gateway genkey`."""

from __future__ import annotations

import base64

import pytest

from gateway.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_genkey(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "genkey")
    assert code == 0 and len(base64.b64decode(out.strip())) == 32
