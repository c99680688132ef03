"""The async executor: apply a plan with nothing lost, resume after a crash, undo on failure.

The executor holds the order of the steps and the phase bookkeeping; each step that
writes documents lives in ``aio/steps/`` with its undo beside it. drop_recreate:
check the live source and start change capture; back up every key and original vector
(steps/backup.py, while the source index still serves); check the new names are free;
drop the index definition; move keys (steps/prefix.py) and rename fields
(steps/fields.py) from the snapshot; re-encode vectors (steps/reencode.py); reconcile
what the application wrote meanwhile (steps/reconcile.py); create the target, wait for
it, point the aliases at it, validate. A progress header in the backup directory says
where a run is; running the same plan again resumes from there.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import redis.asyncio as aioredis
import redis.exceptions as rexc

from redismigrate.aio import aliases, online, reencode_online
from redismigrate.aio import throttle as throttle_io
from redismigrate.aio.capture import ChangeCapture, ClusterCapture
from redismigrate.aio.cluster import ClusterConnections, ClusterWire
from redismigrate.aio.connection import AsyncRedisClient, connect
from redismigrate.aio.deployment import primaries_of
from redismigrate.aio.fastwire import Wire
from redismigrate.aio.indexes import (
    create_index,
    drop_index,
    ft_info,
    read_schema_and_stats,
)
from redismigrate.aio.keys import (
    enumerate_keys,
    is_cluster,
    moved_key,
)
from redismigrate.aio.keyspace import count_documents_on
from redismigrate.aio.ledger import cluster_route, read_history
from redismigrate.aio.lock import RunGuard
from redismigrate.aio.preflight import (
    check_evictions,
    preflight,
    refuse_cluster,
    watch_evictions,
)
from redismigrate.aio.steps import backup as backup_step
from redismigrate.aio.steps import cluster as cluster_step
from redismigrate.aio.steps import fields as fields_step
from redismigrate.aio.steps import prefix as prefix_step
from redismigrate.aio.steps import reencode as reencode_step
from redismigrate.aio.steps.reconcile import Reconciler
from redismigrate.aio.steps.state import (
    BackupSet,
    ProgressCallback,
    Run,
    crash_point,
)
from redismigrate.aio.topology import describe_error
from redismigrate.aio.validate import validate_live
from redismigrate.backup import (
    RESTARTED_SUFFIX,
    STALE_SUFFIX,
    BackupField,
    BackupHeader,
    VectorBackup,
    backup_paths,
    backup_size_on_disk,
    new_manifest,
    read_manifest,
    set_aside,
    write_manifest,
)
from redismigrate.cluster import ClusterChanged
from redismigrate.cutover import cut_over_window_sentence
from redismigrate.errors import BadInputError, ConnectionFailed, IndexNotFound, RedisMigrateError
from redismigrate.files import write_document
from redismigrate.ftinfo import stats_from_ft_info
from redismigrate.integrity import check_plan, check_plan_copy, verify_backup_for_plan
from redismigrate.keytext import key_text
from redismigrate.ledger import LedgerEntry, unreportable_params
from redismigrate.memory import plan_memory
from redismigrate.plan import MigrationPlan, Online, now_iso, plan_hash, schema_hash
from redismigrate.progress import shown
from redismigrate.report import (
    Benchmark,
    MemoryUse,
    MigrationReport,
    StepTiming,
    ValidationResult,
)
from redismigrate.schema import IndexSchema
from redismigrate.throttle import check_max_rate

__all__ = [
    "AsyncMigrationExecutor",
    "BackupSet",
    "IndexNotReady",
    "ProgressCallback",
    "RollbackReport",
    "UndoConflicts",
    "check_backup_dir",
    "plan_copy_path",
    "resume_command",
]

INDEX_READY_TIMEOUT = 3600.0
# How often progress is made durable. A crash redoes at most this much work: backup
# batches are re-read from the intact source, re-encoded batches are rewritten from
# their original bytes (the same bytes again).
CHECKPOINT_SECONDS = 1.0


class IndexNotReady(RedisMigrateError):
    """The target index did not finish indexing in time."""


class UndoConflicts(RedisMigrateError):
    """An undo put everything back except documents the application changed since."""

    exit_code = 1


def check_backup_dir(backup_dir: str | Path | None) -> Path:
    """The backup directory, created if missing; BadInputError when it cannot be used."""
    if backup_dir is None or not str(backup_dir).strip():
        raise BadInputError("a backup directory is required (--backup-dir)")
    path = Path(backup_dir)
    if path.exists() and not path.is_dir():
        raise BadInputError(f"backup directory {str(path)!r} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot create backup directory {str(path)!r}: {exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise BadInputError(f"backup directory {str(path)!r} is not writable")
    return path


def _watched_prefixes(plan: MigrationPlan) -> list[str]:
    """Where the application's writes to the index's documents can land during a run."""
    prefixes = list(plan.source.keyspace.prefixes)
    change = plan.rename_operations.change_prefix
    if change is not None:
        prefixes.append(change.new)
    return prefixes


def _close_backups(run: Run) -> None:
    if run.backups is not None:
        with contextlib.suppress(RedisMigrateError, OSError):
            run.backups.close()


async def server_memory(
    servers: aioredis.Redis | ClusterConnections,
) -> tuple[int, int] | None:
    """INFO memory's ``used_memory`` and ``used_memory_dataset`` (None when refused);
    a cluster's: every primary's, added up."""
    clients = (
        list(servers.clients.values()) if isinstance(servers, ClusterConnections) else [servers]
    )
    used = dataset = 0
    try:
        for client in clients:
            info = await client.info("memory")
            used += int(info["used_memory"])
            dataset += int(info["used_memory_dataset"])
    except (rexc.RedisError, OSError, KeyError, ValueError):
        return None
    return used, dataset


def _best_effort(tick: ProgressCallback | None) -> ProgressCallback | None:
    """An undo's progress: a callback that fails (it may be what stopped the run) does not
    stop the undo."""
    if tick is None:
        return None

    def call(step: str, done: int, total: int | None) -> None:
        with contextlib.suppress(Exception):
            tick(step, done, total)

    return call


def plan_copy_path(backup_dir: Path, index_name: str) -> Path:
    """The copy of the plan kept beside its backup (rollback reads it)."""
    header = Path(backup_paths(backup_dir, index_name).header)
    return header.with_name(header.name.replace(".header.json", ".plan.yaml"))


def report_path(backup_dir: Path, index_name: str) -> Path:
    """Where apply keeps its report, beside the backup."""
    header = Path(backup_paths(backup_dir, index_name).header)
    return header.with_name(header.name.replace(".header.json", ".report.yaml"))


def rollback_report_path(backup_dir: Path, index_name: str) -> Path:
    """Where rollback keeps its report, beside the backup."""
    header = Path(backup_paths(backup_dir, index_name).header)
    return header.with_name(header.name.replace(".header.json", ".rollback.yaml"))


def _kept(report: MigrationReport, directory: Path) -> MigrationReport:
    """``report`` written beside its backup (a report it could not write says why)."""
    path = report_path(directory, report.source_index)
    kept = msgspec.structs.replace(report, report_file=str(path))
    try:
        kept.dump(path)
    except (OSError, RedisMigrateError) as exc:
        return msgspec.structs.replace(
            report, warnings=[*report.warnings, f"the report could not be written to {path}: {exc}"]
        )
    return kept


def resume_command(plan_path: str | None, backup_dir: Path) -> str:
    plan_arg = plan_path or "PLAN.yaml"
    return f"redismigrate apply --plan {plan_arg} --backup-dir {backup_dir} --url URL"


class AsyncMigrationExecutor:
    """Applies, validates and rolls back migration plans."""

    def __init__(
        self,
        *,
        index_ready_timeout: float = INDEX_READY_TIMEOUT,
        poll_interval: float = 0.05,
        checkpoint_seconds: float = CHECKPOINT_SECONDS,
    ) -> None:
        self.index_ready_timeout = index_ready_timeout
        self.poll_interval = poll_interval
        self.checkpoint_seconds = checkpoint_seconds

    async def apply(
        self,
        plan: MigrationPlan,
        *,
        redis_url: str | None = None,
        redis_client: AsyncRedisClient | None = None,
        backup_dir: str | Path | None = None,
        batch_size: int = 500,
        num_workers: int = 1,
        progress_callback: ProgressCallback | None = None,
        progress: bool = False,
        auto_rollback: bool = True,
        plan_path: str | None = None,
        force: bool = False,
        break_lock: bool = False,
        allow_eviction: bool = False,
        postpone_cut_over: bool = False,
        cut_over_flag: str | Path | None = None,
        max_rate: float | None = None,
        wait_for_writes: bool = True,
    ) -> MigrationReport:
        """Apply ``plan``; resume where an earlier run with the same plan stopped.

        Returns a report whose ``result`` is ``succeeded`` only when the migration
        finished and validated. A failure after the drop is undone unless
        ``auto_rollback`` is False. Raises BadInputError before touching anything when
        the plan is blocked, the backup directory is unusable, or the live source no
        longer matches the plan's snapshot. An online plan refuses to start when the
        shadow index would not fit under maxmemory, unless ``force``.

        The run holds the index's lock and the backup directory's for its whole life:
        MigrationLocked (naming the holder) while another run holds either;
        ``break_lock`` takes over another run's index lock (the report says so).

        The preflight runs first (topology, permissions, parameters, memory, eviction
        policy, disk): PreflightBlocked, before anything is written, when a check blocks.
        An evicting maxmemory-policy blocks unless ``allow_eviction``; any eviction
        during the run stops it and undoes it.

        An online plan that re-encodes hash vectors (aio/reencode_online.py) switches the
        name as soon as the shadow index is ready; with ``postpone_cut_over`` it keeps
        mirroring until `redismigrate cut-over` (``request_cut_over``) is run or the file
        ``cut_over_flag`` (default: beside the backup) appears. After the cut-over the
        ``finish`` variant waits for the application's first write in the new encoding
        (or another cut-over request) before it rewrites the originals; without
        ``wait_for_writes`` it goes on at once (an index nobody writes to).

        ``max_rate`` (documents a second) throttles the writes a run makes while the
        index serves (the online re-encoding's); `redismigrate throttle` (``set_max_rate``)
        changes it while the run goes, and the run backs off on its own while the
        server's PING round trip or memory crosses a limit. The report's ``throttle``
        says how long it waited. BadInputError, before anything is touched, unless it is
        None or positive.

        ``progress_callback(step, done, total)`` is called as each step goes: as it starts,
        per batch or poll, and last with ``done == total`` (``total`` None while unknown).
        ``progress=True`` shows the steps as they go, a bar each with its count, rate and
        time remaining, in a terminal or a Jupyter notebook (plain lines elsewhere).
        """
        check_plan(plan, source=plan_path)  # edited after review: refused, nothing touched
        if not plan.supported:
            reasons = "; ".join(str(b) for b in plan.diff_classification.blocked_reasons)
            raise BadInputError(f"the plan is blocked and cannot be applied: {reasons}")
        if batch_size < 1 or num_workers < 1:
            raise BadInputError("batch size and workers must be at least 1")
        check_max_rate(max_rate)
        directory = check_backup_dir(backup_dir)
        async with connect(
            redis_url, redis_client, max_connections=max(32, num_workers * 4)
        ) as client:
            checked = await preflight(
                client,
                plan,
                "apply",
                backup_dir=directory,
                allow_eviction=allow_eviction,
                backup_on_disk=backup_size_on_disk(directory, plan.source.index_name),
                force=force,
            )
            checked.raise_if_blocked()
            async with (
                _deployment(client, plan) as cluster,
                RunGuard(
                    client,
                    command="apply",
                    index_name=plan.source.index_name,
                    target_index=plan.target_index_name,
                    backup_dir=directory,
                    plan_hash=plan_hash(plan),
                    break_lock=break_lock,
                    source_params=unreportable_params(plan.source.schema_snapshot),
                    target_params=unreportable_params(plan.merged_target_schema),
                    route=cluster_route(cluster) if cluster is not None else None,
                ) as guard,
                shown(progress, progress_callback) as reporting,
            ):
                run = Run(
                    plan,
                    client,
                    directory,
                    batch_size,
                    num_workers,
                    reporting.steps,
                    throttle=throttle_io.Throttle(client, plan.source.index_name, max_rate),
                )
                await run.throttle.start()
                run.preflight = checked
                if cluster is not None:
                    run.cluster = cluster
                    run.wire = ClusterWire(cluster)
                else:
                    run.wire.enabled = not await is_cluster(client)
                run.memory_before = await server_memory(run.servers)
                report: MigrationReport | None = None
                failure: Exception | None = None
                async with anyio.create_task_group() as watchers:
                    watchers.start_soon(watch_evictions, run)
                    try:
                        report = await self._apply_body(
                            run,
                            force,
                            auto_rollback,
                            plan_path,
                            reencode_online.CutOverControl(
                                postpone=postpone_cut_over,
                                flag_file=Path(cut_over_flag) if cut_over_flag else None,
                                wait_for_writes=wait_for_writes,
                            ),
                        )
                    except Exception as exc:  # raised as it is, not in an exception group
                        failure = exc
                    finally:
                        watchers.cancel_scope.cancel()
                if failure is not None:
                    raise failure
                assert report is not None
                return guard.done(_kept(report, directory))

    async def _apply_body(
        self,
        run: Run,
        force: bool,
        auto_rollback: bool,
        plan_path: str | None,
        cut_over: reencode_online.CutOverControl,
    ) -> MigrationReport:
        try:
            if isinstance(run.plan.mode, Online):
                return await self._apply_online(run, force, cut_over)
            return await self._apply(run, plan_path)
        except BadInputError as exc:
            if not isinstance(exc, ConnectionFailed):  # a node lost mid-run: reported
                raise
            _close_backups(run)
            return await self._failed(run, exc, auto_rollback, plan_path)
        except Exception as exc:  # whatever failed after the drop is undone
            _close_backups(run)  # before an undo renames its files
            return await self._failed(run, exc, auto_rollback, plan_path)
        finally:
            _close_backups(run)  # a stopped run must not keep its files locked
            with anyio.CancelScope(shield=True):  # cleanup, also when cancelled
                await run.wire.close()

    async def _apply_online(
        self, run: Run, force: bool, cut_over: reencode_online.CutOverControl
    ) -> MigrationReport:
        plan, client = run.plan, run.client
        assert isinstance(plan.mode, Online)
        shadow = plan.mode.shadow_index
        write_document(plan_copy_path(run.backup_dir, plan.source.index_name), plan.to_dict())
        if plan.mode.reencode is not None:  # hash vectors, through shadow fields
            try:
                validation, done = await reencode_online.apply_online_reencode(
                    run,
                    cut_over,
                    timeout=self.index_ready_timeout,
                    poll=self.poll_interval,
                    checkpoint_seconds=self.checkpoint_seconds,
                )
            except (BadInputError, anyio.get_cancelled_exc_class()):
                raise
            except Exception as exc:  # nothing to undo: the originals were never touched
                return await self._report(
                    run,
                    "failed",
                    None,
                    error=f"{describe_error(run.halt or exc)} (online re-encoding: the "
                    "documents keep their original field; the progress header in the backup "
                    "directory says which stage it reached)",
                    next_steps=[
                        f"resume: {resume_command(None, run.backup_dir)}",
                        f"or roll back: redismigrate rollback --backup-dir {run.backup_dir} "
                        "--url URL",
                    ],
                )
            counts = done.counts
            run.reencoded = counts.backfilled + counts.swept + counts.mirrored
            run.ready_at = time.perf_counter()
            result = "succeeded" if validation.passed else "failed"
            report = await self._report(run, result, validation)
            return msgspec.structs.replace(report, online_reencode=done)
        switch_documents: int | None = None
        in_steps = run.cluster is not None  # the coordinator refuses FT.* inside MULTI
        cut_over_said: str | None = None
        if await online.physical_name(client, plan.target_index_name) == shadow:
            run.resumed = True  # switched already: check it
        elif (
            in_steps
            and await online.physical_name(client, plan.source.index_name) is None
            and await online.physical_name(client, shadow) == shadow
        ):
            # killed inside a cut-over made in steps, between the drop and the alias
            run.resumed = True
            started = time.perf_counter()
            steps = await online.cut_over_in_steps(
                client,
                name=plan.source.index_name,
                new_name=plan.target_index_name,
                shadow=shadow,
                aliases=plan.source.aliases,
                previous=plan.mode.previous_physical_index,
            )
            cut_over_said = cut_over_window_sentence(steps.order, steps.window_seconds)
            run.timed("cut_over", started)
        else:
            started = time.perf_counter()
            live = await self._live_schema(
                client, plan.source.index_name, like=plan.source.schema_snapshot
            )
            behind = await online.physical_name(client, plan.source.index_name)
            if (
                live is None
                or behind != plan.mode.previous_physical_index
                or not await online.source_matches(client, plan, live)
            ):
                raise BadInputError(
                    f"source schema mismatch: index {plan.source.index_name!r} changed since "
                    "the plan was made; run `redismigrate plan` again"
                )
            await aliases.check_before_drop(client, plan, moved_to=shadow if in_steps else None)
            if await online.physical_name(client, shadow) is None:
                await online.check_memory(client, plan, force=force)
                await create_index(client, plan.merged_target_schema, index_name=shadow)
            else:
                run.resumed = True
            run.timed("create", started)
            started = time.perf_counter()
            caught_up = await online.wait_until_caught_up(
                client,
                shadow,
                plan.source.index_name,
                timeout=self.index_ready_timeout,
                poll=self.poll_interval,
                tick=run.tick,
            )
            switch_documents = caught_up.num_docs + caught_up.hash_indexing_failures
            run.timed("indexing", started, switch_documents)
            started = time.perf_counter()
            if in_steps:
                steps = await online.cut_over_in_steps(
                    client,
                    name=plan.source.index_name,
                    new_name=plan.target_index_name,
                    shadow=shadow,
                    aliases=plan.source.aliases,
                    previous=plan.mode.previous_physical_index,
                )
                cut_over_said = cut_over_window_sentence(steps.order, steps.window_seconds)
            else:
                await online.cut_over(
                    client,
                    name=plan.source.index_name,
                    new_name=plan.target_index_name,
                    shadow=shadow,
                    aliases=plan.source.aliases,
                )
            run.timed("cut_over", started)
        if run.cluster is not None:
            await run.cluster.ensure_stable("at the end")
        started = time.perf_counter()
        validation = await validate_live(
            client,
            plan,
            None,
            documents_at_switch=switch_documents,
            servers=run.servers,
        )
        run.timed("validate", started)
        run.ready_at = time.perf_counter()
        report = await self._report(run, "succeeded" if validation.passed else "failed", validation)
        if cut_over_said is not None:
            report = msgspec.structs.replace(report, warnings=[*report.warnings, cut_over_said])
        return report

    async def validate(
        self,
        plan: MigrationPlan,
        *,
        redis_url: str | None = None,
        redis_client: AsyncRedisClient | None = None,
        backup_dir: str | Path | None = None,
    ) -> MigrationReport:
        """Check the live index against ``plan``; with ``backup_dir``, also sampled vectors."""
        backup = None
        if backup_dir is not None:
            backup = BackupSet.open(Path(backup_dir), plan.source.index_name)
        started_at = now_iso()
        started = time.perf_counter()
        async with connect(redis_url, redis_client) as client:
            await refuse_cluster(client)  # one shard's index says nothing of the others
            async with primaries_of(client) as cluster:
                # the application may have written since the migration: counted as it is now
                stats = plan.source.stats_snapshot
                validation = await validate_live(
                    client,
                    reencode_online.as_built(plan),  # online re-encoding: the shadow schema
                    backup,
                    documents_at_switch=stats.num_docs + stats.hash_indexing_failures,
                    servers=cluster,
                )
        seconds = round(time.perf_counter() - started, 4)
        return MigrationReport(
            mode="validate",
            result="succeeded" if validation.passed else "failed",
            source_index=plan.source.index_name,
            target_index=plan.target_index_name,
            plan_hash=plan_hash(plan),
            started_at=started_at,
            finished_at=now_iso(),
            backup_dir=str(backup_dir) if backup_dir is not None else None,
            timings=[StepTiming(step="validate", seconds=seconds)],
            total_seconds=seconds,
            vector_changes=plan.vector_changes,
            validation=validation,
            error=None if validation.passed else "; ".join(validation.errors),
            target_schema=plan.merged_target_schema,
        )

    # ------------------------------------------------------------------ the steps
    async def _apply(self, run: Run, plan_path: str | None) -> MigrationReport:
        started = time.perf_counter()
        if run.cluster is not None:
            await run.cluster.ensure_stable("before the first write")
        phase = await self._open_or_start(run)
        run.timed("check", started)
        # the application's writes are watched from before the first key is read
        prefixes = _watched_prefixes(run.plan)
        cluster = run.cluster
        capture = (
            ClusterCapture(cluster.clients, cluster.topology, prefixes)
            if cluster is not None
            else ChangeCapture(run.client, prefixes)
        )
        run.capture = await capture.start()
        try:
            return await self._apply_steps(run, phase)
        finally:
            with anyio.CancelScope(shield=True):  # the setting is put back, whatever happened
                await run.capture.stop()

    async def _apply_steps(self, run: Run, phase: str) -> MigrationReport:
        plan, client = run.plan, run.client
        if phase == "dump":
            if run.cluster is not None:  # SCAN on every primary, a shard each
                await cluster_step.back_up(run, run.cluster, self.checkpoint_seconds)
            else:
                await backup_step.back_up(run, await self._enumerate(run), self.checkpoint_seconds)
            phase = "ready"
        if phase == "ready":
            if run.cluster is not None:  # held still, and no new name taken
                await cluster_step.check_before_drop(run, run.cluster)
            else:
                await self._check_collisions(run)
            await check_evictions(run)
            crash_point("before_drop")
            started = time.perf_counter()
            run.dropped_at = time.perf_counter()
            if await self._live_schema(client, plan.source.index_name) is not None:
                await drop_index(client, aliases.source_index(plan))  # not via an alias
                crash_point("dropped_unrecorded")
            # else: a killed run dropped it just before it could say so
            run.set_phase("index_dropped")
            run.timed("drop", started)
            crash_point("after_drop")
            phase = "index_dropped"
        if run.dropped_at is None:
            run.dropped_at = time.perf_counter()
        rewrites = any(vc.rewrite_documents for vc in plan.vector_changes)
        if phase in ("index_dropped", "active"):
            if phase == "index_dropped":
                # renames run after the drop: no index answers with half-renamed documents
                if run.cluster is not None:  # across slots: DUMP, RESTORE, DEL
                    await cluster_step.move_keys(run)
                else:
                    await self._key_renames(run)
                await fields_step.rename(run, self._snapshot(run))
                run.set_phase("active")
            if rewrites:
                # Build the target while re-encoding: created without the initial scan,
                # it indexes each document as its new vector is written (and untouched
                # documents are touched), so no document is ever seen with old bytes.
                started = time.perf_counter()
                if await self._live_schema(client, plan.target_index_name) is None:
                    await create_index(client, plan.merged_target_schema, skip_initial_scan=True)
                run.timed("create", started)
            await reencode_step.reencode(
                run, touch=rewrites, checkpoint_seconds=self.checkpoint_seconds
            )
            phase = "completed"
        if phase != "validated":
            await self._reconcile(run, touch=rewrites)
        if phase == "completed":
            crash_point("before_create")
            started = time.perf_counter()
            if await self._live_schema(client, plan.target_index_name) is None:
                await create_index(client, plan.merged_target_schema)
                run.timed("create", started)  # (when re-encoding, created before it)
            run.set_phase("target_created")
            phase = "target_created"
        await self._wait_indexed(run)
        await self._rebuild_if_failures_grew(run)
        await check_evictions(run)
        await aliases.point_at_target(client, plan)  # the drop removed them from the source
        if run.cluster is not None:
            await run.cluster.ensure_stable("at the end")
        started = time.perf_counter()
        validation = await validate_live(
            client,
            plan,
            run.backups,
            written_during_run=self._written_during_run(run),
            live_documents=await self._live_documents(run),
            servers=run.servers,
        )
        run.timed("validate", started)
        await check_evictions(run)
        if validation.passed and run.header.phase != "validated":
            run.set_phase("validated")
        result = "succeeded" if validation.passed else "failed"
        error = None
        if run.concurrent is not None and run.concurrent.unreconciled:
            result = "failed"
            error = (
                f"{run.concurrent.unreconciled} document(s) the application wrote during the "
                "run could not be brought to the target's shape; they are listed under "
                "concurrent_writes.unreconciled_keys in the report"
            )
        return await self._report(run, result, validation, error=error)

    def _written_during_run(self, run: Run) -> Callable[[bytes], bool] | None:
        capture = run.capture
        quiet = capture is None or (
            capture.foreign_events == 0 and not run.skipped and not run.found_by_sweep
        )
        if quiet and (run.concurrent is None or not run.concurrent.keys_written):
            return None
        change = run.plan.rename_operations.change_prefix

        def written(key: bytes) -> bool:
            names = {key}
            if change is not None:
                names.add(moved_key(key, change.old, change.new))
            if capture is not None and not capture.complete:
                return True
            return any(
                n in run.skipped
                or n in run.found_by_sweep
                or (capture is not None and capture.written_by_application(n))
                for n in names
            )

        return written

    async def _live_documents(self, run: Run) -> int | None:
        """Documents under the target's prefixes now, when the application changed their
        number during the run (None: the snapshot's count holds)."""
        concurrent = run.concurrent
        if concurrent is None or not (concurrent.keys_written or concurrent.writes_seen):
            return None
        target = run.plan.merged_target_schema
        if target.index.options.filter is not None:
            return None
        return await count_documents_on(
            run.servers, target.index.prefixes, run.plan.source.keyspace.storage_type
        )

    async def _reconcile(self, run: Run, *, touch: bool) -> None:
        """Bring what the application wrote during the run to the target's shape."""
        started = time.perf_counter()
        assert run.backups is not None
        run.tick("reconcile", 0, None)
        reconciler = Reconciler(
            run.client,
            run.wire,
            run.plan,
            run.header.fields,
            run.capture,
            touch=touch,
            servers=run.servers,
        )
        reconciler.skipped = run.skipped
        reconciler.found_by_sweep = run.found_by_sweep
        sweep = "the run was resumed; writes made while no run was going were not seen"
        run.concurrent = await reconciler.run(sweep_reason=sweep if run.resumed else None)
        run.timed("reconcile", started, run.concurrent.keys_written)

    async def _rebuild_if_failures_grew(self, run: Run) -> None:
        """The target was built while writing; vectors the application wrote in the old
        encoding meanwhile failed to index before they were re-encoded, and the server
        never takes a failure back: build it again once, from what is stored now."""
        concurrent = run.concurrent
        if concurrent is None or not (concurrent.reencoded or concurrent.keys_written):
            return
        stats = await self._stats(run.client, run.plan.target_index_name)
        before = run.plan.source.stats_snapshot.hash_indexing_failures
        if stats is None or stats.hash_indexing_failures <= before:
            return
        started = time.perf_counter()
        await drop_index(run.client, run.plan.target_index_name)
        await create_index(run.client, run.plan.merged_target_schema)
        await self._wait_indexed(run)
        run.timed("rebuild", started)

    async def _open_or_start(self, run: Run) -> str:
        """Open the progress header of an earlier run, or check the source and start anew."""
        plan = run.plan
        wanted = plan_hash(plan)
        existing = BackupSet.open(run.backup_dir, plan.source.index_name)
        if existing is not None and existing.header.plan_hash != wanted:
            raise BadInputError(
                f"{run.backup_dir} holds the backup of a different plan for index "
                f"{plan.source.index_name!r}; use another --backup-dir, or remove it if "
                "that migration is finished"
            )
        live_source = await self._live_schema(
            run.client, plan.source.index_name, like=plan.source.schema_snapshot
        )
        # by its name: after an online migration that name is an alias of <name>__rm<n>
        source_matches = live_source is not None and aliases.source_matches(plan, live_source)
        if existing is not None:
            phase = existing.header.phase
            target_live = await self._live_schema(
                run.client, plan.target_index_name, like=plan.merged_target_schema
            )
            target_matches = target_live is not None and target_live.same_index_as(
                plan.merged_target_schema
            )
            if phase in ("dump", "ready") and source_matches:
                # the source still serves: redo the backup from the start (cheap, and
                # key order from the index cursor is not stable across runs)
                self._discard(run, existing)
            elif phase in ("dump", "ready") and not (phase == "ready" and live_source is None):
                existing.close()
                raise BadInputError(
                    f"source schema mismatch: index {plan.source.index_name!r} changed while "
                    f"its backup in {run.backup_dir} was being written; run `redismigrate plan` "
                    "again and use a fresh --backup-dir"
                )
            elif phase in ("completed", "target_created", "validated") and not target_matches:
                if source_matches:
                    self._discard(run, existing, stale=True)  # rolled back since: stale
                elif phase == "completed":
                    self._adopt(run, existing)
                    return phase
                else:
                    raise BadInputError(
                        f"the target index {plan.target_index_name!r} is missing or differs "
                        f"from the plan although the backup in {run.backup_dir} says it was "
                        "created; check `redismigrate index info`, or roll back"
                    )
            else:
                self._adopt(run, existing)
                return phase
        if not source_matches:
            if live_source is None:
                raise BadInputError(
                    f"source schema mismatch: index {plan.source.index_name!r} no longer "
                    "exists and no backup of this plan is in the backup directory"
                )
            raise BadInputError(
                f"source schema mismatch: index {plan.source.index_name!r} changed since the "
                "plan was made; run `redismigrate plan` again"
            )
        await aliases.check_before_drop(run.client, plan)
        if run.cluster is not None:  # a shard per primary, its manifest naming them
            started_in = await cluster_step.start_backup(run, run.cluster)
            write_document(plan_copy_path(run.backup_dir, plan.source.index_name), plan.to_dict())
            return started_in
        if plan.rename_operations.change_prefix is not None:
            await prefix_step.refuse_keys_under_new_prefix(
                run.client, plan.rename_operations.change_prefix
            )
        header = BackupHeader(
            format="redismigrate-vector-backup",
            index_name=plan.source.index_name,
            plan_hash=wanted,
            source_schema_hash=plan.source.schema_hash,
            target_schema_hash=schema_hash(plan.merged_target_schema),
            fields={
                vc.source_field: BackupField(
                    source_datatype=vc.source_datatype,
                    target_datatype=vc.target_datatype,
                    dims=vc.dims,
                    document_field=self._document_field(plan, vc.source_field),
                )
                for vc in plan.vector_changes
                if vc.rewrite_documents
            },
            batch_size=run.batch_size,
            phase="dump",
            dump_completed_batches=0,
            quantize_completed_batches=0,
            keys_backed_up=0,
            keys_reencoded=0,
            data_bytes=0,
            worker=None,
            created_at=now_iso(),
            updated_at=now_iso(),
        )
        main = VectorBackup.create(run.backup_dir, header)
        shards: list[VectorBackup] = []
        if run.workers > 1 and header.fields:
            manifest = new_manifest(plan.source.index_name, wanted, run.workers)
            shards = [
                VectorBackup.create(
                    run.backup_dir, msgspec.structs.replace(header, worker=shard.worker)
                )
                for shard in manifest.shards
            ]
            write_manifest(run.backup_dir, manifest)
        run.backups = BackupSet(main, shards)
        run.backup = main
        write_document(plan_copy_path(run.backup_dir, plan.source.index_name), plan.to_dict())
        return "dump"

    @staticmethod
    def _adopt(run: Run, existing: BackupSet) -> None:
        taken_on_cluster = _taken_on_a_cluster(run.backup_dir, run.plan.source.index_name)
        if taken_on_cluster != (run.cluster is not None):
            existing.close()
            where = "a Redis Cluster" if taken_on_cluster else "a single server"
            raise BadInputError(
                f"the backup of index {run.plan.source.index_name!r} in {run.backup_dir} was "
                f"taken on {where}; resume it against the deployment it was taken on"
            )
        run.backups, run.backup, run.resumed = existing, existing.main, True
        run.documents = existing.keys_backed_up

    @staticmethod
    def _document_field(plan: MigrationPlan, source_field: str) -> str:
        """The hash field holding ``source_field`` when the backup is read (after renames)."""
        for rename in plan.rename_operations.rename_fields:
            if rename.old_name == source_field:
                return rename.new_path
        field = plan.source.schema_snapshot.field(source_field)
        assert field is not None
        return field.path or field.name

    def _discard(self, run: Run, backup: BackupSet, *, stale: bool = False) -> None:
        index = run.plan.source.index_name
        # with the shards a run killed before it wrote its manifest left
        files = sorted(set(backup.files()) | set(cluster_step.shard_files(run.backup_dir, index)))
        backup.close()
        suffix = STALE_SUFFIX if stale else RESTARTED_SUFFIX  # one restarted copy at most
        set_aside(run.backup_dir, run.plan.source.index_name, files, suffix)

    async def _live_schema(
        self, client: aioredis.Redis, name: str, like: IndexSchema | None = None
    ) -> IndexSchema | None:
        """The live schema of ``name`` (None when there is no such index); with ``like``,
        what the server does not report (vector parameters) is taken from ``like``, so a
        comparison with it looks only at what the server reports."""
        try:
            described = await read_schema_and_stats(client, name)
        except IndexNotFound:
            return None
        return described.comparable_to(like) if like is not None else described.schema

    async def _stats(self, client: aioredis.Redis, name: str) -> Any:
        try:
            return stats_from_ft_info(await ft_info(client, name))
        except IndexNotFound:
            return None

    async def _stats_if_reachable(self, client: aioredis.Redis, name: str) -> Any:
        try:
            return await self._stats(client, name)
        except (rexc.RedisError, OSError):
            return None

    async def _enumerate(self, run: Run) -> Any:
        plan = run.plan
        stats = plan.source.stats_snapshot
        return enumerate_keys(
            run.client,
            plan.source.index_name,
            plan.source.keyspace.prefixes,
            plan.source.keyspace.storage_type,
            run.batch_size,
            # SCAN is cheaper than the index's cursor and sees failed documents too; an
            # index FILTER is the one thing SCAN cannot apply, so then the cursor is used
            use_scan=stats.hash_indexing_failures > 0
            or plan.source.schema_snapshot.index.options.filter is None,
        )

    def _snapshot(self, run: Run) -> Iterator[list[bytes]]:
        """The keys the backup enumerated before the drop, batch by batch."""
        assert run.backups is not None
        for frame in run.backups.iter_frames():
            yield frame.keys

    async def _check_collisions(self, run: Run) -> None:
        change = run.plan.rename_operations.change_prefix
        if change is None:
            return
        batches = await anyio.to_thread.run_sync(lambda: list(self._snapshot(run)))
        taken = await prefix_step.find_collisions(run.client, batches, change)
        prefix_step.refuse_collisions(taken, change)

    async def _key_renames(self, run: Run) -> None:
        """Move exactly the keys of the snapshot, each once (RENAMENX: never overwrites)."""
        change = run.plan.rename_operations.change_prefix
        if change is None:
            return
        started = time.perf_counter()
        moved = 0
        run.tick("key_renames", 0, run.documents or None)
        for keys in self._snapshot(run):
            moved += await prefix_step.move(run.client, keys, change, run.capture)
            run.tick("key_renames", moved, run.documents or None)
        run.keys_renamed += moved
        run.timed("key_renames", started, moved)

    async def _until_indexed(
        self,
        client: aioredis.Redis,
        name: str,
        tick: Callable[[int], None] | None = None,
    ) -> int:
        """Wait until ``name`` is fully indexed; returns its documents + failures."""
        deadline = time.monotonic() + self.index_ready_timeout
        while True:
            stats = stats_from_ft_info(await ft_info(client, name))
            total = stats.num_docs + stats.hash_indexing_failures
            if tick is not None:
                tick(total)
            if not stats.indexing and stats.percent_indexed >= 1.0:
                return total
            if time.monotonic() > deadline:
                raise IndexNotReady(
                    f"timeout waiting for index {name!r} to be ready: "
                    f"{stats.percent_indexed:.0%} indexed after {self.index_ready_timeout:g} s; "
                    "it keeps building in the background: run `redismigrate validate` later"
                )
            await anyio.sleep(self.poll_interval)

    async def _wait_indexed(self, run: Run) -> None:
        """Wait until the target is indexed. Its documents count as the step's items only
        when the index builds them by its own scan meanwhile; a target built while the
        re-encode wrote its documents is indexed already, and the wait only confirms it."""
        started = time.perf_counter()
        expected = run.plan.source.stats_snapshot.num_docs or None
        stats = await self._stats(run.client, run.plan.target_index_name)
        scanning = stats is not None and (stats.indexing or stats.percent_indexed < 1.0)
        if scanning:
            run.tick("indexing", 0, expected)
        total = await self._until_indexed(
            run.client,
            run.plan.target_index_name,
            lambda done: run.tick("indexing", done, expected),
        )
        run.ready_at = time.perf_counter()
        run.timed("indexing", started, total if scanning else 0)

    # ------------------------------------------------------------------ outcome
    async def _report(
        self,
        run: Run,
        result: str,
        validation: ValidationResult | None,
        *,
        error: str | None = None,
        undone: bool = False,
        next_steps: list[str] | None = None,
    ) -> MigrationReport:
        plan = run.plan
        total = time.perf_counter() - run.started
        end = run.ready_at or time.perf_counter()
        downtime = end - run.dropped_at if run.dropped_at is not None else 0.0
        after = await self._stats_if_reachable(run.client, plan.target_index_name)
        documents = run.documents or plan.source.stats_snapshot.num_docs
        files = [str(p) for p in run.backups.files()] if run.backups is not None else []
        return MigrationReport(
            mode=plan.mode.__struct_config__.tag,  # type: ignore[arg-type]
            result=result,  # type: ignore[arg-type]
            source_index=plan.source.index_name,
            target_index=plan.target_index_name,
            plan_hash=plan_hash(plan),
            started_at=run.started_at,
            finished_at=now_iso(),
            backup_dir=str(run.backup_dir),
            backup_files=files,
            resumed=run.resumed,
            documents=documents,
            vectors_reencoded=run.reencoded,
            keys_renamed=run.keys_renamed,
            documents_with_fields_renamed=run.fields_renamed,
            timings=run.timings,
            downtime_seconds=round(downtime, 4),
            total_seconds=round(total, 4),
            vector_changes=plan.vector_changes,
            validation=validation,
            target_schema=plan.merged_target_schema,
            benchmark=Benchmark(
                documents=documents,
                total_seconds=round(total, 4),
                downtime_seconds=round(downtime, 4),
                documents_per_second=round(documents / total, 1) if total > 0 else 0.0,
                index_size_before_mb=round(run.size_before, 4),
                index_size_after_mb=round(after.total_mb, 4) if after is not None else 0.0,
            ),
            warnings=[
                *plan.warnings,
                *(f"preflight {c.check}: {c.detail}" for c in run.preflight.warnings),
            ]
            if run.preflight is not None
            else plan.warnings,
            error=error,
            undone=undone,
            next_steps=next_steps or [],
            concurrent_writes=run.concurrent,
            malformed_vectors=run.malformed,
            malformed_vector_keys=run.malformed_keys,
            preflight=run.preflight.checks if run.preflight is not None else [],
            memory=await self._memory_use(run),
            throttle=run.throttle.report(),
        )

    async def _memory_use(self, run: Run) -> MemoryUse:
        """The memory model's figure for the plan, and the server's memory measured
        before and after the run (not for a resumed run: its "before" is not the start)."""
        model = plan_memory(run.plan, batch_size=run.batch_size)
        after = await server_memory(run.servers)
        before = run.memory_before
        if run.resumed or before is None or after is None:
            return MemoryUse(model_change_bytes=model.change)
        return MemoryUse(
            model_change_bytes=model.change,
            used_memory_before=before[0],
            used_memory_after=after[0],
            dataset_before=before[1],
            dataset_after=after[1],
        )

    async def _failed(
        self, run: Run, exc: BaseException, auto_rollback: bool, plan_path: str | None
    ) -> MigrationReport:
        if run.halt is not None:  # what stopped the run, not how its tasks ended
            exc = run.halt
        message = describe_error(exc)
        phase = run.backup.header.phase if run.backup is not None else "dump"
        after_drop = phase not in ("dump", "ready")
        resume = resume_command(plan_path, run.backup_dir)
        rollback = f"redismigrate rollback --backup-dir {run.backup_dir} --url URL --recreate-index"
        if not after_drop:
            return await self._report(
                run,
                "failed",
                None,
                error=f"{message} (stopped before the drop: the source index still serves)",
                next_steps=[f"resume: {resume}"],
            )
        # a lost connection or a changing cluster would fail the undo as well: left to a
        # resume (which reads the topology again) or a rollback
        unreachable = ConnectionFailed | rexc.ConnectionError | ClusterChanged
        if auto_rollback and not isinstance(exc, unreachable):
            try:
                await self._undo(
                    run.client,
                    run.plan,
                    run.backup_dir,
                    tick=_best_effort(run.progress),
                    cluster=run.cluster,
                )
            except (RedisMigrateError, rexc.RedisError, OSError) as undo_error:
                return await self._report(
                    run,
                    "failed",
                    None,
                    error=f"{message}; undoing it failed too: {undo_error}",
                    next_steps=[f"resume: {resume}", f"or roll back: {rollback}"],
                )
            return await self._report(
                run,
                "rolled_back",
                None,
                error=f"{message}; everything was put back as it was before the migration",
                undone=True,
            )
        return await self._report(
            run,
            "failed",
            None,
            error=f"{message} (stopped in phase {phase!r})",
            next_steps=[f"resume: {resume}", f"or roll back: {rollback}"],
        )

    # ------------------------------------------------------------------ undo / rollback
    async def _undo(
        self,
        client: aioredis.Redis,
        plan: MigrationPlan,
        backup_dir: Path,
        *,
        recreate_index: bool = True,
        tick: ProgressCallback | None = None,
        cluster: ClusterConnections | None = None,
    ) -> int:
        """Put documents, keys, fields and (optionally) the source index back as the plan
        found them; returns how many vector values were restored. Progress goes to
        ``tick`` (steps ``restore`` and ``indexing``). On ``cluster`` every primary's
        documents are put back (FT.* still goes to ``client``)."""
        # the whole backup checks out, and matches the plan, before anything is destroyed
        await anyio.to_thread.run_sync(verify_backup_for_plan, backup_dir, plan)
        if await self._target_not_source(client, plan, backup_dir):
            await drop_index(client, plan.target_index_name)
        backup = BackupSet.open(backup_dir, plan.source.index_name)
        restored = 0
        if backup is not None and cluster is not None:
            if not _taken_on_a_cluster(backup_dir, plan.source.index_name):
                backup.close()
                raise BadInputError(
                    f"the backup in {backup_dir} was taken on a single server; roll it back "
                    "against that server"
                )
            cluster_wire = ClusterWire(cluster)
            try:
                restored = await _undo_on_cluster(cluster_wire, plan, backup, tick)
            finally:
                await cluster_wire.close()
        elif backup is not None:
            wire = Wire(client, enabled=not await is_cluster(client))
            try:
                restored = await self._undo_documents(client, wire, plan, backup, tick)
            finally:
                await wire.close()
        if recreate_index and await self._live_schema(client, plan.source.index_name) is None:
            await create_index(client, plan.source.schema_snapshot)
            expected = plan.source.stats_snapshot.num_docs or None
            if tick is not None:
                tick("indexing", 0, expected)
            indexed = await self._until_indexed(
                client,
                plan.source.index_name,
                None if tick is None else lambda done: tick("indexing", done, expected),
            )
            if tick is not None and indexed != expected:
                tick("indexing", indexed, indexed)  # the end: done == total
        if recreate_index:
            await aliases.point_at_source(client, plan)
        if backup is not None:
            stamp = time.strftime("%Y%m%dT%H%M%S")
            files = backup.files()
            backup.close()
            for path in files:
                path.rename(f"{path}.rolled-back-{stamp}")
        return restored

    async def _target_not_source(
        self, client: aioredis.Redis, plan: MigrationPlan, backup_dir: Path
    ) -> bool:
        """Whether an index lives under the target's name and is not the source: by what
        the server reports; where source and target differ only in what it does not
        report (vector parameters), by whether the run got as far as dropping the source."""
        try:
            live = await read_schema_and_stats(client, plan.target_index_name)
        except IndexNotFound:
            return False
        source, target = plan.source.schema_snapshot, plan.merged_target_schema
        if not live.reports_same_index_as(source):
            return True
        if not live.reports_same_index_as(target) or source.same_index_as(target):
            return False
        # source and target differ only in what the server does not report: the backup
        # says whether the source was dropped yet (before that it still serves)
        backup = BackupSet.open(backup_dir, plan.source.index_name)
        if backup is None:
            return True
        phase = backup.header.phase
        backup.close()
        return phase not in ("dump", "ready")

    async def _undo_documents(
        self,
        client: aioredis.Redis,
        wire: Wire,
        plan: MigrationPlan,
        backup: BackupSet,
        tick: ProgressCallback | None = None,
    ) -> int:
        """From the snapshot in the backup: every key gets its name back, every vector the
        migration re-encoded its original bytes, every renamed field its old name.

        Guarded like every write of the migrator: a value the application wrote since is
        left as it is (listed in the error), a deleted document stays deleted. The first
        batch is read back afterwards to check the restore.
        """
        change = plan.rename_operations.change_prefix
        renames = [(r.new_path, r.old_path) for r in plan.rename_operations.rename_fields]
        fields = backup.header.fields
        changes = {vc.source_field: vc for vc in plan.vector_changes if vc.rewrite_documents}
        restored = 0
        conflicts: list[bytes] = []
        check: list[tuple[bytes, bytes, bytes]] = []
        keys_done, keys_total = 0, backup.keys_backed_up
        if tick is not None:
            tick("restore", 0, keys_total)
        for frame in backup.iter_frames():
            names = list(frame.keys)
            if change is not None:
                _, taken = await prefix_step.move_back(client, frame.keys, change, None)
                if taken:
                    conflicts.extend(taken)
                    left = set(taken)
                    names = [
                        moved_key(k, change.old, change.new)
                        if moved_key(k, change.old, change.new) in left
                        else k
                        for k in frame.keys
                    ]
            outcome, restored_here = await reencode_step.restore(
                wire, names, frame, fields, changes
            )
            restored += outcome.written
            conflicts.extend(outcome.skipped)
            if frame.batch == 0:
                check += restored_here
            conflicts.extend(await fields_step.rename_back(client, wire, plan, names))
            keys_done += len(frame.keys)
            if tick is not None:
                tick("restore", keys_done, keys_total)
        if tick is not None and keys_done != keys_total:
            tick("restore", keys_done, keys_done)  # the end: done == total
        if check:
            pipe = client.pipeline(transaction=False)
            for name, field_name, _ in check:
                target = name
                for new, old in renames:
                    if field_name == new.encode():
                        field_name = old.encode()
                pipe.hget(target, field_name)
            found = await pipe.execute()
            wrong = [
                name
                for (name, _, original), now in zip(check, found, strict=True)
                if now is not None and now != original
            ]
            if wrong:
                raise RedisMigrateError(
                    f"undo check failed: {len(wrong)} restored vector(s) do not hold their "
                    f"original bytes (for example {wrong[0]!r})"
                )
        if conflicts:
            shown = ", ".join(repr(key_text(k)) for k in conflicts[:5])
            raise UndoConflicts(
                f"{len(conflicts)} document(s) were changed by the application after the "
                f"migration wrote them and were left as the application left them ({shown}); "
                "everything else was put back"
            )
        return restored

    async def rollback(
        self,
        *,
        backup_dir: str | Path,
        redis_url: str | None = None,
        redis_client: AsyncRedisClient | None = None,
        index_name: str | None = None,
        recreate_index: bool = False,
        break_lock: bool = False,
        allow_eviction: bool = False,
        progress_callback: ProgressCallback | None = None,
        progress: bool = False,
    ) -> RollbackReport:
        """Restore every original vector byte from a backup, move keys and fields back and
        drop the target index definition; with ``recreate_index`` also recreate the source
        index from the plan's snapshot. Holds the same locks as apply (``break_lock``
        takes over another run's index lock). The preflight runs first, as for apply
        (PreflightBlocked before anything is changed). ``progress_callback`` and
        ``progress``: as for apply (steps ``restore`` and ``indexing``)."""
        directory = Path(backup_dir)
        if not directory.is_dir():
            raise BadInputError(f"backup directory {str(directory)!r} does not exist")
        name = index_name or _only_backup_in(directory)
        copy = plan_copy_path(directory, name)
        if copy.exists() and isinstance(MigrationPlan.load(copy).mode, Online):
            plan = MigrationPlan.load(copy)
            check_plan_copy(plan, copy)  # before anything is changed
            async with (
                connect(redis_url, redis_client) as client,
                _preflighted(client, plan, allow_eviction),
                _deployment(client, plan) as cluster,
                RunGuard(
                    client,
                    command="rollback",
                    index_name=name,
                    target_index=plan.target_index_name,
                    backup_dir=directory,
                    plan_hash=plan_hash(plan),
                    break_lock=break_lock,
                    source_params=unreportable_params(plan.source.schema_snapshot),
                    target_params=unreportable_params(plan.merged_target_schema),
                    route=cluster_route(cluster) if cluster is not None else None,
                ) as guard,
                shown(progress, progress_callback) as reporting,
            ):
                undo = (
                    reencode_online.rollback_online_reencode(
                        client,
                        plan,
                        directory,
                        timeout=self.index_ready_timeout,
                        poll=self.poll_interval,
                    )
                    if isinstance(plan.mode, Online) and plan.mode.reencode is not None
                    else online.reverse(
                        client,
                        plan,
                        timeout=self.index_ready_timeout,
                        poll=self.poll_interval,
                        tick=reporting.steps,
                        in_steps=cluster is not None,
                    )
                )
                said = await undo
            copy.rename(f"{copy}.rolled-back-{time.strftime('%Y%m%dT%H%M%S')}")
            return _kept_rollback(
                RollbackReport(
                    index_name=name,
                    vectors_restored=0,
                    index_recreated=True,
                    finished_at=now_iso(),
                    summary=said,
                    warnings=guard.warnings,
                ),
                directory,
            )
        if VectorBackup.open(directory, name) is None or not copy.exists():
            raise BadInputError(f"no backup of index {name!r} to roll back in {str(directory)!r}")
        plan = MigrationPlan.load(copy)
        verify_backup_for_plan(directory, plan)  # before the lock, the drop, any restore
        async with (
            connect(redis_url, redis_client) as client,
            _preflighted(client, plan, allow_eviction),
            _deployment(client, plan) as cluster,
            RunGuard(
                client,
                command="rollback",
                index_name=name,
                target_index=plan.target_index_name,
                backup_dir=directory,
                plan_hash=plan_hash(plan),
                break_lock=break_lock,
                source_params=unreportable_params(plan.source.schema_snapshot),
                target_params=unreportable_params(plan.merged_target_schema),
                route=cluster_route(cluster) if cluster is not None else None,
            ) as guard,
            shown(progress, progress_callback) as reporting,
        ):
            if cluster is not None:
                await cluster.ensure_stable("before the rollback")
            restored = await self._undo(
                client,
                plan,
                directory,
                recreate_index=recreate_index,
                tick=reporting.steps,
                cluster=cluster,
            )
        return _kept_rollback(
            RollbackReport(
                index_name=name,
                vectors_restored=restored,
                index_recreated=recreate_index,
                finished_at=now_iso(),
                warnings=guard.warnings,
            ),
            directory,
        )

    async def history(
        self,
        *,
        redis_url: str | None = None,
        redis_client: AsyncRedisClient | None = None,
        index_name: str | None = None,
        limit: int | None = None,
    ) -> list[LedgerEntry]:
        """The runs the migration ledger recorded, newest first (only ``index_name``'s when
        given): command, index, plan hash, start, end, status, host, pid, backup dir."""
        async with connect(redis_url, redis_client) as client, primaries_of(client) as cluster:
            route = cluster_route(cluster) if cluster is not None else client
            return await read_history(route, index_name=index_name, limit=limit)

    async def request_cut_over(
        self,
        index_name: str,
        *,
        redis_url: str | None = None,
        redis_client: AsyncRedisClient | None = None,
    ) -> str:
        """Release the postponed cut-over of an online re-encoding of ``index_name``: the
        run waiting on it switches the name once the shadow index is built and the lag
        is near zero (a run started later switches as soon as it can). Returns what
        will happen, in one sentence; BadInputError when no such index exists."""
        async with connect(redis_url, redis_client) as client:
            return await reencode_online.request_cut_over(client, index_name)

    async def set_max_rate(
        self,
        index_name: str,
        max_rate: float | None,
        *,
        redis_url: str | None = None,
        redis_client: AsyncRedisClient | None = None,
    ) -> str:
        """Set the max rate (documents a second; None: no limit) of the runs on
        ``index_name``: a running one follows it within about a second, a later one
        started without ``max_rate`` starts with it (kept three days). Returns what will
        happen, in one sentence; BadInputError when the rate is not positive (before
        connecting) or no index or alias has that name."""
        check_max_rate(max_rate)
        async with connect(redis_url, redis_client) as client:
            return await throttle_io.set_max_rate(client, index_name, max_rate)


class RollbackReport(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a rollback did; kept beside the backup as ``<backup>.rollback.yaml``."""

    version: int = 1
    index_name: str
    vectors_restored: int
    index_recreated: bool
    finished_at: str
    summary: str = ""
    warnings: list[str] = []
    report_file: str | None = None


def _kept_rollback(report: RollbackReport, directory: Path) -> RollbackReport:
    path = rollback_report_path(directory, report.index_name)
    kept = msgspec.structs.replace(report, report_file=str(path))
    try:
        write_document(path, msgspec.to_builtins(kept))
    except (OSError, RedisMigrateError) as exc:
        return msgspec.structs.replace(
            report, warnings=[*report.warnings, f"the report could not be written to {path}: {exc}"]
        )
    return kept


async def _undo_on_cluster(
    wire: ClusterWire, plan: MigrationPlan, backup: BackupSet, tick: ProgressCallback | None
) -> int:
    """``cluster_step.undo_documents`` with progress; UndoConflicts naming the documents
    the application changed since (left as it left them)."""
    total = backup.keys_backed_up
    if tick is not None:
        tick("restore", 0, total)
    undone = await cluster_step.undo_documents(wire, plan, backup)
    if tick is not None:
        tick("restore", total, total)
    if undone.conflicts:
        shown = ", ".join(repr(key_text(k)) for k in undone.conflicts[:5])
        raise UndoConflicts(
            f"{len(undone.conflicts)} document(s) were changed by the application after the "
            f"migration wrote them and were left as the application left them ({shown}); "
            "everything else was put back"
        )
    return undone.restored


@contextlib.asynccontextmanager
async def _deployment(
    client: aioredis.Redis, plan: MigrationPlan
) -> AsyncIterator[ClusterConnections | None]:
    """The cluster's primaries (None: a single server), once ``plan`` is one a run on
    them can carry out (before any lock is taken)."""
    async with primaries_of(client) as cluster:
        if cluster is not None:
            refuse_on_a_cluster(plan)
        yield cluster


@contextlib.asynccontextmanager
async def _preflighted(
    client: aioredis.Redis, plan: MigrationPlan, allow_eviction: bool
) -> AsyncIterator[None]:
    """A rollback's preflight, before it takes a lock or changes anything."""
    checked = await preflight(client, plan, "rollback", allow_eviction=allow_eviction)
    checked.raise_if_blocked()
    yield


def refuse_on_a_cluster(plan: MigrationPlan) -> None:
    """BadInputError for what a run on a Redis Cluster cannot do yet (nothing touched)."""
    if isinstance(plan.mode, Online) and plan.mode.reencode is not None:
        raise BadInputError(
            "the plan re-encodes online, which redismigrate does not do on a Redis Cluster "
            "yet; plan again with --mode drop_recreate"
        )
    if writes_documents_of(plan) and plan.source.schema_snapshot.index.options.filter:
        raise BadInputError(
            "the index has a FILTER, so on a Redis Cluster its documents cannot be told from "
            "the other keys under its prefixes (each primary is read with SCAN); not "
            "supported there yet"
        )


def writes_documents_of(plan: MigrationPlan) -> bool:
    """Whether applying ``plan`` rewrites documents (not only the index definition)."""
    return (
        bool(plan.rename_operations.rename_fields)
        or plan.rename_operations.change_prefix is not None
        or any(vc.rewrite_documents for vc in plan.vector_changes)
    )


def _taken_on_a_cluster(backup_dir: Path, index_name: str) -> bool:
    """Whether the backup of ``index_name`` in ``backup_dir`` has a shard per primary."""
    path = Path(backup_paths(backup_dir, index_name).manifest)
    return path.exists() and read_manifest(path).nodes is not None


def _only_backup_in(directory: Path) -> str:
    copies = sorted(directory.glob("migration_backup_*.plan.yaml"))
    if not copies:
        raise BadInputError(f"no backup to roll back in {str(directory)!r}")
    names = [MigrationPlan.load(copy).source.index_name for copy in copies]
    if len(names) != 1:
        found = ", ".join(repr(n) for n in names) or "none"
        raise BadInputError(
            f"{str(directory)!r} holds {len(names)} backups ({found}); name one with --index"
        )
    return names[0]
