"""The key-level steps of an apply (and their rollback) on a Redis Cluster, as a process
tests can SIGKILL (REDISMIGRATE_CRASH_AT) and run again.

    python -m tests.cluster_run apply --url URL --plan PLAN --backup-dir DIR [--batch-size N]
    python -m tests.cluster_run rollback --url URL --plan PLAN --backup-dir DIR

``apply`` goes through the phases of the backup as the executor does, with the cluster
variants of its key-level steps: the backup (a shard per primary), the check before
the drop (the cluster held still, no new name taken), the prefix move across slots
and the guarded re-encoding; Redis Stack 7.4 has no search coordinator, so no index is
dropped or created. ``rollback`` puts the documents back from the backup. Both print one
JSON line of what they did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from redismigrate.aio.capture import ClusterCapture
from redismigrate.aio.cluster import ClusterWire, connect_cluster
from redismigrate.aio.steps import cluster as cluster_step
from redismigrate.aio.steps import reencode as reencode_step
from redismigrate.aio.steps.state import BackupSet, Run, crash_point
from redismigrate.integrity import verify_backup_for_plan
from redismigrate.plan import MigrationPlan

CHECKPOINT_SECONDS = 0.0  # every batch: a kill loses nothing that was written


def watched_prefixes(plan: MigrationPlan) -> list[str]:
    prefixes = list(plan.source.keyspace.prefixes)
    change = plan.rename_operations.change_prefix
    if change is not None:
        prefixes.append(change.new)
    return prefixes


async def apply(url: str, plan: MigrationPlan, backup_dir: Path, batch_size: int) -> dict:
    async with connect_cluster(url) as connections:
        client = connections.client(connections.pinned)
        run = Run(plan, client, backup_dir, batch_size, 1, None)
        run.wire = ClusterWire(connections)
        started_in = await cluster_step.open_or_start(run, connections)
        capture = ClusterCapture(connections.clients, connections.topology, watched_prefixes(plan))
        run.capture = await capture.start()
        phase = started_in
        try:
            if phase == "dump":
                await cluster_step.back_up(run, connections, CHECKPOINT_SECONDS)
                phase = "ready"
            if phase == "ready":
                await cluster_step.check_before_drop(run, connections)
                crash_point("before_drop")
                run.set_phase("index_dropped")  # no index to drop on Redis Stack 7.4
                phase = "index_dropped"
            finished = 0
            if phase == "index_dropped":
                finished = (await cluster_step.move_keys(run)).finished
                run.set_phase("active")
                phase = "active"
            if phase == "active":
                await reencode_step.reencode(run, touch=True, checkpoint_seconds=0.0)
            await connections.ensure_stable("at the end")
            return {
                "started_in": started_in,
                "phase": run.header.phase,
                "capture": run.capture.complete,
                "quiet": all(c.quiet is not None for c in capture.nodes.values()),
                "foreign_events": run.capture.foreign_events,
                "finished": finished,
                "skipped": sorted(k.decode("latin-1") for k in run.skipped),
                "keys_renamed": run.keys_renamed,
                "reencoded": run.reencoded,
            }
        finally:
            await capture.stop()
            await run.wire.close()
            assert run.backups is not None
            run.backups.close()


async def rollback(url: str, plan: MigrationPlan, backup_dir: Path) -> dict:
    verify_backup_for_plan(backup_dir, plan)
    backup = BackupSet.open(backup_dir, plan.source.index_name)
    assert backup is not None
    async with connect_cluster(url) as connections:
        wire = ClusterWire(connections)
        try:
            undone = await cluster_step.undo_documents(wire, plan, backup)
        finally:
            await wire.close()
    files = backup.files()
    backup.close()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for path in files:
        path.rename(f"{path}.rolled-back-{stamp}")
    return {
        "restored": undone.restored,
        "moved": undone.moves.moved,
        "finished": undone.moves.finished,
        "conflicts": sorted(k.decode("latin-1") for k in undone.conflicts),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["apply", "rollback"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--plan", required=True)
    parser.add_argument("--backup-dir", required=True)
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()
    plan = MigrationPlan.load(args.plan)
    backup_dir = Path(args.backup_dir)
    backup_dir.mkdir(parents=True, exist_ok=True)
    if args.command == "apply":
        result = asyncio.run(apply(args.url, plan, backup_dir, args.batch_size))
    else:
        result = asyncio.run(rollback(args.url, plan, backup_dir))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
