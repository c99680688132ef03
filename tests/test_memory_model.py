"""The memory model: one figure for plan, estimate and report, checked against a server.

The server here is a throwaway one of the test's own (its memory figures must not move
with other tests' data). The full-size check (100,000 x 128 and x 768, FLAT and HNSW)
is ``benchmarks/memory_model.py``; this is the same on 20,000 x 128.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from redismigrate.backup import backup_size_on_disk
from redismigrate.cli._render import memory_line
from redismigrate.memory import (
    hash_value_bytes,
    listpack_entry_bytes,
    mb,
    plan_memory,
    sds_bytes,
    size_class,
    vector_index_bytes,
)
from redismigrate.patch import SchemaPatch
from redismigrate.plan import Online
from redismigrate.render import ft_create_args
from redismigrate.report import MigrationReport
from redismigrate.schema import IndexSchema, VectorAttrs
from redismigrate.server import EmbeddedRedis
from redismigrate.sync import MigrationExecutor, MigrationPlanner

DOCS = 20_000
DIMS = 128


def test_size_classes_are_jemallocs() -> None:
    classes = [size_class(n) for n in (1, 8, 9, 17, 128, 129, 160, 161, 257, 518, 262_216)]
    assert classes == [8, 8, 16, 32, 128, 160, 160, 192, 320, 640, 327_680]
    # a 128-dim float32 vector is an sds of 512 + 5 + 1 bytes: a 640-byte class
    assert sds_bytes(512) == 640 and sds_bytes(256) == 320 and sds_bytes(1536) == 1792


def test_hash_values_in_a_listpack_or_a_table() -> None:
    # 16 dims float32 = 64 bytes: still a listpack entry; float16 stays one
    assert hash_value_bytes(64, 32) == (listpack_entry_bytes(64), listpack_entry_bytes(32))
    assert listpack_entry_bytes(32) == 1 + 32 + 1 and listpack_entry_bytes(64) == 2 + 64 + 1
    # a table never goes back to a listpack: 65 bytes -> 32 is still an sds
    assert hash_value_bytes(65, 32) == (sds_bytes(65), sds_bytes(32))
    # growing out of a listpack converts the hash to a table
    before, after = hash_value_bytes(32, 128, fields=2)
    assert after > sds_bytes(128) > before


def test_a_datatype_change_changes_only_the_vector_blocks() -> None:
    for algorithm in ("flat", "hnsw"):
        f32 = vector_index_bytes(VectorAttrs(dims=DIMS, algorithm=algorithm), 100_000)
        f16 = vector_index_bytes(
            VectorAttrs(dims=DIMS, algorithm=algorithm, datatype="float16"), 100_000
        )
        assert (f32.graph, f32.metadata) == (f16.graph, f16.metadata)
        # 98 blocks of 1024 vectors: 512 KiB (+ header) in a 640 KiB class -> 320 KiB
        assert f32.vectors - f16.vectors == 98 * 320 * 1024
    hnsw = vector_index_bytes(VectorAttrs(dims=DIMS, algorithm="hnsw", m=32), 1000)
    assert hnsw.graph > vector_index_bytes(VectorAttrs(dims=DIMS, algorithm="hnsw"), 1000).graph


def _memory(client: redis.Redis) -> tuple[int, int]:
    info: Any = client.info("memory")
    return int(info["used_memory"]), int(info["used_memory_dataset"])


def _settled(client: redis.Redis) -> tuple[int, int]:
    last = _memory(client)
    for _ in range(20):
        time.sleep(0.5)
        now = _memory(client)
        if abs(now[1] - last[1]) <= 65_536:
            return now
        last = now
    return last


def _load(client: redis.Redis, algorithm: str) -> IndexSchema:
    schema = IndexSchema.from_dict(
        {
            "index": {"name": "mm", "prefix": "mm:"},
            "fields": [
                {"name": "title", "type": "text"},
                {
                    "name": "embedding",
                    "type": "vector",
                    "attrs": {"dims": DIMS, "algorithm": algorithm, "distance_metric": "cosine"},
                },
            ],
        }
    )
    vectors = np.random.default_rng(3).standard_normal((DOCS, DIMS), dtype=np.float32)
    pipe = client.pipeline(transaction=False)
    for i, vector in enumerate(vectors):
        pipe.hset(f"mm:{i}", mapping={"title": f"doc {i}", "embedding": vector.tobytes()})
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    client.execute_command(*ft_create_args(schema))
    while True:
        info = client.ft("mm").info()
        if float(info["percent_indexed"]) >= 1.0 and not int(info["indexing"]):
            return schema
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("algorithm", "mode"),
    [("flat", "drop_recreate"), ("hnsw", "drop_recreate"), ("flat", None)],
    ids=["flat", "hnsw", "flat-default-online"],
)
def test_plan_estimate_and_report_agree_and_match_the_server(
    algorithm: str, mode: str | None, tmp_path: Path
) -> None:
    """The planner's default here is the online finish variant: its end is that of a
    drop_recreate run (originals rewritten in place, shadows removed), so the same
    figures hold for it."""
    with EmbeddedRedis() as server:
        assert server.info is not None
        url = server.info.url
        client = redis.Redis.from_url(url)
        try:
            _load(client, algorithm)
            planner = MigrationPlanner()
            plan = planner.create_plan(
                "mm",
                redis_url=url,
                schema_patch=SchemaPatch.from_dict(
                    {
                        "changes": {
                            "update_fields": [
                                {"name": "embedding", "attrs": {"datatype": "float16"}}
                            ]
                        }
                    }
                ),
                mode=mode,
            )
            assert isinstance(plan.mode, Online) == (mode is None)
            estimate = planner.estimate(plan, redis_url=url)
            before = _settled(client)
            report = MigrationExecutor().apply(plan, redis_url=url, backup_dir=tmp_path)
            assert report.succeeded, report.error
            after = _settled(client)
        finally:
            client.close()
    model = plan_memory(plan).change
    # one figure: the plan's words, the estimate and the report
    if mode is None:
        assert any("the end frees the old index" in warning for warning in plan.warnings)
        assert plan_memory(plan).peak_growth > 0 and plan_memory(plan).shadow_documents > 0
    else:
        assert any(f"frees about {mb(-model)}" in warning for warning in plan.warnings)
    assert estimate.memory_change_bytes == model
    assert report.memory is not None and report.memory.model_change_bytes == model
    # half of it the documents (640 -> 320-byte values), half the index's vector blocks
    assert estimate.memory is not None
    assert estimate.memory.documents_change == DOCS * (320 - 640)
    assert estimate.memory.index_change == 20 * (327_680 - 655_360)
    measured = after[1] - before[1]
    assert measured < 0
    assert abs(model - measured) <= 0.15 * abs(measured), (model, measured)
    # what the report measured itself (at the end of the run) agrees as well
    in_report = report.memory.measured_change_bytes
    assert in_report is not None and abs(model - in_report) <= 0.15 * abs(in_report)
    assert memory_line(report.memory).startswith(f"Memory: frees about {mb(-model)} (model)")
    assert MigrationReport.from_dict(report.to_dict()).memory == report.memory
    # and the backup's model is the size of its files (the plan copy aside)
    on_disk = backup_size_on_disk(tmp_path, "mm")
    assert abs(estimate.backup_disk_bytes - on_disk) <= 0.02 * on_disk, (
        estimate.backup_disk_bytes,
        on_disk,
    )
