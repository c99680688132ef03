"""What a plan will cost (disk, memory, AOF) and how search quality will change. Pure code.

Memory and the backup's disk come from :mod:`redismigrate.memory`, the one model the
plan, the estimate, the preflight and the report share.

The quality forecast is recall@10 of exact KNN after re-encoding, for a set of
queries (stored vectors picked at random, each left out of its own results)
searched among *every* stored vector of the index: :class:`RecallForecaster` is fed
the index batch by batch and keeps only the queries and the best k of each, so its
memory does not grow with the index. A forecast made inside a small sample finds
neighbours that are farther apart than in the whole index, and so is optimistic.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from redismigrate.memory import MemoryModel, backup_value_bytes, plan_memory
from redismigrate.plan import MigrationPlan, VectorChange
from redismigrate.quantize import NUMPY_DTYPES, Encoding, _distances, encode_batch
from redismigrate.schema import DATATYPE_BYTES, Model

Array = npt.NDArray[Any]

# RESP framing of one "HSET key field value" in the AOF, beyond key, field and value
AOF_HSET_FRAMING_BYTES = 40
RECALL_K = 10
RECALL_QUERIES = 200
# distances are computed in float32: twice as fast as float64, exact for int8/uint8
# codes, and its rounding (1e-7 relative) is far below any re-encoding's
COMPUTE_DTYPE = np.float32


class QualityForecast(Model, frozen=True, kw_only=True):
    """Recall@k of exact KNN over the stored vectors, before and after re-encoding.

    ``sample_size`` is how many stored vectors the queries were searched among (every
    vector of the index, unless the forecast was made from a sample).
    """

    metric: str
    sample_size: int
    queries: int
    k: int
    recall_before: float
    recall_after: float


class VectorFieldEstimate(Model, frozen=True, kw_only=True):
    field: str
    dims: int
    source_datatype: str
    target_datatype: str
    rewrite_documents: bool
    source_bytes: int  # documents x dims x width, before
    target_bytes: int  # and after
    backup_bytes: int  # the field's values in the backup (keys and framing apart)
    quality: QualityForecast | None = None


class MigrationEstimate(Model, frozen=True, kw_only=True):
    """Costs of applying a plan, computed without writing anything."""

    version: int = 1
    index_name: str
    documents: int
    vector_fields: list[VectorFieldEstimate] = []
    backup_disk_bytes: int = 0
    rdb_snapshot_bytes: int = 0
    aof_enabled: bool = False
    aof_growth_bytes: int = 0
    total_new_disk_bytes: int = 0
    # used_memory after the run minus before, per the memory model (negative: frees)
    memory_change_bytes: int = 0
    memory: MemoryModel | None = None
    notes: list[str] = []

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = msgspec.to_builtins(self)
        data["version"] = self.version
        return data


# --------------------------------------------------------------------------- forecast


def _merge_top_k(best_d: Array, best_i: Array, d: Array, ids: Array, k: int) -> tuple[Array, Array]:
    """The k smallest distances per row of ``best_d`` and ``d`` together, and their ids."""
    rows = d.shape[0]
    if best_d.shape[1] < k:  # the first batches: merge everything
        d = np.concatenate([best_d, d], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(ids, (rows, len(ids)))], axis=1)
        if d.shape[1] > k:
            keep = np.argpartition(d, k - 1, axis=1)[:, :k]
            d = np.take_along_axis(d, keep, axis=1)
            i = np.take_along_axis(i, keep, axis=1)
        return d, i
    # after them, few candidates beat a row's k-th best: sort only those with the best
    where_row, where_col = np.nonzero(d < best_d.max(axis=1)[:, None])
    if not where_row.size:
        return best_d, best_i
    row = np.concatenate([np.repeat(np.arange(rows), k), where_row])
    cand_d = np.concatenate([best_d.ravel(), d[where_row, where_col]])
    cand_i = np.concatenate([best_i.ravel(), ids[where_col]])
    order = np.lexsort((cand_d, row))  # by row, then by distance
    starts = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=rows))[:-1]])
    take = order[(starts[:, None] + np.arange(k)[None, :]).ravel()]
    return cand_d[take].reshape(rows, k), cand_i[take].reshape(rows, k)


class RecallForecaster:
    """Recall@k of a re-encoding for ``queries`` searched among every vector fed to
    :meth:`add`, exactly (numpy, float32), in batches.

    ``queries``: stored vectors (n, dims) as the field holds them (its datatype, or
    floats); ``query_keys``: their keys, so that each query is left out of its own
    results when its document is fed. Ground truth is the search over the stored
    values; "after" encodes the queries as :func:`redismigrate.quantize.encode_query`
    does and searches the re-encoded vectors as the server compares them. Memory: the
    queries, their best k and one batch.
    """

    def __init__(
        self,
        change: VectorChange,
        queries: Array,
        query_keys: Sequence[Hashable] | None = None,
        *,
        k: int = RECALL_K,
    ) -> None:
        if change.encoding is None:
            raise ValueError(f"field {change.field!r} is not re-encoded: nothing to forecast")
        self.change = change
        self.encoding: Encoding = change.encoding
        self.metric = change.distance_metric
        self.k = k
        values = np.asarray(queries)
        if values.ndim != 2:
            raise ValueError(f"queries must be (n, dims), got shape {values.shape}")
        self._queries = values.astype(COMPUTE_DTYPE)
        self._encoded_queries = self._encode(values).astype(COMPUTE_DTYPE)
        self._own: dict[Hashable, list[int]] = {}
        for row, key in enumerate(query_keys or ()):
            self._own.setdefault(key, []).append(row)
        empty_d = np.full((len(values), 0), np.inf)
        empty_i = np.zeros((len(values), 0), dtype=np.int64)
        self._truth = (empty_d, empty_i)
        self._found = (empty_d, empty_i)
        self.count = 0

    def _encode(self, vectors: Array) -> Array:
        source = NUMPY_DTYPES[self.encoding.source]
        values = vectors if vectors.dtype == source else vectors.astype(np.float64)
        return encode_batch(values, self.encoding)

    def add(self, vectors: Array, keys: Sequence[Hashable] | None = None) -> None:
        """Feed a batch of stored vectors (n, dims) and their keys."""
        values = np.asarray(vectors)
        if values.ndim != 2 or values.shape[1] != self._queries.shape[1]:
            raise ValueError(
                f"expected vectors of shape (n, {self._queries.shape[1]}), got {values.shape}"
            )
        if not len(values) or not len(self._queries):
            return
        ids = np.arange(self.count, self.count + len(values))
        stored = np.asarray(values, dtype=COMPUTE_DTYPE)
        encoded = np.asarray(self._encode(values), dtype=COMPUTE_DTYPE)
        truth = _distances(self._queries, stored, self.metric)
        found = _distances(self._encoded_queries, encoded, self.metric)
        if keys is not None and self._own:
            for column, key in enumerate(keys):
                own = self._own.get(key)
                if own is not None:
                    truth[own, column] = np.inf
                    found[own, column] = np.inf
        self._truth = _merge_top_k(*self._truth, truth, ids, self.k)
        self._found = _merge_top_k(*self._found, found, ids, self.k)
        self.count += len(values)

    def forecast(self) -> QualityForecast | None:
        """The forecast over what was fed; None with fewer than k + 2 vectors."""
        queries = len(self._queries)
        if self.count < self.k + 2 or not queries:
            return None
        truth_d, truth_i = self._truth
        found_i = self._found[1]
        hits = total = 0
        for want_d, want, got in zip(truth_d, truth_i, found_i, strict=True):
            want = want[np.isfinite(want_d)]
            hits += len(np.intersect1d(want, got))
            total += len(want)
        return QualityForecast(
            metric=self.metric,
            sample_size=self.count,
            queries=queries,
            k=self.k,
            recall_before=1.0,  # the ground truth is the search over the stored values
            recall_after=round(hits / total, 4) if total else 1.0,
        )


def pick_queries(count: int, total: int, seed: int = 0) -> Array:
    """``count`` distinct positions in ``range(total)``, at random (sorted)."""
    rng = np.random.default_rng(seed)
    picked: Array = np.sort(rng.choice(total, size=min(count, total), replace=False))
    return picked


def forecast_quality(
    change: VectorChange, sample: Array, *, queries: int = RECALL_QUERIES, batch: int = 32_768
) -> QualityForecast | None:
    """Recall@10 after re-encoding, searching ``sample`` (stored vectors, (n, dims)) with
    ``queries`` of its own rows. Over the whole index when ``sample`` is the whole index;
    over a sample it is optimistic (see the module's text)."""
    values = np.asarray(sample)
    if change.encoding is None or values.ndim != 2 or len(values) < RECALL_K + 2:
        return None
    rows = pick_queries(queries, len(values))
    forecaster = RecallForecaster(change, values[rows], [int(r) for r in rows])
    for start in range(0, len(values), batch):
        stop = min(start + batch, len(values))
        forecaster.add(values[start:stop], range(start, stop))
    return forecaster.forecast()


# --------------------------------------------------------------------------- costs


def build_estimate(
    plan: MigrationPlan,
    *,
    forecasts: Mapping[str, QualityForecast | None] | None = None,
    samples: Mapping[str, np.ndarray] | None = None,
    dataset_bytes: int = 0,
    average_key_bytes: int = 16,
    aof_enabled: bool = False,
) -> MigrationEstimate:
    """Disk for the backup and an RDB snapshot, AOF growth, memory change, quality forecast.

    ``dataset_bytes`` is the server's ``used_memory_dataset`` (what a snapshot holds);
    ``forecasts`` maps a source vector field to its quality forecast (made over the whole
    index, see :class:`RecallForecaster`); ``samples`` instead maps it to stored vectors
    decoded to float, searched among themselves.
    """
    memory = plan_memory(plan)
    stats = plan.source.stats_snapshot
    docs = stats.num_docs + stats.hash_indexing_failures
    fields: list[VectorFieldEstimate] = []
    aof = 0
    notes: list[str] = []
    for change in plan.vector_changes:
        src = docs * change.dims * DATATYPE_BYTES[change.source_datatype]
        tgt = docs * change.dims * DATATYPE_BYTES[change.target_datatype]
        quality = (forecasts or {}).get(change.source_field)
        sample = (samples or {}).get(change.source_field)
        if quality is None and sample is not None:
            quality = forecast_quality(change, sample)
        if quality is None and change.lossy:
            notes.append(f"{change.field!r}: too few stored vectors for a quality forecast")
        field_backup = 0
        if change.rewrite_documents:
            value = change.dims * DATATYPE_BYTES[change.source_datatype]
            field_backup = docs * backup_value_bytes(value)
        fields.append(
            VectorFieldEstimate(
                field=change.field,
                dims=change.dims,
                source_datatype=change.source_datatype,
                target_datatype=change.target_datatype,
                rewrite_documents=change.rewrite_documents,
                source_bytes=src,
                target_bytes=tgt,
                backup_bytes=field_backup,
                quality=quality,
            )
        )
        if change.rewrite_documents:
            per_doc = (
                average_key_bytes
                + len(change.field)
                + change.dims * DATATYPE_BYTES[change.target_datatype]
                + AOF_HSET_FRAMING_BYTES
            )
            aof += docs * per_doc
    renames = plan.rename_operations
    if renames.rename_fields or renames.change_prefix is not None:
        aof += docs * (average_key_bytes * 2 + AOF_HSET_FRAMING_BYTES)
    if not plan.vector_changes:
        notes.append("no vector re-encoding: no backup files are written")
    backup = memory.backup_disk
    return MigrationEstimate(
        index_name=plan.source.index_name,
        documents=docs,
        vector_fields=fields,
        backup_disk_bytes=backup,
        rdb_snapshot_bytes=dataset_bytes,
        aof_enabled=aof_enabled,
        aof_growth_bytes=aof if aof_enabled else 0,
        total_new_disk_bytes=backup + dataset_bytes + (aof if aof_enabled else 0),
        memory_change_bytes=memory.change,
        memory=memory,
        notes=notes,
    )


def shadow_index_bytes(plan: MigrationPlan) -> int:
    """Memory a second index with the target schema takes while it is built beside the
    source (an online run's peak): the non-vector part as FT.INFO reports it, the vector
    part per the memory model."""
    from redismigrate.memory import model_memory

    return model_memory(
        source=plan.source.schema_snapshot,
        target=plan.merged_target_schema,
        stats=plan.source.stats_snapshot,
        vector_changes=plan.vector_changes,
        renames=plan.rename_operations,
        online=True,
        key_sample=plan.source.keyspace.key_sample,
    ).peak_growth
