"""Batch migrations against the real server, through the command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis

from redismigrate.batch import BatchPlan, BatchReport, BatchState
from redismigrate.render import ft_create_args
from tests.test_cli import assert_one_line_error
from tests.test_executor import NUMPY, load, make_schema, snapshot

PATCH = (
    "version: 1\nchanges:\n  update_fields:\n    - {name: embedding, attrs: {datatype: float16}}\n"
)


def cli(*args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDISMIGRATE_CRASH_AT"}
    if crash_at:
        env["REDISMIGRATE_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "redismigrate", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def make_index(client: redis.Redis, name: str, prefix: str, *, with_vector: bool = True) -> None:
    schema = make_schema(name, prefix, "hash")
    if not with_vector:
        data = schema.to_dict()
        data["fields"] = [f for f in data["fields"] if f["name"] != "embedding"]
        data["fields"].append({"name": "other", "type": "tag"})
        schema = type(schema).from_dict(data)
    client.execute_command(*ft_create_args(schema))
    load(client, prefix, "hash")


@pytest.fixture
def three_indexes(sync_client: redis.Redis, ns: str, tmp_path: Path) -> dict[str, str]:
    """Two with an 'embedding' field and one without (it will be skipped)."""
    prefixes = {f"{ns}_b1": f"{ns}:b1:", f"{ns}_b2": f"{ns}:b2:", f"{ns}_b3": f"{ns}:b3:"}
    make_index(sync_client, f"{ns}_b1", prefixes[f"{ns}_b1"])
    make_index(sync_client, f"{ns}_b2", prefixes[f"{ns}_b2"])
    make_index(sync_client, f"{ns}_b3", prefixes[f"{ns}_b3"], with_vector=False)
    (tmp_path / "patch.yaml").write_text(PATCH)
    return prefixes


def assert_float16(
    before: dict[bytes, dict[bytes, bytes]], after: dict[bytes, dict[bytes, bytes]]
) -> None:
    assert after.keys() == before.keys()
    for key, doc in before.items():
        original = np.frombuffer(doc[b"embedding"], dtype=np.float32)
        assert after[key][b"embedding"] == original.astype(NUMPY["float16"]).tobytes()
        assert {k: v for k, v in after[key].items() if k != b"embedding"} == {
            k: v for k, v in doc.items() if k != b"embedding"
        }


def batch_plan(
    redis_url: str, ns: str, tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return cli(
        "batch-plan", "--pattern", f"{ns}_b*", "--schema-patch", str(tmp_path / "patch.yaml"),
        "--plan-out", str(tmp_path / "batch.yaml"), "--url", redis_url, "--mode",
        "drop_recreate", *extra,
    )  # fmt: skip


def batch_apply(
    redis_url: str, tmp_path: Path, *extra: str, crash_at: str | None = None
) -> subprocess.CompletedProcess[str]:
    return cli(
        "batch-apply", "--plan", str(tmp_path / "batch.yaml"), "--backup-dir",
        str(tmp_path / "backups"), "--url", redis_url, "--state", str(tmp_path / "state.yaml"),
        "--report-dir", str(tmp_path / "reports"), *extra, crash_at=crash_at,
    )  # fmt: skip


def test_a_batch_over_three_indexes_completes_and_checks_every_document(
    sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path, three_indexes: dict[str, str]
) -> None:
    before = {name: snapshot(sync_client, p, "hash") for name, p in three_indexes.items()}
    planned = batch_plan(redis_url, ns, tmp_path)
    assert planned.returncode == 0, planned.stderr
    plan = BatchPlan.load(tmp_path / "batch.yaml")
    assert [e.applicable for e in plan.indexes] == [True, True, False]
    assert "no field 'embedding'" in (plan.indexes[2].skip_reason or "")
    assert plan.requires_quantization

    refused = batch_apply(redis_url, tmp_path)
    assert_one_line_error(refused, 2, "--accept-data-loss")
    assert not (tmp_path / "state.yaml").exists()

    done = batch_apply(redis_url, tmp_path, "--accept-data-loss")
    assert done.returncode == 0, done.stdout + done.stderr
    report = BatchReport.load(tmp_path / "reports" / "batch_report.yaml")
    assert report.status == "completed"
    assert (report.summary.successful, report.summary.failed, report.summary.skipped) == (2, 0, 1)
    for name in (f"{ns}_b1", f"{ns}_b2"):
        assert_float16(before[name], snapshot(sync_client, three_indexes[name], "hash"))
    assert snapshot(sync_client, three_indexes[f"{ns}_b3"], "hash") == before[f"{ns}_b3"]
    status = cli("batch-status", "--state", str(tmp_path / "state.yaml"))
    assert status.returncode == 0 and "Completed: 2" in status.stdout


def test_overlapping_indexes_are_refused_with_every_pair(
    sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path
) -> None:
    make_index(sync_client, f"{ns}_bmain", f"{ns}:prod:")
    make_index(sync_client, f"{ns}_bpremium", f"{ns}:prod:premium:")
    (tmp_path / "patch.yaml").write_text(PATCH)
    result = batch_plan(redis_url, ns, tmp_path)
    assert_one_line_error(
        result,
        2,
        "overlapping indexes detected",
        f"{ns}_bmain <-> {ns}_bpremium: '{ns}:prod:' <-> '{ns}:prod:premium:'",
        "prefix-disjoint groups",
    )
    assert not (tmp_path / "batch.yaml").exists()


def test_a_batch_killed_mid_second_index_resumes_without_reencoding_twice(
    sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path, three_indexes: dict[str, str]
) -> None:
    before = {name: snapshot(sync_client, p, "hash") for name, p in three_indexes.items()}
    assert batch_plan(redis_url, ns, tmp_path).returncode == 0
    # batches of 100: the first index re-encodes 5, the kill comes in the second's 2nd
    killed = batch_apply(
        redis_url, tmp_path, "--accept-data-loss", "--batch-size", "100",
        crash_at="during_reencode:7",
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    state = BatchState.load(tmp_path / "state.yaml")
    assert [e.status for e in state.indexes] == ["succeeded", "in_progress", "skipped"]
    other_dir = cli(
        "batch-resume", "--state", str(tmp_path / "state.yaml"), "--url", redis_url,
        "--accept-data-loss", "--backup-dir", str(tmp_path / "elsewhere"),
    )  # fmt: skip
    assert_one_line_error(other_dir, 2, "refuses another directory")
    resumed = cli(
        "batch-resume", "--state", str(tmp_path / "state.yaml"), "--url", redis_url,
        "--accept-data-loss", "--batch-size", "100",
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    for name in (f"{ns}_b1", f"{ns}_b2"):
        assert_float16(before[name], snapshot(sync_client, three_indexes[name], "hash"))
    state = BatchState.load(tmp_path / "state.yaml")
    assert [e.status for e in state.indexes] == ["succeeded", "succeeded", "skipped"]
    assert state.entry(f"{ns}_b1").attempts == 1  # the finished one was not run again


def test_continue_on_error_carries_on_and_retry_failed_reruns_only_the_failed(
    sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path, three_indexes: dict[str, str]
) -> None:
    before = {name: snapshot(sync_client, p, "hash") for name, p in three_indexes.items()}
    assert (
        batch_plan(redis_url, ns, tmp_path, "--failure-policy", "continue_on_error").returncode == 0
    )
    # b1 changes after planning: its apply fails ("source schema mismatch"), b2 goes on
    sync_client.execute_command("FT.ALTER", f"{ns}_b1", "SCHEMA", "ADD", "late", "TEXT")
    first = batch_apply(redis_url, tmp_path, "--accept-data-loss")
    assert first.returncode == 1
    report = BatchReport.load(tmp_path / "reports" / "batch_report.yaml")
    assert report.status == "partial_failure"
    state = BatchState.load(tmp_path / "state.yaml")
    assert state.entry(f"{ns}_b1").status == "failed"
    assert "source schema mismatch" in (state.entry(f"{ns}_b1").error or "")
    assert state.entry(f"{ns}_b2").status == "succeeded"
    assert snapshot(sync_client, three_indexes[f"{ns}_b1"], "hash") == before[f"{ns}_b1"]

    # put b1 back as planned, then retry only the failed one
    sync_client.execute_command("FT.DROPINDEX", f"{ns}_b1")
    sync_client.execute_command(*ft_create_args(make_schema(f"{ns}_b1", f"{ns}:b1:", "hash")))
    without = cli(
        "batch-resume",
        "--state",
        str(tmp_path / "state.yaml"),
        "--url",
        redis_url,
        "--accept-data-loss",
    )
    assert without.returncode == 1  # failed ones stay failed without --retry-failed
    retried = cli(
        "batch-resume", "--state", str(tmp_path / "state.yaml"), "--url", redis_url,
        "--accept-data-loss", "--retry-failed",
    )  # fmt: skip
    assert retried.returncode == 0, retried.stdout + retried.stderr
    state = BatchState.load(tmp_path / "state.yaml")
    assert state.entry(f"{ns}_b1").status == "succeeded"
    assert state.entry(f"{ns}_b2").attempts == 1
    assert_float16(before[f"{ns}_b1"], snapshot(sync_client, three_indexes[f"{ns}_b1"], "hash"))
    assert_float16(before[f"{ns}_b2"], snapshot(sync_client, three_indexes[f"{ns}_b2"], "hash"))


def test_bad_batch_input_is_one_line_exit_2_and_touches_nothing(
    sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path, three_indexes: dict[str, str]
) -> None:
    empty = cli(
        "batch-plan", "--pattern", f"{ns}_nothing*", "--schema-patch", str(tmp_path / "patch.yaml"),
        "--plan-out", str(tmp_path / "x.yaml"), "--url", redis_url,
    )  # fmt: skip
    assert_one_line_error(empty, 2, "no index matches")
    blank = cli(
        "batch-plan", "--indexes", " , ", "--schema-patch", str(tmp_path / "patch.yaml"),
        "--plan-out", str(tmp_path / "x.yaml"), "--url", redis_url,
    )  # fmt: skip
    assert_one_line_error(blank, 2, "selection is empty")
    missing = cli("batch-status", "--state", str(tmp_path / "nope.yaml"))
    assert_one_line_error(missing, 2, "does not exist")
    missing_resume = cli("batch-resume", "--state", str(tmp_path / "nope.yaml"), "--url", redis_url)
    assert_one_line_error(missing_resume, 2, "does not exist")

    before = {name: snapshot(sync_client, p, "hash") for name, p in three_indexes.items()}
    assert batch_plan(redis_url, ns, tmp_path).returncode == 0
    plan_file = tmp_path / "batch_plans" / f"{ns}_b1.yaml"
    plan_file.write_text(plan_file.read_text().replace("float16", "bfloat16"))
    tampered = batch_apply(redis_url, tmp_path, "--accept-data-loss")
    assert_one_line_error(tampered, 2, "was changed after batch-plan")
    assert not (tmp_path / "state.yaml").exists()

    # a state file of another batch
    assert batch_plan(redis_url, ns, tmp_path).returncode == 0
    other_state = tmp_path / "other_state.yaml"
    state = BatchState(
        batch_id="batch_from_elsewhere",
        plan_path=str(tmp_path / "batch.yaml"),
        plan_sha256="sha256:0",
        backup_dir=str(tmp_path / "backups"),
        report_dir=str(tmp_path / "reports"),
        started_at="2026-01-01T00:00:00+00:00",
        updated_at="2026-01-01T00:00:00+00:00",
        indexes=[],
    )
    state.dump(other_state)
    foreign = cli(
        "batch-resume", "--state", str(other_state), "--url", redis_url, "--accept-data-loss"
    )
    assert_one_line_error(foreign, 2, "belongs to batch 'batch_from_elsewhere'")
    after = {name: snapshot(sync_client, p, "hash") for name, p in three_indexes.items()}
    assert after == before
