"""The migration ledger and `redismigrate history`, against the real server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from redismigrate.aio.executor import AsyncMigrationExecutor
from redismigrate.aio.ledger import read_events
from redismigrate.aio.lock import RunGuard
from redismigrate.errors import BadInputError, MigrationLocked
from redismigrate.ledger import LockHolder, lock_key
from redismigrate.patch import SchemaPatch
from redismigrate.plan import MigrationPlan, plan_hash
from redismigrate.render import ft_create_args
from redismigrate.sync import MigrationExecutor, MigrationPlanner
from tests.test_batch import PATCH, batch_apply, batch_plan, make_index
from tests.test_cli import assert_one_line_error, cli
from tests.test_executor import load, make_schema, snapshot
from tests.test_lock import foreign_holder
from tests.test_recovery import apply_cli, assert_reencoded_once

FLOAT16 = {"changes": {"update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]}}


def make_plan(client: redis.Redis, ns: str, letter: str) -> MigrationPlan:
    index, prefix = f"{ns}_{letter}", f"{ns}:{letter}:"
    client.execute_command(*ft_create_args(make_schema(index, prefix, "hash")))
    load(client, prefix, "hash")
    plan = MigrationPlanner().create_plan(
        index,
        redis_client=client,
        schema_patch=SchemaPatch.from_dict(FLOAT16),
        mode="drop_recreate",
    )
    assert plan.supported
    return plan


async def test_every_run_is_in_the_ledger_newest_first(
    aclient: aioredis.Redis, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    plan = make_plan(sync_client, ns, "h")
    index = plan.source.index_name
    executor = AsyncMigrationExecutor()
    report = await executor.apply(plan, redis_client=aclient, backup_dir=tmp_path)
    assert report.succeeded
    await aclient.set(lock_key(index), foreign_holder().encode(), px=60_000)
    with pytest.raises(MigrationLocked):
        await executor.rollback(backup_dir=tmp_path, redis_client=aclient)
    await aclient.delete(lock_key(index))
    await executor.rollback(backup_dir=tmp_path, redis_client=aclient, recreate_index=True)

    entries = await executor.history(redis_client=aclient, index_name=index)
    assert [(e.command, e.status) for e in entries] == [
        ("rollback", "succeeded"),
        ("rollback", "refused"),
        ("apply", "succeeded"),
    ]
    applied = entries[-1]
    assert applied.plan_hash == plan_hash(plan) and applied.index_name == index
    assert (applied.host, applied.pid) == (LockHolder.here("x").host, os.getpid())
    assert applied.backup_dir == str(tmp_path.resolve())
    assert applied.started_at <= (applied.finished_at or "") and applied.error is None
    assert "db-admin-7 pid 4242" in (entries[1].error or "")
    # a started and a finished event per run; the refused one is a lone finished event
    events = [e for e in await read_events(aclient) if e.index_name == index]
    assert [(e.command, e.event) for e in events] == [
        ("apply", "started"), ("apply", "finished"),
        ("rollback", "finished"),
        ("rollback", "started"), ("rollback", "finished"),
    ]  # fmt: skip
    limited = await executor.history(redis_client=aclient, index_name=index, limit=1)
    assert limited == entries[:1]


async def test_a_live_run_shows_as_running(
    aclient: aioredis.Redis, ns: str, tmp_path: Path
) -> None:
    executor = AsyncMigrationExecutor()
    async with RunGuard(aclient, command="apply", index_name=f"{ns}_live", backup_dir=tmp_path):
        (entry,) = await executor.history(redis_client=aclient, index_name=f"{ns}_live")
        assert entry.status == "running" and entry.finished_at is None
    (entry,) = await executor.history(redis_client=aclient, index_name=f"{ns}_live")
    assert entry.status == "succeeded" and entry.finished_at is not None


def test_a_crashed_run_shows_unfinished_and_its_rerun_takes_over(
    redis_url: str, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    plan = make_plan(sync_client, ns, "k")
    index = plan.source.index_name
    before = snapshot(sync_client, f"{ns}:k:", "hash")
    plan.dump(tmp_path / "plan.yaml")
    crashed = apply_cli(redis_url, tmp_path / "plan.yaml", tmp_path / "b", "after_drop")
    assert crashed.returncode == -9, crashed.stderr
    holder = LockHolder.decode(sync_client.get(lock_key(index)))
    assert holder is not None and holder.is_dead()  # its lock outlives it, until it expires

    (entry,) = MigrationExecutor().history(redis_url=redis_url, index_name=index)
    assert entry.status == "unfinished" and entry.finished_at is None

    resumed = apply_cli(redis_url, tmp_path / "plan.yaml", tmp_path / "b")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "took over the lock" in resumed.stdout and "its process is gone" in resumed.stdout
    assert_reencoded_once(before, snapshot(sync_client, f"{ns}:k:", "hash"), "float32", "float16")
    assert sync_client.get(lock_key(index)) is None

    shown = cli("history", "--index", index, "--json", "--url", redis_url)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert [(r["command"], r["status"]) for r in rows] == [
        ("apply", "succeeded"),
        ("apply", "unfinished"),
    ]
    assert "its process is gone" in rows[0]["took_over"]
    assert rows[0]["plan_hash"] == plan_hash(plan) and rows[0]["version"] == 1
    table = cli("history", "--index", index, "--url", redis_url)
    assert table.returncode == 0, table.stderr
    assert "unfinished" in table.stdout and "succeeded" in table.stdout
    assert "2 run(s)" in table.stdout
    nothing = cli("history", "--index", f"{ns}_none", "--json", "--url", redis_url)
    assert nothing.returncode == 0 and json.loads(nothing.stdout) == []


def test_a_batch_holds_its_indexes_and_records_each_one(
    sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path
) -> None:
    make_index(sync_client, f"{ns}_b1", f"{ns}:b1:")
    make_index(sync_client, f"{ns}_b2", f"{ns}:b2:")
    (tmp_path / "patch.yaml").write_text(PATCH)
    assert batch_plan(redis_url, ns, tmp_path).returncode == 0
    sync_client.set(lock_key(f"{ns}_b2"), foreign_holder().encode(), px=60_000)

    refused = batch_apply(redis_url, tmp_path, "--accept-data-loss")
    assert_one_line_error(refused, 4, f"index '{ns}_b2' is being migrated", "db-admin-7")
    assert not (tmp_path / "state.yaml").exists()
    assert sync_client.get(lock_key(f"{ns}_b1")) is None

    done = batch_apply(redis_url, tmp_path, "--accept-data-loss", "--break-lock")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sync_client.get(lock_key(f"{ns}_b2")) is None
    for name in (f"{ns}_b1", f"{ns}_b2"):
        (entry,) = MigrationExecutor().history(redis_url=redis_url, index_name=name)
        assert (entry.command, entry.status) == ("batch-apply", "succeeded")
        assert ("db-admin-7" in (entry.took_over or "")) == name.endswith("b2")


def test_cli_apply_and_rollback_refuse_then_break_lock(
    redis_url: str, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    plan = make_plan(sync_client, ns, "r")
    index = plan.source.index_name
    plan.dump(tmp_path / "plan.yaml")
    sync_client.set(lock_key(index), foreign_holder().encode(), px=60_000)
    refused = apply_cli(redis_url, tmp_path / "plan.yaml", tmp_path / "b")
    assert_one_line_error(refused, 4, "host db-admin-7 pid 4242 since 2025-01-01", "--break-lock")
    taken = apply_cli(redis_url, tmp_path / "plan.yaml", tmp_path / "b", None, "--break-lock")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert "Warning: took over the lock" in taken.stdout
    sync_client.set(lock_key(index), foreign_holder().encode(), px=60_000)
    rollback = ["rollback", "--backup-dir", str(tmp_path / "b"), "--url", redis_url]
    assert_one_line_error(cli(*rollback), 4, "db-admin-7")
    rolled = cli(*rollback, "--break-lock", "--recreate-index")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert "Warning: took over the lock" in rolled.stdout


async def test_history_without_acl_permission_is_one_clear_line(
    aclient: aioredis.Redis, redis_url: str, ns: str
) -> None:
    user, password = f"{ns}_reader", "pw-history-test"
    await aclient.execute_command("ACL", "SETUSER", user, "on", f">{password}", f"~{ns}*", "+@all")
    host_part = redis_url.split("://", 1)[1]
    limited = f"redis://{user}:{password}@{host_part}"
    try:
        with pytest.raises(BadInputError, match="may not read the migration ledger"):
            await AsyncMigrationExecutor().history(redis_url=limited)
        shown = cli("history", "--url", limited)
        assert_one_line_error(shown, 2, "'redismigrate:ledger'", "~redismigrate:*")
        assert password not in shown.stderr
    finally:
        await aclient.execute_command("ACL", "DELUSER", user)
