"""What the commands share: settings resolution, development-mode discovery, the key store, printing.

Settings come from the environment over config/gateway.toml (or the file GATEWAY_CONFIG
names). Development mode supplies GATEWAY_REDIS_URL and GATEWAY_KEK only where neither
source sets them (`development_needed()`), and keeps its state under one
directory (GATEWAY_EMBEDDED_DIR, default .gateway): the embedded server's data and unix
socket in redis/, the development KEK in kek. The other commands find that server and
KEK through `development_mode()`, with the socket's absolute path (a relative one would
read as unix://host/path): `gateway serve`, `phones`, `sign`, `explain` and `consume` agree.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.keystore import KeyStore
from gateway.random_ids import new_key
from gateway.redis_client import connect
from gateway.redis_keys import KeyNames
from gateway.sealing import Sealer
from gateway.settings import Settings, SettingsError, configured, from_env

STARTUP_FAILURE = 3
EMBEDDED_DIR = Path(os.environ.get("GATEWAY_EMBEDDED_DIR", ".gateway"))
NO_REDIS = "GATEWAY_REDIS_URL is not set (and no embedded server is running here)"


@dataclass(frozen=True)
class DevelopmentMode:
    """Development mode's state under `directory` (as configured: relative to the working directory)."""

    directory: Path

    @property
    def redis_dir(self) -> Path:
        """The embedded server's data directory; it listens on redis.sock in there."""
        return self.directory / "redis"

    @property
    def socket(self) -> Path:
        return self.redis_dir / "redis.sock"

    @property
    def kek_file(self) -> Path:
        return self.directory / "kek"

    def redis_url(self) -> str | None:
        """unix:// and the absolute socket path when an embedded server runs here, else None."""
        return f"unix://{self.socket.resolve()}" if self.socket.exists() else None

    def kek(self) -> str | None:
        """The development KEK, if one was kept here."""
        return self.kek_file.read_text().strip() if self.kek_file.exists() else None

    def keep_new_kek(self) -> None:
        """Generate the development KEK unless there is one, kept so sealed tokens reopen after a restart.

        The file is created with mode 600 by open(2) itself (O_CREAT|O_EXCL): no moment with the
        umask's permissions between creating it and restricting it, and two commands racing to
        create it cannot both write one (the loser keeps the winner's).
        """
        self.kek_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.kek_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            return
        with os.fdopen(fd, "w") as file:
            file.write(generate_key())


def development_mode() -> DevelopmentMode:
    """Where development mode keeps (or would keep) the embedded server and the KEK."""
    return DevelopmentMode(EMBEDDED_DIR)


def generate_key() -> str:
    """32 random bytes, base64 (a GATEWAY_KEK)."""
    return new_key()


def development_needed(env: Mapping[str, str]) -> frozenset[str]:
    """Which of GATEWAY_REDIS_URL and GATEWAY_KEK NEITHER the environment NOR the TOML file sets.

    Development mode supplies exactly these (the embedded server, the kept KEK); a value from
    config/gateway.toml (or GATEWAY_CONFIG) counts as set. SettingsError for an unreadable or
    invalid TOML file.
    """
    values = configured(env)
    return frozenset(name for name in ("GATEWAY_REDIS_URL", "GATEWAY_KEK") if not values.get(name))


def cli_settings(*, kek_required: bool = True) -> Settings:
    """The gateway's settings for a command: the environment over the TOML file, else development mode.

    Settings come from `configured()` (config/gateway.toml or GATEWAY_CONFIG, the environment
    winning). Development mode completes them only where NEITHER source sets a value:
    GATEWAY_REDIS_URL from the embedded server running here, GATEWAY_KEK from its kept KEK.
    kek_required False: without GATEWAY_KEK a throwaway KEK stands in, never used (a command that
    opens no phone record).
    """
    env = dict(os.environ)
    missing = development_needed(env)
    development = development_mode()
    if "GATEWAY_REDIS_URL" in missing:
        url = development.redis_url()
        if url is None:
            raise SettingsError(NO_REDIS)
        env["GATEWAY_REDIS_URL"] = url
    if "GATEWAY_KEK" in missing:
        if kek_required:
            kek = development.kek()
            if kek is not None:
                env["GATEWAY_KEK"] = kek
        else:
            env["GATEWAY_KEK"] = generate_key()
    return from_env(env)


def settings_failure(exc: SettingsError) -> int:
    """Report an invalid setting the one way every command does (no traceback) and return STARTUP_FAILURE."""
    sys.stderr.write(f"gateway: invalid setting: {exc}\n")
    return STARTUP_FAILURE


async def with_keystore(action: Callable[[KeyStore], Coroutine[Any, Any, int]]) -> int:
    """Run `action` with the KeyStore the admin API uses, against Redis directly (`cli_settings()`)."""
    settings = cli_settings()
    redis = connect(settings)
    try:
        store = KeyStore(redis, Sealer.from_settings(settings), KeyNames.from_settings(settings))
        return await action(store)
    finally:
        await redis.aclose()


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
