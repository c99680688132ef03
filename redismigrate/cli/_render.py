"""Rich renderings of library results."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from redismigrate.aio.indexes import IndexDescription
from redismigrate.batch import BatchPlan, BatchReport, BatchState
from redismigrate.commands import index_commands, shell_line
from redismigrate.estimate import MigrationEstimate
from redismigrate.ftinfo import IndexStats
from redismigrate.memory import mb, memory_sentence
from redismigrate.plan import MigrationPlan, Online
from redismigrate.preflight import Preflight, PreflightCheck
from redismigrate.report import MemoryUse, MigrationReport
from redismigrate.schema import (
    IndexSchema,
    UnreportedAttribute,
    VectorField,
    non_default_builtins,
    type_name,
    vector_attrs_dict,
)
from redismigrate.throttle import ThrottleReport, rate_text
from redismigrate.urls import redact_url

if TYPE_CHECKING:
    from redismigrate.server import DetachedServer


def index_list_table(described: list[IndexDescription]) -> Table:
    table = Table(title=f"{len(described)} index(es)")
    table.add_column("#", justify="right")
    table.add_column("index")
    table.add_column("queried as (alias)")
    table.add_column("storage")
    table.add_column("docs", justify="right")
    for position, d in enumerate(described, start=1):
        table.add_row(
            str(position),
            d.schema.name,
            ", ".join(d.aliases),
            d.schema.storage_type,
            f"{d.stats.num_docs:,}",
        )
    return table


def server_lines(servers: Sequence[DetachedServer]) -> list[str]:
    """One line per server (a table would fold the folder's path)."""
    lines = [f"{len(servers)} server(s) started by redismigrate:"]
    for s in servers:
        started = "?"
        if s.info.started_at:
            when = datetime.fromisoformat(s.info.started_at).astimezone()
            started = when.strftime("%Y-%m-%d %H:%M:%S")
        answers = "answers" if s.answering else "NOT ANSWERING (the process is alive)"
        lines.append(
            f"  {s.info.url}  pid {s.info.pid}  {answers}  started {started}  folder {s.info.dir}"
        )
    return lines


def _attrs_text(attrs: dict[str, object]) -> str:
    parts = []
    for key, value in attrs.items():
        parts.append(key if value is True else f"{key}={value}")
    return ", ".join(parts)


def print_index(
    console: Console,
    schema: IndexSchema,
    stats: IndexStats,
    aliases: list[str] | None = None,
    unreported: list[UnreportedAttribute] | None = None,
) -> None:
    head = Table(title=f"Index {schema.name!r}", show_header=False)
    head.add_column("setting")
    head.add_column("value")
    if aliases:
        head.add_row("queried as (alias)", ", ".join(aliases))
    head.add_row("storage", schema.storage_type)
    head.add_row("prefixes", ", ".join(repr(p) for p in schema.prefixes))
    options = non_default_builtins(schema.index.options)
    stopwords = options.pop("stopwords", None)
    if options:
        head.add_row("options", _attrs_text(options))
    if stopwords is not None:
        head.add_row("stopwords", ", ".join(stopwords) if stopwords else "none")
    head.add_row("documents", f"{stats.num_docs:,}")
    head.add_row("indexing failures", f"{stats.hash_indexing_failures:,}")
    head.add_row(
        "indexing",
        f"{stats.percent_indexed:.0%}" + (" (in progress)" if stats.indexing else ""),
    )
    head.add_row("vector index size", f"{stats.vector_index_mb:.2f} MB")
    head.add_row("index memory", f"{stats.total_mb:.2f} MB")
    console.print(head)

    fields = Table(title="Fields")
    fields.add_column("name")
    fields.add_column("type")
    fields.add_column("path")
    fields.add_column("attributes")
    missing = {(u.field, u.attribute): u for u in unreported or []}
    for field in schema.fields:
        if isinstance(field, VectorField):
            attrs = vector_attrs_dict(field.attrs)
            for name in attrs:
                if (field.name, name) in missing:
                    attrs[name] = f"{attrs[name]}*"
        else:
            attrs = non_default_builtins(field.attrs)
        fields.add_row(field.name, type_name(field), field.path or "", _attrs_text(attrs))
    console.print(fields)
    if missing:
        console.print("* not reported by the server (FT.INFO leaves it out, FT.DEBUG refused):")
        for item in missing.values():
            if item.recorded is not None:
                where = f"{item.recorded}, as recorded by {item.recorded_by}"
            elif item.attribute == "initial_cap":
                where = "unknown (no server reports it); shown as not set"
            else:
                where = "unknown; the server's default is shown"
            console.print(
                f"  {item.field}.{item.attribute}: {where}", markup=False, highlight=False
            )


def print_plan_summary(console: Console, plan: MigrationPlan, path: object) -> None:
    console.print(f"Migration plan written to {path}")
    console.print(f"Index: {plan.source.index_name} -> {plan.target_index_name}")
    mode = str(plan.mode.__struct_config__.tag)
    if isinstance(plan.mode, Online) and plan.mode.reencode is not None:
        mode += f" ({plan.mode.reencode.variant}: hash vectors re-encoded into shadow fields)"
    console.print(f"Mode: {mode}", markup=False, highlight=False)
    if plan.source.physical_index:
        console.print(f"({plan.source.index_name!r} is an alias of {plan.source.physical_index!r})")
    console.print(f"Supported: {plan.supported}")
    if plan.diff_classification.blocked_reasons:
        console.print("Blocked:")
        for blocked in plan.diff_classification.blocked_reasons:
            console.print(f"  - {blocked}", markup=False, highlight=False)
    for change in plan.vector_changes:
        encoding = change.encoding.__struct_config__.tag if change.encoding else "none"
        console.print(
            f"Vector {change.field!r}: {change.dims} dims, {change.source_datatype} -> "
            f"{change.target_datatype} ({encoding})",
            markup=False,
            highlight=False,
        )
    if plan.warnings:
        console.print("Warnings:")
        for warning in plan.warnings:
            console.print(f"  - {warning}", markup=False, highlight=False)


def human_bytes(n: float) -> str:
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{sign}{n / size:,.2f} {unit}"
    return f"{sign}{int(n)} bytes"


def print_estimate(console: Console, estimate: MigrationEstimate) -> None:
    console.print(f"Estimate for index {estimate.index_name!r} ({estimate.documents:,} documents)")
    for field in estimate.vector_fields:
        console.print(
            f"  vector {field.field!r}: {field.dims} dims, {field.source_datatype} -> "
            f"{field.target_datatype}"
            + ("" if field.rewrite_documents else " (JSON: documents not rewritten)"),
            markup=False,
            highlight=False,
        )
        if field.quality is not None:
            q = field.quality
            console.print(
                f"    recall@{q.k} ({q.metric}, {q.sample_size:,} stored vectors, "
                f"{q.queries} queries): {q.recall_before:.3f} before, {q.recall_after:.3f} after",
                markup=False,
                highlight=False,
            )
    console.print(f"  Vector backup on disk:      {human_bytes(estimate.backup_disk_bytes)}")
    console.print(f"  RDB snapshot (BGSAVE):      {human_bytes(estimate.rdb_snapshot_bytes)}")
    if estimate.aof_enabled:
        console.print(f"  AOF growth:                 {human_bytes(estimate.aof_growth_bytes)}")
    else:
        console.print("  AOF growth:                 not estimated (pass --aof-enabled)")
    console.print(f"  Total new disk:             {human_bytes(estimate.total_new_disk_bytes)}")
    if estimate.memory is not None:
        console.print(f"  {memory_sentence(estimate.memory)}", markup=False, highlight=False)
    else:
        change = estimate.memory_change_bytes
        verb = "frees" if change < 0 else "takes"
        console.print(f"  Memory after the migration: {verb} about {mb(abs(change))}")
    for note in estimate.notes:
        console.print(f"  Note: {note}", markup=False, highlight=False)


_MARKS = {
    "pass": "[green]pass[/green]",
    "warn": "[yellow]warn[/yellow]",
    "block": "[red]BLOCK[/red]",
}


def print_preflight(console: Console, checks: Preflight | list[PreflightCheck]) -> None:
    """The preflight checklist: one line per check."""
    lines = checks.checks if isinstance(checks, Preflight) else checks
    if not lines:
        return
    console.print("Preflight:")
    for check in lines:
        console.print(f"  {_MARKS[check.status]}  {check.check}: ", end="")
        console.print(check.detail, markup=False, highlight=False)


def memory_line(memory: MemoryUse) -> str:
    """The memory model's figure for a run, and the change the run measured."""
    change = memory.model_change_bytes
    text = f"Memory: {'frees' if change < 0 else 'takes'} about {mb(abs(change))} (model)"
    measured = memory.measured_change_bytes
    if measured is not None and memory.dataset_before is not None:
        assert memory.dataset_after is not None
        text += (
            f"; measured {'-' if measured < 0 else '+'}{mb(abs(measured))} "
            f"(used_memory_dataset {mb(memory.dataset_before)} -> {mb(memory.dataset_after)})"
        )
    return text


def throttle_line(throttle: ThrottleReport) -> str:
    """How a run was throttled, in one line."""
    if throttle.max_rate is None:
        line = "Throttle: no max rate"
    else:
        line = f"Throttle: max rate {rate_text(throttle.max_rate)} ({throttle.set_by})"
    if throttle.final_rate != throttle.max_rate:
        line += f", {rate_text(throttle.final_rate)} at the end"
    line += f"; waited {throttle.throttled_seconds:,.2f} s"
    if throttle.backoffs:
        line += (
            f", {throttle.backoff_seconds:,.2f} s of it backing off ({throttle.backoffs} "
            f"back-off(s); last: {throttle.backoff_reason})"
        )
    return line


def print_report(console: Console, report: MigrationReport) -> None:
    print_preflight(console, report.preflight)
    console.print(f"Result: {report.result}")
    if report.malformed_vectors:
        shown = ", ".join(repr(k) for k in report.malformed_vector_keys[:5])
        console.print(
            f"Left as they were: {report.malformed_vectors:,} document(s) whose vector has "
            f"another byte length than its field's (e.g. {shown}; all listed in the report "
            "under malformed_vector_keys)",
            markup=False,
            highlight=False,
        )
    if report.error:
        console.print(f"Error: {report.error}", markup=False, highlight=False)
    if report.timings:
        table = Table(title="Steps")
        table.add_column("step")
        table.add_column("seconds", justify="right")
        table.add_column("items", justify="right")
        table.add_column("per second", justify="right")
        for timing in report.timings:
            rate = timing.per_second  # none for a step without items or too short
            table.add_row(
                timing.step,
                f"{timing.seconds:.3f}",
                f"{timing.items:,}" if timing.items else "",
                f"{rate:,.0f}" if rate is not None else "",
            )
        console.print(table)
        console.print(
            f"Total {report.total_seconds:.2f} s, downtime {report.downtime_seconds:.2f} s, "
            f"{report.documents:,} documents"
        )
    if report.memory is not None:
        console.print(memory_line(report.memory), markup=False, highlight=False)
    if report.throttle is not None:
        console.print(throttle_line(report.throttle), markup=False, highlight=False)
    if report.validation is not None:
        v = report.validation
        console.print(
            f"Validation: {'passed' if v.passed else 'FAILED'} (schema "
            f"{'matches' if v.schema_match else 'differs'}, documents {v.target_documents:,}/"
            f"{v.source_documents:,}, vectors checked {v.vectors_checked})"
        )
        for error in v.errors:
            console.print(f"  - {error}", markup=False, highlight=False)
    if report.online_reencode is not None:
        print_online_reencode(console, report)
    for step in report.next_steps:
        console.print(f"Next: {step}", markup=False, highlight=False)


def print_online_reencode(console: Console, report: MigrationReport) -> None:
    """What an online re-encoding did, stage by stage."""
    done = report.online_reencode
    assert done is not None
    c = done.counts
    waited = (
        f" after {done.waited_for_cut_over_seconds:,.1f} s"
        if done.waited_for_cut_over_seconds
        else ""
    )
    lag = f"; lag at the switch {done.lag_at_cut_over}" if done.lag_at_cut_over is not None else ""
    if done.final_index is not None and done.stage == "done":
        where = (
            f"the name points at {done.final_index}, which reads the original fields in the "
            "new encoding; no shadow field is left"
        )
    else:
        where = f"the name points at {done.shadow_index}, which reads " + ", ".join(
            done.shadow_fields
        )
    lines = [
        f"Online re-encoding ({done.variant}), stage {done.stage}: {where}",
        f"  backfilled {c.backfilled:,}, mirrored {c.mirrored:,} (of {done.writes_seen:,} "
        f"writes seen; {done.mirrored_after_switch:,} right after the switch), swept "
        f"{c.swept:,}, skipped {c.skipped:,} (changed meanwhile: mirrored again), deleted "
        f"{c.missing:,}, malformed {c.malformed:,}",
        f"  change capture: {done.capture}; cut-over: {done.cut_over}{waited}{lag}",
    ]
    if done.variant == "finish":
        lines.append(
            f"  finished after the cut-over ({done.finish_started_by or 'not yet'}): "
            f"{c.rewritten:,} original(s) rewritten in place (backed up first), "
            f"{c.shadows_removed:,} shadow field(s) removed"
        )
    if done.not_built:
        lines.append("  not built yet: " + "; ".join(done.not_built))
    for line in lines:
        console.print(line, markup=False, highlight=False)


def print_batch_plan(console: Console, batch: BatchPlan, path: object) -> None:
    console.print(f"Batch plan written to {path} ({batch.batch_id})")
    table = Table(title=f"{len(batch.applicable)} of {len(batch.indexes)} index(es) applicable")
    table.add_column("index")
    table.add_column("applicable")
    table.add_column("plan / skip reason")
    for entry in batch.indexes:
        table.add_row(
            entry.name,
            "yes" if entry.applicable else "no",
            entry.plan_path or entry.skip_reason or "",
        )
    console.print(table)
    console.print(f"Failure policy: {batch.failure_policy}")
    if batch.requires_quantization:
        console.print("Re-encodes vectors lossily: batch-apply needs --accept-data-loss")


def print_batch_state(console: Console, state: BatchState) -> None:
    console.print(f"Batch {state.batch_id}: started {state.started_at}, updated {state.updated_at}")
    table = Table()
    table.add_column("index")
    table.add_column("status")
    table.add_column("finished")
    table.add_column("error")
    for entry in state.indexes:
        table.add_row(entry.name, entry.status, entry.finished_at or "", entry.error or "")
    console.print(table)
    counts = {s: sum(e.status == s for e in state.indexes) for s in ("succeeded", "failed")}
    remaining = [e.name for e in state.indexes if e.status == "pending"]
    running = [e.name for e in state.indexes if e.status == "in_progress"]
    console.print(
        f"Completed: {counts['succeeded']}; failed: {counts['failed']}; in progress: "
        f"{', '.join(running) or 'none'}; remaining: {len(remaining)}"
        + (f" ({', '.join(remaining)})" if remaining else "")
    )


def print_batch_report(console: Console, report: BatchReport, state: object) -> None:
    s = report.summary
    console.print(
        f"Batch {report.batch_id}: {report.status} ({s.successful} succeeded, {s.failed} failed, "
        f"{s.skipped} skipped, {s.total_duration_seconds:.1f} s)"
    )
    for entry in report.indexes:
        if entry.error:
            console.print(f"  {entry.name}: {entry.error}", markup=False, highlight=False)
    if report.status != "completed":
        console.print(f"Next: redismigrate batch-resume --state {state} --url URL", markup=False)


def print_index_commands(console: Console, plan: MigrationPlan) -> None:
    """The index-level commands apply sends, in order, one per line."""
    console.print("Index commands apply will send, in order:")
    online = isinstance(plan.mode, Online)
    for command in index_commands(plan):
        note = ""
        if command[0] == "FT.ALIASUPDATE" and not online:
            note = f"  # unless {command[1]!r} already points at {command[2]!r}"
        console.print(
            f"  {shell_line(command)}{note}", markup=False, highlight=False, soft_wrap=True
        )


def print_where(console: Console, report: MigrationReport, backup_dir: object, url: str) -> None:
    """The last lines after an apply: where the backup and report are, how to undo."""
    if report.report_file:
        console.print(f"Report: {report.report_file}", markup=False, highlight=False)
    if not report.succeeded:
        return  # the report's next steps say what to do
    shown = redact_url(url)
    url_arg = shlex.quote(shown) if shown == url else '"$REDIS_URL"'
    console.print(
        f"Backup: {backup_dir} (the original vectors and key names; keep it while you may "
        "want to undo)",
        markup=False,
        highlight=False,
    )
    console.print(
        f"Undo with: redismigrate rollback --backup-dir {shlex.quote(str(backup_dir))} "
        f"--url {url_arg} --recreate-index"
        + ("  (your URL: its password is not printed)" if shown != url else ""),
        markup=False,
        highlight=False,
    )
