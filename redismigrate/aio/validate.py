"""Validate a migrated index against its plan."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
import redis.asyncio as aioredis

from redismigrate.aio.cluster import ClusterConnections
from redismigrate.aio.connection import execute
from redismigrate.aio.indexes import read_schema_and_stats
from redismigrate.aio.keys import moved_key
from redismigrate.aio.keyspace import (
    Servers,
    count_documents_on,
    documents_by_primary,
    exists_each,
    hash_field_of_each,
)
from redismigrate.aio.planner import renamed
from redismigrate.errors import IndexNotFound
from redismigrate.keytext import key_names, key_text
from redismigrate.plan import MigrationPlan
from redismigrate.quantize import reencode_bytes
from redismigrate.report import ShardDocuments, ValidationResult, shard_count_error
from redismigrate.schema import DATATYPE_BYTES

if TYPE_CHECKING:
    from redismigrate.aio.executor import BackupSet

VECTOR_SAMPLE = 50
LIVE_COUNT_TRIES = 10


def target_key(plan: MigrationPlan, key: bytes) -> bytes:
    """Where a source document's key lives after the migration."""
    change = plan.rename_operations.change_prefix
    return moved_key(key, change.old, change.new) if change is not None else key


async def validate_live(
    client: aioredis.Redis,
    plan: MigrationPlan,
    backup: BackupSet | None = None,
    *,
    documents_at_switch: int | None = None,
    written_during_run: Callable[[bytes], bool] | None = None,
    live_documents: int | None = None,
    failures_by_application: bool = False,
    servers: Servers | None = None,
) -> ValidationResult:
    """Live schema equals the merged target (in what the server reports); document counts
    and failures hold; sampled keys exist; re-encoded vectors equal the plan's rule
    applied to their backed-up bytes.

    When the application wrote during the run, ``written_during_run`` tells which sampled
    keys it wrote (they are checked by what they hold now, not by the backup), and
    ``live_documents`` is the number of documents under the prefixes now, which the
    index must hold instead of the snapshot's count.

    ``failures_by_application``: the index reads a field the application may have
    written in an encoding it refuses (an online re-encoding's final index, whose
    failure count the server never lowers once the run rewrote such a vector). Its
    failure count is then not held against the source's, and its documents are counted
    with the source's failures instead of its own.

    ``servers``: where the documents live when that is not ``client``'s server alone (a
    cluster's primaries; FT.* still goes to ``client``). On a cluster every primary's
    documents are counted and their sum held against the aggregated index (``shards``).
    """
    keys_at: Servers = servers if servers is not None else client
    errors: list[str] = []
    target = plan.merged_target_schema
    source_stats = plan.source.stats_snapshot
    source_total = source_stats.num_docs + source_stats.hash_indexing_failures
    try:
        live = await read_schema_and_stats(client, target.name)
    except IndexNotFound:
        return ValidationResult(
            passed=False,
            schema_match=False,
            doc_count_match=False,
            source_documents=source_total,
            target_documents=0,
            indexing_failures_before=source_stats.hash_indexing_failures,
            indexing_failures_after=0,
            errors=[f"index {target.name!r} does not exist"],
        )
    # the name may be an alias: FT.INFO then reports the index behind it; what the server
    # does not report (vector parameters such as HNSW EF_RUNTIME on search 8) is not checked
    live_schema = renamed(live.comparable_to(target), target.name)
    schema_match = live_schema.canonical() == target.canonical()
    if not schema_match:
        errors.append("live schema differs from the plan's merged_target_schema")
    # failures the application caused are not the index's: count the source's instead
    counted_failures = (
        source_stats.hash_indexing_failures
        if failures_by_application
        else live.stats.hash_indexing_failures
    )
    target_total = live.stats.num_docs + counted_failures
    if live_documents is not None:
        source_total = live_documents
        count_match = target_total == live_documents
    elif documents_at_switch is not None:
        # online: the application kept writing; the shadow matched the live index at the
        # switch, and may only have grown since, unless the application deleted documents:
        # then the index must hold what the keyspace holds now
        source_total = documents_at_switch
        count_match = target_total >= source_total
        for _ in range(LIVE_COUNT_TRIES):
            if count_match or target.index.options.filter is not None:
                break
            # writes land between the two counts: try again for a quiet moment
            source_total = await count_documents_on(
                keys_at, target.index.prefixes, plan.source.keyspace.storage_type
            )
            again = await read_schema_and_stats(client, target.name)
            target_total = again.stats.num_docs + (
                counted_failures if failures_by_application else again.stats.hash_indexing_failures
            )
            count_match = target_total == source_total
            if not count_match:
                await anyio.sleep(0.05)
    else:
        count_match = target_total == source_total
    if not count_match:
        errors.append(
            f"document count mismatch: {source_total} before (documents + indexing failures), "
            f"{target_total} now"
        )
    failures_grew = (
        not failures_by_application
        and live.stats.hash_indexing_failures > source_stats.hash_indexing_failures
    )
    if failures_grew:
        errors.append(
            f"indexing failures grew from {source_stats.hash_indexing_failures} to "
            f"{live.stats.hash_indexing_failures}"
        )
    # the plan holds each sampled key as key_text(); one that is not UTF-8 reads back as
    # up to two candidate names, and it is there if either is
    sample = [
        [target_key(plan, name) for name in names]
        for names in map(key_names, plan.source.keyspace.key_sample)
        if written_during_run is None or not any(map(written_during_run, names))
    ]
    gone: list[list[bytes]] = []
    if sample:
        for names, found in zip(sample, await exists_each(keys_at, sample), strict=True):
            if not found:
                gone.append(names)
    if gone and documents_at_switch is not None:
        # online: the application may delete documents at any time; a sampled key that is
        # gone is an error only if the index still has it
        gone = [names for names in gone if await _indexed(client, target.name, names)]
    missing = [key_text(names[0]) for names in gone]
    if missing:
        errors.append(f"{len(missing)} sampled key(s) are missing")
    checked, mismatched = await _check_vectors(keys_at, plan, backup, written_during_run)
    if mismatched:
        errors.append(f"{len(mismatched)} re-encoded vector(s) differ from the plan's rule")
    shards: list[ShardDocuments] = []
    if isinstance(keys_at, ClusterConnections) and target.index.options.filter is None:
        shards, indexed = await _shard_figures(keys_at, client, plan)
        if live_documents is None and documents_at_switch is None:
            # the application kept still: what the primaries hold is what the index counts
            shard_error = shard_count_error(shards, indexed)
            if shard_error is not None:
                errors.append(shard_error)
    return ValidationResult(
        passed=not errors,
        schema_match=schema_match,
        doc_count_match=count_match,
        source_documents=source_total,
        target_documents=target_total,
        indexing_failures_before=source_stats.hash_indexing_failures,
        indexing_failures_after=live.stats.hash_indexing_failures,
        keys_sampled=len(sample),
        keys_missing=missing,
        vectors_checked=checked,
        vectors_mismatched=mismatched,
        errors=errors,
        shards=shards,
    )


async def _shard_figures(
    cluster: ClusterConnections, client: aioredis.Redis, plan: MigrationPlan
) -> tuple[list[ShardDocuments], int]:
    """Every primary's documents under the target's prefixes, and the index's documents
    plus failures, read for a quiet moment (equal twice in a row) where writes go on."""
    target = plan.merged_target_schema
    storage = plan.source.keyspace.storage_type
    shards: list[ShardDocuments] = []
    indexed = -1
    for _ in range(LIVE_COUNT_TRIES):
        shards = await documents_by_primary(cluster, target.index.prefixes, storage)
        stats = (await read_schema_and_stats(client, target.name)).stats
        indexed = stats.num_docs + stats.hash_indexing_failures
        if sum(s.documents for s in shards) == indexed:
            break
        await anyio.sleep(0.05)
    return shards, indexed


async def _indexed(client: aioredis.Redis, index_name: str, keys: list[bytes]) -> bool:
    """Whether ``index_name`` still holds the document of one of ``keys`` (FT.SEARCH)."""
    reply = await execute(
        client, "FT.SEARCH", index_name, "*", "INKEYS", str(len(keys)), *keys, "NOCONTENT"
    )
    count = reply[0] if isinstance(reply, list) else reply.get(b"total_results", 0)
    return bool(count)


async def _check_vectors(
    servers: Servers,
    plan: MigrationPlan,
    backup: BackupSet | None,
    written_during_run: Callable[[bytes], bool] | None = None,
) -> tuple[int, list[str]]:
    changes = [vc for vc in plan.vector_changes if vc.rewrite_documents and vc.encoding]
    if backup is None or not changes:
        return 0, []
    checked = 0
    mismatched: list[str] = []
    for frame in backup.iter_frames():
        for change in changes:
            assert change.encoding is not None
            if change.source_field not in frame.vectors:
                continue
            size = change.dims * DATATYPE_BYTES[change.source_datatype]
            present = [
                (k, v)
                for k, v in zip(
                    frame.keys[:VECTOR_SAMPLE],
                    frame.vectors[change.source_field][:VECTOR_SAMPLE],
                    strict=True,
                )
                if v is not None
                and len(v) == size
                and (written_during_run is None or not written_during_run(k))
            ]
            if not present:
                continue
            expected = reencode_bytes([v for _, v in present], change.encoding, change.dims)
            known = backup.header.fields.get(change.source_field)
            field_name = known.document_field if known is not None else change.field
            stored = await hash_field_of_each(
                servers, [target_key(plan, key) for key, _ in present], field_name
            )
            for (key, _), want, got in zip(present, expected, stored, strict=True):
                if got is None:
                    # deleted since (by the application: a run never deletes a document);
                    # a lost one shows in the document count
                    continue
                checked += 1
                if want != got:
                    mismatched.append(key_text(key))
        break  # the first frame is the sample
    return checked, mismatched
