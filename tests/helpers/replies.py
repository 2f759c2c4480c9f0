"""Typed views of redis-py replies, for the tests' clients.

redis-py types a reply for both response modes (`bytes | str`) and for every protocol and
client kind (a stream range may be `None`). The tests' clients keep the default
decode_responses=False, so every reply is bytes: these helpers say so once, instead of each
test narrowing the same unions. They are casts: nothing is checked or converted at run time.
"""

from __future__ import annotations

from typing import TypeAlias, cast

import redis
from redis.typing import StreamRangeResponse

Fields: TypeAlias = dict[bytes, bytes]
Entry: TypeAlias = tuple[bytes, Fields]


def stream_entries(reply: StreamRangeResponse | None) -> list[Entry]:
    """An XRANGE / XREVRANGE reply: its (entry id, fields) pairs."""
    return cast("list[Entry]", reply)


def as_bytes(reply: bytes | str) -> bytes:
    """A string reply (GET of an existing key, XADD's entry id, HGET, ...)."""
    return cast(bytes, reply)


def maybe_bytes(reply: bytes | str | None) -> bytes | None:
    """A string reply that is None for a missing key (GET, HGET)."""
    return cast("bytes | None", reply)


def bytes_list(reply: list[bytes | str]) -> list[bytes]:
    """A list reply (LRANGE, KEYS)."""
    return cast("list[bytes]", reply)


def maybe_bytes_list(reply: list[bytes | str | None]) -> list[bytes | None]:
    """A list reply with None for each missing key (MGET)."""
    return cast("list[bytes | None]", reply)


def bytes_dict(reply: dict[bytes | str, bytes | str]) -> dict[bytes, bytes]:
    """A hash reply (HGETALL)."""
    return cast("dict[bytes, bytes]", reply)


def execute_command(client: redis.Redis, *args: str | int | float | bytes) -> object:
    """`client.execute_command(*args)`: redis-py leaves that method unannotated."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]
