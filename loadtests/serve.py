"""Serve the bare app, the naive app or the gateway through exactly the `gateway serve` code path.

    python -m loadtests.serve bare|naive|gateway [--port N --workers N ...]

`gateway serve` builds one uvicorn.Config (httptools, uvloop, keep-alive, limits,
logging); for `bare` and `naive` only the application it names is swapped, so every
server in the benchmark runs under the same uvicorn settings by construction.
Needs the usual GATEWAY_* environment (GATEWAY_REDIS_URL, GATEWAY_KEK).
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

from gateway import cli

APPS = {
    "bare": "loadtests.bare_app:create_app",
    "naive": "loadtests.naive_app:create_app",
    "gateway": None,  # unchanged: gateway.app:create_app
}
_ORIGINAL_CONFIG = uvicorn.Config
_TARGET: dict[str, str] = {}


class SwappedConfig(_ORIGINAL_CONFIG):
    """uvicorn.Config with only the application replaced (module level: worker processes unpickle it)."""

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(_TARGET.get("app", app), **kwargs)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in APPS:
        sys.stderr.write(f"usage: python -m loadtests.serve {{{'|'.join(APPS)}}} [gateway serve options]\n")
        return 2
    target = APPS[args[0]]
    if target is not None:
        _TARGET["app"] = target
        uvicorn.Config = SwappedConfig  # type: ignore[misc, assignment]
    return cli.main(["serve", *args[1:]])


if __name__ == "__main__":
    raise SystemExit(main())
