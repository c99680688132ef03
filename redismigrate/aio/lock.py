"""One migration at a time: a lock in Redis per index, a lock on the backup directory.

A run (apply, resume, rollback, batch) enters :class:`RunGuard` before it touches
anything. The guard takes the backup directory's ``flock`` and a Redis lock per index
(``SET NX PX`` with a random token), renews the Redis locks every ttl/3 while the run
lives, writes the run's ``started`` and ``finished`` events to the ledger, and releases
everything at the end (compare-token-and-delete). A second run is refused with
:class:`MigrationLocked` naming the holder. A crashed run's Redis lock expires by
itself; one whose holder is provably dead (same host and pid namespace, pid gone) is
taken over at once, and ``break_lock`` takes over any. A run whose lock is lost (expired
or taken over) is cancelled and raises :class:`LockLost`.

A run inside a run (each index of a batch) reuses the locks its outer run holds.

On a cluster each lock and the ledger go to the primary owning the key's slot: pass
``route=ledger.cluster_route(connections)``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import anyio
import msgspec
import redis.asyncio as aioredis
import redis.exceptions as rexc
from anyio.abc import TaskGroup

from redismigrate.aio import ledger
from redismigrate.aio.ledger import KeyRoute, single_route
from redismigrate.errors import BadInputError, LockLost, MigrationLocked
from redismigrate.ledger import (
    DIRECTORY_LOCK_FILE,
    TAKEOVER,
    LedgerEvent,
    LockHolder,
    Result,
    describe_holder,
    lock_key,
)
from redismigrate.plan import now_iso
from redismigrate.report import MigrationReport
from redismigrate.urls import redact_url

LOCK_TTL_SECONDS = 30.0
CLEANUP_SECONDS = 10.0
_ACQUIRE_ATTEMPTS = 5

# KEYS[1] lock; ARGV[1] our value, ARGV[2] ttl in ms
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] lock; ARGV[1] our value
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# KEYS[1] lock; ARGV[1] the value seen, ARGV[2] ours, ARGV[3] ttl in ms
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""

R = TypeVar("R", bound=MigrationReport)


class RedisLock:
    """The lock on one index: ``redismigrate:lock:{<index>}`` holding a LockHolder.

    ``client`` is the client of the lock's server, or a route giving it for the key.
    """

    def __init__(
        self,
        client: aioredis.Redis | KeyRoute,
        index_name: str,
        holder: LockHolder,
        ttl: float,
    ) -> None:
        self.index_name = index_name
        self.key = lock_key(index_name)
        self.client = ledger.as_route(client)(self.key)
        self.value = holder.encode()
        self.ttl_ms = max(1, int(ttl * 1000))
        self._renew = self.client.register_script(_RENEW)
        self._release = self.client.register_script(_RELEASE)
        self._take_over = self.client.register_script(_TAKE_OVER)
        self._own: aioredis.Redis | None = None
        self._renew_own: Any = None

    def _denied(self, exc: BaseException) -> BadInputError:
        return ledger.permission_error("take the migration lock", self.key, exc)

    async def holder(self) -> LockHolder | None:
        return LockHolder.decode(await self.client.get(self.key))

    async def acquire(self, *, break_lock: bool = False) -> str | None:
        """Take the lock; MigrationLocked naming the holder when another run has it.

        Returns a note when it took over another run's lock (``break_lock``, or a holder
        that is provably dead).
        """
        try:
            for _ in range(_ACQUIRE_ATTEMPTS):
                if await self.client.set(self.key, self.value, nx=True, px=self.ttl_ms):
                    return None
                raw = await self.client.get(self.key)
                if raw is None:
                    continue  # it expired in between
                other = LockHolder.decode(raw)
                dead = other is not None and other.is_dead()
                if not (break_lock or dead):
                    raise MigrationLocked(
                        f"index {self.index_name!r} is being migrated by "
                        f"{describe_holder(other)}; wait for it to finish (see "
                        "`redismigrate history`), or if that run is dead take over with "
                        "--break-lock"
                    )
                if await self._take_over(keys=[self.key], args=[raw, self.value, self.ttl_ms]):
                    why = "its process is gone" if dead else "--break-lock"
                    return (
                        f"{TAKEOVER} on index {self.index_name!r} held by "
                        f"{describe_holder(other)} ({why})"
                    )
        except rexc.NoPermissionError as exc:
            raise self._denied(exc) from None
        raise MigrationLocked(
            f"the lock on index {self.index_name!r} keeps changing hands; try again"
        )

    async def renew(self) -> bool:
        """Extend the lock; False when it is no longer ours.

        Sent over a connection of its own: a run's busy pool (every connection taken by
        its writers) must not keep the renewal waiting until the lock expires.
        """
        if self._own is None:
            self._own = _separate_client(self.client)
            self._renew_own = self._own.register_script(_RENEW)
        assert self._renew_own is not None
        return bool(await self._renew_own(keys=[self.key], args=[self.value, self.ttl_ms]))

    async def close(self) -> None:
        if self._own is not None:
            with contextlib.suppress(rexc.RedisError, OSError):
                await self._own.aclose()
            self._own = None

    async def release(self) -> None:
        """Delete the lock if it is still ours."""
        await self._release(keys=[self.key], args=[self.value])


def _separate_client(client: aioredis.Redis) -> aioredis.Redis:
    """A client to the same server and database as ``client``, over a pool of its own."""
    pool = client.connection_pool
    return aioredis.Redis(
        connection_pool=type(pool)(
            connection_class=pool.connection_class, max_connections=2, **pool.connection_kwargs
        )
    )


class DirectoryLock:
    """An exclusive ``flock`` on ``<backup dir>/.redismigrate.lock``, which names its holder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / DIRECTORY_LOCK_FILE
        self._fd: int | None = None

    def acquire(self, holder: LockHolder) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise BadInputError(
                f"cannot open the lock file {str(self.path)!r}: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise BadInputError(f"cannot lock {str(self.path)!r}: {exc.strerror}") from None
            other = LockHolder.decode(os.pread(fd, 4096, 0))
            os.close(fd)
            raise MigrationLocked(
                f"backup directory {str(self.directory)!r} is in use by "
                f"{describe_holder(other)}; wait for that run to finish, or use another "
                "--backup-dir"
            ) from None
        self._fd = fd
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing drops the flock


@dataclass
class _Held:
    """What the runs of the current task hold."""

    command: str
    guard: RunGuard
    task: int  # only this task's inner runs share the locks, not tasks it starts
    names: dict[str, str | None] = field(default_factory=dict)  # index -> takeover note
    directories: set[str] = field(default_factory=set)


_ACTIVE: ContextVar[_Held | None] = ContextVar("redismigrate_active_run", default=None)


class RunGuard:
    """``async with RunGuard(...)``: the locks and ledger events of one run.

    ``index_name`` names the run in the ledger; ``lock_names`` (default: the index and
    ``target_index``) are the indexes locked. ``ledger=False`` writes no events (a batch:
    each of its indexes is a run of its own). ``route`` gives the client of each lock and
    of the ledger (default: ``client`` for all; on a cluster ``ledger.cluster_route``).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        command: str,
        index_name: str,
        backup_dir: str | Path | None,
        target_index: str | None = None,
        lock_names: list[str] | None = None,
        plan_hash: str | None = None,
        break_lock: bool = False,
        ledger: bool = True,
        ttl: float | None = None,
        source_params: dict[str, dict[str, Any]] | None = None,
        target_params: dict[str, dict[str, Any]] | None = None,
        route: KeyRoute | None = None,
    ) -> None:
        self.client = client
        self.route = route if route is not None else single_route(client)
        # recorded in the ledger: the vector parameters a server may not report
        self.source_params = source_params or {}
        self.target_params = target_params or {}
        self.command = command
        self.index_name = index_name
        self.target_index = target_index if target_index != index_name else None
        names = lock_names if lock_names is not None else [index_name, target_index or index_name]
        self.lock_names = sorted(set(names))
        self.backup_dir = Path(backup_dir).resolve() if backup_dir is not None else None
        self.plan_hash = plan_hash
        self.break_lock = break_lock
        self.write_ledger = ledger
        self.ttl = ttl if ttl is not None else LOCK_TTL_SECONDS
        self.warnings: list[str] = []
        self.result: Result | None = None
        self.lost: LockLost | None = None
        self._locks: list[RedisLock] = []
        self._directory: DirectoryLock | None = None
        self._holder: LockHolder | None = None
        self._parent: _Held | None = None
        self._token: Token[_Held | None] | None = None
        self._group: TaskGroup | None = None
        self._body: anyio.CancelScope | None = None
        self._closing = False

    # ------------------------------------------------------------------ enter
    async def __aenter__(self) -> RunGuard:
        task = anyio.get_current_task().id
        parent = _ACTIVE.get()
        if parent is not None and parent.task != task:
            parent = None
        self._parent = parent
        command = parent.command if parent is not None else self.command
        holder = self._holder = LockHolder.here(command)
        held = _Held(command=command, guard=self, task=task)
        if parent is not None:
            held.names.update(parent.names)
            held.directories.update(parent.directories)
        try:
            directory = str(self.backup_dir) if self.backup_dir is not None else None
            if directory is not None and directory not in held.directories:
                assert self.backup_dir is not None
                lock = DirectoryLock(self.backup_dir)
                lock.acquire(holder)
                self._directory = lock
                held.directories.add(directory)
            for name in self.lock_names:
                if name in held.names:
                    note = held.names[name]
                else:
                    redis_lock = RedisLock(self.route, name, holder, self.ttl)
                    note = await redis_lock.acquire(break_lock=self.break_lock)
                    self._locks.append(redis_lock)
                    held.names[name] = note
                if note is not None and note not in self.warnings:
                    self.warnings.append(note)
            if self.write_ledger:
                await ledger.record(self.route, self._event("started"))
        except BaseException as exc:
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + CLEANUP_SECONDS
                await self._release()
                if isinstance(exc, MigrationLocked) and self.write_ledger:
                    with contextlib.suppress(rexc.RedisError, BadInputError, OSError):
                        await ledger.record(
                            self.route, self._event("finished", "refused", str(exc))
                        )
            raise
        if self._locks:
            self._group = anyio.create_task_group()
            await self._group.__aenter__()
            self._group.start_soon(self._keep_alive)
        self._body = anyio.CancelScope()
        self._body.__enter__()
        self._token = _ACTIVE.set(held)
        return self

    # ------------------------------------------------------------------ exit
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._body is not None and self._token is not None
        _ACTIVE.reset(self._token)
        # it swallows only the cancellation _lose sent, and then LockLost is raised below
        self._body.__exit__(exc_type, exc, tb)
        self._closing = True
        if self._group is not None:
            self._group.cancel_scope.cancel()
        lost = self.lost or self._outer_lost()
        result: Result
        if exc is None:  # the body finished, even if the lock was lost at its very end
            result, error = self.result or "succeeded", str(lost) if lost else None
        elif lost is not None:
            result, error = "failed", str(lost)
        else:
            interrupted = isinstance(exc, anyio.get_cancelled_exc_class() | KeyboardInterrupt)
            result, error = "failed", "interrupted" if interrupted else _one_line(exc)
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + CLEANUP_SECONDS
            await self._release()
            if self.write_ledger:
                # a failed write leaves the run "unfinished" in the ledger, which is not a
                # reason to hide the run's own outcome
                with contextlib.suppress(rexc.RedisError, BadInputError, OSError):
                    await ledger.record(self.route, self._event("finished", result, error))
        if self._group is not None:
            await self._group.__aexit__(None, None, None)
        if self.lost is not None and exc is not None:
            raise self.lost from None

    def _outer_lost(self) -> LockLost | None:
        return self._parent.guard.lost if self._parent is not None else None

    async def _release(self) -> None:
        for lock in self._locks:
            with contextlib.suppress(rexc.RedisError, OSError):
                await lock.release()
            await lock.close()
        self._locks = []
        if self._directory is not None:
            self._directory.release()
            self._directory = None

    def _event(
        self,
        kind: Literal["started", "finished"],
        result: Result | None = None,
        error: str | None = None,
    ) -> LedgerEvent:
        assert self._holder is not None
        return LedgerEvent(
            event=kind,
            run_id=self._holder.run_id,
            command=self._holder.command,
            index_name=self.index_name,
            target_index=self.target_index,
            at=now_iso(),
            host=self._holder.host,
            pid=self._holder.pid,
            plan_hash=self.plan_hash,
            backup_dir=str(self.backup_dir) if self.backup_dir is not None else None,
            result=result,
            error=error,
            took_over="; ".join(self.warnings) or None,
            source_params=self.source_params if kind == "started" else {},
            target_params=self.target_params if kind == "started" else {},
        )

    # ------------------------------------------------------------------ while running
    async def _keep_alive(self) -> None:
        """Renew every lock each ttl/3; on loss, cancel the run's body."""
        interval = self.ttl / 3
        renewed = {lock.key: time.monotonic() for lock in self._locks}
        wait = interval
        while True:
            await anyio.sleep(wait)
            wait = interval
            for lock in self._locks:
                if self._closing:
                    return
                try:
                    if await lock.renew():
                        renewed[lock.key] = time.monotonic()
                        continue
                    other = await _holder_or_none(lock)
                    reason = f"now held by {other.describe()}" if other else "it expired"
                except (rexc.ConnectionError, rexc.TimeoutError, OSError):
                    if time.monotonic() - renewed[lock.key] < self.ttl:
                        wait = min(wait, max(0.05, self.ttl / 10))
                        continue
                    reason = "the server could not be reached to renew it"
                except rexc.RedisError as exc:
                    reason = f"renewing it failed: {_one_line(exc)}"
                if not self._closing:
                    self._lose(lock.index_name, reason)
                return

    def _lose(self, index_name: str, reason: str) -> None:
        self.lost = LockLost(
            f"lost the lock on index {index_name!r} ({reason}); the run stopped so that two "
            "runs never work at once; once no other run is active, run the same command "
            "again to resume"
        )
        assert self._body is not None
        self._body.cancel()

    def done(self, report: R) -> R:
        """Record ``report``'s result for the ledger; add the takeover warnings to it."""
        self.result = report.result
        if not self.warnings:
            return report
        return msgspec.structs.replace(report, warnings=[*report.warnings, *self.warnings])


async def _holder_or_none(lock: RedisLock) -> LockHolder | None:
    try:
        return await lock.holder()
    except rexc.RedisError:
        return None


def _one_line(exc: BaseException) -> str:
    text = " ".join((str(exc) or type(exc).__name__).split())
    return redact_url(text)
