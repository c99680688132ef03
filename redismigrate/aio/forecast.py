"""The quality forecast over the whole index: queries searched among every stored vector.

Read-only. Two passes over the index's keys: the first picks the queries (a uniform
sample of the keys, kept as a reservoir: no key list is held), the second streams
every stored vector in batches to :class:`redismigrate.estimate.RecallForecaster`,
whose numpy work runs in a worker thread while the next batch is read. At most a few
batches of vectors are in memory at once, whatever the size of the index.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import numpy as np
import redis.asyncio as aioredis

from redismigrate.aio.cluster import ClusterConnections, ClusterWire
from redismigrate.aio.fastwire import Wire
from redismigrate.aio.keys import enumerate_keys
from redismigrate.aio.keyspace import Servers, json_path_of_each, keys_by_holder
from redismigrate.estimate import RECALL_QUERIES, QualityForecast, RecallForecaster
from redismigrate.plan import MigrationPlan, VectorChange
from redismigrate.quantize import NUMPY_DTYPES
from redismigrate.schema import DATATYPE_BYTES, IndexSchema, VectorField, default_json_path

FORECAST_BATCH = 2000


async def _cluster_keys(
    cluster: ClusterConnections, plan: MigrationPlan, batch: int
) -> AsyncIterator[list[bytes]]:
    keyspace = plan.source.keyspace
    async for _, keys in keys_by_holder(cluster, keyspace.prefixes, keyspace.storage_type, batch):
        yield keys


def _keys(servers: Servers, plan: MigrationPlan, batch: int) -> AsyncIterator[list[bytes]]:
    source = plan.source
    if isinstance(servers, ClusterConnections):
        return _cluster_keys(servers, plan, batch)  # SCAN on every primary
    client = servers
    return enumerate_keys(
        client,
        source.physical_index or source.index_name,
        source.keyspace.prefixes,
        source.keyspace.storage_type,
        batch,
        # as apply does: SCAN (cheaper) unless a FILTER decides which keys are documents
        use_scan=source.stats_snapshot.hash_indexing_failures > 0
        or source.schema_snapshot.index.options.filter is None,
    )


async def pick_query_keys(
    servers: Servers, plan: MigrationPlan, count: int, *, seed: int = 0
) -> list[bytes]:
    """``count`` keys of the index's documents, uniformly at random (reservoir sampling)."""
    rng = random.Random(seed)
    chosen: list[bytes] = []
    seen = 0
    async for batch in _keys(servers, plan, FORECAST_BATCH):
        for key in batch:
            seen += 1
            if len(chosen) < count:
                chosen.append(key)
            else:
                slot = rng.randrange(seen)
                if slot < count:
                    chosen[slot] = key
    return chosen


async def read_vectors(
    servers: Servers,
    wire: Wire,
    schema: IndexSchema,
    fields: Sequence[VectorField],
    keys: Sequence[bytes],
) -> dict[str, tuple[list[bytes], np.ndarray]]:
    """Each field's stored vectors of ``keys``: the keys that hold a well-formed one and
    the vectors, (n, dims), in the field's datatype (hash) or float64 (JSON)."""
    out: dict[str, tuple[list[bytes], np.ndarray]] = {}
    if schema.storage_type == "hash":
        names = [(f.path or f.name).encode() for f in fields]
        sizes = {f.attrs.dims * DATATYPE_BYTES[f.attrs.datatype] for f in fields}
        columns = await wire.read_columns(keys, names, sizes.pop() if len(sizes) == 1 else -1)
        for field, column in zip(fields, columns, strict=True):
            size = field.attrs.dims * DATATYPE_BYTES[field.attrs.datatype]
            kept = [(k, bytes(v)) for k, v in zip(keys, column, strict=True) if _sized(v, size)]
            dtype = NUMPY_DTYPES[field.attrs.datatype]
            joined = b"".join(v for _, v in kept)
            vectors = np.frombuffer(joined, dtype=dtype).reshape(len(kept), field.attrs.dims)
            out[field.name] = ([k for k, _ in kept], vectors)
        return out
    for field in fields:
        path = field.path or default_json_path(field.name)
        found_keys: list[bytes] = []
        rows: list[list[float]] = []
        for key, raw in zip(keys, await json_path_of_each(servers, keys, path), strict=True):
            values = _json_vector(raw, path)
            if values is not None and len(values) == field.attrs.dims:
                found_keys.append(key)
                rows.append(values)
        array = np.asarray(rows, dtype=np.float64).reshape(len(rows), field.attrs.dims)
        out[field.name] = (found_keys, array)
    return out


def _sized(value: Any, size: int) -> bool:
    return isinstance(value, bytes | memoryview) and len(value) == size


def _json_vector(raw: Any, path: str) -> list[float] | None:
    if not isinstance(raw, bytes | str):
        return None
    try:
        values = json.loads(raw)
    except ValueError:
        return None
    if path.startswith("$") and isinstance(values, list) and values and isinstance(values[0], list):
        values = values[0]
    if isinstance(values, list) and all(isinstance(v, int | float) for v in values):
        return [float(v) for v in values]
    return None


async def forecast_quality(
    client: aioredis.Redis,
    plan: MigrationPlan,
    changes: Sequence[VectorChange],
    *,
    queries: int = RECALL_QUERIES,
    seed: int = 0,
    cluster: ClusterConnections | None = None,
) -> dict[str, QualityForecast | None]:
    """Recall@10 after re-encoding each of ``changes`` (by source field), for ``queries``
    stored vectors searched among every stored vector of the index (on ``cluster``, the
    documents of every primary)."""
    servers: Servers = cluster if cluster is not None else client
    schema = plan.source.schema_snapshot
    wanted = [c for c in changes if c.encoding is not None]
    fields = []
    for change in wanted:
        field = schema.field(change.source_field)
        if isinstance(field, VectorField):
            fields.append(field)
    if not fields:
        return {}
    wire = ClusterWire(cluster) if cluster is not None else Wire(client)
    try:
        picked = await pick_query_keys(servers, plan, queries, seed=seed)
        if not picked:
            return {}
        read = await read_vectors(servers, wire, schema, fields, picked)
        forecasters: dict[str, RecallForecaster] = {}
        for change in wanted:
            if change.source_field in read:
                keys, vectors = read[change.source_field]
                forecasters[change.source_field] = await anyio.to_thread.run_sync(
                    RecallForecaster, change, vectors, keys
                )
        send, receive = anyio.create_memory_object_stream[
            dict[str, tuple[list[bytes], np.ndarray]]
        ](1)

        async def produce() -> None:
            async with send:
                async for batch in _keys(servers, plan, FORECAST_BATCH):
                    await send.send(await read_vectors(servers, wire, schema, fields, batch))

        async def consume() -> None:
            async with receive:
                async for columns in receive:
                    await anyio.to_thread.run_sync(_feed, forecasters, columns)

        async with anyio.create_task_group() as group:
            group.start_soon(produce)
            group.start_soon(consume)
    finally:
        await wire.close()
    return {name: forecaster.forecast() for name, forecaster in forecasters.items()}


def _feed(
    forecasters: dict[str, RecallForecaster], columns: dict[str, tuple[list[bytes], np.ndarray]]
) -> None:
    for name, forecaster in forecasters.items():
        keys, vectors = columns[name]
        forecaster.add(vectors, keys)
