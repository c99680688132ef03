"""The bare RESP connection used on the hot path, and its fallback to redis-py."""

from __future__ import annotations

import redis.asyncio as aioredis

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
        one = await wire.hmget_many([*keys, f"{ns}:missing".encode()], [b"v"])
        two = await wire.hmget_many(keys[:3], [b"v", b"nope"])
        await wire.close()
        assert one == [[v] for _, _, v in items] + [[None]]
        assert two == [[items[i][2], None] for i in range(3)]
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
        rows = await wire.hmget_many(keys, [b"v"])
        assert [row[0] for row in rows] == [v for _, _, v in items]
    assert wire.enabled
    await wire.close()
