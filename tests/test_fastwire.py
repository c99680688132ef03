"""The bare RESP connection used on the hot path, and its fallback to redis-py."""

from __future__ import annotations

import anyio
import pytest
import redis.asyncio as aioredis
import redis.exceptions as rexc

from redismigrate.aio.fastwire import FEED_SLICE, RawConnection, Wire
from redismigrate.server import EmbeddedRedis


async def test_raw_and_fallback_paths_read_and_write_the_same(
    aclient: aioredis.Redis, ns: str
) -> None:
    keys = [f"{ns}:w:{i}".encode() for i in range(50)] + [b"\xff" + ns.encode()]
    items = [(k, b"v", bytes([i % 256]) * 300) for i, k in enumerate(keys)]
    for enabled in (True, False):
        wire = Wire(aclient, enabled=enabled)
        await wire.hset_many(items)
        one = await wire.read_columns([*keys, f"{ns}:missing".encode()], [b"v"])
        two = await wire.read_columns(keys[:3], [b"v", b"nope"])
        await wire.close()
        assert one == [[v for _, _, v in items] + [None]]
        assert two == [[items[i][2] for i in range(3)], [None] * 3]
        assert wire.enabled == enabled


async def test_a_password_and_database_are_honoured() -> None:
    with EmbeddedRedis() as server:
        assert server.info is not None
        admin = aioredis.Redis.from_url(server.info.url)
        await admin.config_set("requirepass", "s3cret")
        await admin.aclose()
        client = aioredis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{server.info.port}/3")
        raw = await RawConnection.like(client)
        assert raw is not None
        await raw.hset_many([(b"k", b"f", b"x")])
        await raw.close()
        assert await client.hget("k", "f") == b"x"  # written to database 3
        other_db = aioredis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{server.info.port}/0")
        assert await other_db.exists("k") == 0
        wrong = aioredis.Redis.from_url(f"redis://:wrong@127.0.0.1:{server.info.port}/0")
        assert await RawConnection.like(wrong) is None  # refused: callers fall back
        for c in (client, other_db, wrong):
            await c.aclose()


async def test_replies_larger_and_smaller_than_a_feed_slice_come_back_whole(
    aclient: aioredis.Redis, ns: str
) -> None:
    """Replies arrive in chunks fed to the parser in slices: big values span slices
    and chunks, small ones share them; every value and its order must survive."""
    sizes = [FEED_SLICE * 3 + 7, 1, 0, 3072, FEED_SLICE - 5, FEED_SLICE, 200_000, 17] * 25
    keys = [f"{ns}:big:{i}".encode() for i in range(len(sizes))]
    items = [
        (k, b"v", bytes([i % 251]) * n) for i, (k, n) in enumerate(zip(keys, sizes, strict=True))
    ]
    wire = Wire(aclient)
    await wire.hset_many(items)
    for _ in range(2):  # the second call reuses the connection and its parser
        (column,) = await wire.read_columns(keys, [b"v"])
        assert column == [v for _, _, v in items]
    assert wire.enabled
    await wire.close()


async def test_values_of_the_expected_size_and_anything_else_read_alike(
    aclient: aioredis.Redis, ns: str
) -> None:
    """The parser-free path must hand over to the parser at the first reply that is not a
    value of the expected size: missing fields (also last, where waiting for a whole
    value would hang), other sizes, values that look like reply frames, wrong types."""
    size = 3072
    frame_like = (b"$3072\r\n" * 500)[:size]
    layouts = [
        [size] * 40,
        [size] * 39 + [None],
        [None] + [size] * 10,
        [size] * 5 + [size - 1] + [size] * 5,
        [size] * 5 + [size + 100] + [size] * 5,
        [size, 0, size, None, None, size],
        [None],
    ]
    wire = Wire(aclient)
    for n, layout in enumerate(layouts):
        keys = [f"{ns}:fw:{n}:{i}".encode() for i in range(len(layout))]
        expected = [
            None
            if length is None
            else (frame_like if i % 2 else bytes([i % 251]) * length)[:length]
            for i, length in enumerate(layout)
        ]
        if any(v is not None for v in expected):
            await wire.hset_many(
                [(k, b"v", v) for k, v in zip(keys, expected, strict=True) if v is not None]
            )
        for _ in range(2):
            with anyio.fail_after(5):
                assert await wire.read_columns(keys, [b"v"], size) == [expected]
    await aclient.set(f"{ns}:fw:string".encode(), b"x")
    with pytest.raises(rexc.ResponseError, match="WRONGTYPE"):
        await wire.read_columns([f"{ns}:fw:0:0".encode(), f"{ns}:fw:string".encode()], [b"v"], size)
    # the connection that carried the error is still in step: the next batch reads right
    keys = [f"{ns}:fw:0:{i}".encode() for i in range(40)]
    (column,) = await wire.read_columns(keys, [b"v"], size)
    assert column == [(frame_like if i % 2 else bytes([i % 251]) * size) for i in range(40)]
    assert wire.enabled
    await wire.close()


async def test_a_connection_the_server_drops_fails_the_call_instead_of_hanging(
    aclient: aioredis.Redis, ns: str
) -> None:
    raw = await RawConnection.like(aclient)
    assert raw is not None
    (name,) = await raw.call(b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n", 1)
    await aclient.client_kill_filter(_id=str(name))
    with pytest.raises(rexc.ConnectionError):
        with anyio.fail_after(5):
            await raw.hget_values([b"k"], b"v", 8)
    await raw.close()


async def test_values_read_without_copy_are_not_overwritten_by_the_next_batch(
    aclient: aioredis.Redis, ns: str
) -> None:
    """Fast-path values are views of the batch's receive buffer: a later batch on the
    same connection must land in another buffer, or earlier values would change."""
    size = 1024
    first = [(f"{ns}:a:{i}".encode(), bytes([1 + i % 200]) * size) for i in range(300)]
    second = [(f"{ns}:b:{i}".encode(), bytes([255 - i % 200]) * size) for i in range(300)]
    wire = Wire(aclient, enabled=True)
    await wire.hset_many([(k, b"v", v) for k, v in first + second])
    (kept,) = await wire.read_columns([k for k, _ in first], [b"v"], size)
    assert all(isinstance(value, memoryview) and value.readonly for value in kept)
    (later,) = await wire.read_columns([k for k, _ in second], [b"v"], size)
    assert [bytes(v) for v in kept] == [v for _, v in first]
    assert [bytes(v) for v in later] == [v for _, v in second]
    await wire.close()
