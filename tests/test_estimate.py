"""`estimate`: costs and a quality forecast from a plan, reading only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from redismigrate.aio.planner import AsyncMigrationPlanner
from redismigrate.memory import mb, plan_memory
from redismigrate.patch import SchemaPatch
from redismigrate.render import ft_create_args
from redismigrate.schema import IndexSchema
from tests.test_cli import cli

DOCS = 1500
DIMS = 32


def changes_since_save(client: redis.Redis) -> int:
    return int(client.info("persistence")["rdb_changes_since_last_save"])


@pytest.fixture
def clustered_index(sync_client: redis.Redis, ns: str) -> IndexSchema:
    """1,500 hash docs: 32-dim float32, 10 clusters, L2-normalized, FLAT COSINE."""
    schema = IndexSchema.from_dict(
        {
            "index": {"name": f"{ns}_est", "prefix": f"{ns}:e:"},
            "fields": [
                {
                    "name": "embedding",
                    "type": "vector",
                    "attrs": {"dims": DIMS, "datatype": "float32", "distance_metric": "cosine"},
                }
            ],
        }
    )
    sync_client.execute_command(*ft_create_args(schema))
    rng = np.random.default_rng(5)
    centers = rng.normal(size=(10, DIMS))
    vectors = centers[rng.integers(0, 10, DOCS)] + 0.3 * rng.normal(size=(DOCS, DIMS))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pipe = sync_client.pipeline(transaction=False)
    for i, vector in enumerate(vectors.astype(np.float32)):
        pipe.hset(f"{ns}:e:{i}", "embedding", vector.tobytes())
    pipe.execute()
    return schema


async def test_estimate_gives_costs_and_a_recall_forecast_without_writing(
    aclient: aioredis.Redis, sync_client: redis.Redis, clustered_index: IndexSchema
) -> None:
    planner = AsyncMigrationPlanner()
    plan = await planner.create_plan(
        clustered_index.name,
        redis_client=aclient,
        schema_patch=SchemaPatch.from_dict(
            {
                "changes": {
                    "update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]
                }
            }
        ),
        mode="drop_recreate",
    )
    before = changes_since_save(sync_client)
    estimate = await planner.estimate(plan, redis_client=aclient, aof_enabled=True)
    assert changes_since_save(sync_client) == before  # read-only
    (field,) = estimate.vector_fields
    assert estimate.documents == DOCS
    # the values (128 bytes + a 2-byte msgpack header each), keys and framing beside them
    assert field.backup_bytes == DOCS * (DIMS * 4 + 2)
    assert field.backup_bytes < estimate.backup_disk_bytes < field.backup_bytes * 1.25
    # one memory model: 128-byte values in 160-byte classes -> 64 in 80 (sds), and the
    # index's two vector blocks of 1024 x 128 bytes -> 1024 x 64 (with their classes)
    assert estimate.memory is not None
    assert estimate.memory_change_bytes == estimate.memory.change == plan_memory(plan).change
    assert estimate.memory.documents_change == DOCS * (80 - 160)
    assert estimate.memory.index_change == 2 * (81_920 - 163_840)
    assert any(f"frees about {mb(-estimate.memory_change_bytes)}" in w for w in plan.warnings)
    assert estimate.aof_growth_bytes > DOCS * DIMS * 2
    assert estimate.rdb_snapshot_bytes > 0
    assert field.quality is not None
    assert field.quality.sample_size == DOCS  # every stored vector is searched
    assert field.quality.queries == 200
    assert field.quality.recall_before == 1.0
    assert 0.95 <= field.quality.recall_after <= 1.0


def test_estimate_cli(redis_url: str, clustered_index: IndexSchema, tmp_path: Path) -> None:
    patch = tmp_path / "p.yaml"
    patch.write_text(
        "version: 1\nchanges:\n  update_fields:\n"
        "    - {name: embedding, attrs: {datatype: bfloat16}}\n"
    )
    plan_path = tmp_path / "plan.yaml"
    made = cli(
        "plan", "--index", clustered_index.name, "--schema-patch", str(patch),
        "--url", redis_url, "--plan-out", str(plan_path), "--mode", "drop_recreate",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    shown = cli("estimate", "--plan", str(plan_path), "--url", redis_url)
    assert shown.returncode == 0, shown.stderr
    assert "recall@10" in shown.stdout and "Memory after the migration: frees" in shown.stdout
    assert "not estimated (pass --aof-enabled)" in shown.stdout
    as_json = cli(
        "estimate", "--plan", str(plan_path), "--url", redis_url, "--json", "--aof-enabled"
    )
    data = json.loads(as_json.stdout)
    assert data["aof_enabled"] is True and data["vector_fields"][0]["quality"]["k"] == 10
    missing = cli("estimate", "--plan", str(tmp_path / "nope.yaml"), "--url", redis_url)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
