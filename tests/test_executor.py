"""Apply against the real server: every supported change, every document compared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from redismigrate.aio.executor import AsyncMigrationExecutor
from redismigrate.aio.planner import AsyncMigrationPlanner
from redismigrate.errors import BadInputError
from redismigrate.patch import SchemaPatch
from redismigrate.plan import MigrationPlan
from redismigrate.render import ft_create_args
from redismigrate.schema import IndexSchema

DIMS = 16
DOCS = 450
BATCH = 100
NUMPY = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def make_schema(name: str, prefix: str, storage: str, datatype: str = "float32") -> IndexSchema:
    return IndexSchema.from_dict(
        {
            "index": {"name": name, "prefix": prefix, "storage_type": storage},
            "fields": [
                {"name": "title", "type": "text"},
                {"name": "category", "type": "tag"},
                {"name": "price", "type": "numeric"},
                {
                    "name": "embedding",
                    "type": "vector",
                    "attrs": {
                        "dims": DIMS,
                        "algorithm": "flat",
                        "datatype": datatype,
                        "distance_metric": "cosine",
                    },
                },
            ],
        }
    )


def load(client: redis.Redis, prefix: str, storage: str, datatype: str = "float32") -> None:
    rng = np.random.default_rng(17)
    pipe = client.pipeline(transaction=False)
    for i in range(DOCS):
        vector = rng.normal(size=DIMS).astype(NUMPY[datatype])
        doc = {"title": f"doc {i}", "category": "ab"[i % 2], "price": i, "extra": f"x{i}"}
        key = f"{prefix}{i}"
        if storage == "hash":
            pipe.hset(key, mapping={**doc, "embedding": vector.tobytes()})
        else:
            doc["embedding"] = [float(v) for v in vector.astype(np.float64)]
            pipe.execute_command("JSON.SET", key, "$", json.dumps(doc))
        if i % 50 == 0:
            pipe.expire(key, 10_000)
    pipe.execute()


def snapshot(client: redis.Redis, prefix: str, storage: str) -> dict[bytes, Any]:
    out: dict[bytes, Any] = {}
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        if storage == "hash":
            out[key] = client.hgetall(key)
        else:
            out[key] = json.loads(client.execute_command("JSON.GET", key, "$"))[0]
    return out


def ttls(client: redis.Redis, keys: list[bytes]) -> list[bool]:
    return [client.ttl(k) > 0 for k in keys]


@pytest.fixture(params=["hash", "json"])
def storage(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def live(sync_client: redis.Redis, ns: str, storage: str) -> IndexSchema:
    schema = make_schema(f"{ns}_x", f"{ns}:d:", storage)
    sync_client.execute_command(*ft_create_args(schema))
    load(sync_client, f"{ns}:d:", storage)
    return schema


async def plan_and_apply(
    aclient: aioredis.Redis,
    schema: IndexSchema,
    changes: dict[str, Any],
    backup: Path,
    mode: str | None = None,
) -> tuple[MigrationPlan, Any]:
    plan = await AsyncMigrationPlanner().create_plan(
        schema.name,
        redis_client=aclient,
        schema_patch=SchemaPatch.from_dict({"changes": changes}),
        mode=mode,
    )
    assert plan.supported, [str(b) for b in plan.diff_classification.blocked_reasons]
    report = await AsyncMigrationExecutor().apply(
        plan, redis_client=aclient, backup_dir=backup, batch_size=BATCH
    )
    assert report.result == "succeeded", (report.error, report.validation)
    assert report.validation is not None and report.validation.passed
    if report.mode == "online":
        assert report.downtime_seconds == 0
    else:
        assert report.downtime_seconds > 0
    return plan, report


INDEX_ONLY_CHANGES = [
    {"add_fields": [{"name": "brand", "type": "tag"}]},
    {"remove_fields": ["category"]},
    {"update_fields": [{"name": "title", "attrs": {"sortable": True}}]},
    {"update_fields": [{"name": "category", "attrs": {"separator": ";"}}]},
    {"update_fields": [{"name": "embedding", "attrs": {"algorithm": "hnsw", "m": 8}}]},
    {"update_fields": [{"name": "embedding", "attrs": {"distance_metric": "l2"}}]},
]


@pytest.mark.parametrize("mode", ["online", "drop_recreate"])
@pytest.mark.parametrize("changes", INDEX_ONLY_CHANGES)
async def test_index_only_changes_keep_every_document(
    aclient: aioredis.Redis,
    sync_client: redis.Redis,
    live: IndexSchema,
    storage: str,
    tmp_path: Path,
    changes: dict[str, Any],
    mode: str,
) -> None:
    before = snapshot(sync_client, live.prefixes[0], storage)
    plan, report = await plan_and_apply(aclient, live, changes, tmp_path, mode)
    assert report.mode == mode
    assert snapshot(sync_client, live.prefixes[0], storage) == before
    info = await AsyncMigrationPlanner().create_plan(  # the live index is the target now
        live.name,
        redis_client=aclient,
        schema_patch=SchemaPatch.from_dict({"changes": {}}),
    )
    assert info.source.schema_snapshot.same_index_as(plan.merged_target_schema)
    assert report.validation.target_documents == DOCS


async def test_rename_a_field_in_every_document(
    aclient: aioredis.Redis,
    sync_client: redis.Redis,
    live: IndexSchema,
    storage: str,
    tmp_path: Path,
) -> None:
    before = snapshot(sync_client, live.prefixes[0], storage)
    await plan_and_apply(
        aclient, live, {"rename_fields": [{"old_name": "title", "new_name": "headline"}]}, tmp_path
    )
    after = snapshot(sync_client, live.prefixes[0], storage)
    assert after.keys() == before.keys()
    for key, doc in before.items():
        expected = dict(doc)
        title = expected.pop(b"title" if storage == "hash" else "title")
        expected[b"headline" if storage == "hash" else "headline"] = title
        assert after[key] == expected


async def test_change_prefix_moves_every_key_and_keeps_ttls(
    aclient: aioredis.Redis,
    sync_client: redis.Redis,
    live: IndexSchema,
    storage: str,
    tmp_path: Path,
) -> None:
    old = live.prefixes[0]
    new = old.replace(":d:", ":moved:")
    before = snapshot(sync_client, old, storage)
    with_ttl = [k for k in before if sync_client.ttl(k) > 0]
    assert with_ttl
    await plan_and_apply(aclient, live, {"index": {"prefix": new}}, tmp_path)
    assert snapshot(sync_client, old, storage) == {}
    after = snapshot(sync_client, new, storage)
    assert after == {new.encode() + k[len(old) :]: v for k, v in before.items()}
    assert all(ttls(sync_client, [new.encode() + k[len(old) :] for k in with_ttl]))


async def test_rename_the_index(
    aclient: aioredis.Redis,
    sync_client: redis.Redis,
    live: IndexSchema,
    storage: str,
    tmp_path: Path,
) -> None:
    before = snapshot(sync_client, live.prefixes[0], storage)
    plan, _ = await plan_and_apply(aclient, live, {"index": {"name": live.name + "_v2"}}, tmp_path)
    names = {n.decode() for n in sync_client.execute_command("FT._LIST")}
    assert live.name not in names
    # online: the new name is an alias of the shadow index
    assert plan.mode.__struct_config__.tag == "online"
    assert sync_client.ft(live.name + "_v2").info()["num_docs"] in (DOCS, str(DOCS))
    ours = {n for n in names if n.startswith(live.name)}
    assert ours == {plan.mode.shadow_index}  # type: ignore[union-attr]
    assert snapshot(sync_client, live.prefixes[0], storage) == before


@pytest.mark.parametrize("datatype", ["float16", "bfloat16"])
async def test_reencoding_is_bit_exact_to_the_plan_rule(
    aclient: aioredis.Redis,
    sync_client: redis.Redis,
    live: IndexSchema,
    storage: str,
    tmp_path: Path,
    datatype: str,
) -> None:
    before = snapshot(sync_client, live.prefixes[0], storage)
    _, report = await plan_and_apply(
        aclient,
        live,
        {"update_fields": [{"name": "embedding", "attrs": {"datatype": datatype}}]},
        tmp_path,
        "drop_recreate",
    )
    after = snapshot(sync_client, live.prefixes[0], storage)
    assert after.keys() == before.keys()
    for key, doc in before.items():
        if storage == "json":
            assert after[key] == doc  # the server re-reads JSON arrays as they are
            continue
        original = np.frombuffer(doc[b"embedding"], dtype=np.float32)
        expected = original.astype(NUMPY[datatype]).tobytes()
        assert after[key][b"embedding"] == expected, key
        assert {k: v for k, v in after[key].items() if k != b"embedding"} == {
            k: v for k, v in doc.items() if k != b"embedding"
        }
    if storage == "hash":
        assert report.vectors_reencoded == DOCS
        assert report.validation.vectors_checked > 0
        assert Path(report.backup_files[0]).exists()


async def test_a_blocked_plan_a_bad_backup_dir_and_a_changed_source_are_refused(
    aclient: aioredis.Redis,
    sync_client: redis.Redis,
    live: IndexSchema,
    storage: str,
    tmp_path: Path,
) -> None:
    executor = AsyncMigrationExecutor()
    blocked = await AsyncMigrationPlanner().create_plan(
        live.name,
        redis_client=aclient,
        schema_patch=SchemaPatch.from_dict(
            {"changes": {"update_fields": [{"name": "embedding", "attrs": {"dims": 4}}]}}
        ),
    )
    with pytest.raises(BadInputError, match="blocked"):
        await executor.apply(blocked, redis_client=aclient, backup_dir=tmp_path)
    plan = await AsyncMigrationPlanner().create_plan(
        live.name,
        redis_client=aclient,
        schema_patch=SchemaPatch.from_dict({"changes": {"remove_fields": ["price"]}}),
    )
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(BadInputError, match="is a file"):
        await executor.apply(plan, redis_client=aclient, backup_dir=a_file)
    with pytest.raises(BadInputError, match="required"):
        await executor.apply(plan, redis_client=aclient, backup_dir=None)
    # the live source changes after planning: refused before anything is touched
    late = ["$.late", "AS", "late"] if storage == "json" else ["late"]
    sync_client.execute_command("FT.ALTER", live.name, "SCHEMA", "ADD", *late, "TEXT")
    before = snapshot(sync_client, live.prefixes[0], storage)
    with pytest.raises(BadInputError, match="source schema mismatch"):
        await executor.apply(plan, redis_client=aclient, backup_dir=tmp_path / "b")
    assert snapshot(sync_client, live.prefixes[0], storage) == before
    assert live.name.encode() in sync_client.execute_command("FT._LIST")


async def test_documents_without_a_vector_are_indexed_too(
    aclient: aioredis.Redis, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    """The target is built while vectors are rewritten; documents with no vector to
    rewrite must still end up in it, unchanged."""
    schema = make_schema(f"{ns}_nv", f"{ns}:nv:", "hash")
    sync_client.execute_command(*ft_create_args(schema))
    load(sync_client, f"{ns}:nv:", "hash")
    for i in range(0, DOCS, 15):
        sync_client.hdel(f"{ns}:nv:{i}", "embedding")
    before = snapshot(sync_client, f"{ns}:nv:", "hash")
    _, report = await plan_and_apply(
        aclient,
        schema,
        {"update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]},
        tmp_path,
    )
    assert report.validation.target_documents == DOCS
    after = snapshot(sync_client, f"{ns}:nv:", "hash")
    without = [k for k, doc in before.items() if b"embedding" not in doc]
    assert len(without) == 30
    for key in without:
        assert after[key] == before[key]  # untouched, no scratch field left behind
    found = sync_client.execute_command(
        "FT.SEARCH", schema.name, "@title:(doc 15)", "NOCONTENT", "DIALECT", "2"
    )
    ids = found[1:] if isinstance(found, list) else [r[b"id"] for r in found[b"results"]]
    assert f"{ns}:nv:15".encode() in ids


def by_step(calls: list[tuple[str, int, int | None]]) -> dict[str, list[tuple[int, int | None]]]:
    steps: dict[str, list[tuple[int, int | None]]] = {}
    for step, done, total in calls:
        steps.setdefault(step, []).append((done, total))
    return steps


@pytest.mark.parametrize("storage", ["hash"])
async def test_progress_goes_from_each_steps_start_to_done_and_each_step_is_timed_once(
    aclient: aioredis.Redis, live: IndexSchema, storage: str, tmp_path: Path
) -> None:
    moved = live.prefixes[0].replace(":d:", ":m:")
    plan = await AsyncMigrationPlanner().create_plan(
        live.name,
        redis_client=aclient,
        schema_patch=SchemaPatch.from_dict(
            {
                "changes": {
                    "index": {"prefix": moved},
                    "rename_fields": [{"old_name": "title", "new_name": "headline"}],
                    "update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}],
                }
            }
        ),
    )
    calls: list[tuple[str, int, int | None]] = []
    report = await AsyncMigrationExecutor().apply(
        plan,
        redis_client=aclient,
        backup_dir=tmp_path,
        batch_size=BATCH,
        progress_callback=lambda *call: calls.append(call),
    )
    assert report.result == "succeeded", (report.error, report.validation)
    steps = by_step(calls)
    for step in ("backup", "key_renames", "field_renames", "reencode"):
        seen = steps[step]
        assert seen[0] == (0, DOCS), step  # as it starts
        assert seen[-1] == (DOCS, DOCS), step  # last: done == total
        assert [d for d, _ in seen] == sorted(d for d, _ in seen), step
        assert len(seen) >= DOCS // BATCH, step  # per batch
    assert steps["reconcile"][0] == (0, None) and steps["reconcile"][-1] == (0, 0)
    # the target was built while re-encoding: the wait finds it indexed
    assert steps["indexing"][-1] == (DOCS, DOCS)
    timed = [t.step for t in report.timings]
    assert len(timed) == len(set(timed)), timed  # "create" once, though two places time it
    assert {"backup", "key_renames", "field_renames", "create", "reencode"} <= set(timed)
    timings = {t.step: t for t in report.timings}
    assert timings["indexing"].items == 0 and timings["indexing"].per_second is None
    for timing in report.timings:
        rate = timing.per_second
        if not timing.items or timing.seconds < 0.05:
            assert rate is None, timing
        else:
            assert rate == timing.items / timing.seconds

    calls.clear()
    undone = await AsyncMigrationExecutor().rollback(
        backup_dir=tmp_path,
        redis_client=aclient,
        recreate_index=True,
        progress_callback=lambda *call: calls.append(call),
    )
    assert undone.vectors_restored == DOCS
    steps = by_step(calls)
    assert steps["restore"][0] == (0, DOCS) and steps["restore"][-1] == (DOCS, DOCS)
    assert steps["indexing"][0] == (0, DOCS) and steps["indexing"][-1] == (DOCS, DOCS)


async def test_progress_of_an_online_run_counts_the_shadow_indexs_documents(
    aclient: aioredis.Redis, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    schema = make_schema(f"{ns}_on", f"{ns}:on:", "hash")
    sync_client.execute_command(*ft_create_args(schema))
    load(sync_client, f"{ns}:on:", "hash")
    plan = await AsyncMigrationPlanner().create_plan(
        schema.name,
        redis_client=aclient,
        schema_patch=SchemaPatch.from_dict(
            {"changes": {"update_fields": [{"name": "title", "attrs": {"sortable": True}}]}}
        ),
        mode="online",
    )
    calls: list[tuple[str, int, int | None]] = []
    report = await AsyncMigrationExecutor().apply(
        plan,
        redis_client=aclient,
        backup_dir=tmp_path,
        progress_callback=lambda *call: calls.append(call),
    )
    assert report.result == "succeeded", (report.error, report.validation)
    indexing = by_step(calls)["indexing"]
    assert indexing[-1] == (DOCS, DOCS)
    assert all(total == DOCS for _, total in indexing)
    timings = {t.step: t for t in report.timings}
    assert timings["indexing"].items == DOCS
