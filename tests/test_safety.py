"""Safety drills against the real server: the application keeps writing during apply,
prefixes that extend each other, guarded writes, undo that leaves the application's
writes alone. Every document is counted and compared byte for byte."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from redismigrate.aio import guarded
from redismigrate.aio.capture import ChangeCapture
from redismigrate.aio.executor import AsyncMigrationExecutor
from redismigrate.aio.fastwire import Wire
from redismigrate.aio.planner import AsyncMigrationPlanner
from redismigrate.errors import BadInputError
from redismigrate.ftinfo import stats_from_ft_info
from redismigrate.patch import SchemaPatch
from redismigrate.render import ft_create_args
from redismigrate.schema import IndexSchema

DIMS = 16
TO_FLOAT16 = {"update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]}


def schema_for(name: str, prefix: str) -> IndexSchema:
    return IndexSchema.from_dict(
        {
            "index": {"name": name, "prefix": prefix, "storage_type": "hash"},
            "fields": [
                {"name": "title", "type": "text"},
                {
                    "name": "embedding",
                    "type": "vector",
                    "attrs": {
                        "dims": DIMS,
                        "algorithm": "flat",
                        "datatype": "float32",
                        "distance_metric": "l2",
                    },
                },
            ],
        }
    )


def vector(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=DIMS).astype(np.float32)


def load(client: redis.Redis, prefix: str, count: int, seed: int = 3) -> dict[bytes, bytes]:
    rng = np.random.default_rng(seed)
    values: dict[bytes, bytes] = {}
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        key = f"{prefix}{i}".encode()
        values[key] = vector(rng).tobytes()
        pipe.hset(key, mapping={"title": f"doc {i}", "embedding": values[key]})
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    return values


def index_stats(client: redis.Redis, name: str) -> Any:
    return stats_from_ft_info(client.execute_command("FT.INFO", name))


async def make_plan(aclient: aioredis.Redis, name: str, changes: dict[str, Any]) -> Any:
    plan = await AsyncMigrationPlanner().create_plan(
        name,
        redis_client=aclient,
        schema_patch=SchemaPatch.from_dict({"changes": changes}),
        mode="drop_recreate",
    )
    assert plan.supported, [str(b) for b in plan.diff_classification.blocked_reasons]
    return plan


class Writer(threading.Thread):
    """The application: updates vectors, inserts and deletes documents until stopped,
    and remembers what every key should hold."""

    def __init__(self, url: str, prefix: str, latest: dict[bytes, bytes], first_new: int):
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.prefix = prefix
        self.latest = latest  # key -> the float32 bytes the application last wrote
        self.deleted: set[bytes] = set()
        self.next_new = first_new
        self.stop_now = threading.Event()
        self.pause = 0.0
        self.updates = self.inserts = self.deletes = 0
        self.rng = np.random.default_rng(11)
        self.pick = random.Random(5)

    def run(self) -> None:
        keys = list(self.latest)
        while not self.stop_now.wait(self.pause):
            roll = self.pick.random()
            if roll < 0.6:
                key = self.pick.choice(keys)
                if key in self.deleted:
                    continue
                value = vector(self.rng).tobytes()
                self.client.hset(key, "embedding", value)
                self.latest[key] = value
                self.updates += 1
            elif roll < 0.8:
                key = f"{self.prefix}{self.next_new}".encode()
                self.next_new += 1
                value = vector(self.rng).tobytes()
                self.client.hset(key, mapping={"title": "new", "embedding": value})
                self.latest[key] = value
                keys.append(key)
                self.inserts += 1
            else:
                key = self.pick.choice(keys)
                if key in self.deleted:
                    continue
                self.client.delete(key)
                self.deleted.add(key)
                self.latest.pop(key, None)
                self.deletes += 1

    def finish(self) -> None:
        self.stop_now.set()
        self.join(timeout=10)
        self.client.close()


@pytest.mark.parametrize("workers", [1, 4])
async def test_application_writes_during_apply_are_never_lost(
    aclient: aioredis.Redis,
    sync_client: redis.Redis,
    redis_url: str,
    ns: str,
    tmp_path: Path,
    workers: int,
) -> None:
    await writes_during_apply(aclient, sync_client, redis_url, ns, tmp_path, workers, 40_000)


async def writes_during_apply(
    aclient: aioredis.Redis,
    sync_client: redis.Redis,
    redis_url: str,
    ns: str,
    tmp_path: Path,
    workers: int,
    docs: int,
) -> None:
    """An application updating, inserting and deleting through a whole apply of ``docs``
    documents: every document ends as the float16 of its latest value, none deleted
    comes back, none is missing."""
    prefix = f"{ns}:w:"
    schema = schema_for(f"{ns}_w", prefix)
    sync_client.execute_command(*ft_create_args(schema))
    latest = load(sync_client, prefix, docs)
    plan = await make_plan(aclient, schema.name, TO_FLOAT16)
    failures_before = index_stats(sync_client, schema.name).hash_indexing_failures

    writer = Writer(redis_url, prefix, latest, first_new=docs)
    phases_seen: list[str] = []

    def progress(step: str, done: int, total: int | None) -> None:
        if step not in phases_seen:
            phases_seen.append(step)
        if step == "reconcile" and writer.is_alive():
            writer.finish()  # the application stops writing in the old encoding

    writer.start()
    time.sleep(0.05)
    report = await AsyncMigrationExecutor().apply(
        plan,
        redis_client=aclient,
        backup_dir=tmp_path,
        batch_size=500,
        num_workers=workers,
        progress_callback=progress,
    )
    writer.finish()
    assert report.result == "succeeded", (report.error, report.validation)
    assert writer.updates > 100 and writer.inserts > 20 and writer.deletes > 20, (
        writer.updates,
        writer.inserts,
        writer.deletes,
    )
    assert "backup" in phases_seen and "reencode" in phases_seen
    concurrent = report.concurrent_writes
    assert concurrent is not None and concurrent.capture == "notifications"
    # (writes made before apply started its capture are not counted)
    assert 0 < concurrent.writes_seen <= writer.updates + writer.inserts + writer.deletes
    assert concurrent.unreconciled == 0

    live = set(sync_client.scan_iter(match=f"{prefix}*", count=2000))
    assert live == set(latest), "a deleted document came back or a live one is missing"
    pipe = sync_client.pipeline(transaction=False)
    ordered = sorted(live)
    for key in ordered:
        pipe.hgetall(key)
    wrong = []
    for key, doc in zip(ordered, pipe.execute(), strict=True):
        want = np.frombuffer(latest[key], np.float32).astype(np.float16).tobytes()
        if doc.get(b"embedding") != want or b"title" not in doc:
            wrong.append(key)
    assert not wrong, f"{len(wrong)} documents do not hold float16 of their latest value"
    stats = index_stats(sync_client, schema.name)
    assert stats.hash_indexing_failures == failures_before
    assert stats.num_docs == len(latest)
    runs = await AsyncMigrationExecutor().history(redis_client=aclient, index_name=schema.name)
    assert [(r.command, r.status) for r in runs] == [("apply", "succeeded")]


async def test_prefix_that_extends_the_old_one_moves_every_key_once(
    aclient: aioredis.Redis, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    docs = 20_000
    old, new = f"{ns}pv:", f"{ns}pv:v2:"
    schema = schema_for(f"{ns}_pv", old)
    sync_client.execute_command(*ft_create_args(schema))
    values = load(sync_client, old, docs)
    sync_client.expire(f"{old}7", 10_000)
    plan = await make_plan(aclient, schema.name, {"index": {"prefix": new}})
    report = await AsyncMigrationExecutor().apply(plan, redis_client=aclient, backup_dir=tmp_path)
    assert report.result == "succeeded", (report.error, report.validation)
    assert report.keys_renamed == docs
    moved = set(sync_client.scan_iter(match=f"{old}*", count=2000))
    assert moved == {new.encode() + k[len(old) :] for k in values}
    assert sync_client.ttl(f"{new}7") > 0
    assert index_stats(sync_client, schema.name).num_docs == docs

    rolled = await AsyncMigrationExecutor().rollback(
        backup_dir=tmp_path, redis_client=aclient, recreate_index=True
    )
    assert rolled.index_recreated
    back = set(sync_client.scan_iter(match=f"{old}*", count=2000))
    assert back == set(values)
    pipe = sync_client.pipeline(transaction=False)
    for key in sorted(values):
        pipe.hget(key, "embedding")
    assert pipe.execute() == [values[k] for k in sorted(values)]
    assert index_stats(sync_client, schema.name).num_docs == docs
    runs = await AsyncMigrationExecutor().history(redis_client=aclient, index_name=schema.name)
    assert [(r.command, r.status) for r in runs] == [
        ("rollback", "succeeded"),
        ("apply", "succeeded"),
    ]


async def test_original_key_under_the_new_prefix_is_refused_before_anything(
    aclient: aioredis.Redis, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    old, new = f"{ns}pc:", f"{ns}pc:v2:"
    schema = schema_for(f"{ns}_pc", old)
    sync_client.execute_command(*ft_create_args(schema))
    load(sync_client, old, 50)
    sync_client.hset(f"{new}3", mapping={"title": "chain", "embedding": b"\0" * (DIMS * 4)})
    plan = await make_plan(aclient, schema.name, {"index": {"prefix": new}})
    before = {k: sync_client.hgetall(k) for k in sync_client.scan_iter(match=f"{old}*")}
    with pytest.raises(BadInputError, match=r"already exist under the new prefix.*v2:3"):
        await AsyncMigrationExecutor().apply(plan, redis_client=aclient, backup_dir=tmp_path)
    after = {k: sync_client.hgetall(k) for k in sync_client.scan_iter(match=f"{old}*")}
    assert after == before
    assert index_stats(sync_client, schema.name).num_docs == 51


async def test_guarded_writes_never_replace_or_resurrect(
    aclient: aioredis.Redis, sync_client: redis.Redis, ns: str
) -> None:
    keys = [f"{ns}:g:{i}".encode() for i in range(6)]
    for key in keys:
        sync_client.hset(key, mapping={"v": b"old", "t": b"x"})
    sync_client.hset(keys[1], "v", b"app")  # the application updated it
    sync_client.delete(keys[2])  # and deleted this one
    sync_client.hdel(keys[3], "v")  # and removed this vector
    wire = Wire(aclient)
    try:
        outcome = await guarded.reencode(
            wire,
            keys,
            [b"v"],
            [[b"old"] * 6],
            [[b"new"] * 6],
            touch=True,
            capture=None,
        )
        assert outcome.written == 3 and sorted(outcome.skipped) == sorted(keys[1:4])
        assert sync_client.hget(keys[0], "v") == b"new"
        assert sync_client.hget(keys[1], "v") == b"app"
        assert not sync_client.exists(keys[2])
        assert sync_client.hgetall(keys[3]) == {b"t": b"x"}
        again = await guarded.reencode(
            wire, keys[:1], [b"v"], [[b"old"]], [[b"new"]], touch=False, capture=None
        )
        assert again.already == 1 and not again.skipped  # a redone batch is not a conflict
        restored = await guarded.restore(wire, keys, b"v", [b"old"] * 6, [b"new"] * 6, capture=None)
        assert restored.written == 3 and restored.missing == 2
        assert restored.skipped == [keys[1]]
        assert sync_client.hget(keys[1], "v") == b"app" and not sync_client.exists(keys[2])
        touched = await guarded.touch(wire, keys[2:4], capture=None)
        assert touched.written == 1 and touched.missing == 1 and not sync_client.exists(keys[2])
    finally:
        await wire.close()


async def test_change_capture_tells_the_applications_writes_from_the_migrators(
    aclient: aioredis.Redis, sync_client: redis.Redis, ns: str
) -> None:
    prefix = f"{ns}:c:"
    before = sync_client.config_get("notify-keyspace-events")["notify-keyspace-events"]
    capture = await ChangeCapture(aclient, [prefix, f"{prefix}sub:"]).start()
    try:
        assert capture.complete, capture.problem
        ours = f"{prefix}1".encode()
        capture.expect([(ours, 1)])
        await aclient.hset(ours, "v", "1")  # the migrator's own write
        sync_client.hset(f"{prefix}2", "v", "1")  # the application's
        sync_client.hset(f"{prefix}sub:3", "v", "1")  # under both prefixes: one event
        sync_client.delete(f"{prefix}2")
        await aclient.hset(ours, "v", "2")  # not announced: counts as the application's
        await capture.sync()
        assert capture.drain() == {f"{prefix}2".encode(), f"{prefix}sub:3".encode(), ours}
        assert capture.deleted(f"{prefix}2".encode())
        assert capture.foreign_events == 4
        await capture.sync()
        assert capture.drain() == set()
    finally:
        await capture.stop()
    after = sync_client.config_get("notify-keyspace-events")["notify-keyspace-events"]
    assert after == before


async def test_online_validation_counts_the_live_keyspace(
    aclient: aioredis.Redis, sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path
) -> None:
    prefix = f"{ns}:o:"
    schema = schema_for(f"{ns}_o", prefix)
    sync_client.execute_command(*ft_create_args(schema))
    latest = load(sync_client, prefix, 5_000)
    plan = await AsyncMigrationPlanner().create_plan(
        schema.name,
        redis_client=aclient,
        schema_patch=SchemaPatch.from_dict(
            {"changes": {"add_fields": [{"name": "brand", "type": "tag"}]}}
        ),
        mode="online",
    )
    writer = Writer(redis_url, prefix, latest, first_new=5_000)
    writer.pause = 0.002
    writer.start()
    try:
        report = await AsyncMigrationExecutor(poll_interval=0.2).apply(
            plan, redis_client=aclient, backup_dir=tmp_path
        )
    finally:
        writer.finish()
    assert writer.deletes > 0 and writer.inserts > 0
    assert report.result == "succeeded", (report.error, report.validation)
    # the application deletes more after the switch: validation counts what is there
    for key in list(latest)[:200]:
        sync_client.delete(key)
        latest.pop(key)
    again = await AsyncMigrationExecutor().validate(plan, redis_client=aclient)
    assert again.result == "succeeded", again.error
    assert index_stats(sync_client, schema.name).num_docs == len(latest)


async def test_malformed_vectors_are_left_alone_and_counted_as_before(
    aclient: aioredis.Redis, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    prefix = f"{ns}:m:"
    schema = schema_for(f"{ns}_m", prefix)
    sync_client.execute_command(*ft_create_args(schema))
    # the index's first scan over the keyspace must be over before the documents are
    # written, or it may count a malformed one a second time (on a busy machine)
    deadline = time.monotonic() + 30
    while index_stats(sync_client, schema.name).indexing and time.monotonic() < deadline:
        time.sleep(0.02)
    values = load(sync_client, prefix, 3_000)
    sync_client.hset(f"{prefix}bad10", mapping={"title": "bad", "embedding": b"0123456789"})
    sync_client.hset(f"{prefix}empty", mapping={"title": "bad", "embedding": b""})
    time.sleep(0.2)
    failures = index_stats(sync_client, schema.name).hash_indexing_failures
    assert failures == 2
    plan = await make_plan(aclient, schema.name, TO_FLOAT16)
    report = await AsyncMigrationExecutor().apply(plan, redis_client=aclient, backup_dir=tmp_path)
    assert report.result == "succeeded", (report.error, report.validation)
    assert sync_client.hget(f"{prefix}bad10", "embedding") == b"0123456789"
    assert sync_client.hget(f"{prefix}empty", "embedding") == b""
    stats = index_stats(sync_client, schema.name)
    assert stats.hash_indexing_failures == failures and stats.num_docs == len(values)
    for key, value in list(values.items())[:200]:
        want = np.frombuffer(value, np.float32).astype(np.float16).tobytes()
        assert sync_client.hget(key, "embedding") == want


async def test_any_error_after_the_drop_is_undone(
    aclient: aioredis.Redis,
    sync_client: redis.Redis,
    ns: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prefix, new = f"{ns}:u:", f"{ns}:u2:"
    schema = schema_for(f"{ns}_u", prefix)
    sync_client.execute_command(*ft_create_args(schema))
    values = load(sync_client, prefix, 2_000)
    before = {k: sync_client.hgetall(k) for k in values}
    plan = await make_plan(
        aclient,
        schema.name,
        {
            "index": {"prefix": new},
            "rename_fields": [{"old_name": "title", "new_name": "heading"}],
            **TO_FLOAT16,
        },
    )

    import redismigrate.aio.executor as executor_module

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("an unexpected bug in a late step")

    monkeypatch.setattr(executor_module.AsyncMigrationExecutor, "_rebuild_if_failures_grew", broken)
    report = await AsyncMigrationExecutor().apply(plan, redis_client=aclient, backup_dir=tmp_path)
    assert report.result == "rolled_back", report.error
    assert "unexpected bug" in (report.error or "")
    after = {k: sync_client.hgetall(k) for k in values}
    assert after == before
    assert not list(sync_client.scan_iter(match=f"{new}*"))
    assert index_stats(sync_client, schema.name).num_docs == len(values)
    runs = await AsyncMigrationExecutor().history(redis_client=aclient, index_name=schema.name)
    assert [(r.command, r.status) for r in runs] == [("apply", "rolled_back")]


async def test_ctrl_c_during_rollback_says_how_to_finish_and_it_finishes(
    aclient: aioredis.Redis, sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys

    prefix = f"{ns}:i:"
    schema = schema_for(f"{ns}_i", prefix)
    sync_client.execute_command(*ft_create_args(schema))
    values = load(sync_client, prefix, 40_000)
    plan = await make_plan(aclient, schema.name, TO_FLOAT16)
    report = await AsyncMigrationExecutor().apply(plan, redis_client=aclient, backup_dir=tmp_path)
    assert report.result == "succeeded", report.error
    command = [
        sys.executable, "-m", "redismigrate", "rollback", "--backup-dir", str(tmp_path),
        "--url", redis_url, "--recreate-index",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ}
    )
    lock = f"redismigrate:lock:{{{schema.name}}}"
    deadline = time.monotonic() + 20
    while sync_client.get(lock) is None and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    lines = stderr.decode().strip().splitlines()
    assert process.returncode == 130, lines
    assert len(lines) == 1 and "finish it with `redismigrate rollback --backup-dir" in lines[0]
    assert "Traceback" not in stderr.decode()
    again = subprocess.run(command, capture_output=True, timeout=120)
    assert again.returncode == 0, again.stderr.decode()
    pipe = sync_client.pipeline(transaction=False)
    for key in sorted(values):
        pipe.hget(key, "embedding")
    assert pipe.execute() == [values[k] for k in sorted(values)]
    assert index_stats(sync_client, schema.name).num_docs == len(values)


async def test_notification_setting_is_put_back_by_the_last_run_even_after_a_crash(
    aclient: aioredis.Redis, sync_client: redis.Redis, ns: str
) -> None:
    from redismigrate.aio.capture import ORIGINAL_KEY

    def flags() -> str:
        return str(sync_client.config_get("notify-keyspace-events")["notify-keyspace-events"])

    user_setting = flags()
    first = await ChangeCapture(aclient, [f"{ns}:a:"]).start()
    second = await ChangeCapture(aclient, [f"{ns}:b:"]).start()
    assert first.complete and second.complete
    await first.stop()  # the other run still needs the notifications
    assert "h" in flags() and "K" in flags()
    await second.stop()
    assert flags() == user_setting and sync_client.get(ORIGINAL_KEY) is None

    # a run that was killed left the setting changed: the next run puts it back
    crashed = await ChangeCapture(aclient, [f"{ns}:c:"]).start()
    assert crashed._transport is not None
    crashed._transport.close()  # gone without stopping
    await asyncio.sleep(0.05)
    assert "h" in flags() and sync_client.get(ORIGINAL_KEY) is not None
    later = await ChangeCapture(aclient, [f"{ns}:d:"]).start()
    await later.stop()
    assert flags() == user_setting and sync_client.get(ORIGINAL_KEY) is None


async def test_a_killed_apply_resumed_while_the_application_writes_loses_nothing(
    aclient: aioredis.Redis, sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    docs = 20_000
    prefix = f"{ns}:k:"
    schema = schema_for(f"{ns}_k", prefix)
    sync_client.execute_command(*ft_create_args(schema))
    latest = load(sync_client, prefix, docs)
    plan = await make_plan(aclient, schema.name, TO_FLOAT16)
    plan_path = tmp_path / "plan.yaml"
    plan.dump(plan_path)
    backup = tmp_path / "backup"
    writer = Writer(redis_url, prefix, latest, first_new=docs)
    writer.pause = 0.001
    writer.start()
    try:
        command = [
            sys.executable, "-m", "redismigrate", "apply", "--plan", str(plan_path),
            "--url", redis_url, "--backup-dir", str(backup),
        ]  # fmt: skip
        killed = subprocess.run(
            command,
            capture_output=True,
            env={**os.environ, "REDISMIGRATE_CRASH_AT": "during_reencode:5"},
            timeout=120,
        )
        assert killed.returncode == -9, killed.stderr.decode()

        def progress(step: str, done: int, total: int | None) -> None:
            if step == "reconcile" and writer.is_alive():
                writer.finish()

        report = await AsyncMigrationExecutor().apply(
            plan, redis_client=aclient, backup_dir=backup, progress_callback=progress
        )
    finally:
        writer.finish()
    assert report.result == "succeeded", (report.error, report.validation)
    assert report.resumed
    assert report.concurrent_writes is not None
    assert report.concurrent_writes.capture.startswith("sweep")
    assert writer.updates > 20 and writer.deletes > 5 and writer.inserts > 5
    live = set(sync_client.scan_iter(match=f"{prefix}*", count=2000))
    assert live == set(latest), "a deleted document came back or a live one is missing"
    pipe = sync_client.pipeline(transaction=False)
    ordered = sorted(live)
    for key in ordered:
        pipe.hget(key, "embedding")
    wrong = [
        key
        for key, value in zip(ordered, pipe.execute(), strict=True)
        if value != np.frombuffer(latest[key], np.float32).astype(np.float16).tobytes()
    ]
    assert not wrong, f"{len(wrong)} documents do not hold float16 of their latest value"
    assert index_stats(sync_client, schema.name).hash_indexing_failures == 0
