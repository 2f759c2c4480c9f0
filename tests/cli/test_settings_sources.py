"""Settings for every command: config/gateway.toml (or GATEWAY_CONFIG), the environment over it,
development mode only where neither sets a value; and every start-up error reported as a settings error.

Each test runs the real command line (a subprocess) in a temporary working directory, with no
GATEWAY_* variable inherited, against a private Redis.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from gateway.cli.common import STARTUP_FAILURE, DevelopmentMode
from gateway.embedded_redis import EmbeddedRedis
from gateway.redis_keys import KeyNames
from gateway.sealing import Sealer
from tests.helpers.support import KEK, REPO

TOKEN = "toml-cli-auth-token-0123456789abcdef"
OTHER_KEK = base64.b64encode(b"o" * 32).decode()
UNREACHABLE = "redis://192.0.2.1:6379/0"  # TEST-NET-1: never answers
PUT = ["phones", "put", "ph_toml", "--provider", "plivo"]
PUT += ["--credential", "auth_id=MAEXAMPLE", "--credential", "auth_token=env:PLIVO_TOKEN"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any GATEWAY_* setting, run from the repository's code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "EXOTEL_"))}
    env["PYTHONPATH"] = str(REPO)
    env["PLIVO_TOKEN"] = TOKEN
    return {**env, **extra}


def gateway(
    work: Path, *argv: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a command to its end; one still running after `timeout` (a serve that started) is stopped with SIGTERM."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", *argv],
        cwd=work,
        env=env if env is not None else clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()  # SIGTERM: serve stops any embedded server it started
        stdout, stderr = process.communicate(timeout=30)
        stderr += f"\n[still running after {timeout} s]"
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def write_toml(path: Path, **settings: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "[gateway]\n" + "".join(f"{name} = {orjson.dumps(value).decode()}\n" for name, value in settings.items())
    )
    return path


def sealed_token(url: str, phone_id: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        raw = client.get(f"gateway:phone:{phone_id}")
    finally:
        client.close()
    assert raw is not None, f"{phone_id} is not in {url}"
    sealed: str = orjson.loads(raw)["keys"][0]["sealed"]
    return sealed


def opens_with(kek: str, phone_id: str, sealed: str) -> bool:
    try:
        return Sealer(base64.b64decode(kek)).open(phone_id, sealed) == TOKEN
    except Exception:
        return False


@pytest.fixture
def work() -> Iterator[Path]:
    """An empty working directory with a short path (unix sockets)."""
    with tempfile.TemporaryDirectory(prefix="gw-cfg-") as directory:
        yield Path(directory)


# ---- item 7: the TOML file is a full settings source ----------------------------------------------


def test_phones_put_and_get_use_the_toml_redis_url_and_kek(work: Path, private_redis: EmbeddedRedis) -> None:
    """Was: "GATEWAY_REDIS_URL is not set" although config/gateway.toml sets it."""
    write_toml(work / "config" / "gateway.toml", GATEWAY_REDIS_URL=private_redis.url, GATEWAY_KEK=KEK)
    put = gateway(work, *PUT)
    assert put.returncode == 0, put.stderr
    assert opens_with(KEK, "ph_toml", sealed_token(private_redis.url, "ph_toml"))  # sealed under the TOML's KEK
    got = gateway(work, "phones", "get", "ph_toml")
    assert got.returncode == 0 and orjson.loads(got.stdout)["phone_id"] == "ph_toml", got.stderr
    assert TOKEN not in got.stdout + got.stderr + put.stdout + put.stderr
    assert not (work / ".gateway").exists()  # no development mode


def test_gateway_config_names_the_file(work: Path, private_redis: EmbeddedRedis, tmp_path: Path) -> None:
    config = write_toml(tmp_path / "elsewhere.toml", GATEWAY_REDIS_URL=private_redis.url, GATEWAY_KEK=KEK)
    put = gateway(work, *PUT, env=clean_env(GATEWAY_CONFIG=str(config)))
    assert put.returncode == 0, put.stderr
    assert opens_with(KEK, "ph_toml", sealed_token(private_redis.url, "ph_toml"))


def test_the_environment_wins_over_the_toml_file(work: Path, private_redis: EmbeddedRedis) -> None:
    write_toml(work / "config" / "gateway.toml", GATEWAY_REDIS_URL=UNREACHABLE, GATEWAY_KEK=OTHER_KEK)
    put = gateway(work, *PUT, env=clean_env(GATEWAY_REDIS_URL=private_redis.url, GATEWAY_KEK=KEK))
    assert put.returncode == 0, put.stderr
    sealed = sealed_token(private_redis.url, "ph_toml")
    assert opens_with(KEK, "ph_toml", sealed) and not opens_with(OTHER_KEK, "ph_toml", sealed)


def test_development_mode_only_where_neither_source_sets_a_value(work: Path, private_redis: EmbeddedRedis) -> None:
    """An embedded server and a kept KEK in .gateway/ are ignored when the TOML file sets both."""
    development = DevelopmentMode(work / ".gateway")
    embedded = EmbeddedRedis(development.redis_dir, unix_socket=True, appendonly=False).start()
    try:
        development.keep_new_kek()
        write_toml(work / "config" / "gateway.toml", GATEWAY_REDIS_URL=private_redis.url, GATEWAY_KEK=KEK)
        put = gateway(work, *PUT)
        assert put.returncode == 0, put.stderr
        sealed = sealed_token(private_redis.url, "ph_toml")
        assert opens_with(KEK, "ph_toml", sealed)
        assert not opens_with(development.kek() or "", "ph_toml", sealed)
        assert redis.Redis.from_url(embedded.url).get("gateway:phone:ph_toml") is None

        # The TOML file sets the Redis URL only: the KEK still comes from development mode
        # (on an empty Redis: what is kept there was sealed under the other KEK).
        redis.Redis.from_url(private_redis.url).flushall()
        write_toml(work / "config" / "gateway.toml", GATEWAY_REDIS_URL=private_redis.url)
        put = gateway(work, "phones", "put", "ph_devkek", *PUT[3:])
        assert put.returncode == 0, put.stderr
        assert opens_with(development.kek() or "", "ph_devkek", sealed_token(private_redis.url, "ph_devkek"))
    finally:
        embedded.stop()


def test_consume_once_uses_the_toml_redis_url(work: Path, private_redis: EmbeddedRedis) -> None:
    event = orjson.dumps({"schema_version": 1, "id": "1" * 32, "provider": "plivo", "phone_id": "ph_toml"})
    client = redis.Redis.from_url(private_redis.url)
    client.xadd("toml:events", {"event": event})
    write_toml(work / "config" / "gateway.toml", GATEWAY_REDIS_URL=private_redis.url, GATEWAY_STREAM="toml:events")
    done = gateway(work, "consume", "--group", "dispatch", "--consumer", "c", "--once")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == orjson.loads(event)
    assert int(client.xpending("toml:events", "dispatch")["pending"]) == 0
    client.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_uses_the_toml_redis_url_and_kek(work: Path, private_redis: EmbeddedRedis) -> None:
    """No embedded server, no generated KEK: the gateway writes its readiness probe to the TOML's Redis."""
    port = _free_port()
    write_toml(work / "config" / "gateway.toml", GATEWAY_REDIS_URL=private_redis.url, GATEWAY_KEK=KEK)
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        cwd=work,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, "gateway serve exited"
            assert time.monotonic() < deadline, "gateway serve did not answer"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert not (work / ".gateway").exists()
        client = redis.Redis.from_url(private_redis.url)
        assert client.exists(KeyNames().readiness), "the readiness probe did not reach the TOML's Redis"
        client.close()
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    assert b"development mode" not in stderr


# ---- item 8: every start-up error is a settings error ---------------------------------------------

COMMANDS = {
    "phones": ["phones", "list"],
    "consume": ["consume", "--group", "dispatch", "--consumer", "c", "--once"],
    "serve": ["serve", "--port", "0"],
    "explain": ["explain", "ph_example", "capture-never-read.txt"],
}
LEAKY_PASSWORDS = {"p@ss/wo#rd": ("p@ss", "wo#rd", "ss/wo"), "secret#frag": ("secret", "frag")}


def assert_settings_error(done: subprocess.CompletedProcess[str], name: str) -> None:
    assert done.returncode == STARTUP_FAILURE, done.stderr
    assert done.stderr.startswith(f"gateway: invalid setting: {name}"), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("source", "command"),
    [
        pytest.param(
            source,
            command,
            id=f"{source}-{command}",
        )
        for source in ("environment", "toml")
        for command in COMMANDS
    ],
)
def test_a_malformed_redis_url_is_a_settings_error(work: Path, command: str, source: str) -> None:
    """Was: a traceback from redis-py ("Port could not be cast to integer value")."""
    url = "redis://redis:63790x/0"
    if source == "toml":
        write_toml(work / "config" / "gateway.toml", GATEWAY_REDIS_URL=url, GATEWAY_KEK=KEK)
        env = clean_env()
    else:
        env = clean_env(GATEWAY_REDIS_URL=url, GATEWAY_KEK=KEK)
    done = gateway(work, *COMMANDS[command], env=env, timeout=20)
    assert_settings_error(done, "GATEWAY_REDIS_URL")
    assert "port" in done.stderr and "63790x" not in done.stderr
    assert not (work / ".gateway").exists()


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("password", LEAKY_PASSWORDS)
def test_no_piece_of_a_redis_password_in_the_error(work: Path, command: str, password: str) -> None:
    """Was: phones connected to host 'ss' (redis://:p@ss/wo#rd@...) or echoed 'secret' as a port."""
    env = clean_env(GATEWAY_REDIS_URL=f"redis://:{password}@redis.example.com:6379/0", GATEWAY_KEK=KEK)
    done = gateway(work, *COMMANDS[command], env=env)
    assert_settings_error(done, "GATEWAY_REDIS_URL")
    for piece in LEAKY_PASSWORDS[password]:
        assert piece not in done.stderr + done.stdout


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("problem", ["missing", "invalid"])
def test_a_bad_exotel_allowlist_file_is_a_settings_error(
    work: Path, redis_url: str, command: str, problem: str
) -> None:
    """Was: a traceback and exit 1 from the app's start-up (serve); ignored by the other commands."""
    path = work / "allowlist.txt"
    if problem == "invalid":
        path.write_text("203.0.113.0/24, somewhere\n")  # no source, no date
    env = clean_env(GATEWAY_REDIS_URL=redis_url, GATEWAY_KEK=KEK, GATEWAY_EXOTEL_ALLOWED_IPS_FILE=str(path))
    done = gateway(work, *COMMANDS[command], env=env)
    assert_settings_error(done, "GATEWAY_EXOTEL_ALLOWED_IPS_FILE")


@pytest.mark.parametrize("command", ["phones", "serve"])
def test_windows_that_do_not_fit_are_a_settings_error(work: Path, redis_url: str, command: str) -> None:
    """issue 14 item 4: the duplicate window shorter than the nonce window stops start-up, naming both."""
    env = clean_env(
        GATEWAY_REDIS_URL=redis_url, GATEWAY_KEK=KEK, GATEWAY_NONCE_TTL_S="7200", GATEWAY_IDEMPOTENCY_TTL_S="3600"
    )
    done = gateway(work, *COMMANDS[command], env=env, timeout=20)
    assert_settings_error(done, "GATEWAY_IDEMPOTENCY_TTL_S")
    assert "GATEWAY_NONCE_TTL_S" in done.stderr
