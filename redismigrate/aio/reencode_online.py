"""Zero-downtime re-encoding of hash vectors: the stages of an online run, its resume
and its rollback.

The live index serves the whole time; the name moves to the shadow index in one
MULTI/EXEC once that index is built and every application write is mirrored. The
stages (recorded in the progress header, redismigrate/shadow.py):

1. ``capture_started``: keyspace notifications for the prefixes (aio/capture.py),
   from before the first document is read until the end.
2. ``backfill``: every document's original vector re-encoded into its shadow field,
   guarded (aio/shadow.py: written only where the original still holds the bytes that
   were read; a deleted document is never recreated).
3. ``shadow_index``: the target schema with the vector read from the shadow field
   (``<field>__rm AS <field>``) created as ``<name>__rm<n>``; the server builds it in
   the background while the live index serves.
4. ``mirroring``: every key change capture names is re-encoded into its shadow again
   (guarded); lag = keys written but not mirrored yet, ticked as ``mirror``. With
   ``--postpone-cut-over`` the run keeps mirroring in ``awaiting_cut_over`` until
   `redismigrate cut-over --index NAME` sets a key in Redis or the flag file appears.
5. ``cut_over``: when the shadow is fully indexed and the lag near zero, the name (and
   the user aliases) move to the shadow in one MULTI/EXEC (aio/online.py), with a
   capture marker in the same transaction: the writes made up to the switch are
   exactly those notified before the marker, and are mirrored right after it.
6. ``switched``, then ``done``: the report says downtime 0 and counts what each stage
   did. The run ends here (the ``keep_shadow_field`` variant).

A rerun after a crash reads the stage, starts capture again and closes the gap with a
sweep over every document (its shadow compared with the re-encoding of its original,
fixed where wrong), then goes on. A rollback drops the shadow index (before the
switch) or builds the source schema under a new name and switches back (after it),
then removes the shadow fields, guarded.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
import redis.asyncio as aioredis
import redis.exceptions as rexc

from redismigrate.aio import aliases, guarded, online
from redismigrate.aio.capture import ChangeCapture
from redismigrate.aio.connection import execute
from redismigrate.aio.fastwire import Wire
from redismigrate.aio.indexes import create_index, ft_info, list_indexes, read_schema_and_stats
from redismigrate.aio.keys import is_cluster, scan_prefixes
from redismigrate.aio.preflight import check_evictions
from redismigrate.aio.shadow import (
    ShadowOutcome,
    ShadowSpec,
    encode_rows,
    read_rows,
    remove_shadows,
    return_originals,
    rewrite_originals,
    sync_shadows,
)
from redismigrate.aio.steps.state import Run, crash_point
from redismigrate.aio.validate import VECTOR_SAMPLE, validate_live
from redismigrate.backup import BackupField, BackupHeader, VectorBackup
from redismigrate.errors import BadInputError, IndexNotFound, RedisMigrateError
from redismigrate.ftinfo import stats_from_ft_info
from redismigrate.keytext import key_names, key_text
from redismigrate.ledger import LockHolder, lock_key
from redismigrate.plan import (
    MigrationPlan,
    Online,
    OtherIndex,
    now_iso,
    plan_hash,
    schema_hash,
    shadow_name,
)
from redismigrate.quantize import inverse_encoding, reencode_bytes
from redismigrate.report import ValidationResult
from redismigrate.shadow import (
    NOT_YET_BUILT,
    OnlineProgress,
    ShadowCounts,
    ShadowReport,
    Stage,
    cut_over_flag_path,
    cut_over_key,
    progress_path,
    read_progress,
    shadow_schema,
    write_progress,
)

BATCH = 500  # keys per batch where no run's --batch-size applies (rollback)
SWEEP_WORKERS = 4  # batches in flight during a backfill or sweep
CUT_OVER_MAX_LAG = 50  # keys written but not mirrored that still allow the switch
CATCH_UP_ROUNDS = 50  # mirror rounds tried to bring the lag under that
CUT_OVER_REQUEST_SECONDS = 7 * 24 * 3600  # how long a `cut-over` request waits for a run
LEFT_SHOWN = 5


@dataclass(frozen=True)
class CutOverControl:
    """Who decides the moment of the switch: the run itself (as soon as it can), or the
    operator (``postpone``: `redismigrate cut-over --index NAME`, or ``flag_file``)."""

    postpone: bool = False
    flag_file: Path | None = None
    # finish variant: wait for the application's first write in the new encoding
    wait_for_writes: bool = True


class ShadowFieldsLeft(RedisMigrateError):
    """A rollback put the source index back but left shadow fields it could not tell
    were its own (the application wrote them after the cut-over)."""

    exit_code = 1


def _keys_in(batch: Sequence[bytes], size: int) -> list[list[bytes]]:
    return [list(batch[i : i + size]) for i in range(0, len(batch), size)]


class _OnlineReencode:
    """One apply run of an online re-encoding plan."""

    def __init__(
        self,
        run: Run,
        control: CutOverControl,
        *,
        timeout: float,
        poll: float,
        checkpoint_seconds: float,
    ) -> None:
        plan = run.plan
        assert isinstance(plan.mode, Online) and plan.mode.reencode is not None
        self.run = run
        self.plan = plan
        self.client = run.client
        self.reencode = plan.mode.reencode
        self.shadow = plan.mode.shadow_index
        self.specs = ShadowSpec.for_plan(plan)
        self.control = control
        self.timeout = timeout
        self.poll = poll
        self.checkpoint_seconds = checkpoint_seconds
        self.prefixes = list(plan.source.keyspace.prefixes)
        self.path = progress_path(run.backup_dir, plan.source.index_name)
        self.flag = control.flag_file or cut_over_flag_path(run.backup_dir, plan.source.index_name)
        self.header: OnlineProgress | None = None
        self.base = ShadowCounts()  # what earlier runs of this migration counted
        self.backfill = ShadowOutcome()
        self.swept = ShadowOutcome()
        self.mirror = ShadowOutcome()
        self.capture: ChangeCapture | None = None
        self.sweep_reason: str | None = None  # set: capture cannot be had, sweeps instead
        self.writes_seen = 0
        self.gaps = 0
        self.lag_at_cut_over: int | None = None
        self.released_by = "automatic"
        self.waited = 0.0
        self.after_switch = 0
        self.documents_at_switch: int | None = None
        self.wait_started: float | None = None
        self.vectors_checked = 0
        self.finish = self.reencode.variant == "finish"
        self.rewrite = ShadowOutcome()  # originals rewritten in place (finish)
        self.unshadowed = ShadowOutcome()  # shadow fields removed at the end (finish)
        self.new_encoding_seen = False  # the application wrote the new encoding
        self.finish_started_by: str | None = None
        self.final_switched = False
        self.backup: VectorBackup | None = None
        self.backup_lock = anyio.Lock()

    # ---------------------------------------------------------------- the header

    def counts(self) -> ShadowCounts:
        mine = ShadowCounts(
            backfilled=self.backfill.written,
            swept=self.swept.written + self.swept.removed,
            mirrored=self.mirror.written + self.mirror.removed,
            removed=self.backfill.removed,
            skipped=len(self.backfill.skipped + self.swept.skipped + self.mirror.skipped),
            missing=self.backfill.missing + self.swept.missing + self.mirror.missing,
            malformed=len(
                set(self.backfill.malformed + self.swept.malformed + self.mirror.malformed)
            ),
            rewritten=self.rewrite.written,
            shadows_removed=self.unshadowed.removed,
        )
        return self.base.plus(mine)

    def save(self, stage: Stage | None = None, **changes: Any) -> None:
        """Write the header: the stage reached (never backwards) and the counts."""
        assert self.header is not None
        header = self.header
        if stage is not None and not header.reached(stage):
            changes["stage"] = stage
        self.header = msgspec.structs.replace(
            header, counts=self.counts(), updated_at=now_iso(), **changes
        )
        write_progress(self.path, self.header)

    # ---------------------------------------------------------------- the run

    async def execute(self) -> tuple[ValidationResult, ShadowReport]:
        run, plan, client = self.run, self.plan, self.client
        found = read_progress(self.path)
        if found is not None and found.plan_hash != plan_hash(plan):
            raise BadInputError(
                f"{run.backup_dir} holds the progress of a different plan for index "
                f"{plan.source.index_name!r}; use another --backup-dir, or roll that one back"
            )
        behind = await online.physical_name(client, plan.target_index_name)
        final = found.final_index if found is not None else None
        self.final_switched = final is not None and behind == final
        switched = behind == self.shadow or self.final_switched
        if found is None and not switched:
            await self._check_source()
            await aliases.check_before_drop(client, plan)
            await client.delete(cut_over_key(plan.source.index_name))  # an old request
            self.flag.unlink(missing_ok=True)
            self.header = OnlineProgress(
                index_name=plan.source.index_name,
                plan_hash=plan_hash(plan),
                shadow_index=self.shadow,
                stage="capture_started",
                started_at=now_iso(),
                updated_at=now_iso(),
            )
        else:
            run.resumed = True
            self.header = found or OnlineProgress(
                index_name=plan.source.index_name,
                plan_hash=plan_hash(plan),
                shadow_index=self.shadow,
                stage="cut_over",
                started_at=now_iso(),
                updated_at=now_iso(),
            )
            self.base = self.header.counts
            self.header = msgspec.structs.replace(
                self.header, runs=self.header.runs + 1, awaiting_since=None
            )
        if self.header.stage == "done" and switched:
            return await self._validate(), self._report()
        started = time.perf_counter()
        self.capture = await ChangeCapture(client, self.prefixes).start()
        try:
            if not self.capture.complete:
                self.sweep_reason = self.capture.problem or "keyspace notifications are off"
            self.save("capture_started")
            run.timed("capture", started)
            if not switched:
                await self._before_switch()
            else:
                # killed after the switch: the writes it had not mirrored yet are found
                # by comparing every document (from the rewrite on, its sweeps do that)
                if not (self.finish and self.header.reached("rewriting")):
                    await self._sweep("sweep")
                self.save(
                    "switched", switched=True, switched_at=self.header.switched_at or now_iso()
                )
            if self.finish:
                await self._finish()
            self.save("done")
            await client.delete(cut_over_key(plan.source.index_name))
            self.flag.unlink(missing_ok=True)
            validation = await self._validate()
        finally:
            with anyio.CancelScope(shield=True):
                self.writes_seen += self.capture.foreign_events
                await self.capture.stop()
                if self.backup is not None:
                    self.backup.close()
        return validation, self._report()

    async def _before_switch(self) -> None:
        run, client, plan = self.run, self.client, self.plan
        assert self.header is not None
        started = time.perf_counter()
        # a resume whose backfill had finished compares every document again (the gap)
        kind = "sweep" if self.header.reached("shadow_index") else "backfill"
        self.save("backfill")
        await self._sweep(kind)
        run.timed(kind, started, self.backfill.written + self.swept.written)
        started = time.perf_counter()
        if await online.physical_name(client, self.shadow) is None:
            await create_index(
                client,
                shadow_schema(plan.merged_target_schema, self.reencode),
                index_name=self.shadow,
            )
        self.save("shadow_index")
        run.timed("create", started)
        started = time.perf_counter()
        await self._mirror_until(self._ready, "indexing")
        self.save("mirroring")
        run.timed("indexing", started)
        if self.control.postpone and not await self._released():
            started = self.wait_started = time.perf_counter()
            self.save("awaiting_cut_over", awaiting_since=now_iso())
            await self._mirror_until(self._released, "awaiting_cut_over")
            self.waited = time.perf_counter() - started
            run.timed("awaiting_cut_over", started)
        await self._switch()

    async def _switch(self) -> None:
        run, plan = self.run, self.plan
        started = time.perf_counter()
        await self._mirror_until(self._ready, "indexing")
        await self._catch_up()
        await check_evictions(run)
        assert self.capture is not None
        self.lag_at_cut_over = self.capture.pending if self.sweep_reason is None else None
        self.save("cut_over")
        crash_point("before_cut_over")
        run.tick("cut_over", 0, 1)  # the moment: an application switching with it can go
        also: list[tuple[Any, ...]] = []
        marker = None
        if self.capture.complete:
            channel, token, arrival = self.capture.marker()
            also.append(("PUBLISH", channel, token))
            marker = (token, arrival)
        await online.cut_over(
            self.client,
            name=plan.source.index_name,
            new_name=plan.target_index_name,
            shadow=self.shadow,
            aliases=plan.source.aliases,
            also=also,
        )
        crash_point("after_cut_over")
        # the request that released the switch is used up: a new one tells a finishing
        # run to go on without waiting for the application's first write
        await self.client.delete(cut_over_key(plan.source.index_name))
        self.flag.unlink(missing_ok=True)
        self.save("switched", switched=True, switched_at=now_iso(), awaiting_since=None)
        run.tick("cut_over", 1, 1)
        run.timed("cut_over", started)
        started = time.perf_counter()
        # what the application wrote up to the switch: notified before the marker
        if marker is not None and await self.capture.arrived(*marker):
            before = self.mirror.written + self.mirror.removed
            await self._mirror_keys(self.capture.drain())
            self.after_switch = self.mirror.written + self.mirror.removed - before
        else:
            await self._sweep("sweep")
        run.timed("mirror", started, self.after_switch)

    # ---------------------------------------------------------------- the checks

    async def _check_source(self) -> None:
        plan, client = self.plan, self.client
        assert isinstance(plan.mode, Online)
        try:
            live = await read_schema_and_stats(client, plan.source.index_name)
        except IndexNotFound:
            live = None
        behind = await online.physical_name(client, plan.source.index_name)
        if (
            live is None
            or behind != plan.mode.previous_physical_index
            or not await online.source_matches(
                client, plan, live.comparable_to(plan.source.schema_snapshot)
            )
        ):
            raise BadInputError(
                f"source schema mismatch: index {plan.source.index_name!r} changed since "
                "the plan was made; run `redismigrate plan` again"
            )

    async def _ready(self) -> bool:
        """The shadow is fully indexed and holds as many documents (plus failures) as the
        live index."""
        return await self._caught_up(self.shadow, self.plan.source.index_name)

    async def _final_ready(self) -> bool:
        assert self.header is not None and self.header.final_index is not None
        crash_point("final_index")
        return await self._caught_up(
            self.header.final_index, self.plan.target_index_name, at_least=True
        )

    async def _caught_up(self, new: str, serving: str, *, at_least: bool = False) -> bool:
        """``new`` is built and holds as many documents plus failures as ``serving``.

        ``at_least`` (the final index, which reads the originals): more is fine. Each
        write of the old encoding the application makes to an original counts one
        failure there until the mirror rewrites it, and the server never takes a count
        back; a document missing from it once its scan is done is such a write in flight.
        """
        shadow = stats_from_ft_info(await ft_info(self.client, new))
        live = stats_from_ft_info(await ft_info(self.client, serving))
        have = shadow.num_docs + shadow.hash_indexing_failures
        want = live.num_docs + live.hash_indexing_failures
        self.run.tick("indexing", min(have, want), want)
        enough = have >= want if at_least else have == want
        if not shadow.indexing and shadow.percent_indexed >= 1.0 and enough:
            self.documents_at_switch = want
            return True
        return False

    async def _released(self) -> bool:
        """The operator released the postponed cut-over (the key or the flag file)."""
        crash_point("awaiting_cut_over")
        if self.wait_started is not None:
            waited = time.perf_counter() - self.wait_started
            self.run.tick("awaiting_cut_over", int(waited), None)
        if await self.client.exists(cut_over_key(self.plan.source.index_name)):
            self.released_by = "postponed: redismigrate cut-over"
            return True
        if self.flag.exists():
            self.released_by = f"postponed: flag file {self.flag}"
            return True
        return False

    # ---------------------------------------------------------------- the work

    async def _sweep(self, kind: str) -> None:
        """Every document under the prefixes: its shadow made the re-encoding of its
        original (the backfill; after a gap, the sweep that closes it)."""
        outcome = self.backfill if kind == "backfill" else self.swept
        if kind != "backfill":
            self.gaps += 1
        wire = self.run.wire
        expected = self.plan.source.stats_snapshot.num_docs or None
        done = 0
        last_save = time.monotonic()
        send, receive = anyio.create_memory_object_stream[list[bytes]](SWEEP_WORKERS)

        async def worker(batches: Any) -> None:
            nonlocal done, last_save
            async with batches:
                async for keys in batches:
                    await self.run.throttle.admit(len(keys))
                    found = await sync_shadows(wire, keys, self.specs, self.capture)
                    outcome.add(found)
                    if found.copied and self.header is not None and self.header.switched:
                        self.new_encoding_seen = True  # written while no run mirrored
                    if self.capture is not None and found.skipped:
                        # the application wrote them meanwhile: mirrored later
                        self.capture.suspect(found.skipped)
                    done += len(keys)
                    self.run.tick(kind, done, expected)
                    if time.monotonic() - last_save >= self.checkpoint_seconds:
                        last_save = time.monotonic()
                        await anyio.to_thread.run_sync(self.save)
                    crash_point(f"during_{kind}")

        async with anyio.create_task_group() as group:
            with receive:
                for _ in range(SWEEP_WORKERS):
                    group.start_soon(worker, receive.clone())
            async with send:
                async for keys in scan_prefixes(
                    self.client, self.prefixes, "hash", self.run.batch_size
                ):
                    await send.send(keys)
        self.save()

    async def _mirror_keys(self, keys: set[bytes]) -> None:
        rewriting = self.finish and self.header is not None and self.header.reached("rewriting")
        for batch in _keys_in(sorted(keys), self.run.batch_size):
            if rewriting:
                # an original the application wrote in the old encoding is rewritten too
                done = await self._rewrite_batch(batch)
                if self.capture is not None and done.skipped:
                    self.capture.suspect(done.skipped)
                if self.final_switched:
                    continue  # the shadows are going: nothing reads them any more
            found = await sync_shadows(self.run.wire, batch, self.specs, self.capture)
            self.mirror.add(found)
            if found.copied and self.header is not None and self.header.switched:
                self.new_encoding_seen = True
            if self.capture is not None and found.skipped:
                self.capture.suspect(found.skipped)

    async def _mirror_round(self) -> None:
        """Mirror what change capture saw since the last round; restart capture (and
        sweep the gap) when its subscription dropped."""
        capture = self.capture
        assert capture is not None
        if self.sweep_reason is None and not capture.complete:
            await self._recapture()
            return
        if self.sweep_reason is not None:
            return  # nothing to go by: the sweeps before and after the switch do it
        keys = capture.drain()
        if keys:
            await self._mirror_keys(keys)
        mirrored = self.mirror.written + self.mirror.removed
        self.run.tick("mirror", mirrored, mirrored + capture.pending)

    async def _recapture(self) -> None:
        assert self.capture is not None
        problem = self.capture.problem or "the subscription dropped"
        self.writes_seen += self.capture.foreign_events
        await self.capture.stop()
        self.capture = await ChangeCapture(self.client, self.prefixes).start()
        if not self.capture.complete:
            self.sweep_reason = f"{problem}; starting again failed: {self.capture.problem}"
            return
        await self._sweep("sweep")  # what was written while nobody listened

    async def _mirror_until(self, done: Callable[[], Awaitable[bool]], step: str) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            await self._mirror_round()
            if await done():
                return
            if step == "indexing" and time.monotonic() > deadline:
                raise RedisMigrateError(
                    f"timeout waiting for the shadow index {self.shadow!r} after "
                    f"{self.timeout:g} s; the live index still serves, nothing was switched: "
                    "run apply again to go on, or `redismigrate rollback`"
                )
            await anyio.sleep(self.poll)

    async def _catch_up(self) -> None:
        """Bring the lag under CUT_OVER_MAX_LAG: wait until every write made so far is
        read, mirror it, again while more came in meanwhile."""
        capture = self.capture
        assert capture is not None
        if self.sweep_reason is not None:
            await self._sweep("sweep")  # no notifications: compare every document
            return
        for _ in range(CATCH_UP_ROUNDS):
            await capture.sync()
            if not capture.complete:
                await self._recapture()
                if self.sweep_reason is not None:
                    await self._sweep("sweep")
                    return
                continue
            waiting = capture.pending
            await self._mirror_round()
            if waiting <= CUT_OVER_MAX_LAG:
                return

    # ---------------------------------------------------------------- finishing

    async def _finish(self) -> None:
        """After the cut-over: wait for the application's new encoding, rewrite the
        originals, build the final index, switch to it, remove the shadows."""
        assert self.header is not None
        run = self.run
        if not self.header.reached("rewriting"):
            started = time.perf_counter()
            self.wait_started = None
            self.save("awaiting_new_encoding")
            await self._mirror_until(self._new_encoding_arrived, "awaiting_new_encoding")
            self.save("rewriting", new_encoding_seen_at=now_iso())
            run.timed("awaiting_new_encoding", started)
        self.finish_started_by = self.finish_started_by or "resumed"
        self._open_backup()
        if not self.final_switched:
            started = time.perf_counter()
            self.save("rewriting")
            await self._scan("rewrite", self._rewrite_and_sync)
            run.timed("rewrite", started, self.rewrite.written)
            started = time.perf_counter()
            final = self.header.final_index or await self._final_name()
            self.save("final_index", final_index=final)
            if await online.physical_name(self.client, final) is None:
                await create_index(self.client, self.plan.merged_target_schema, index_name=final)
            await self._mirror_until(self._final_ready, "indexing")
            run.timed("final_index", started)
            self.save("final_switch")
            await self._final_switch(final)
        else:
            # killed after the second switch: an original written in the old encoding
            # while nobody watched is found by reading every document
            await self._scan("rewrite", self._rewrite_only)
        started = time.perf_counter()
        self.save("removing_shadows")
        await self._scan("unshadow", self._unshadow)
        run.timed("unshadow", started, self.unshadowed.removed)

    async def _new_encoding_arrived(self) -> bool:
        """The application wrote a vector in the new encoding after the switch, or the
        operator said to go on (`redismigrate cut-over` again, or the flag file)."""
        if self.new_encoding_seen:
            self.finish_started_by = "the application wrote the new encoding"
            return True
        if not self.control.wait_for_writes:
            self.finish_started_by = "apply --no-wait-for-writes"
            return True
        reencode = self.plan.mode.reencode if isinstance(self.plan.mode, Online) else None
        if reencode is not None and not reencode.wait_for_new_encoding:
            self.finish_started_by = "the plan (online chosen by the planner: no wait)"
            return True
        crash_point("awaiting_new_encoding")
        if self.wait_started is None:
            self.wait_started = time.perf_counter()
        waited = time.perf_counter() - self.wait_started
        self.run.tick("awaiting_new_encoding", int(waited), None)
        if await self.client.exists(cut_over_key(self.plan.source.index_name)):
            self.finish_started_by = "redismigrate cut-over"
            return True
        if self.flag.exists():
            self.finish_started_by = f"flag file {self.flag}"
            return True
        return False

    async def _final_name(self) -> str:
        return await _fresh_name(self.client, self.plan, self.shadow)

    async def _final_switch(self, final: str) -> None:
        """The second switch: the name (and the user aliases) to the final index, the
        shadow index dropped, in one MULTI/EXEC; then the writes made up to it."""
        run, plan = self.run, self.plan
        started = time.perf_counter()
        await self._mirror_until(self._final_ready, "indexing")
        await self._catch_up()
        await check_evictions(run)
        assert self.capture is not None
        crash_point("before_final_switch")
        also: list[tuple[Any, ...]] = []
        marker = None
        if self.capture.complete:
            channel, token, arrival = self.capture.marker()
            also.append(("PUBLISH", channel, token))
            marker = (token, arrival)
        await online.cut_over(
            self.client,
            name=plan.target_index_name,
            new_name=plan.target_index_name,
            shadow=final,
            aliases=plan.source.aliases,
            also=also,
        )
        self.final_switched = True
        self.save(final_switched_at=now_iso())
        crash_point("after_final_switch")
        if marker is not None and await self.capture.arrived(*marker):
            await self._mirror_keys(self.capture.drain())
        else:
            await self._scan("rewrite", self._rewrite_only)
        run.timed("final_switch", started)

    def _open_backup(self) -> None:
        """The backup of every original the rewrite replaces (rollback puts them back)."""
        if self.backup is not None:
            return
        plan = self.plan
        existing = VectorBackup.open(self.run.backup_dir, plan.source.index_name)
        if existing is not None:
            if existing.header.plan_hash != plan_hash(plan):
                raise BadInputError(
                    f"{existing.header_path} is the backup of another plan for index "
                    f"{plan.source.index_name!r}; use another --backup-dir"
                )
            self.backup = existing
            return
        changes = {vc.source_field: vc for vc in plan.vector_changes}
        header = BackupHeader(
            index_name=plan.source.index_name,
            plan_hash=plan_hash(plan),
            source_schema_hash=plan.source.schema_hash,
            target_schema_hash=schema_hash(plan.merged_target_schema),
            fields={
                spec.source_field: BackupField(
                    source_datatype=changes[spec.source_field].source_datatype,
                    target_datatype=changes[spec.source_field].target_datatype,
                    dims=spec.dims,
                    document_field=spec.document_field.decode(),
                )
                for spec in self.specs
            },
            batch_size=self.run.batch_size,
        )
        self.backup = VectorBackup.create(self.run.backup_dir, header)

    async def _back_up(self, keys: list[bytes], vectors: dict[str, list[bytes | None]]) -> None:
        backup = self.backup
        assert backup is not None
        async with self.backup_lock:
            await anyio.to_thread.run_sync(lambda: backup.append_batch(keys, vectors))

    async def _rewrite_batch(self, keys: list[bytes]) -> ShadowOutcome:
        done = await rewrite_originals(
            self.run.wire,
            keys,
            self.specs,
            self.capture,
            self._back_up,
            shadows=not self.final_switched,
        )
        self.rewrite.add(done)
        return done

    async def _rewrite_and_sync(self, keys: list[bytes]) -> list[bytes]:
        # the rewrite brings each shadow up to date as well (a copy of an original the
        # application wrote in the new encoding while no run mirrored)
        done = await self._rewrite_batch(keys)
        return done.skipped

    async def _rewrite_only(self, keys: list[bytes]) -> list[bytes]:
        return (await self._rewrite_batch(keys)).skipped

    async def _unshadow(self, keys: list[bytes]) -> list[bytes]:
        done = await remove_shadows(
            self.run.wire, keys, self.specs, only_our_encoding=False, capture=self.capture
        )
        self.unshadowed.add(done)
        return done.skipped

    async def _scan(self, kind: str, work: Callable[[list[bytes]], Awaitable[list[bytes]]]) -> None:
        """``work`` over every document under the prefixes, ``SWEEP_WORKERS`` batches at
        once, with a mirror round between batches; keys it had to leave (written again
        meanwhile) go back to change capture."""
        expected = self.plan.source.stats_snapshot.num_docs or None
        done = 0
        last_save = time.monotonic()
        send, receive = anyio.create_memory_object_stream[list[bytes]](SWEEP_WORKERS)

        async def worker(batches: Any) -> None:
            nonlocal done, last_save
            async with batches:
                async for keys in batches:
                    await self.run.throttle.admit(len(keys))
                    left = await work(keys)
                    if self.capture is not None and left:
                        self.capture.suspect(left)
                    done += len(keys)
                    self.run.tick(kind, done, expected)
                    if time.monotonic() - last_save >= self.checkpoint_seconds:
                        last_save = time.monotonic()
                        await anyio.to_thread.run_sync(self.save)
                        await self._mirror_round()
                    crash_point(f"during_{kind}")

        async with anyio.create_task_group() as group:
            with receive:
                for _ in range(SWEEP_WORKERS):
                    group.start_soon(worker, receive.clone())
            async with send:
                async for keys in scan_prefixes(
                    self.client, self.prefixes, "hash", self.run.batch_size
                ):
                    await send.send(keys)
        await self._mirror_round()
        self.save()

    # ---------------------------------------------------------------- the outcome

    async def _validate(self) -> ValidationResult:
        """The live index through the name against the shadow schema, the counts, and a
        sample of shadows against the re-encoding of their originals."""
        started = time.perf_counter()
        plan = self.plan
        validation = await validate_live(
            self.client,
            as_built(plan),
            None,
            documents_at_switch=self.documents_at_switch
            or plan.source.stats_snapshot.num_docs
            + plan.source.stats_snapshot.hash_indexing_failures,
            failures_by_application=self.finish,
        )
        sample = [names[0] for names in map(key_names, plan.source.keyspace.key_sample)]
        sample = sample[:VECTOR_SAMPLE]
        if self.capture is not None and not self.finish:
            sample = [k for k in sample if not self.capture.written_by_application(k)]
        rows = await read_rows(self.run.wire, sample, self.specs)
        wanted = await encode_rows(rows, self.specs)
        checked = 0
        wrong: list[str] = []
        for key, row, want in zip(sample, rows, wanted, strict=True):
            if not isinstance(row, list) or all(v is None for v in row):
                continue
            checked += 1
            shadows = [row[2 * i + 1] for i in range(len(self.specs))]
            if self.finish:
                # every vector in the new encoding, in its original field; no shadow left
                originals = [row[2 * i] for i in range(len(self.specs))]
                new = all(
                    v is None or spec.is_new(v)
                    for v, spec in zip(originals, self.specs, strict=True)
                )
                if not new or any(v is not None for v in shadows):
                    wrong.append(key_text(key))
            elif shadows != want:
                wrong.append(key_text(key))
        self.vectors_checked = checked
        if wrong:
            validation = msgspec.structs.replace(
                validation,
                passed=False,
                vectors_mismatched=wrong,
                errors=[
                    *validation.errors,
                    f"{len(wrong)} vector(s) not in the new encoding in their original field, "
                    "or a shadow field left"
                    if self.finish
                    else f"{len(wrong)} shadow vector(s) differ from the re-encoding of their "
                    "original",
                ],
            )
        validation = msgspec.structs.replace(
            validation, vectors_checked=validation.vectors_checked + checked
        )
        self.run.timed("validate", started)
        return validation

    def _report(self) -> ShadowReport:
        assert self.header is not None
        return ShadowReport(
            variant=self.reencode.variant,
            stage=self.header.stage,
            shadow_index=self.shadow,
            shadow_fields=[s.shadow_field for s in self.reencode.fields],
            capture="notifications" if self.sweep_reason is None else f"sweep: {self.sweep_reason}",
            counts=self.header.counts,
            writes_seen=self.writes_seen,
            gaps_swept=self.gaps,
            lag_at_cut_over=self.lag_at_cut_over,
            cut_over=self.released_by,
            waited_for_cut_over_seconds=round(self.waited, 3),
            mirrored_after_switch=self.after_switch,
            vectors_checked=self.vectors_checked,
            finish_started_by=self.finish_started_by,
            final_index=self.header.final_index,
            not_built=list(NOT_YET_BUILT),
        )


async def apply_online_reencode(
    run: Run,
    control: CutOverControl,
    *,
    timeout: float,
    poll: float,
    checkpoint_seconds: float,
) -> tuple[ValidationResult, ShadowReport]:
    """Run (or resume) the online re-encoding of ``run.plan``: see the module's doc."""
    stages = _OnlineReencode(
        run, control, timeout=timeout, poll=poll, checkpoint_seconds=checkpoint_seconds
    )
    return await stages.execute()


def as_built(plan: MigrationPlan) -> MigrationPlan:
    """``plan`` with the schema its run builds as the target: for an online re-encoding
    the shadow schema (the vector read from its shadow field), else ``plan`` itself."""
    if not isinstance(plan.mode, Online) or plan.mode.reencode is None:
        return plan
    if plan.mode.reencode.variant == "finish":
        return plan  # it ends on the target schema itself
    built = shadow_schema(plan.merged_target_schema, plan.mode.reencode)
    return msgspec.structs.replace(plan, merged_target_schema=built)


# --------------------------------------------------------------------------- operator


async def request_cut_over(client: aioredis.Redis, index_name: str) -> str:
    """Release a run waiting on a postponed cut-over of ``index_name``: sets the key it
    polls. Returns what will happen, in one sentence."""
    if await online.physical_name(client, index_name) is None:
        raise BadInputError(f"no index or alias named {index_name!r}")
    holder = LockHolder.decode(await client.get(lock_key(index_name)))
    request = msgspec.json.encode(
        {"requested_at": now_iso(), "host": socket.gethostname(), "by": "redismigrate cut-over"}
    )
    await client.set(cut_over_key(index_name), request, ex=CUT_OVER_REQUEST_SECONDS)
    if holder is None:
        return (
            f"cut-over of {index_name!r} requested; no run holds its lock now: an apply of "
            "the postponed plan switches as soon as the shadow index is ready (one that has "
            "switched goes on to finish without waiting for the new encoding)"
        )
    return (
        f"cut-over of {index_name!r} requested: the run of {holder.describe()} switches "
        "once the shadow index is built and the lag is near zero (if it has switched "
        "already, it goes on to finish without waiting for the application's first write "
        "in the new encoding)"
    )


# --------------------------------------------------------------------------- rollback


async def rollback_online_reencode(
    client: aioredis.Redis,
    plan: MigrationPlan,
    backup_dir: Path,
    *,
    timeout: float,
    poll: float,
) -> str:
    """Back to the source index with zero failed queries, then no shadow field left.

    Before the cut-over the shadow index is dropped (the name never left the source);
    after it the source schema is built under a new physical name and the name switched
    back in one MULTI/EXEC (aio/online.py ``reverse``). Then every shadow field is
    removed, guarded: only where it still holds what was read; after a cut-over only
    where it holds the re-encoding of the original (the application may have written a
    shadow of its own since: left, and ShadowFieldsLeft names those keys).
    """
    assert isinstance(plan.mode, Online) and plan.mode.reencode is not None
    path = progress_path(backup_dir, plan.source.index_name)
    header = read_progress(path)
    if header is not None and header.plan_hash != plan_hash(plan):
        raise BadInputError(f"{path} belongs to another plan than the one kept beside it")
    shadow = plan.mode.shadow_index
    behind = await online.physical_name(client, plan.target_index_name)
    serving: str | None = None
    restored = ""
    back = False
    if plan.mode.reencode.variant == "finish" and header is not None and header.switched:
        # a rollback killed after it switched the name back to the source schema: the
        # name stays there (moving it to a shadow-reading index again would fail every
        # query the application sends in the old encoding meanwhile)
        back = (
            behind is not None
            and behind not in (shadow, header.rollback_index, header.final_index)
            and await _serves_source(client, plan, behind)
        )
        serving, restored = await _finish_undone(
            client, plan, backup_dir, header, behind, back=back, timeout=timeout, poll=poll
        )
        behind = serving
    was_switched = (header is not None and header.switched) or behind == shadow
    if back:
        said = (
            f"the name {plan.source.index_name!r} serves the source schema again (as "
            f"{behind!r}, switched back by an earlier rollback)"
        )
    else:
        said = await online.reverse(client, plan, timeout=timeout, poll=poll, serving=serving)
    crash_point("rollback_reversed")
    said += restored
    specs = ShadowSpec.for_plan(plan)
    prefixes = list(plan.source.keyspace.prefixes)
    # a killed apply may have left notifications on: put the user's setting back
    capture = await ChangeCapture(client, prefixes).start()
    await capture.stop()
    wire = Wire(client, enabled=not await is_cluster(client))
    total = ShadowOutcome()
    try:
        async for keys in scan_prefixes(client, prefixes, "hash", BATCH):
            total.add(await remove_shadows(wire, keys, specs, only_our_encoding=was_switched))
            crash_point("rollback_unshadowing")
    finally:
        await wire.close()
    await client.delete(cut_over_key(plan.source.index_name))
    left = total.left + total.skipped
    said += f"; {total.removed:,} shadow field value(s) removed"
    if left:
        shown = ", ".join(repr(key_text(k)) for k in left[:LEFT_SHOWN])
        raise ShadowFieldsLeft(
            f"{said}, but {len(left):,} document(s) keep a shadow field the application wrote "
            f"or changed after the cut-over ({shown}): compare them with their original "
            "field and remove the shadow field where it is not needed, then run rollback again"
        )
    stamp = time.strftime("%Y%m%dT%H%M%S")
    if path.exists():
        path.rename(f"{path}.rolled-back-{stamp}")
    cut_over_flag_path(backup_dir, plan.source.index_name).unlink(missing_ok=True)
    return said


async def _finish_undone(
    client: aioredis.Redis,
    plan: MigrationPlan,
    backup_dir: Path,
    header: OnlineProgress,
    behind: str | None,
    *,
    back: bool = False,
    timeout: float,
    poll: float,
) -> tuple[str, str]:
    """The finish variant's stages after the first switch undone, back to where the
    name serves an index reading the shadow fields and every original is in the old
    encoding again: what ``online.reverse`` starts from. Returns that index and what was
    done (a clause of the rollback's sentence).

    After the second switch, every shadow is written again (a copy of its original) and
    the shadow schema built under a new name takes the name back first. Then the backed
    up originals are put back where the original still holds what the rewrite wrote,
    and an original the application wrote in the new encoding is turned back into the
    old one (exactly, for float types). The index serving meanwhile reads the shadows,
    which none of this touches: no query fails.

    ``back``: the name serves the source schema again already (``behind``, switched
    back by a rollback killed after that): it stays there, only the documents are
    checked again (which a rerun finds done, but for the shadows of originals the
    application wrote since, brought up to date so that their removal takes them)."""
    assert isinstance(plan.mode, Online) and plan.mode.reencode is not None
    path = progress_path(backup_dir, plan.source.index_name)
    specs = ShadowSpec.for_plan(plan)
    prefixes = list(plan.source.keyspace.prefixes)
    shadow = plan.mode.shadow_index
    wire = Wire(client, enabled=not await is_cluster(client))
    done: list[str] = []
    try:
        serving = behind or shadow
        if behind is not None and not back and behind not in (shadow, header.rollback_index):
            # the final index serves: shadows back, then a shadow index takes the name
            copied = ShadowOutcome()
            async for keys in scan_prefixes(client, prefixes, "hash", BATCH):
                copied.add(await sync_shadows(wire, keys, specs, None))
            serving = header.rollback_index or await _fresh_name(client, plan, shadow)
            header = msgspec.structs.replace(header, rollback_index=serving, updated_at=now_iso())
            write_progress(path, header)
            crash_point("rollback_shadows_written")
            if await online.physical_name(client, serving) != serving:
                await create_index(
                    client,
                    shadow_schema(plan.merged_target_schema, plan.mode.reencode),
                    index_name=serving,
                )
            await online.wait_until_caught_up(client, serving, behind, timeout=timeout, poll=poll)
            await online.cut_over(
                client,
                name=plan.target_index_name,
                new_name=plan.target_index_name,
                shadow=serving,
                aliases=plan.source.aliases,
            )
            crash_point("rollback_name_back")
            done.append(
                f"the shadow fields written again ({copied.written:,}) and read by {serving!r}, "
                "which took the name back from the final index"
            )
        elif header.final_index is not None:
            with contextlib.suppress(rexc.ResponseError):
                await execute(client, "FT.DROPINDEX", header.final_index)
        put_back = 0
        backup = VectorBackup.open(backup_dir, plan.source.index_name)
        if backup is not None:
            try:
                # newest first: where a key was backed up twice, its last original wins
                for frame in backup.iter_frames_newest_first():
                    for spec in specs:
                        column = frame.vectors.get(spec.source_field) or []
                        present = [
                            (key, value)
                            for key, value in zip(frame.keys, column, strict=True)
                            if value is not None and len(value) == spec.size
                        ]
                        if not present:
                            continue
                        originals = [bytes(v) for _, v in present]
                        encoded = reencode_bytes(originals, spec.encoding, spec.dims)
                        out = await guarded.restore(
                            wire,
                            [k for k, _ in present],
                            spec.document_field,
                            originals,
                            encoded,
                            capture=None,
                        )
                        put_back += out.written
                    crash_point("rollback_restoring")  # after each frame put back
            finally:
                backup.close()
        inverse = [inverse_encoding(spec.encoding) for spec in specs]
        returned = ShadowOutcome()
        resynced = ShadowOutcome()
        async for keys in scan_prefixes(client, prefixes, "hash", BATCH):
            returned.add(await return_originals(wire, keys, specs, inverse))
            # a write no run mirrored (the run was killed) left a shadow behind its original
            resynced.add(await sync_shadows(wire, keys, specs, None))
    finally:
        await wire.close()
    if returned.left or returned.skipped:
        stuck = returned.left + returned.skipped
        shown = ", ".join(repr(key_text(k)) for k in stuck[:LEFT_SHOWN])
        raise ShadowFieldsLeft(
            f"{len(stuck):,} document(s) hold a vector the application wrote in the new "
            f"encoding that cannot be turned back into the old one ({shown}); the name "
            f"still serves {serving!r} (the new encoding): rewrite those vectors in the old "
            "encoding, then run rollback again"
        )
    done.append(
        f"{put_back:,} original(s) put back from the backup, {returned.written:,} written by "
        "the application in the new encoding turned back into the old one, "
        f"{resynced.written:,} shadow(s) that lagged behind their original brought up to date"
    )
    return serving, "; " + "; ".join(done)


async def _serves_source(client: aioredis.Redis, plan: MigrationPlan, name: str) -> bool:
    """The index ``name`` has the plan's source schema."""
    try:
        live = await read_schema_and_stats(client, name)
    except IndexNotFound:
        return False
    return await online.source_matches(
        client, plan, live.comparable_to(plan.source.schema_snapshot)
    )


async def _fresh_name(client: aioredis.Redis, plan: MigrationPlan, taken: str) -> str:
    others = [
        OtherIndex(name=n, storage_type="hash", prefixes=[]) for n in await list_indexes(client)
    ]
    return shadow_name(plan.source.index_name, others, taken)
