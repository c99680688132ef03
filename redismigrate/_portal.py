"""Run the async API from blocking code: the runtime behind the generated ``redismigrate.sync``.

Coroutines run on an event loop in a helper thread (an anyio blocking portal), never
through ``asyncio.run``, so the blocking API also works where the calling thread
already runs a loop (Jupyter, an ``async def`` that calls a library expecting sync
code). The calling thread only waits on a future.

One portal per process, shared: it is started lazily on the first call, guarded by a
lock, closed at interpreter exit (atexit), started afresh when it died (its loop
stopped, or a process fork left the child without the thread). Measured against one
portal per call on this machine, a shared portal answers a trivial call in ~0.2 ms
instead of ~1.1 ms (thread and loop start-up), and calls from many threads run
concurrently as tasks on the one loop; no trouble was found, so the shared one stays.
Its limits: a coroutine that blocks its loop stalls every thread's calls meanwhile,
and the blocking API cannot be called from a coroutine running on the portal's own
loop (that would wait on itself; it raises RuntimeError instead).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeAlias, TypeVar, overload

import anyio
import redis
import redis.asyncio as aioredis
import redis.asyncio.connection as aconnection
import redis.connection as sconnection
from anyio.from_thread import BlockingPortal, start_blocking_portal
from redis.asyncio.retry import Retry as AsyncRetry
from redis.cluster import RedisCluster
from redis.retry import Retry as SyncRetry
from redis.sentinel import SentinelConnectionPool

from redismigrate.aio.connection import COPIED_CONNECTION_KWARGS as _COPIED_KWARGS
from redismigrate.errors import BadInputError

_P = ParamSpec("_P")
_T = TypeVar("_T")

_PORTAL_THREAD_NAME = "redismigrate-portal"


class _State:
    """The process's portal, and what is needed to stop it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.portal: BlockingPortal | None = None
        self.context: contextlib.AbstractContextManager[BlockingPortal] | None = None
        self.thread_id: int | None = None
        self.atexit_registered = False


_state = _State()


def _start_portal() -> BlockingPortal:
    """Start the shared portal (caller holds the lock)."""
    context = start_blocking_portal(name=_PORTAL_THREAD_NAME)
    portal = context.__enter__()
    _state.context = context
    _state.portal = portal
    _state.thread_id = portal.call(threading.get_ident)
    if not _state.atexit_registered:
        atexit.register(close_portal)
        _state.atexit_registered = True
    return portal


def _stop_portal() -> None:
    """Stop the shared portal if there is one (caller holds the lock)."""
    portal, context = _state.portal, _state.context
    _state.portal = _state.context = _state.thread_id = None
    if portal is None or context is None:
        return
    # Cancel what is still running (a daemon thread's call at interpreter exit) rather
    # than wait for it; then let the context join the loop thread. Both tolerate a
    # portal that already stopped.
    with contextlib.suppress(RuntimeError):
        portal.call(portal.stop, True)
    context.__exit__(None, None, None)


def close_portal() -> None:
    """Stop the shared portal; the next blocking call starts a new one. Runs at exit."""
    with _state.lock:
        _stop_portal()


def _forget_after_fork() -> None:
    # The child has no portal thread: drop the parent's portal without touching it.
    _state.lock = threading.Lock()
    _state.portal = _state.context = _state.thread_id = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _submit(fn: Callable[[], Awaitable[_T]]) -> Future[_T]:
    """Start ``fn()`` as a task on the shared portal, starting or restarting it as needed."""
    # Checked before taking the lock: a portal task waiting for it could deadlock a
    # thread that holds it while stopping that very portal.
    if threading.get_ident() == _state.thread_id:
        raise RuntimeError(
            "redismigrate's blocking API was called from a coroutine on its own "
            "portal loop; await the async API (redismigrate.aio) there instead"
        )
    with _state.lock:
        portal = _state.portal or _start_portal()
        try:
            return portal.start_task_soon(fn)
        except RuntimeError:
            # The portal is not running (its loop ended): start a new one, once.
            _stop_portal()
            return _start_portal().start_task_soon(fn)


class _PortalOwnedRedis(aioredis.Redis):
    """A redis.asyncio client made by :func:`to_async_client`: run_sync closes it after the call."""


class _Raised:
    """A KeyboardInterrupt or SystemExit carried out of the portal as a value.

    Raised inside a portal task, such an exception would end the portal's loop (anyio lets
    base exceptions through); carried out, it is raised in the caller and the loop lives on.
    """

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def run_sync(async_fn: Callable[_P, Awaitable[_T]], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run ``await async_fn(*args, **kwargs)`` on the portal loop and return its result.

    Blocks the calling thread, which may itself be running an event loop. The
    coroutine's exception is raised here unchanged (same object, type and message).
    Clients that :func:`to_async_client` made and that are passed in (as arguments, or
    as the object ``async_fn`` is a method of) are closed after the call.
    """
    candidates = (getattr(async_fn, "__self__", None), *args, *kwargs.values())
    owned = [value for value in candidates if isinstance(value, _PortalOwnedRedis)]

    async def call() -> _T | _Raised:
        try:
            return await async_fn(*args, **kwargs)
        except (anyio.get_cancelled_exc_class(), Exception):
            raise
        except BaseException as exc:
            return _Raised(exc)
        finally:
            for client in owned:
                # Shielded so a cancelled call still releases its connections; a failing
                # close must not hide the call's own result or error.
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await client.aclose()

    future = _submit(call)
    try:
        result = future.result()
    except BaseException:
        # Interrupted while waiting (Ctrl-C): cancel the task too. No-op when it finished.
        future.cancel()
        raise
    if isinstance(result, _Raised):
        raise result.exc
    return result


_OCSP_KWARGS = ("ssl_validate_ocsp", "ssl_validate_ocsp_stapled", "ssl_ocsp_context")


def _async_connection_class(
    sync_class: type[Any],
) -> type[aconnection.AbstractConnection]:
    if issubclass(sync_class, sconnection.SSLConnection):
        return aconnection.SSLConnection
    if issubclass(sync_class, sconnection.UnixDomainSocketConnection):
        return aconnection.UnixDomainSocketConnection
    if issubclass(sync_class, sconnection.Connection):
        return aconnection.Connection
    raise BadInputError(
        f"redis_client= uses connections of type {sync_class.__name__}, which redismigrate "
        "cannot reproduce; pass redis_url= instead"
    )


# what the blocking API takes as ``redis_client``: a client of one server, or of a
# Redis Cluster (redismigrate then talks to its nodes itself)
SyncRedisClient: TypeAlias = redis.Redis | RedisCluster


@overload
def to_async_client(client: None) -> None: ...
@overload
def to_async_client(client: SyncRedisClient) -> aioredis.Redis: ...
def to_async_client(client: SyncRedisClient | None) -> aioredis.Redis | None:
    """A redis.asyncio twin of the blocking ``client``: same server, credentials, TLS, db.

    For a RedisCluster, the twin of its client of one primary: redismigrate finds the
    cluster's other nodes from there.

    The twin has its own connection pool (a sync pool cannot serve an event loop); its
    connections are opened on the portal loop and closed by :func:`run_sync` when the
    call it was made for ends. ``client`` itself is neither used nor closed.
    A redis.asyncio client is refused: it belongs to the caller's own event loop.
    """
    if client is None:
        return None
    if isinstance(client, RedisCluster):
        primaries = client.get_primaries()  # type: ignore[no-untyped-call]
        node = primaries[0].redis_connection if primaries else None
        if not isinstance(node, redis.Redis):
            raise BadInputError(
                "redis_client= is a RedisCluster with no client of a primary node; pass "
                "redis_url=redis+cluster://<any node> instead"
            )
        # its connect callback is the cluster client's own (READONLY on replicas), not
        # the caller's: a primary's twin does without it
        return _twin(node, cluster_node=True)
    return _twin(client)


def _twin(client: redis.Redis, *, cluster_node: bool = False) -> aioredis.Redis:
    if isinstance(client, aioredis.Redis):
        raise BadInputError(
            "redis_client= of the blocking API must be a redis.Redis, not a "
            "redis.asyncio.Redis (that one belongs to its own event loop): await the "
            "async API in redismigrate.aio instead, or pass redis_url="
        )
    if not isinstance(client, redis.Redis):
        raise BadInputError(
            f"redis_client= must be a redis.Redis, not {type(client).__name__}; "
            "pass redis_url= for other clients"
        )
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        raise BadInputError(
            "redis_client= from a Sentinel cannot be reproduced; pass the master's redis_url="
        )
    source = pool.connection_kwargs
    if any(source.get(name) for name in _OCSP_KWARGS):
        raise BadInputError(
            "redis_client= asks for OCSP validation, which redis.asyncio does not do; "
            "pass redis_url= (rediss://...) to connect without it"
        )
    if source.get("redis_connect_func") is not None and not cluster_node:
        raise BadInputError(
            "redis_client= has a custom connect callback, which cannot run on the async "
            "client; pass redis_url= instead"
        )
    connection_class = _async_connection_class(pool.connection_class)
    kwargs = {name: value for name, value in source.items() if name in _COPIED_KWARGS}
    kwargs["decode_responses"] = False
    retry = source.get("retry")
    if isinstance(retry, SyncRetry):
        # Same backoff policy and retry count; the backoff is copied, it may hold state.
        kwargs["retry"] = AsyncRetry(copy.deepcopy(retry._backoff), retry.get_retries())
    async_pool: aioredis.ConnectionPool
    if isinstance(pool, redis.BlockingConnectionPool):
        async_pool = aioredis.BlockingConnectionPool(
            connection_class=connection_class,
            max_connections=pool.max_connections,
            timeout=pool.timeout,
            **kwargs,
        )
    else:
        async_pool = aioredis.ConnectionPool(
            connection_class=connection_class,
            max_connections=pool.max_connections,
            **kwargs,
        )
    twin = _PortalOwnedRedis(connection_pool=async_pool)
    twin.auto_close_connection_pool = True  # aclose() also closes the pool it made
    return twin


__all__ = ["close_portal", "run_sync", "to_async_client"]
