"""What a plan will cost (disk, memory, AOF) and how search quality will change. Pure code."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
import numpy as np

from redismigrate.plan import MigrationPlan, VectorChange
from redismigrate.quantize import NUMPY_DTYPES, Cast, encode_batch, recall_at_k
from redismigrate.schema import DATATYPE_BYTES, Model

# RESP framing of one "HSET key field value" in the AOF, beyond key, field and value
AOF_HSET_FRAMING_BYTES = 40
RECALL_K = 10
RECALL_QUERIES = 100
_EXACT = Cast(source="float64", target="float64")


class QualityForecast(Model, frozen=True, kw_only=True):
    """Recall@k of exact KNN over a sample of stored vectors, before and after re-encoding."""

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
    source_bytes: int
    target_bytes: int
    backup_bytes: int
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
    memory_change_bytes: int = 0
    notes: list[str] = []

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = msgspec.to_builtins(self)
        data["version"] = self.version
        return data


def forecast_quality(change: VectorChange, sample: np.ndarray) -> QualityForecast | None:
    """Recall@10 after re-encoding ``sample`` (stored vectors as float) with the plan's rule."""
    if change.encoding is None or len(sample) < RECALL_K + 2:
        return None
    queries = min(RECALL_QUERIES, len(sample))
    # the stored values are the ground truth, so "before" is exact search over them
    before = recall_at_k(
        sample, sample, change.distance_metric, _EXACT, k=RECALL_K, queries=queries
    )
    encoded = encode_batch(sample.astype(NUMPY_DTYPES[change.source_datatype]), change.encoding)
    after = recall_at_k(
        sample, encoded, change.distance_metric, change.encoding, k=RECALL_K, queries=queries
    )
    return QualityForecast(
        metric=change.distance_metric,
        sample_size=len(sample),
        queries=queries,
        k=RECALL_K,
        recall_before=round(before, 4),
        recall_after=round(after, 4),
    )


def build_estimate(
    plan: MigrationPlan,
    *,
    samples: Mapping[str, np.ndarray] | None = None,
    dataset_bytes: int = 0,
    average_key_bytes: int = 16,
    aof_enabled: bool = False,
) -> MigrationEstimate:
    """Disk for the backup and an RDB snapshot, AOF growth, memory change, quality forecast.

    ``dataset_bytes`` is the server's ``used_memory_dataset`` (what a snapshot holds);
    ``samples`` maps a source vector field to stored vectors decoded to float.
    """
    stats = plan.source.stats_snapshot
    docs = stats.num_docs + stats.hash_indexing_failures
    fields: list[VectorFieldEstimate] = []
    backup = aof = memory = 0
    notes: list[str] = []
    for change in plan.vector_changes:
        src = docs * change.dims * DATATYPE_BYTES[change.source_datatype]
        tgt = docs * change.dims * DATATYPE_BYTES[change.target_datatype]
        sample = (samples or {}).get(change.source_field)
        quality = forecast_quality(change, sample) if sample is not None else None
        if quality is None and change.lossy:
            notes.append(f"{change.field!r}: too few stored vectors for a quality forecast")
        field_backup = src if change.rewrite_documents else 0
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
        backup += field_backup
        if change.rewrite_documents:
            per_doc = (
                average_key_bytes
                + len(change.field)
                + change.dims * DATATYPE_BYTES[change.target_datatype]
                + AOF_HSET_FRAMING_BYTES
            )
            aof += docs * per_doc
            memory += tgt - src
        # the vector index holds a copy of every vector in the index's datatype
        memory += tgt - src
    renames = plan.rename_operations
    if renames.rename_fields or renames.change_prefix is not None:
        aof += docs * (average_key_bytes * 2 + AOF_HSET_FRAMING_BYTES)
    if not plan.vector_changes:
        notes.append("no vector re-encoding: no backup files are written")
    return MigrationEstimate(
        index_name=plan.source.index_name,
        documents=docs,
        vector_fields=fields,
        backup_disk_bytes=backup,
        rdb_snapshot_bytes=dataset_bytes,
        aof_enabled=aof_enabled,
        aof_growth_bytes=aof if aof_enabled else 0,
        total_new_disk_bytes=backup + dataset_bytes + (aof if aof_enabled else 0),
        memory_change_bytes=memory,
        notes=notes,
    )


def shadow_index_bytes(plan: MigrationPlan) -> int:
    """Memory a second index with the target schema will take, from the source's FT.INFO
    sizes: the non-vector part as it is, the vector part scaled by the new datatype width
    and, for HNSW, its graph links."""
    stats = plan.source.stats_snapshot
    docs = stats.num_docs + stats.hash_indexing_failures
    vector_mb = stats.vector_index_mb
    other_mb = max(stats.total_mb - vector_mb, 0.0)
    vector_bytes = 0.0
    for field in plan.merged_target_schema.vector_fields:
        a = field.attrs
        per_vector = a.dims * DATATYPE_BYTES[a.datatype]
        if a.algorithm == "hnsw":
            # level-0 links (2M) plus upper levels (~M/ (M-1) more) of 4-byte ids
            per_vector += int((a.m or 16) * 2 * 4 * 1.1) + 16
        vector_bytes += docs * per_vector
    if not plan.merged_target_schema.vector_fields:
        vector_bytes = vector_mb * 1_048_576
    return int(other_mb * 1_048_576 + vector_bytes)
