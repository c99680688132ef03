"""Validate a migrated index against its plan."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from redismigrate.aio.indexes import read_schema_and_stats
from redismigrate.aio.keys import moved_key
from redismigrate.aio.planner import renamed
from redismigrate.errors import IndexNotFound
from redismigrate.plan import MigrationPlan
from redismigrate.quantize import reencode_bytes
from redismigrate.report import ValidationResult

if TYPE_CHECKING:
    from redismigrate.aio.executor import BackupSet

VECTOR_SAMPLE = 50


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
) -> ValidationResult:
    """Live schema equals the merged target; document counts and failures hold; sampled
    keys exist; re-encoded vectors equal the plan's rule applied to their backed-up bytes."""
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
    # the name may be an alias: FT.INFO then reports the index behind it
    live_schema = renamed(live.schema, target.name)
    schema_match = live_schema.canonical() == target.canonical()
    if not schema_match:
        errors.append("live schema differs from the plan's merged_target_schema")
    target_total = live.stats.num_docs + live.stats.hash_indexing_failures
    if documents_at_switch is not None:
        # online: the application kept writing; the shadow matched the live index at the
        # switch, and may only have grown since
        source_total = documents_at_switch
        count_match = target_total >= source_total
    else:
        count_match = target_total == source_total
    if not count_match:
        errors.append(
            f"document count mismatch: {source_total} before (documents + indexing failures), "
            f"{target_total} now"
        )
    failures_grew = live.stats.hash_indexing_failures > source_stats.hash_indexing_failures
    if failures_grew:
        errors.append(
            f"indexing failures grew from {source_stats.hash_indexing_failures} to "
            f"{live.stats.hash_indexing_failures}"
        )
    sample = [target_key(plan, k.encode()) for k in plan.source.keyspace.key_sample]
    missing: list[str] = []
    if sample:
        pipe = client.pipeline(transaction=False)
        for key in sample:
            pipe.exists(key)
        for key, found in zip(sample, await pipe.execute(), strict=True):
            if not found:
                missing.append(key.decode("utf-8", "backslashreplace"))
    if missing:
        errors.append(f"{len(missing)} sampled key(s) are missing")
    checked, mismatched = await _check_vectors(client, plan, backup)
    if mismatched:
        errors.append(f"{len(mismatched)} re-encoded vector(s) differ from the plan's rule")
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
    )


async def _check_vectors(
    client: aioredis.Redis, plan: MigrationPlan, backup: BackupSet | None
) -> tuple[int, list[str]]:
    changes = [vc for vc in plan.vector_changes if vc.rewrite_documents and vc.encoding]
    if backup is None or not changes:
        return 0, []
    checked = 0
    mismatched: list[str] = []
    for frame in backup.iter_frames():
        keys = frame.keys[:VECTOR_SAMPLE]
        for change in changes:
            assert change.encoding is not None
            if change.source_field not in frame.vectors:
                continue
            originals = frame.vectors[change.source_field][: len(keys)]
            present = [(k, v) for k, v in zip(keys, originals, strict=True) if v is not None]
            if not present:
                continue
            expected = reencode_bytes([v for _, v in present], change.encoding, change.dims)
            pipe = client.pipeline(transaction=False)
            for key, _ in present:
                pipe.hget(target_key(plan, key), change.field)
            stored = await pipe.execute()
            for (key, _), want, got in zip(present, expected, stored, strict=True):
                checked += 1
                if want != got:
                    mismatched.append(key.decode("utf-8", "backslashreplace"))
        break  # the first frame is the sample
    return checked, mismatched
