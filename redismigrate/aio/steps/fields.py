"""The field-rename step: renamed hash fields (or top-level JSON paths) in every
document of the snapshot, after the drop; and its undo.

Hash renames are guarded writes (a field moves only where the document still holds
it, and a deleted document is never recreated); both directions are idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import redis.asyncio as aioredis

from redismigrate.aio import guarded
from redismigrate.aio.fastwire import Wire
from redismigrate.aio.keys import moved_key, rename_json_fields
from redismigrate.aio.keyspace import rename_json_fields_on
from redismigrate.aio.steps.state import Run
from redismigrate.plan import MigrationPlan


async def rename(run: Run, snapshot: Iterable[list[bytes]]) -> None:
    """Rename the fields in every document of ``snapshot`` (original key names)."""
    renames = [(r.old_path, r.new_path) for r in run.plan.rename_operations.rename_fields]
    if not renames:
        return
    started = time.perf_counter()
    is_json = run.plan.source.keyspace.storage_type == "json"
    change = run.plan.rename_operations.change_prefix
    done = 0
    run.tick("field_renames", 0, run.documents or None)
    for batch in snapshot:
        keys = [moved_key(k, change.old, change.new) if change is not None else k for k in batch]
        if is_json:
            run.fields_renamed += await rename_json_fields_on(run.servers, keys, renames)
        else:
            outcome = await guarded.rename_fields(run.wire, keys, renames, capture=run.capture)
            run.fields_renamed += outcome.written
            run.skipped.update(outcome.skipped)
        done += len(keys)
        run.tick("field_renames", done, run.documents or None)
    run.timed("field_renames", started, done)


async def rename_back(
    client: aioredis.Redis, wire: Wire, plan: MigrationPlan, names: Sequence[bytes]
) -> list[bytes]:
    """Undo for the documents ``names``: every renamed field gets its old name back.
    Returns the documents left as they are (changed by the application meanwhile)."""
    renames = [(r.new_path, r.old_path) for r in plan.rename_operations.rename_fields]
    if not renames:
        return []
    if plan.source.keyspace.storage_type == "json":
        await rename_json_fields(client, list(names), renames)
        return []
    outcome = await guarded.rename_fields(wire, names, renames, capture=None)
    return outcome.skipped
