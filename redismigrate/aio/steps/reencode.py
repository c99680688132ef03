"""The re-encode step: every backed-up vector written in the target encoding, and its
undo, which puts the original bytes back.

Both are guarded writes (aio/guarded.py): a document the application changed since
the migrator last saw it is left as it is (re-encode: skipped and reconciled later;
undo: listed). Batches are encoded in worker threads, ahead of the writers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from redismigrate.aio import guarded
from redismigrate.aio.fastwire import Wire
from redismigrate.aio.keys import moved_key
from redismigrate.aio.steps.state import EncodedBatch, Run, crash_point, first_error
from redismigrate.backup import BackupBatch, BackupField, VectorBackup
from redismigrate.errors import RedisMigrateError
from redismigrate.plan import VectorChange
from redismigrate.quantize import reencode_bytes
from redismigrate.schema import DATATYPE_BYTES

# a guarded write waits on several round trips: at least this many batches are in
# flight so those waits overlap, whatever --workers says
WRITERS = 8


async def reencode(run: Run, *, touch: bool, checkpoint_seconds: float) -> None:
    """Write every backed-up vector re-encoded by the plan's rule.

    Each batch is encoded from its original bytes in the backup, so a batch redone
    after a crash is written with the same bytes: nothing is ever encoded twice.
    Every write is guarded (aio/guarded.py): a document the application changed
    since its backup is skipped and left to the reconcile step.
    """
    started = time.perf_counter()
    assert run.backups is not None
    changes = {vc.source_field: vc for vc in run.plan.vector_changes if vc.rewrite_documents}
    change = run.plan.rename_operations.change_prefix
    lock = anyio.Lock()

    fields = run.header.fields
    field_names = [fields[name].document_field.encode() for name in changes]

    def encode(frame: BackupBatch) -> EncodedBatch:
        """The guarded writes of one frame (runs in a worker thread: numpy work)."""
        keys = [
            moved_key(k, change.old, change.new) if change is not None else k for k in frame.keys
        ]
        expected: list[list[Any]] = []
        encoded: list[list[bytes | None]] = []
        count = 0
        malformed: set[int] = set()
        for source_field, vc in changes.items():
            originals = frame.vectors.get(source_field) or [None] * len(keys)
            size = vc.dims * DATATYPE_BYTES[vc.source_datatype]
            if vc.encoding is None:
                expected.append([None] * len(keys))
                encoded.append([None] * len(keys))
                continue
            present = [v for v in originals if v is not None and len(v) == size]
            if len(present) < len(originals):
                malformed.update(
                    i for i, v in enumerate(originals) if v is not None and len(v) != size
                )
            blobs = iter(reencode_bytes(present, vc.encoding, vc.dims) if present else [])
            # a value of another size is no vector of this field: written back as it
            # is (one write, so the target counts one indexing failure, as the source)
            expected.append(list(originals))
            encoded.append(
                [
                    None if v is None else next(blobs) if len(v) == size else bytes(v)
                    for v in originals
                ]
            )
            count = max(count, len(present))
        return EncodedBatch(
            batch=frame.batch,
            keys=keys,
            fields=field_names,
            expected=expected,
            encoded=encoded,
            count=count,
            malformed=[keys[i] for i in sorted(malformed)],
        )

    capture = run.capture
    unwritten: Callable[[bytes], bool] | None = None
    if capture is not None and capture.complete and not run.resumed:
        # capture has seen every write since before the backup read these keys
        old = change.old.encode() if change is not None else b""
        new = change.new.encode() if change is not None else b""

        def unwritten(key: bytes) -> bool:
            assert capture is not None
            if capture.written_by_application(key):
                return False
            if change is not None and key.startswith(new):
                return not capture.written_by_application(old + key[len(new) :])
            return True

    async def write(batch: EncodedBatch) -> None:
        outcome = await guarded.reencode(
            run.wire,
            batch.keys,
            batch.fields,
            batch.expected,
            batch.encoded,
            touch=touch,
            capture=run.capture,
            value_size=value_size,
            unwritten=unwritten,
        )
        run.skipped.update(outcome.skipped)
        if batch.malformed:
            run.note_malformed(batch.malformed)

    first = next(iter(changes.values()), None)
    value_size = first.dims * DATATYPE_BYTES[first.source_datatype] if first else -1

    async def produce(source: VectorBackup, start: int, out: Any) -> None:
        """Read and encode frames in a thread, ahead of the writers."""
        frames = source.iter_frames(start)
        async with out:
            while True:
                frame = await anyio.to_thread.run_sync(next, frames, None)
                if frame is None:
                    return
                await out.send(await anyio.to_thread.run_sync(encode, frame))

    # per source: [watermark, keys since the last checkpoint, time of that checkpoint]
    unsaved: dict[int, list[Any]] = {}

    def checkpoint(source: VectorBackup) -> None:
        state = unsaved.get(id(source))
        if state is None or (state[0] == source.header.quantize_completed_batches):
            return
        source.update(
            quantize_completed_batches=state[0],
            keys_reencoded=source.header.keys_reencoded + state[1],
        )
        state[1], state[2] = 0, time.monotonic()

    async def progress(source: VectorBackup, watermark: int, count: int) -> None:
        async with lock:
            run.reencoded += count
            state = unsaved.setdefault(id(source), [watermark, 0, time.monotonic()])
            state[0] = watermark
            state[1] += count
            if time.monotonic() - state[2] >= checkpoint_seconds:
                await anyio.to_thread.run_sync(checkpoint, source)
            run.tick("reencode", run.reencoded, run.documents or None)
        crash_point("during_reencode")

    async def from_file(source: VectorBackup, writers: int) -> None:
        """``writers`` concurrent writers over one data file (the header's own, or a
        shard): a batch counts as done once all batches before it are."""
        finished: set[int] = set()
        watermark = source.header.quantize_completed_batches
        send, receive = anyio.create_memory_object_stream[EncodedBatch](writers)

        async def worker(batches: Any) -> None:
            nonlocal watermark
            async with batches:
                async for batch in batches:
                    await write(batch)
                    finished.add(batch.batch)
                    while watermark in finished:
                        finished.discard(watermark)
                        watermark += 1
                    await progress(source, watermark, batch.count)

        async with anyio.create_task_group() as group:
            with receive:
                for _ in range(writers):
                    group.start_soon(worker, receive.clone())
            group.start_soon(produce, source, watermark, send)

    if changes:
        run.tick("reencode", run.reencoded, run.documents or None)
        try:
            async with anyio.create_task_group() as group:
                # a guarded write waits on several round trips: at least WRITERS
                # batches are in flight so those waits overlap, whatever --workers says
                writers = max(run.workers, WRITERS)
                if run.backups.shards:
                    shards = run.backups.shards
                    for shard in shards:
                        group.start_soon(from_file, shard, -(-writers // len(shards)))
                else:
                    group.start_soon(from_file, run.backups.main, writers)
        except Exception as exc:
            error = first_error(exc)
            # keep what was written: a resume then redoes less
            with contextlib.suppress(RedisMigrateError, OSError):
                for source in run.backups.data_sources:
                    checkpoint(source)
            raise error from None
        for source in run.backups.data_sources:
            await anyio.to_thread.run_sync(checkpoint, source)
    if run.header.phase != "completed":
        run.set_phase("completed")
    run.timed("reencode", started, run.reencoded)


async def restore(
    wire: Wire,
    names: Sequence[bytes],
    frame: BackupBatch,
    fields: dict[str, BackupField],
    changes: dict[str, VectorChange],
) -> tuple[guarded.Outcome, list[tuple[bytes, bytes, bytes]]]:
    """Undo for one backup frame (keys already back under their original ``names``):
    each vector the migration re-encoded gets its original bytes back. Returns what was
    done, and ``(key, field, original)`` of what was restored, to check afterwards."""
    total = guarded.Outcome()
    restored: list[tuple[bytes, bytes, bytes]] = []
    for source_field, column in frame.vectors.items():
        vc = changes.get(source_field)
        if vc is None or vc.encoding is None or source_field not in fields:
            continue
        size = vc.dims * DATATYPE_BYTES[vc.source_datatype]
        present = [
            (name, bytes(v))
            for name, v in zip(names, column, strict=True)
            if v is not None and len(v) == size
        ]
        if not present:
            continue
        originals = [v for _, v in present]
        encoded = await anyio.to_thread.run_sync(reencode_bytes, originals, vc.encoding, vc.dims)
        field_name = fields[source_field].document_field.encode()
        outcome = await guarded.restore(
            wire, [name for name, _ in present], field_name, originals, encoded, capture=None
        )
        total.add(outcome)
        skipped = set(outcome.skipped)
        restored += [(n, field_name, v) for n, v in present if n not in skipped]
    return total, restored
