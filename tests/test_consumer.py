"""`gateway consume` as a subprocess against a real Redis: SIGTERM stops it cleanly, --once,
bad settings refused, the POST handler through the command. The consumer itself
(gateway/consumer.py) is tested in tests/storage/test_consumer.py, whose helpers these use.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import orjson
import pytest
import redis

from gateway import standard_webhooks
from tests.helpers.support import REPO
from tests.storage.test_consumer import GROUP, KEY, OLD_KEY, STREAM, Receiver, envelope


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


# ---- the command ---------------------------------------------------------------------------------


def cli_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"GATEWAY_REDIS_URL": redis_url, "GATEWAY_LOG_LEVEL": "info", **extra})
    return env


def test_sigterm_stops_gateway_consume_cleanly(redis_url: str, redis_sync: redis.Redis) -> None:
    redis_sync.xadd(STREAM, {"event": envelope(1)})
    command = [sys.executable, "-m", "gateway", "consume", "--group", GROUP, "--consumer", "cli-1"]
    process = subprocess.Popen(
        command, cwd=REPO, env=cli_env(redis_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # printed only once handled
        assert orjson.loads(first) == orjson.loads(envelope(1))
        redis_sync.xadd(STREAM, {"event": envelope(2)})
        assert orjson.loads(process.stdout.readline())["id"] == f"{2:032x}"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
        assert process.returncode == 0, stderr.decode()
        assert b"stopped: 2 acknowledged" in stderr
        assert b"Traceback" not in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert int(redis_sync.xpending(STREAM, GROUP)["pending"]) == 0


def test_gateway_consume_once_and_without_kek(redis_url: str, redis_sync: redis.Redis) -> None:
    redis_sync.xadd(STREAM, {"event": envelope(3)})
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "consume", "--group", GROUP, "--consumer", "c", "--once"],
        cwd=REPO,
        env=cli_env(redis_url),  # no GATEWAY_KEK: the consumer opens no phone record
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert orjson.loads(done.stdout) == orjson.loads(envelope(3))


@pytest.mark.parametrize(
    ("arguments", "env", "message"),
    [
        (["--handler", "post", "--url", "https://dispatch.example.com/e"], {}, b"GATEWAY_FORWARD_SIGNING_KEY"),
        (["--handler", "post"], {"GATEWAY_FORWARD_SIGNING_KEY": KEY}, b"needs --url"),
        (["--handler", "post", "--url", "https://u:p@dispatch.example.com/"], {}, b"without credentials"),
        ([], {"GATEWAY_REDIS_URL": "http://nope"}, b"GATEWAY_REDIS_URL"),
    ],
)
def test_gateway_consume_refuses_bad_settings(
    redis_url: str, arguments: list[str], env: dict[str, str], message: bytes
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "consume", "--group", GROUP, "--consumer", "c", "--once", *arguments],
        cwd=REPO,
        env=cli_env(redis_url, **env),
        capture_output=True,
        timeout=30,
        check=False,
    )
    expected = 3 if message == b"GATEWAY_REDIS_URL" else 2  # a setting: exit 3; an argument: exit 2
    assert done.returncode == expected and message in done.stderr, done.stderr
    assert b"Traceback" not in done.stderr


def test_post_handler_via_the_command(redis_url: str, redis_sync: redis.Redis, receiver: Receiver) -> None:
    redis_sync.xadd(STREAM, {"event": envelope(4)})
    done = subprocess.run(
        [
            *(sys.executable, "-m", "gateway", "consume", "--group", GROUP, "--consumer", "c", "--once"),
            *("--handler", "post", "--url", receiver.url),
        ],
        cwd=REPO,
        env=cli_env(redis_url, GATEWAY_FORWARD_SIGNING_KEY=f"{KEY},{OLD_KEY}"),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    ((headers, body),) = receiver.requests
    standard_webhooks.verify(KEY, body, headers)
    standard_webhooks.verify(OLD_KEY, body, headers)
    assert KEY.encode() not in done.stderr and KEY.encode() not in done.stdout
    assert int(redis_sync.xpending(STREAM, GROUP)["pending"]) == 0
