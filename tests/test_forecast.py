"""The recall forecast against the recall the index really gives.

Data: real text embeddings (all-MiniLM-L6-v2, 384 dims, 20,712 stored passages and 300
held-out queries; ``../shared/data``, see its README), and synthetic clusters.

The forecast searches 200 stored vectors among every stored vector of the index
(``estimate``). What it is compared with:

* float16 and bfloat16: recall@10 of the server's own KNN (FLAT, exact) after a real
  migration, for the 300 held-out queries encoded as the plan says, against exact
  float64 KNN over the original vectors;
* int8 and uint8, which this server (search 2.10) cannot index: the same recall computed
  exactly with numpy over the whole re-encoded index, which is what a FLAT index of
  int8 / uint8 vectors returns (it compares the stored codes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from redismigrate.aio.executor import AsyncMigrationExecutor
from redismigrate.aio.planner import AsyncMigrationPlanner
from redismigrate.estimate import RecallForecaster, forecast_quality
from redismigrate.ftinfo import pairs_to_dict
from redismigrate.plan import MigrationPlan, VectorChange
from redismigrate.quantize import _distances, calibrate, encode_batch, encode_query, recall_at_k
from redismigrate.render import ft_create_args
from redismigrate.schema import IndexSchema

_NAME = "minilm-docstrings-384.npz"
# beside the checkout (../shared/data), or where REDISMIGRATE_TEST_DATA says, or the
# workplace's shared folder when the checkout is elsewhere (a CI clone)
_PLACES = [
    *(
        [Path(os.environ["REDISMIGRATE_TEST_DATA"])]
        if os.environ.get("REDISMIGRATE_TEST_DATA")
        else []
    ),
    Path(__file__).resolve().parents[2] / "shared" / "data",
    Path("/work/shared/data"),
]
DATA = next((p / _NAME for p in _PLACES if (p / _NAME).exists()), _PLACES[0] / _NAME)
K = 10
TOLERANCE = 0.02

needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"{DATA} is not there")


@pytest.fixture(scope="module")
def minilm() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(DATA)
    return data["base"], data["queries"]


def exact_top_k(queries: np.ndarray, rows: np.ndarray, metric: str) -> np.ndarray:
    d = _distances(queries.astype(np.float64), rows.astype(np.float64), metric)
    return np.argsort(d, axis=1)[:, :K]


def recall(truth: np.ndarray, found: Any) -> float:
    return float(
        np.mean([len(np.intersect1d(t, f)) / K for t, f in zip(truth, found, strict=True)])
    )


def exact_recall(
    base: np.ndarray, queries: np.ndarray, change: VectorChange, truth: np.ndarray
) -> float:
    """Recall@10 of exact search over the whole re-encoded index, as a FLAT index of
    the target type answers (it compares the stored codes)."""
    assert change.encoding is not None
    codes = encode_batch(base, change.encoding)
    encoded = encode_batch(queries, change.encoding)
    return recall(truth, exact_top_k(encoded, codes, change.distance_metric))


def change_for(target: str, metric: str, base: np.ndarray) -> VectorChange:
    sample = base[np.random.default_rng(1).choice(len(base), 2000, replace=False)]
    return VectorChange(
        field="embedding",
        source_field="embedding",
        dims=base.shape[1],
        source_datatype="float32",
        target_datatype=target,
        distance_metric=metric,
        rewrite_documents=True,
        encoding=calibrate("float32", target, metric, sample),
    )


def test_batches_give_the_same_forecast_as_one_pass() -> None:
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    change = change_for("int8", "l2", vectors)
    rows = np.array([3, 500, 2999])
    whole = RecallForecaster(change, vectors[rows], rows.tolist())
    whole.add(vectors, range(3000))
    batched = RecallForecaster(change, vectors[rows], rows.tolist())
    for start in range(0, 3000, 7):
        batched.add(vectors[start : start + 7], range(start, min(start + 7, 3000)))
    assert whole.forecast() == batched.forecast()
    result = whole.forecast()
    assert result is not None and result.sample_size == 3000 and result.queries == 3
    # each query is left out of its own results
    assert not any(rows[q] in whole._truth[1][q] for q in range(3))


def synthetic(count: int, seed: int) -> np.ndarray:
    """Unit vectors around 50 centres (the same centres for every seed)."""
    centers = np.random.default_rng(5).normal(size=(50, 384))
    rng = np.random.default_rng(seed)
    points = centers[rng.integers(0, 50, count)] + 0.3 * rng.normal(size=(count, 384))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32)


@pytest.mark.parametrize(("target", "metric"), [("uint8", "cosine"), ("int8", "l2")])
def test_forecast_over_the_whole_index_on_clusters(target: str, metric: str) -> None:
    base, queries = synthetic(20_000, 6), synthetic(300, 7)
    change = change_for(target, metric, base)
    truth = exact_top_k(queries, base, metric)
    exact = exact_recall(base, queries, change, truth)
    forecast = forecast_quality(change, base)
    assert forecast is not None and forecast.sample_size == 20_000
    assert abs(forecast.recall_after - exact) <= TOLERANCE, (forecast.recall_after, exact)
    # searched inside a 2,000-vector sample instead, it was optimistic (uint8 COSINE by
    # 0.03, int8 L2 by 0.018): the neighbours of a sample are farther apart
    sample = base[:2000]
    assert change.encoding is not None
    inside = recall_at_k(sample, encode_batch(sample, change.encoding), metric, change.encoding)
    assert inside - exact > 0.01


@needs_data
@pytest.mark.parametrize(
    ("target", "metric"), [("int8", "l2"), ("uint8", "l2"), ("int8", "ip"), ("int8", "cosine")]
)
def test_forecast_on_real_embeddings_matches_exact_search(
    minilm: tuple[np.ndarray, np.ndarray], target: str, metric: str
) -> None:
    base, queries = minilm
    change = change_for(target, metric, base)
    exact = exact_recall(base, queries, change, exact_top_k(queries, base, metric))
    forecast = forecast_quality(change, base)
    assert forecast is not None
    assert abs(forecast.recall_after - exact) <= TOLERANCE, (forecast.recall_after, exact)


def _load(client: redis.Redis, name: str, prefix: str, base: np.ndarray) -> IndexSchema:
    pipe = client.pipeline(transaction=False)
    for i, vector in enumerate(base):
        pipe.hset(f"{prefix}{i}", "embedding", vector.tobytes())
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    schema = IndexSchema.from_dict(
        {
            "index": {"name": name, "prefix": prefix},
            "fields": [
                {
                    "name": "embedding",
                    "type": "vector",
                    "attrs": {"dims": base.shape[1], "algorithm": "flat", "datatype": "float32"},
                }
            ],
        }
    )
    client.execute_command(*ft_create_args(schema))
    while True:
        info = client.ft(name).info()
        if float(info["percent_indexed"]) >= 1.0 and not int(info["indexing"]):
            return schema


def _patch(target: str) -> Any:
    from redismigrate.patch import SchemaPatch

    return SchemaPatch.from_dict(
        {"changes": {"update_fields": [{"name": "embedding", "attrs": {"datatype": target}}]}}
    )


def server_recall(
    client: redis.Redis, plan: MigrationPlan, prefix: str, queries: np.ndarray, truth: np.ndarray
) -> float:
    """Recall@10 of the server's own KNN for ``queries``, encoded as the plan says."""
    pipe = client.pipeline(transaction=False)
    for query in queries:
        pipe.execute_command(
            "FT.SEARCH", plan.target_index_name, f"*=>[KNN {K} @embedding $v]",
            "PARAMS", "2", "v", encode_query(query, plan),
            "NOCONTENT", "LIMIT", "0", str(K), "DIALECT", "2",
        )  # fmt: skip
    found = []
    for reply in pipe.execute():
        if isinstance(reply, dict):  # RESP3
            ids = [pairs_to_dict(r)["id"] for r in pairs_to_dict(reply)["results"]]
        else:
            ids = list(reply[1:])
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in ids]
        found.append([int(k[len(prefix) :]) for k in keys])
    return recall(truth, found)


@needs_data
async def test_forecast_matches_the_servers_recall(
    minilm: tuple[np.ndarray, np.ndarray],
    sync_client: redis.Redis,
    aclient: aioredis.Redis,
    ns: str,
    tmp_path: Path,
) -> None:
    base, queries = minilm
    truth = exact_top_k(queries, base, "cosine")
    planner = AsyncMigrationPlanner()
    seen: dict[str, tuple[float, float]] = {}
    for target in ("float16", "bfloat16"):
        name, prefix = f"{ns}_{target}", f"{ns}:{target}:"
        _load(sync_client, name, prefix, base)
        plan = await planner.create_plan(name, redis_client=aclient, schema_patch=_patch(target))
        estimate = await planner.estimate(plan, redis_client=aclient)
        quality = estimate.vector_fields[0].quality
        assert quality is not None and quality.sample_size == len(base)
        if target == "float16":
            # int8 and uint8 from the same float32 index: this server cannot hold them,
            # so their truth is exact search over the whole re-encoded index
            for quantized in ("int8", "uint8"):
                other = await planner.create_plan(
                    name, redis_client=aclient, schema_patch=_patch(quantized)
                )
                got = (await planner.estimate(other, redis_client=aclient)).vector_fields[0]
                assert got.quality is not None
                exact = exact_recall(base, queries, other.vector_changes[0], truth)
                seen[quantized] = (got.quality.recall_after, exact)
        report = await AsyncMigrationExecutor().apply(
            plan, redis_client=aclient, backup_dir=tmp_path / target
        )
        assert report.succeeded, report.error
        seen[target] = (
            quality.recall_after,
            server_recall(sync_client, plan, prefix, queries, truth),
        )
    for what, (forecast, measured) in seen.items():
        assert abs(forecast - measured) <= TOLERANCE, (what, forecast, measured, seen)
