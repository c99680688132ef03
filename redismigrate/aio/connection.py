"""One place that turns a URL (or a caller's client) into a redis.asyncio client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeAlias

import anyio
import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from redismigrate.aio.topology import cluster_error
from redismigrate.errors import BadInputError, ConnectionFailed
from redismigrate.urls import check_url, node_url, redact_text, redact_url, url_password

# what the async API takes as ``redis_client``: a client of one server, or of a Redis
# Cluster (redismigrate then talks to its nodes itself)
AsyncRedisClient: TypeAlias = aioredis.Redis | aioredis.RedisCluster

CONNECT_TIMEOUT_SECONDS = 4.0
DEFAULT_MAX_CONNECTIONS = 32

# Plain-data connection settings a redis.asyncio connection takes just as the sync one
# does. Left out on purpose: the sync client's callbacks, event dispatcher and maintenance
# handlers (bound to sync machinery), client-side caching (sync only), and
# decode_responses, which redismigrate always sets to False for its own clients.
COPIED_CONNECTION_KWARGS = frozenset(
    {
        "host",
        "port",
        "path",
        "db",
        "username",
        "password",
        "credential_provider",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "socket_keepalive_options",
        "socket_type",
        "socket_read_size",
        "retry_on_timeout",
        "retry_on_error",
        "health_check_interval",
        "client_name",
        "lib_name",
        "lib_version",
        "driver_info",
        "protocol",
        "legacy_responses",
        "encoding",
        "encoding_errors",
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_cert_reqs",
        "ssl_include_verify_flags",
        "ssl_exclude_verify_flags",
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_ca_path",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
        "ssl_password",
    }
)


def _describe(exc: BaseException, url: str | None) -> str:
    message = str(exc) or type(exc).__name__
    return redact_text(message, url_password(url) if url else None)


@contextmanager
def translate_cluster_replies() -> Iterator[None]:
    """Turn a Redis Cluster's reply (MOVED, ASK, CLUSTERDOWN, ...) into one line saying so."""
    try:
        yield
    except rexc.ResponseError as exc:
        found = cluster_error(exc)
        if found is None:
            raise
        raise found from None


@contextmanager
def translate_errors(url: str | None) -> Iterator[None]:
    """Turn redis-py connection and auth failures into one-line ConnectionFailed errors,
    and a Redis Cluster's MOVED or ASK reply into one line that names it."""
    shown = redact_url(url) if url else "the Redis server"
    try:
        with translate_cluster_replies():
            yield
    except rexc.AuthenticationError as exc:
        raise ConnectionFailed(f"{shown} refused the credentials: {_describe(exc, url)}") from None
    except rexc.InvalidResponse:
        raise ConnectionFailed(f"{shown} does not speak the Redis protocol") from None
    except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
        raise ConnectionFailed(f"cannot reach {shown}: {_describe(exc, url)}") from None
    except TimeoutError:
        raise ConnectionFailed(
            f"cannot reach {shown}: no answer within {CONNECT_TIMEOUT_SECONDS:g} s"
        ) from None


async def execute(client: aioredis.Redis, *args: Any) -> Any:
    """Send one raw command (redis-py leaves ``execute_command`` untyped)."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


def client_from_url(url: str, *, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> aioredis.Redis:
    """A redis.asyncio client over its own pool; bytes in and out."""
    check_url(url)
    try:
        return aioredis.Redis.from_url(
            node_url(url),
            decode_responses=False,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            max_connections=max_connections,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1),
        )
    except (ValueError, TypeError) as exc:
        raise BadInputError(f"malformed Redis URL {redact_url(url)!r}: {exc}") from None


def node_client_of(cluster: aioredis.RedisCluster) -> aioredis.Redis:
    """A plain client to one primary of ``cluster`` with the same connection settings:
    the node from which redismigrate reads the cluster's topology itself."""
    primaries = cluster.get_primaries()
    if not primaries:
        raise ConnectionFailed("the RedisCluster client knows no primary node")
    node = primaries[0]
    kwargs = {k: v for k, v in node.connection_kwargs.items() if k in COPIED_CONNECTION_KWARGS}
    kwargs["decode_responses"] = False
    pool = aioredis.ConnectionPool(connection_class=node.connection_class, **kwargs)
    return aioredis.Redis(connection_pool=pool)


@asynccontextmanager
async def connect(
    redis_url: str | None = None,
    redis_client: AsyncRedisClient | None = None,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> AsyncIterator[aioredis.Redis]:
    """Yield a connected client: the caller's own (left open) or a new one from ``redis_url``.

    For a caller's RedisCluster, a new plain client to one of its primaries (closed on
    exit). The server is pinged first, so an unreachable one fails within five seconds.
    """
    if (redis_url is None) == (redis_client is None):
        raise BadInputError("give exactly one of redis_url or redis_client")
    if isinstance(redis_client, aioredis.RedisCluster):
        # the caller's cluster client: a node of it, as if its URL had been given
        with translate_errors(None):
            with anyio.fail_after(CONNECT_TIMEOUT_SECONDS):
                await redis_client.initialize()
        node = node_client_of(redis_client)
        try:
            with translate_errors(None):
                with anyio.fail_after(CONNECT_TIMEOUT_SECONDS):
                    await node.ping()
                yield node
        finally:
            await node.aclose()
        return
    if redis_client is not None:
        with translate_errors(None):
            with anyio.fail_after(CONNECT_TIMEOUT_SECONDS):
                await redis_client.ping()
        with translate_cluster_replies():
            yield redis_client
        return
    assert redis_url is not None
    client = client_from_url(redis_url, max_connections=max_connections)
    try:
        with translate_errors(redis_url):
            with anyio.fail_after(CONNECT_TIMEOUT_SECONDS):
                await client.ping()
            yield client
    finally:
        await client.aclose()
