"""The async connection layer and URL handling."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from redismigrate.aio.connection import connect
from redismigrate.aio.indexes import list_indexes, read_schema, server_capabilities
from redismigrate.errors import BadInputError, ConnectionFailed, IndexNotFound
from redismigrate.urls import check_url, redact_text, redact_url


async def test_a_callers_own_client_is_used_and_left_open(aclient: aioredis.Redis) -> None:
    async with connect(redis_client=aclient) as client:
        assert client is aclient
        caps = await server_capabilities(client)
        assert caps.search_version >= (2, 10, 0)
        assert "float16" in caps.vector_datatypes
    assert await aclient.ping()  # still usable afterwards


async def test_a_url_opens_its_own_pool(redis_url: str) -> None:
    async with connect(redis_url) as client:
        assert isinstance(await list_indexes(client), list)


async def test_exactly_one_of_url_or_client(aclient: aioredis.Redis, redis_url: str) -> None:
    with pytest.raises(BadInputError, match="exactly one"):
        async with connect():
            pass
    with pytest.raises(BadInputError, match="exactly one"):
        async with connect(redis_url, aclient):
            pass


async def test_unknown_index_is_index_not_found(aclient: aioredis.Redis) -> None:
    with pytest.raises(IndexNotFound, match="'nope_nothing_here'"):
        await read_schema(aclient, "nope_nothing_here")


async def test_refused_connection_hides_the_password() -> None:
    with pytest.raises(ConnectionFailed) as info:
        async with connect("redis://admin:hunter2@127.0.0.1:1"):
            pass
    assert "hunter2" not in str(info.value) and "admin:***@" in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:pw@host", "redis://:***@host"),
        ("redis://pw@host", "redis://***@host"),
        ("rediss://u:p%40ss@h?password=x&db=1", "rediss://u:***@h?password=***&db=1"),
        ("redis://host:6379", "redis://host:6379"),
    ],
)
def test_passwords_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_text(f"failed: {url} (pw)", "pw") == f"failed: {shown} (***)"


@pytest.mark.parametrize("url", ["", "localhost", "ftp://h", "redis://", "redis://h:0x1"])
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(BadInputError, match="malformed Redis URL"):
        check_url(url)
