"""One migration at a time: the Redis lock and the backup directory lock, on the real server."""

from __future__ import annotations

import gc
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import anyio
import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from redismigrate.aio.executor import AsyncMigrationExecutor
from redismigrate.aio.lock import DirectoryLock, RunGuard
from redismigrate.errors import BadInputError, LockLost, MigrationLocked
from redismigrate.ledger import DIRECTORY_LOCK_FILE, LockHolder, lock_key, machine_id
from redismigrate.patch import SchemaPatch
from redismigrate.plan import MigrationPlan
from redismigrate.render import ft_create_args
from redismigrate.sync import MigrationPlanner
from tests.test_executor import NUMPY, make_schema

CONCURRENT_DOCS = 40_000
FLOAT16 = {"changes": {"update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]}}


def foreign_holder(**changes: object) -> LockHolder:
    """A holder on another machine (its pid cannot be checked from here)."""
    fields: dict[str, object] = {
        "token": "t" * 32,
        "run_id": "elsewhere",
        "host": "db-admin-7",
        "pid": 4242,
        "started_at": "2025-01-01T00:00:00+00:00",
        "command": "apply",
        "machine": "another-machine",
    }
    fields.update(changes)
    return LockHolder(**fields)  # type: ignore[arg-type]


def guard(client: aioredis.Redis, name: str, directory: Path, **options: object) -> RunGuard:
    directory.mkdir(parents=True, exist_ok=True)
    return RunGuard(
        client,
        command="apply",
        index_name=name,
        backup_dir=directory,
        **options,  # type: ignore[arg-type]
    )


async def test_second_run_is_refused_naming_the_holder(
    aclient: aioredis.Redis, ns: str, tmp_path: Path
) -> None:
    refusals: list[BaseException] = []

    async def second_run(name: str, directory: Path) -> None:
        try:
            async with guard(aclient, name, directory):
                pytest.fail("entered a held lock")
        except MigrationLocked as exc:
            refusals.append(exc)

    async with guard(aclient, f"{ns}_a", tmp_path / "one"):
        holder = LockHolder.decode(await aclient.get(lock_key(f"{ns}_a")))
        assert holder is not None and holder.pid == os.getpid()
        async with anyio.create_task_group() as group:
            # another backup directory: the Redis lock refuses
            group.start_soon(second_run, f"{ns}_a", tmp_path / "two")
        async with anyio.create_task_group() as group:
            # the same backup directory, another index: the directory lock refuses
            group.start_soon(second_run, f"{ns}_b", tmp_path / "one")
        # the refused run left the other index unlocked
        assert await aclient.get(lock_key(f"{ns}_b")) is None
    assert await aclient.get(lock_key(f"{ns}_a")) is None
    by_index, by_directory = (str(r) for r in refusals)
    assert "\n" not in by_index
    assert f"pid {os.getpid()}" in by_index and holder.host in by_index
    assert holder.started_at in by_index and "--break-lock" in by_index
    assert isinstance(refusals[0], BadInputError) and refusals[0].exit_code == 4
    assert re.search(r"backup directory .* in use by host .* pid", by_directory)
    async with guard(aclient, f"{ns}_a", tmp_path / "two"):
        pass


async def test_directory_lock_file_is_private_and_names_its_holder(tmp_path: Path) -> None:
    first, second = DirectoryLock(tmp_path), DirectoryLock(tmp_path)
    first.acquire(LockHolder.here("rollback"))
    try:
        path = tmp_path / DIRECTORY_LOCK_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with pytest.raises(MigrationLocked, match=rf"pid {os.getpid()} since .*\(rollback\)"):
            second.acquire(LockHolder.here("apply"))
    finally:
        first.release()
    second.acquire(LockHolder.here("apply"))
    second.release()


async def test_a_process_holding_the_directory_blocks_it(tmp_path: Path) -> None:
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(tmp_path / DIRECTORY_LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(30)\n"
    )
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "locked"
        with pytest.raises(MigrationLocked, match="backup directory"):
            DirectoryLock(tmp_path).acquire(LockHolder.here("apply"))
    finally:
        other.kill()
        other.wait()
    lock = DirectoryLock(tmp_path)
    lock.acquire(LockHolder.here("apply"))  # its holder died: the flock went with it
    lock.release()


async def test_renewal_keeps_the_lock_past_its_ttl(
    aclient: aioredis.Redis, ns: str, tmp_path: Path
) -> None:
    key = lock_key(f"{ns}_r")
    async with guard(aclient, f"{ns}_r", tmp_path, ttl=0.6):
        value = await aclient.get(key)
        await anyio.sleep(2.0)  # more than three ttls
        assert await aclient.get(key) == value
        assert 0 < await aclient.pttl(key) <= 600
    assert await aclient.get(key) is None


async def test_a_lost_lock_stops_the_run(aclient: aioredis.Redis, ns: str, tmp_path: Path) -> None:
    key = lock_key(f"{ns}_l")
    started = time.monotonic()
    reached_the_end = False
    with pytest.raises(LockLost, match=r"lost the lock on index .*\(now held by host db-admin-7"):
        async with guard(aclient, f"{ns}_l", tmp_path, ttl=0.6):
            await aclient.set(key, foreign_holder().encode(), px=60_000)
            await anyio.sleep(10)
            reached_the_end = True
    assert not reached_the_end and time.monotonic() - started < 2
    # the other holder's lock is left alone; the directory is free again
    assert LockHolder.decode(await aclient.get(key)) == foreign_holder()
    await aclient.delete(key)
    with pytest.raises(LockLost, match=r"\(it expired\)"):
        async with guard(aclient, f"{ns}_l", tmp_path, ttl=0.6):
            await aclient.delete(key)
            await anyio.sleep(10)


async def test_a_crashed_holders_lock_expires(
    aclient: aioredis.Redis, ns: str, tmp_path: Path
) -> None:
    key = lock_key(f"{ns}_s")
    await aclient.set(key, foreign_holder().encode(), px=400)
    with pytest.raises(MigrationLocked, match="host db-admin-7 pid 4242 since 2025-01-01"):
        async with guard(aclient, f"{ns}_s", tmp_path):
            pass
    await anyio.sleep(0.5)
    async with guard(aclient, f"{ns}_s", tmp_path) as held:
        assert held.warnings == []


async def test_a_dead_local_holder_is_taken_over(
    aclient: aioredis.Redis, ns: str, tmp_path: Path
) -> None:
    if machine_id() is None:
        pytest.skip("pids cannot be checked on this platform")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    key = lock_key(f"{ns}_d")
    await aclient.set(key, foreign_holder(machine=machine_id(), pid=dead.pid).encode(), px=60_000)
    async with guard(aclient, f"{ns}_d", tmp_path) as held:
        assert held.warnings and "its process is gone" in held.warnings[0]
    assert await aclient.get(key) is None


async def test_break_lock_takes_over_and_says_so(
    aclient: aioredis.Redis, ns: str, tmp_path: Path
) -> None:
    key = lock_key(f"{ns}_k")
    await aclient.set(key, foreign_holder().encode(), px=60_000)
    with pytest.raises(MigrationLocked):
        async with guard(aclient, f"{ns}_k", tmp_path):
            pass
    async with guard(aclient, f"{ns}_k", tmp_path, break_lock=True) as held:
        holder = LockHolder.decode(await aclient.get(key))
        assert holder is not None and holder.pid == os.getpid()
        assert held.warnings == [
            f"took over the lock on index '{ns}_k' held by host db-admin-7 pid 4242 since "
            "2025-01-01T00:00:00+00:00 (apply) (--break-lock)"
        ]
    assert await aclient.get(key) is None


async def test_an_inner_run_reuses_the_outer_runs_locks(
    aclient: aioredis.Redis, ns: str, tmp_path: Path
) -> None:
    names = [f"{ns}_1", f"{ns}_2"]
    async with RunGuard(
        aclient,
        command="batch-apply",
        index_name=names[0],
        lock_names=names,
        backup_dir=tmp_path,
        ledger=False,
    ):
        values = [await aclient.get(lock_key(n)) for n in names]
        for name in names:
            async with guard(aclient, name, tmp_path) as inner:
                assert inner.warnings == []
        assert [await aclient.get(lock_key(n)) for n in names] == values

        async def another_task() -> None:
            with pytest.raises(MigrationLocked):
                async with guard(aclient, names[0], tmp_path / "other"):
                    pass

        # a concurrent task (the sync API's other threads) does not share them
        async with anyio.create_task_group() as group:
            group.start_soon(another_task)
    assert [await aclient.get(lock_key(n)) for n in names] == [None, None]


async def test_without_acl_permission_one_clear_line(
    aclient: aioredis.Redis, redis_url: str, ns: str, tmp_path: Path
) -> None:
    user, password = f"{ns}_user", "pw-for-a-test"
    await aclient.execute_command(
        "ACL", "SETUSER", user, "on", f">{password}", "~*", "-@all", "+ping", "+get", "+set"
    )
    await aclient.execute_command("ACL", "SETUSER", user, "resetkeys", f"~{ns}*")
    host_part = redis_url.split("://", 1)[1]
    limited = aioredis.Redis.from_url(f"redis://{user}:{password}@{host_part}")
    try:
        with pytest.raises(BadInputError) as denied:
            async with guard(limited, f"{ns}_p", tmp_path):
                pass
        message = str(denied.value)
        assert "\n" not in message and "may not take the migration lock" in message
        assert "~redismigrate:*" in message and password not in message
    finally:
        await limited.aclose()
        await aclient.execute_command("ACL", "DELUSER", user)
    # nothing held after the refusal
    async with guard(aclient, f"{ns}_p", tmp_path):
        pass


# --------------------------------------------------------------------------- whole runs
def apply_cli(redis_url: str, plan: Path, backup: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "redismigrate", "apply", "--plan", str(plan),
            "--backup-dir", str(backup), "--url", redis_url, "--batch-size", "200", *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def load_many(client: redis.Redis, prefix: str, count: int) -> dict[bytes, bytes]:
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(count, 16)).astype(np.float32)
    originals: dict[bytes, bytes] = {}
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        key = f"{prefix}{i}".encode()
        originals[key] = vectors[i].tobytes()
        pipe.hset(
            key,
            mapping={"title": f"doc {i}", "category": "ab"[i % 2], "price": i,
                     "embedding": originals[key]},
        )  # fmt: skip
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    return originals


def make_float16_plan(redis_url: str, index: str, path: Path) -> Path:
    plan = MigrationPlanner().create_plan(
        index,
        redis_url=redis_url,
        schema_patch=SchemaPatch.from_dict(FLOAT16),
        mode="drop_recreate",
    )
    assert plan.supported
    plan.dump(path)
    return path


def assert_float16_once(client: redis.Redis, prefix: str, originals: dict[bytes, bytes]) -> None:
    keys = set(client.scan_iter(match=f"{prefix}*", count=5000))
    assert keys == set(originals)
    pipe = client.pipeline(transaction=False)
    ordered = sorted(originals)
    for key in ordered:
        pipe.hget(key, "embedding")
    for key, value in zip(ordered, pipe.execute(), strict=True):
        expected = np.frombuffer(originals[key], dtype=np.float32).astype(NUMPY["float16"])
        assert value == expected.tobytes(), key


@pytest.mark.parametrize("same_backup_dir", [True, False], ids=["same-dir", "separate-dirs"])
def test_two_applies_started_half_a_second_apart(
    redis_url: str, sync_client: redis.Redis, ns: str, tmp_path: Path, same_backup_dir: bool
) -> None:
    index, prefix = f"{ns}_c", f"{ns}:c:"
    sync_client.execute_command(*ft_create_args(make_schema(index, prefix, "hash")))
    originals = load_many(sync_client, prefix, CONCURRENT_DOCS)
    plan = make_float16_plan(redis_url, index, tmp_path / "plan.yaml")
    dirs = [tmp_path / "b"] * 2 if same_backup_dir else [tmp_path / "b1", tmp_path / "b2"]
    first = apply_cli(redis_url, plan, dirs[0])
    time.sleep(0.5)
    second = apply_cli(redis_url, plan, dirs[1])
    outcomes = [(p.wait(timeout=300), *p.communicate()) for p in (first, second)]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 4], outcomes
    refused = next(err for code, _, err in outcomes if code == 4)
    lines = refused.strip().splitlines()
    assert len(lines) == 1, refused
    what = "backup directory" if same_backup_dir else f"index '{index}' is being migrated"
    assert what in lines[0] and " pid " in lines[0] and " since " in lines[0], lines[0]
    winner = outcomes[0] if outcomes[0][0] == 0 else outcomes[1]
    loser_dir = dirs[1] if winner is outcomes[0] else dirs[0]
    if not same_backup_dir:
        # the refused run wrote nothing: no backup, no plan copy
        assert not any(p.name.startswith("migration_backup") for p in loser_dir.iterdir())
    info = sync_client.ft(index).info()
    assert int(info["num_docs"]) == CONCURRENT_DOCS
    assert int(info["hash_indexing_failures"]) == 0
    assert_float16_once(sync_client, prefix, originals)
    assert sync_client.get(lock_key(index)) is None
    shown = subprocess.run(
        [sys.executable, "-m", "redismigrate", "history", "--index", index, "--json",
         "--url", redis_url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert sorted(r["status"] for r in rows) == ["refused", "succeeded"]
    assert {r["command"] for r in rows} == {"apply"}
    refused_row = next(r for r in rows if r["status"] == "refused")
    assert refused_row["error"] in lines[0]


async def test_apply_takes_over_a_stale_lock_with_break_lock(
    aclient: aioredis.Redis, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    index, prefix = f"{ns}_t", f"{ns}:t:"
    sync_client.execute_command(*ft_create_args(make_schema(index, prefix, "hash")))
    originals = load_many(sync_client, prefix, 300)
    plan: MigrationPlan = MigrationPlanner().create_plan(
        index,
        redis_client=sync_client,
        schema_patch=SchemaPatch.from_dict(FLOAT16),
        mode="drop_recreate",
    )
    key = lock_key(index)
    await aclient.set(key, foreign_holder().encode(), px=60_000)
    executor = AsyncMigrationExecutor()
    with pytest.raises(MigrationLocked, match="db-admin-7 pid 4242"):
        await executor.apply(plan, redis_client=aclient, backup_dir=tmp_path)
    assert not list(tmp_path.glob("migration_backup*"))
    assert int(sync_client.ft(index).info()["num_docs"]) == 300
    report = await executor.apply(plan, redis_client=aclient, backup_dir=tmp_path, break_lock=True)
    assert report.succeeded, report.error
    assert any("took over the lock" in w and "db-admin-7" in w for w in report.warnings)
    assert await aclient.get(key) is None
    assert_float16_once(sync_client, prefix, originals)
    # rollback holds the same lock
    await aclient.set(key, foreign_holder().encode(), px=60_000)
    with pytest.raises(MigrationLocked):
        await executor.rollback(backup_dir=tmp_path, redis_client=aclient)
    undone = await executor.rollback(backup_dir=tmp_path, redis_client=aclient, break_lock=True)
    assert undone.vectors_restored == 300 and undone.warnings
    assert await aclient.get(key) is None


async def test_an_apply_that_loses_its_lock_stops_and_resumes_later(
    aclient: aioredis.Redis,
    sync_client: redis.Redis,
    ns: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("redismigrate.aio.lock.LOCK_TTL_SECONDS", 0.6)
    index, prefix = f"{ns}_x", f"{ns}:x:"
    sync_client.execute_command(*ft_create_args(make_schema(index, prefix, "hash")))
    originals = load_many(sync_client, prefix, CONCURRENT_DOCS)
    plan = MigrationPlanner().create_plan(
        index,
        redis_client=sync_client,
        schema_patch=SchemaPatch.from_dict(FLOAT16),
        mode="drop_recreate",
    )
    key = lock_key(index)
    executor = AsyncMigrationExecutor()
    outcome: list[BaseException | object] = []

    async def run() -> None:
        try:
            outcome.append(
                await executor.apply(
                    plan, redis_client=aclient, backup_dir=tmp_path, batch_size=200
                )
            )
        except LockLost as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        while await aclient.get(key) is None:
            await anyio.sleep(0.01)
        await anyio.sleep(0.3)
        await aclient.set(key, foreign_holder().encode(), px=60_000)
    (lost,) = outcome
    assert isinstance(lost, LockLost), lost
    assert "now held by host db-admin-7" in str(lost)
    assert LockHolder.decode(await aclient.get(key)) == foreign_holder()  # left alone
    await aclient.delete(key)
    # the stopped run's open backup (and its data file's flock) goes with its frames
    outcome.clear()
    del lost
    gc.collect()
    report = await executor.apply(plan, redis_client=aclient, backup_dir=tmp_path, batch_size=200)
    assert report.succeeded, report.error
    assert_float16_once(sync_client, prefix, originals)
    entries = await executor.history(redis_client=aclient, index_name=index)
    assert [e.status for e in entries] == ["succeeded", "failed"]
    assert "lost the lock" in (entries[1].error or "")


async def test_the_lock_is_renewed_when_every_connection_of_the_run_is_busy(
    redis_url: str, ns: str
) -> None:
    from redismigrate.aio.lock import RedisLock

    client = aioredis.Redis.from_url(redis_url, max_connections=1)
    try:
        lock = RedisLock(client, f"{ns}_busy", LockHolder.here("apply"), ttl=5.0)
        assert await lock.acquire() is None
        taken = await client.connection_pool.get_connection()  # the run's only connection
        try:
            with pytest.raises(redis.ConnectionError):
                await client.ping()  # the run's pool has nothing left
            assert await lock.renew()  # the renewal does not wait for it
        finally:
            await client.connection_pool.release(taken)
        await lock.release()
        await lock.close()
        assert await client.get(lock_key(f"{ns}_busy")) is None
    finally:
        await client.aclose()
