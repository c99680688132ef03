"""Crash-safe resume, rollback and automatic undo, against the real server.

The apply process is killed with SIGKILL at chosen points (REDISMIGRATE_CRASH_AT makes
it kill itself there, so the point is exact); rerunning the same command must finish
with every vector right and nothing re-encoded twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis

from redismigrate.backup import VectorBackup
from redismigrate.capabilities import ServerCapabilities
from redismigrate.patch import SchemaPatch
from redismigrate.plan import build_plan
from redismigrate.render import ft_create_args
from redismigrate.sync import IndexInspector, MigrationPlanner
from tests.test_executor import DOCS, NUMPY, load, make_schema, snapshot

BATCH = 50


def apply_cli(
    redis_url: str, plan: Path, backup: Path, crash_at: str | None = None, *extra: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDISMIGRATE_CRASH_AT"}
    if crash_at:
        env["REDISMIGRATE_CRASH_AT"] = crash_at
    return subprocess.run(
        [
            sys.executable, "-m", "redismigrate", "apply", "--plan", str(plan),
            "--backup-dir", str(backup), "--url", redis_url, "--batch-size", str(BATCH), *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )  # fmt: skip


def make_plan(redis_url: str, index: str, target_type: str, path: Path) -> Path:
    plan = MigrationPlanner().create_plan(
        index,
        redis_url=redis_url,
        schema_patch=SchemaPatch.from_dict(
            {
                "changes": {
                    "update_fields": [{"name": "embedding", "attrs": {"datatype": target_type}}]
                }
            }
        ),
        mode="drop_recreate",
    )
    assert plan.supported
    plan.dump(path)
    return path


def assert_reencoded_once(
    before: dict[bytes, dict[bytes, bytes]],
    after: dict[bytes, dict[bytes, bytes]],
    source_type: str,
    target_type: str,
) -> None:
    assert after.keys() == before.keys()
    for key, doc in before.items():
        original = np.frombuffer(doc[b"embedding"], dtype=NUMPY[source_type])
        expected = original.astype(np.float32).astype(NUMPY[target_type]).tobytes()
        assert after[key][b"embedding"] == expected, key
        assert {k: v for k, v in after[key].items() if k != b"embedding"} == {
            k: v for k, v in doc.items() if k != b"embedding"
        }


KILLED_RUNS = [
    ("during_backup:3", "float32", "float16"),
    ("after_drop", "float32", "float16"),
    ("dropped_unrecorded", "float32", "float16"),
    ("during_reencode:4", "float32", "float16"),
    ("before_create", "float32", "float16"),
    ("during_reencode:4", "float16", "bfloat16"),
    ("after_drop", "float16", "bfloat16"),
]
# with three workers, the points where the shards are being written or read
SHARDED_KILLED_RUNS = [KILLED_RUNS[0], KILLED_RUNS[1], KILLED_RUNS[3]]


@pytest.mark.parametrize(
    ("workers", "crash_at", "source_type", "target_type"),
    [("1", *run) for run in KILLED_RUNS] + [("3", *run) for run in SHARDED_KILLED_RUNS],
)
def test_a_killed_apply_resumes_to_the_right_vectors(
    sync_client: redis.Redis,
    redis_url: str,
    ns: str,
    tmp_path: Path,
    crash_at: str,
    source_type: str,
    target_type: str,
    workers: str,
) -> None:
    schema = make_schema(f"{ns}_r", f"{ns}:r:", "hash", datatype=source_type)
    sync_client.execute_command(*ft_create_args(schema))
    load(sync_client, f"{ns}:r:", "hash", datatype=source_type)
    before = snapshot(sync_client, f"{ns}:r:", "hash")
    plan = make_plan(redis_url, schema.name, target_type, tmp_path / "plan.yaml")
    backup = tmp_path / "backup"

    killed = apply_cli(redis_url, plan, backup, crash_at, "--workers", workers)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    if workers != "1" and crash_at != "during_backup:3":
        assert (backup / f"migration_backup_{schema.name}.manifest.json").exists()

    resumed = apply_cli(redis_url, plan, backup, None, "--workers", workers)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Result: succeeded" in resumed.stdout
    assert_reencoded_once(
        before, snapshot(sync_client, f"{ns}:r:", "hash"), source_type, target_type
    )
    header = VectorBackup.open(backup, schema.name)
    assert header is not None
    assert header.header.phase == "validated"
    shards = sorted(backup.glob("*.w*.header.json"))
    if workers == "1":
        assert header.header.keys_backed_up == DOCS and not shards
    else:
        assert len(shards) == 3
        assert sum(VectorBackup.load(p).header.keys_backed_up for p in shards) == DOCS
    # running it once more is a no-op that still validates
    again = apply_cli(redis_url, plan, backup)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_reencoded_once(
        before, snapshot(sync_client, f"{ns}:r:", "hash"), source_type, target_type
    )


def test_rollback_restores_every_byte_and_can_recreate_the_index(
    sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path
) -> None:
    schema = make_schema(f"{ns}_rb", f"{ns}:rb:", "hash")
    sync_client.execute_command(*ft_create_args(schema))
    load(sync_client, f"{ns}:rb:", "hash")
    before = snapshot(sync_client, f"{ns}:rb:", "hash")
    plan = make_plan(redis_url, schema.name, "float16", tmp_path / "plan.yaml")
    backup = tmp_path / "backup"
    assert apply_cli(redis_url, plan, backup, None, "--workers", "2").returncode == 0
    assert (backup / f"migration_backup_{schema.name}.manifest.json").exists()
    assert snapshot(sync_client, f"{ns}:rb:", "hash") != before

    rolled = subprocess.run(
        [sys.executable, "-m", "redismigrate", "rollback", "--backup-dir", str(backup),
         "--url", redis_url, "--recreate-index"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert snapshot(sync_client, f"{ns}:rb:", "hash") == before
    described = IndexInspector().describe(schema.name, redis_url=redis_url)
    assert described.schema.same_index_as(schema)
    query = np.frombuffer(before[f"{ns}:rb:7".encode()][b"embedding"], dtype=np.float32)
    found = sync_client.execute_command(
        "FT.SEARCH", schema.name, "*=>[KNN 1 @embedding $q]", "PARAMS", "2", "q",
        query.tobytes(), "NOCONTENT", "DIALECT", "2",
    )  # fmt: skip
    ids = found[1:] if isinstance(found, list) else [r[b"id"] for r in found[b"results"]]
    assert ids == [f"{ns}:rb:7".encode()]
    # the same plan applies again after the rollback: a fresh backup, the right bytes
    assert apply_cli(redis_url, plan, backup).returncode == 0
    assert_reencoded_once(before, snapshot(sync_client, f"{ns}:rb:", "hash"), "float32", "float16")
    assert list(backup.glob("*.rolled-back-*"))
    assert subprocess.run(
        [sys.executable, "-m", "redismigrate", "rollback", "--backup-dir", str(backup),
         "--url", redis_url, "--recreate-index"],
        capture_output=True, text=True, timeout=120,
    ).returncode == 0  # fmt: skip
    assert snapshot(sync_client, f"{ns}:rb:", "hash") == before
    # a second rollback has nothing left to do, and says so
    again = subprocess.run(
        [sys.executable, "-m", "redismigrate", "rollback", "--backup-dir", str(backup),
         "--url", redis_url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 2 and "no backup" in again.stderr


def test_a_failing_create_after_the_drop_is_undone(
    sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path
) -> None:
    """INT8 planned as if the server took it (capability check bypassed): the embedded
    server (search 2.10) refuses the FT.CREATE after the drop and the re-encoding."""
    schema = make_schema(f"{ns}_f", f"{ns}:f:", "hash")
    sync_client.execute_command(*ft_create_args(schema))
    load(sync_client, f"{ns}:f:", "hash")
    before = snapshot(sync_client, f"{ns}:f:", "hash")
    real = MigrationPlanner().create_plan(
        schema.name,
        redis_url=redis_url,
        schema_patch=SchemaPatch.from_dict({"changes": {}}),
    )
    vectors = np.stack(
        [np.frombuffer(d[b"embedding"], dtype=np.float32) for d in before.values()]
    ).astype(np.float64)
    pretend = ServerCapabilities(redis_version="8.0.0", search_version=(8, 0, 0))
    plan = build_plan(
        source_schema=real.source.schema_snapshot,
        source_stats=real.source.stats_snapshot,
        key_sample=real.source.keyspace.key_sample,
        capabilities=pretend,
        patch=SchemaPatch.from_dict(
            {"changes": {"update_fields": [{"name": "embedding", "attrs": {"datatype": "int8"}}]}}
        ),
        vector_samples={"embedding": vectors},
    )
    assert plan.supported
    path = tmp_path / "plan.yaml"
    plan.dump(path)

    result = apply_cli(redis_url, path, tmp_path / "backup")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Result: rolled_back" in result.stdout
    assert "put back as it was" in result.stdout
    assert snapshot(sync_client, f"{ns}:f:", "hash") == before
    described = IndexInspector().describe(schema.name, redis_url=redis_url)
    assert described.schema.same_index_as(schema)
    assert described.stats.num_docs == DOCS

    # --no-auto-rollback leaves the state and prints how to go on
    kept = apply_cli(redis_url, path, tmp_path / "backup2", None, "--no-auto-rollback")
    assert kept.returncode == 1
    assert "redismigrate apply --plan" in kept.stdout and "redismigrate rollback" in kept.stdout
    rolled = subprocess.run(
        [sys.executable, "-m", "redismigrate", "rollback", "--backup-dir",
         str(tmp_path / "backup2"), "--url", redis_url, "--recreate-index"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert rolled.returncode == 0, rolled.stderr
    assert snapshot(sync_client, f"{ns}:f:", "hash") == before


def test_a_different_plan_against_an_existing_backup_is_refused(
    sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path
) -> None:
    schema = make_schema(f"{ns}_d", f"{ns}:dd:", "hash")
    sync_client.execute_command(*ft_create_args(schema))
    load(sync_client, f"{ns}:dd:", "hash")
    plan16 = make_plan(redis_url, schema.name, "float16", tmp_path / "p16.yaml")
    planbf = make_plan(redis_url, schema.name, "bfloat16", tmp_path / "pbf.yaml")
    backup = tmp_path / "backup"
    assert apply_cli(redis_url, plan16, backup, "after_drop").returncode == -signal.SIGKILL
    other = apply_cli(redis_url, planbf, backup)
    assert other.returncode == 2
    assert "different plan" in other.stderr
    assert apply_cli(redis_url, plan16, backup).returncode == 0


def test_apply_async_flag_writes_report_and_benchmark_and_validate_checks_vectors(
    sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path
) -> None:
    schema = make_schema(f"{ns}_a", f"{ns}:a:", "hash")
    sync_client.execute_command(*ft_create_args(schema))
    load(sync_client, f"{ns}:a:", "hash")
    plan = make_plan(redis_url, schema.name, "float16", tmp_path / "plan.yaml")
    backup = tmp_path / "backup"
    report, bench = tmp_path / "report.yaml", tmp_path / "bench.yaml"
    done = apply_cli(
        redis_url, plan, backup, None, "--async", "--workers", "3",
        "--report-out", str(report), "--benchmark-out", str(bench),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    from redismigrate.files import load_document
    from redismigrate.report import MigrationReport

    written = MigrationReport.load(report)
    assert written.succeeded and written.vectors_reencoded == DOCS
    assert {t.step for t in written.timings} >= {"backup", "drop", "reencode", "create", "indexing"}
    figures = load_document(bench, what="benchmark")
    assert figures["documents"] == DOCS and figures["downtime_seconds"] > 0
    assert set(figures["timings"]) >= {"backup", "reencode", "indexing"}

    validate = [sys.executable, "-m", "redismigrate", "validate", "--plan", str(plan),
                "--url", redis_url, "--backup-dir", str(backup)]  # fmt: skip
    ok = subprocess.run(validate, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Validation: passed" in ok.stdout
    # one stored vector no longer equals the plan's rule: validate must say so
    from redismigrate.aio.executor import BackupSet

    saved = BackupSet.open(backup, schema.name)
    assert saved is not None
    key = next(saved.iter_frames()).keys[0]  # validation samples the first frame
    saved.close()
    sync_client.hset(key, "embedding", np.zeros(16, dtype=np.float16).tobytes())
    bad = subprocess.run(validate, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "differ from the plan's rule" in bad.stdout


def test_a_server_gone_mid_run_reports_where_and_how_to_resume(tmp_path: Path) -> None:
    from redismigrate.server import EmbeddedRedis
    from redismigrate.sync import MigrationExecutor

    with EmbeddedRedis() as own:
        assert own.info is not None
        url = own.info.url
        client = redis.Redis.from_url(url)
        schema = make_schema("gone_idx", "gone:", "hash")
        client.execute_command(*ft_create_args(schema))
        load(client, "gone:", "hash")
        plan = MigrationPlanner().create_plan(
            "gone_idx",
            redis_url=url,
            schema_patch=SchemaPatch.from_dict(
                {
                    "changes": {
                        "update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]
                    }
                }
            ),
            mode="drop_recreate",
        )

        def stop_server_once(step: str, done: int, total: int | None) -> None:
            if step == "reencode" and done > 0 and own.info is not None:
                own.stop()

        report = MigrationExecutor().apply(
            plan,
            redis_url=url,
            backup_dir=tmp_path / "backup",
            batch_size=BATCH,
            progress_callback=stop_server_once,
            plan_path="plan.yaml",
        )
    assert report.result == "failed" and not report.undone
    assert report.error is not None and "active" in report.error
    assert any(
        s.startswith("resume: redismigrate apply --plan plan.yaml --backup-dir")
        for s in report.next_steps
    )
    header = VectorBackup.open(tmp_path / "backup", "gone_idx")
    assert header is not None and header.header.phase == "active"
    assert header.header.quantize_completed_batches >= 1


def test_a_completed_backup_is_stale_once_the_source_is_back(
    sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path
) -> None:
    """Rolled back by hand (header left in place): the next apply writes a fresh backup."""
    schema = make_schema(f"{ns}_st", f"{ns}:st:", "hash")
    sync_client.execute_command(*ft_create_args(schema))
    load(sync_client, f"{ns}:st:", "hash")
    before = snapshot(sync_client, f"{ns}:st:", "hash")
    plan = make_plan(redis_url, schema.name, "bfloat16", tmp_path / "plan.yaml")
    backup = tmp_path / "backup"
    assert apply_cli(redis_url, plan, backup).returncode == 0
    with VectorBackup.load(backup / f"migration_backup_{schema.name}.header.json") as saved:
        for keys, originals in saved.iter_batches():
            for key in keys:
                sync_client.hset(key, "embedding", originals[key]["embedding"])
    sync_client.execute_command("FT.DROPINDEX", schema.name)
    sync_client.execute_command(*ft_create_args(schema))
    assert snapshot(sync_client, f"{ns}:st:", "hash") == before

    again = apply_cli(redis_url, plan, backup)
    assert again.returncode == 0, again.stdout + again.stderr
    assert list(backup.glob("*.stale-*"))
    assert_reencoded_once(before, snapshot(sync_client, f"{ns}:st:", "hash"), "float32", "bfloat16")
