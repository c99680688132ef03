"""The backup step: every document key (the snapshot later steps work from) and the
original bytes of every vector to re-encode, read while the source index still serves.

Undone by nothing: it writes only to the backup directory.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import anyio

from redismigrate.aio.steps.state import Run, crash_point, first_error
from redismigrate.backup import VectorBackup
from redismigrate.plan import MigrationPlan
from redismigrate.schema import DATATYPE_BYTES


def source_path(plan: MigrationPlan, source_field: str) -> str:
    """The hash field holding ``source_field`` before any rename."""
    field = plan.source.schema_snapshot.field(source_field)
    assert field is not None
    return field.path or field.name


async def back_up(
    run: Run,
    batches: AsyncIterator[list[bytes]],
    checkpoint_seconds: float,
    *,
    shard_of: Callable[[list[bytes]], int] | None = None,
) -> None:
    """Back up every original vector of the fields to re-encode, batch by batch.

    One enumeration feeds the writers: with one worker the header's own data file,
    with several one shard each (read with its own connection, written in parallel).
    Batches go to the shards in turn, or to shard ``shard_of(keys)`` (a cluster's
    backup: the shard of the primary holding them).
    """
    started = time.perf_counter()
    assert run.backups is not None
    fields = run.header.fields
    total = run.plan.source.stats_snapshot.num_docs
    done = 0
    run.tick("backup", 0, total)
    # every key is recorded (the snapshot later steps work from), with its vectors
    names = list(fields)
    # fields are renamed after the drop: the backup reads them by their old names
    field_names = [source_path(run.plan, n).encode() for n in names]
    sources = run.backups.data_sources
    value_size = -1
    if names:
        first = fields[names[0]]
        value_size = first.dims * DATATYPE_BYTES[first.source_datatype]

    async def shard_writer(target: VectorBackup, inbox: Any) -> None:
        # reading batch n+1 from Redis overlaps writing batch n to disk
        frames, to_disk = anyio.create_memory_object_stream[
            tuple[list[bytes], dict[str, list[bytes | None]]]
        ](1)

        async def read() -> None:
            async with inbox, frames:
                async for keys in inbox:
                    columns = (
                        await run.wire.read_columns(keys, field_names, value_size)
                        if field_names
                        else []
                    )
                    vectors = dict(zip(names, columns, strict=True))
                    await frames.send((keys, vectors))

        async def write() -> None:
            nonlocal done
            committed = time.monotonic()
            async with to_disk:
                async for keys, vectors in to_disk:
                    await anyio.to_thread.run_sync(
                        partial(target.append_batch, keys, vectors, durable=False)
                    )
                    if time.monotonic() - committed >= checkpoint_seconds:
                        await anyio.to_thread.run_sync(target.commit)
                        committed = time.monotonic()
                    done += len(keys)
                    run.tick("backup", done, total)
                    crash_point("during_backup")
            await anyio.to_thread.run_sync(target.commit)

        async with anyio.create_task_group() as group:
            group.start_soon(read)
            group.start_soon(write)

    try:
        async with anyio.create_task_group() as group:
            outboxes = []
            for target in sources:
                outbox, inbox = anyio.create_memory_object_stream[list[bytes]](1)
                outboxes.append(outbox)
                group.start_soon(shard_writer, target, inbox)
            position = 0
            async for keys in batches:
                shard = position % len(outboxes) if shard_of is None else shard_of(keys)
                await outboxes[shard].send(keys)
                position += 1
            for outbox in outboxes:
                await outbox.aclose()
    except Exception as exc:
        raise first_error(exc) from None
    run.documents = done or total
    await anyio.to_thread.run_sync(partial(run.set_phase, "ready"))
    run.timed("backup", started, done)
