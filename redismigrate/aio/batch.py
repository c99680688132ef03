"""Batch migrations: plan one patch across many indexes, apply them one after another."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import redis.asyncio as aioredis

from redismigrate.aio.aliases import assign_aliases
from redismigrate.aio.connection import AsyncRedisClient, connect
from redismigrate.aio.deployment import primaries_of
from redismigrate.aio.executor import AsyncMigrationExecutor, check_backup_dir
from redismigrate.aio.indexes import known_aliases, list_indexes, server_capabilities
from redismigrate.aio.ledger import cluster_route
from redismigrate.aio.lock import RunGuard
from redismigrate.aio.planner import AsyncMigrationPlanner
from redismigrate.aio.preflight import preflight
from redismigrate.aio.steps.state import ProgressCallback
from redismigrate.batch import (
    BatchIndexEntry,
    BatchIndexReport,
    BatchIndexState,
    BatchPlan,
    BatchReport,
    BatchState,
    BatchSummary,
    FailurePolicy,
    file_sha256,
    new_batch_id,
    overlap_conflicts,
    overlap_error,
    select_indexes,
)
from redismigrate.errors import BadInputError, RedisMigrateError
from redismigrate.files import read_text_file, write_document
from redismigrate.patch import SchemaPatch
from redismigrate.plan import MigrationPlan, now_iso
from redismigrate.preflight import PreflightBlocked
from redismigrate.progress import shown

BatchProgressCallback = Callable[[str, int, int, str], None]
FAILURE_POLICIES = ("fail_fast", "continue_on_error")


def _safe_file_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def load_batch_plan(path: str | Path) -> BatchPlan:
    """A batch plan with its per-index plan paths made absolute."""
    plan = BatchPlan.load(path)
    base = Path(path).resolve().parent
    entries = [
        msgspec.structs.replace(e, plan_path=str(base / e.plan_path))
        if e.plan_path is not None and not Path(e.plan_path).is_absolute()
        else e
        for e in plan.indexes
    ]
    return msgspec.structs.replace(plan, indexes=entries)


def check_plan_files(batch: BatchPlan) -> dict[str, MigrationPlan]:
    """Every applicable index's plan, checked against the checksum batch-plan recorded."""
    plans: dict[str, MigrationPlan] = {}
    for entry in batch.applicable:
        if entry.plan_path is None:
            raise BadInputError(f"batch plan entry {entry.name!r} has no plan_path")
        if not Path(entry.plan_path).is_file():
            raise BadInputError(f"plan file {entry.plan_path!r} of index {entry.name!r} is missing")
        if entry.plan_sha256 is not None and file_sha256(entry.plan_path) != entry.plan_sha256:
            raise BadInputError(
                f"plan file {entry.plan_path!r} of index {entry.name!r} was changed after "
                "batch-plan wrote it; run batch-plan again"
            )
        plans[entry.name] = MigrationPlan.load(entry.plan_path)
    return plans


class AsyncBatchMigrationPlanner:
    """Plans one shared patch against every selected index."""

    def __init__(self) -> None:
        """A batch planner holds no state; one can plan any number of batches."""

    async def create_batch_plan(
        self,
        *,
        redis_url: str | None = None,
        redis_client: AsyncRedisClient | None = None,
        pattern: str | None = None,
        indexes: list[str] | None = None,
        indexes_file: str | Path | None = None,
        schema_patch_path: str | Path | None = None,
        schema_patch: SchemaPatch | None = None,
        failure_policy: str = "fail_fast",
        plan_out: str | Path | None = None,
        plans_dir: str | Path | None = None,
        aliases: Sequence[str] = (),
        mode: str | None = None,
    ) -> BatchPlan:
        """Write a plan file per applicable index (or a skip_reason) and return the batch plan.

        ``mode`` (online or drop_recreate) is asked of every index's plan; by default each
        plan picks its own, as a single plan does.

        Refuses when two applicable indexes share keys (one prefix is a string prefix of
        the other). With ``plan_out``, the batch plan is written there and the per-index
        plans go beside it in ``<name>_plans/`` (or ``plans_dir``). Each of ``aliases``
        must point at one of the selected indexes; that index's plan moves it.
        """
        if failure_policy not in FAILURE_POLICIES:
            raise BadInputError(
                f"failure policy {failure_policy!r} is not one of {', '.join(FAILURE_POLICIES)}"
            )
        if (schema_patch_path is None) == (schema_patch is None):
            raise BadInputError("give exactly one of a schema patch file or a schema patch")
        patch = schema_patch or SchemaPatch.load(schema_patch_path)  # type: ignore[arg-type]
        if patch.source_index is not None:
            raise BadInputError(
                f"the schema patch is pinned to index {patch.source_index!r} (source_index); "
                "a batch patch must not be"
            )
        names = _selection_names(indexes, indexes_file)
        out = Path(plan_out) if plan_out is not None else None
        if plans_dir is not None:
            folder = Path(plans_dir)
        elif out is not None:
            folder = out.parent / f"{out.stem}_plans"
        else:
            folder = Path("batch_plans")
        planner = AsyncMigrationPlanner()
        async with connect(redis_url, redis_client) as client:
            await server_capabilities(client)
            online_names = await known_aliases(client)
            behind_alias = set(online_names.values())
            # an index reached through an alias is selected by the alias, the name users query
            available = [n for n in await list_indexes(client) if n not in behind_alias]
            chosen = select_indexes(
                sorted([*available, *online_names]), pattern=pattern, names=names
            )
            assigned = await assign_aliases(client, aliases, chosen)
            planned: list[tuple[BatchIndexEntry, MigrationPlan | None]] = []
            for name in chosen:
                plan = await planner.create_plan(
                    name,
                    redis_client=client,
                    schema_patch=patch,
                    overlap_checked_elsewhere=chosen,
                    aliases=assigned.get(name, ()),
                    mode=mode,
                )
                if plan.supported:
                    entry = BatchIndexEntry(
                        name=name,
                        applicable=True,
                        prefixes=plan.source.keyspace.prefixes,
                        lossy=any(vc.lossy for vc in plan.vector_changes),
                    )
                    planned.append((entry, plan))
                else:
                    reasons = "; ".join(str(b) for b in plan.diff_classification.blocked_reasons)
                    planned.append(
                        (BatchIndexEntry(name=name, applicable=False, skip_reason=reasons), None)
                    )
        conflicts = overlap_conflicts([entry for entry, _ in planned])
        if conflicts:
            raise overlap_error(conflicts)
        folder.mkdir(parents=True, exist_ok=True)
        entries = []
        for entry, planned_plan in planned:
            if planned_plan is not None:
                path = folder / f"{_safe_file_name(entry.name)}.yaml"
                planned_plan.dump(path)
                shown = (
                    str(path.resolve().relative_to(out.resolve().parent))
                    if out is not None and path.resolve().is_relative_to(out.resolve().parent)
                    else str(path.resolve())
                )
                entry = msgspec.structs.replace(
                    entry, plan_path=shown, plan_sha256=file_sha256(path)
                )
            entries.append(entry)
        policy: FailurePolicy = (
            "continue_on_error" if failure_policy == "continue_on_error" else ("fail_fast")
        )
        batch = BatchPlan(
            batch_id=new_batch_id(),
            mode=mode or "per_index",
            failure_policy=policy,
            requires_quantization=any(e.lossy for e in entries),
            shared_patch=patch,
            indexes=entries,
            created_at=now_iso(),
        )
        if out is not None:
            batch.dump(out)
        return batch


def _selection_names(
    indexes: list[str] | None, indexes_file: str | Path | None
) -> list[str] | None:
    if indexes is not None and indexes_file is not None:
        raise BadInputError("give exactly one of --pattern, --indexes or --indexes-file")
    if indexes_file is not None:
        text = read_text_file(indexes_file, what="indexes file")
        return [line.strip() for line in text.splitlines() if line.strip()]
    return indexes


@asynccontextmanager
async def _preflighted(
    client: aioredis.Redis,
    plans: dict[str, MigrationPlan],
    backup_dir: Path,
    allow_eviction: bool,
) -> AsyncIterator[None]:
    """Every index's preflight, before the batch takes a lock or touches anything."""
    for name, plan in plans.items():
        checked = await preflight(
            client, plan, "apply", backup_dir=backup_dir, allow_eviction=allow_eviction
        )
        try:
            checked.raise_if_blocked()
        except PreflightBlocked as exc:
            raise PreflightBlocked(f"index {name!r}: {exc}") from None
    yield


class AsyncBatchMigrationExecutor:
    """Applies a batch plan index by index, with a state file to resume from."""

    def __init__(self) -> None:
        """A batch executor holds no state; the state file holds a batch's progress."""

    async def apply(
        self,
        batch_plan: BatchPlan,
        *,
        batch_plan_path: str | Path,
        redis_url: str | None = None,
        redis_client: AsyncRedisClient | None = None,
        state_path: str | Path = "batch_state.yaml",
        report_dir: str | Path | None = None,
        backup_dir: str | Path | None = None,
        accept_data_loss: bool = False,
        batch_size: int = 500,
        progress_callback: BatchProgressCallback | None = None,
        step_callback: ProgressCallback | None = None,
        break_lock: bool = False,
        allow_eviction: bool = False,
        progress: bool = False,
    ) -> BatchReport:
        """Run every applicable index of ``batch_plan`` in order; write state after each.

        ``batch_plan_path`` is the file the plan was loaded from (the state file points
        at it, so batch-resume can find it). Lossy re-encoding needs ``accept_data_loss``.
        The batch holds the lock of every applicable index and of the backup directory
        for its whole run (``break_lock`` takes over other runs' index locks). Every
        index's preflight runs before the first is touched: PreflightBlocked when any
        check of any index blocks (``allow_eviction``: as for apply).

        ``progress_callback(name, position, of, status)`` is called as each index starts
        and ends; ``step_callback`` as its steps go (apply's ``progress_callback``).
        ``progress=True`` shows both: a line per index, a bar per step (as apply does).
        """
        state_file = Path(state_path)
        if state_file.exists():
            raise BadInputError(
                f"state file {str(state_file)!r} already exists; resume that batch with "
                "batch-resume, or pick another --state"
            )
        self._check_data_loss(batch_plan, accept_data_loss)
        directory = check_backup_dir(backup_dir)
        plans = check_plan_files(batch_plan)
        async with (
            connect(redis_url, redis_client) as client,
            _preflighted(client, plans, directory, allow_eviction),
            primaries_of(client) as cluster,
            RunGuard(
                client,
                command="batch-apply",
                index_name=batch_plan.batch_id,
                lock_names=[
                    n for p in plans.values() for n in (p.source.index_name, p.target_index_name)
                ],
                backup_dir=directory,
                break_lock=break_lock,
                ledger=False,
                route=cluster_route(cluster) if cluster is not None else None,
            ),
            shown(progress, step_callback, progress_callback) as reporting,
        ):
            reports = Path(report_dir) if report_dir is not None else directory / "reports"
            reports.mkdir(parents=True, exist_ok=True)
            state = BatchState(
                batch_id=batch_plan.batch_id,
                plan_path=str(Path(batch_plan_path).resolve()),
                plan_sha256=file_sha256(batch_plan_path),
                backup_dir=str(directory.resolve()),
                report_dir=str(reports.resolve()),
                started_at=now_iso(),
                updated_at=now_iso(),
                indexes=[
                    BatchIndexState(name=e.name, status="pending" if e.applicable else "skipped")
                    for e in batch_plan.indexes
                ],
            )
            write_document(state_file, state.to_dict())
            return await self._run(
                batch_plan, state, state_file, None, client, False, batch_size,
                reporting.indexes, reporting.steps, allow_eviction,
            )  # fmt: skip

    async def resume(
        self,
        *,
        state_path: str | Path,
        redis_url: str | None = None,
        redis_client: AsyncRedisClient | None = None,
        retry_failed: bool = False,
        accept_data_loss: bool = False,
        backup_dir: str | Path | None = None,
        batch_size: int = 500,
        progress_callback: BatchProgressCallback | None = None,
        step_callback: ProgressCallback | None = None,
        break_lock: bool = False,
        allow_eviction: bool = False,
        progress: bool = False,
    ) -> BatchReport:
        """Go on with a batch from its state file: pending and interrupted indexes, and with
        ``retry_failed`` the failed ones. Uses the backup directory the state records.
        Holds the same locks as ``apply``; progress is reported and shown as there."""
        state_file = Path(state_path)
        state = BatchState.load(state_file)
        if backup_dir is not None and Path(backup_dir).resolve() != Path(state.backup_dir):
            raise BadInputError(
                f"this batch keeps its backups in {state.backup_dir!r}; resume refuses "
                f"another directory ({str(backup_dir)!r})"
            )
        plan_file = Path(state.plan_path)
        if not plan_file.is_file():
            raise BadInputError(f"the batch plan {state.plan_path!r} of this state is missing")
        batch_plan = load_batch_plan(plan_file)
        if batch_plan.batch_id != state.batch_id or file_sha256(plan_file) != state.plan_sha256:
            raise BadInputError(
                f"state file {str(state_file)!r} belongs to batch {state.batch_id!r}, but "
                f"{state.plan_path!r} is now batch {batch_plan.batch_id!r} (or was changed)"
            )
        self._check_data_loss(batch_plan, accept_data_loss)
        plans = check_plan_files(batch_plan)
        async with (
            connect(redis_url, redis_client) as client,
            _preflighted(client, plans, Path(state.backup_dir), allow_eviction),
            primaries_of(client) as cluster,
            RunGuard(
                client,
                command="batch-resume",
                index_name=batch_plan.batch_id,
                lock_names=[
                    n for p in plans.values() for n in (p.source.index_name, p.target_index_name)
                ],
                backup_dir=state.backup_dir,
                break_lock=break_lock,
                ledger=False,
                route=cluster_route(cluster) if cluster is not None else None,
            ),
            shown(progress, step_callback, progress_callback) as reporting,
        ):
            state = BatchState.load(state_file)  # as the run that held the locks left it
            return await self._run(
                batch_plan, state, state_file, None, client, retry_failed, batch_size,
                reporting.indexes, reporting.steps, allow_eviction,
            )  # fmt: skip

    @staticmethod
    def _check_data_loss(batch_plan: BatchPlan, accept: bool) -> None:
        if batch_plan.requires_quantization and not accept:
            lossy = ", ".join(e.name for e in batch_plan.indexes if e.lossy)
            raise BadInputError(
                f"this batch re-encodes vectors lossily ({lossy}); pass --accept-data-loss "
                "to go ahead (the originals are kept in the backup directory)"
            )

    async def _run(
        self,
        batch_plan: BatchPlan,
        state: BatchState,
        state_file: Path,
        redis_url: str | None,
        redis_client: AsyncRedisClient | None,
        retry_failed: bool,
        batch_size: int,
        progress: BatchProgressCallback | None,
        steps: ProgressCallback | None,
        allow_eviction: bool = False,
    ) -> BatchReport:
        started = time.perf_counter()
        plans = check_plan_files(batch_plan)
        runnable = {"pending", "in_progress"} | ({"failed"} if retry_failed else set())
        todo = [e.name for e in state.indexes if e.status in runnable]
        executor = AsyncMigrationExecutor()
        durations: dict[str, float] = {}
        documents: dict[str, int] = {}
        async with connect(redis_url, redis_client) as client:
            for position, name in enumerate(todo, start=1):
                entry = state.entry(name)
                entry = msgspec.structs.replace(
                    entry,
                    status="in_progress",
                    started_at=now_iso(),
                    error=None,
                    attempts=entry.attempts + 1,
                )
                state = state.with_entry(entry)
                write_document(state_file, state.to_dict())
                if progress is not None:
                    progress(name, position, len(todo), "in_progress")
                began = time.perf_counter()
                report_path = Path(state.report_dir) / f"{_safe_file_name(name)}_report.yaml"
                try:
                    report = await executor.apply(
                        plans[name],
                        redis_client=client,
                        backup_dir=state.backup_dir,
                        batch_size=batch_size,
                        progress_callback=steps,
                        plan_path=next(e.plan_path for e in batch_plan.indexes if e.name == name),
                        allow_eviction=allow_eviction,
                    )
                    report.dump(report_path)
                    ok = report.succeeded
                    error = None if ok else (report.error or "validation failed")
                    documents[name] = report.documents
                except RedisMigrateError as exc:
                    ok, error = False, str(exc)
                durations[name] = round(time.perf_counter() - began, 3)
                entry = msgspec.structs.replace(
                    entry,
                    status="succeeded" if ok else "failed",
                    finished_at=now_iso(),
                    error=error,
                    report_path=str(report_path) if report_path.exists() else None,
                )
                state = state.with_entry(entry)
                write_document(state_file, state.to_dict())
                if progress is not None:
                    progress(name, position, len(todo), entry.status)
                if not ok and batch_plan.failure_policy == "fail_fast":
                    break
        return self._final_report(state, durations, documents, time.perf_counter() - started)

    @staticmethod
    def _final_report(
        state: BatchState, durations: dict[str, float], documents: dict[str, int], total: float
    ) -> BatchReport:
        entries = state.indexes
        succeeded = sum(e.status == "succeeded" for e in entries)
        failed = sum(e.status == "failed" for e in entries)
        unfinished = sum(e.status in ("pending", "in_progress") for e in entries)
        if failed == 0 and unfinished == 0:
            status = "completed"
        elif succeeded > 0:
            status = "partial_failure"
        else:
            status = "failed"
        report = BatchReport(
            batch_id=state.batch_id,
            status=status,  # type: ignore[arg-type]
            summary=BatchSummary(
                total_indexes=len(entries),
                successful=succeeded,
                failed=failed,
                skipped=sum(e.status == "skipped" for e in entries),
                total_duration_seconds=round(total, 3),
            ),
            indexes=[
                BatchIndexReport(
                    name=e.name,
                    status=e.status,
                    duration_seconds=durations.get(e.name),
                    documents=documents.get(e.name),
                    report_path=e.report_path,
                    error=e.error,
                )
                for e in entries
            ],
            started_at=state.started_at,
            completed_at=now_iso(),
        )
        report.dump(Path(state.report_dir) / "batch_report.yaml")
        return report
