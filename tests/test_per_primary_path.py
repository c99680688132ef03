"""The cluster's code path of apply, rollback and online mode, run on a single server.

With REDISMIGRATE_PER_PRIMARY=1 a single server is taken as a cluster of one primary
that serves every slot (aio/deployment.py ``OneServer``): the executor then runs every
step as it does on a Redis Cluster with the search coordinator (a backup shard per
primary, prefix moves by DUMP/RESTORE/DEL across slots, guarded writes per slot, change
capture per primary, lock and ledger routed by slot, validation with per-shard figures,
the online cut-over one command at a time). Redis Stack 7.4 has no coordinator, so this
is where the whole of that path runs in the default suite; tests/test_redis_cluster.py
runs it on a real coordinator cluster where REDIS_CLUSTER_URL names one.

Every document is compared byte for byte before and after, with the application
writing, the process SIGKILLed at each step, and a rollback.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from redismigrate.aio.deployment import ONE_SERVER_ID, PER_PRIMARY_ENV
from redismigrate.aio.executor import AsyncMigrationExecutor
from redismigrate.aio.planner import AsyncMigrationPlanner
from redismigrate.backup import read_manifest
from redismigrate.patch import SchemaPatch
from redismigrate.render import ft_create_args
from redismigrate.report import MigrationReport
from redismigrate.schema import IndexSchema
from tests import test_safety
from tests.test_executor import DOCS, load, make_schema, snapshot

BATCH = 50
MOVE_AND_REENCODE: dict[str, Any] = {
    "index": {"prefix": "{new}"},  # replaced per test
    "rename_fields": [{"old_name": "title", "new_name": "headline"}],
    "update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}],
}


@pytest.fixture(autouse=True)
def per_primary(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every run of these tests (and the CLI processes they start) takes the path."""
    monkeypatch.setenv(PER_PRIMARY_ENV, "1")
    yield


def changes_for(new_prefix: str, storage: str) -> dict[str, Any]:
    changes = json.loads(json.dumps(MOVE_AND_REENCODE))
    changes["index"]["prefix"] = new_prefix
    if storage == "json":
        changes["rename_fields"] = [{"old_name": "title", "new_name": "headline"}]
    return changes


def cli(*args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    import os

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


def ttl_keys(client: redis.Redis, prefix: str) -> set[bytes]:
    return {
        key[len(prefix) :]
        for key in client.scan_iter(match=f"{prefix}*", count=1000)
        if client.ttl(key) > 0
    }


def expected_after(before: dict[bytes, Any], old: str, new: str, storage: str) -> dict[bytes, Any]:
    """What every document must hold after the migration: its new name, the renamed
    field, the vector as float16 of its float32 bytes (hash), the rest unchanged."""
    out: dict[bytes, Any] = {}
    for key, doc in before.items():
        name = new.encode() + key[len(old) :]
        if storage == "hash":
            moved = {(b"headline" if k == b"title" else k): v for k, v in doc.items()}
            moved[b"embedding"] = (
                np.frombuffer(doc[b"embedding"], np.float32).astype(np.float16).tobytes()
            )
        else:
            moved = {("headline" if k == "title" else k): v for k, v in doc.items()}
            # JSON vectors are numbers: the index's datatype changes, not the document
        out[name] = moved
    return out


async def plan_for(aclient: aioredis.Redis, schema: IndexSchema, changes: dict[str, Any]) -> Any:
    plan = await AsyncMigrationPlanner().create_plan(
        schema.name,
        redis_client=aclient,
        schema_patch=SchemaPatch.from_dict({"changes": changes}),
    )
    assert plan.supported, [str(b) for b in plan.diff_classification.blocked_reasons]
    return plan


# ---------------------------------------------------------------------------- apply


@pytest.mark.parametrize("storage", ["hash", "json"])
async def test_apply_and_rollback_on_the_per_primary_path(
    aclient: aioredis.Redis,
    sync_client: redis.Redis,
    ns: str,
    tmp_path: Path,
    storage: str,
) -> None:
    old, new = f"{ns}:pp:", f"{ns}:pp2:"
    schema = make_schema(f"{ns}_pp", old, storage)
    sync_client.execute_command(*ft_create_args(schema))
    load(sync_client, old, storage)
    before = snapshot(sync_client, old, storage)
    with_ttl = ttl_keys(sync_client, old)
    assert len(before) == DOCS and with_ttl
    plan = await plan_for(aclient, schema, changes_for(new, storage))
    # the planner on a cluster never picks online re-encoding
    assert plan.mode.__struct_config__.tag == "drop_recreate"

    report = await AsyncMigrationExecutor().apply(
        plan, redis_client=aclient, backup_dir=tmp_path, batch_size=BATCH
    )
    assert report.result == "succeeded", (report.error, report.validation)
    assert report.keys_renamed == DOCS
    # the cluster path was taken: a backup shard per primary, named in the manifest
    manifest = read_manifest(tmp_path / f"migration_backup_{schema.name}.manifest.json")
    assert manifest.nodes is not None
    assert [n.node_id for n in manifest.nodes] == [ONE_SERVER_ID]
    assert manifest.nodes[0].slots == [(0, 16383)]
    validation = report.validation
    assert validation is not None and validation.passed
    assert [(s.node_id, s.documents) for s in validation.shards] == [(ONE_SERVER_ID, DOCS)]

    assert not list(sync_client.scan_iter(match=f"{old}*", count=1000))
    after = snapshot(sync_client, new, storage)
    assert after == expected_after(before, old, new, storage)
    assert ttl_keys(sync_client, new) == with_ttl
    info = sync_client.ft(schema.name).info()
    assert int(info["num_docs"]) == DOCS

    rolled = await AsyncMigrationExecutor().rollback(
        backup_dir=tmp_path, redis_client=aclient, recreate_index=True
    )
    assert rolled.index_recreated
    assert not list(sync_client.scan_iter(match=f"{new}*", count=1000))
    assert snapshot(sync_client, old, storage) == before
    assert ttl_keys(sync_client, old) == with_ttl
    assert int(sync_client.ft(schema.name).info()["num_docs"]) == DOCS


@pytest.mark.parametrize(
    "crash_at",
    # (the backup's own kill points: tests/test_cluster_keys.py on a real cluster)
    ["dropped_unrecorded", "during_key_moves:4", "during_reencode:3"],
)
def test_a_killed_run_resumes_and_rolls_back_every_byte(
    sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path, crash_at: str
) -> None:
    old, new = f"{ns}:pk:", f"{ns}:pk2:"
    schema = make_schema(f"{ns}_pk", old, "hash")
    sync_client.execute_command(*ft_create_args(schema))
    load(sync_client, old, "hash")
    before = snapshot(sync_client, old, "hash")
    with_ttl = ttl_keys(sync_client, old)
    patch = _patch_file(tmp_path, changes_for(new, "hash"))
    made = cli(
        "plan", "--url", redis_url, "--index", schema.name, "--schema-patch", str(patch),
        "--plan-out", str(tmp_path / "plan.yaml"),
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    backup = tmp_path / "backup"
    apply = ("apply", "--plan", str(tmp_path / "plan.yaml"), "--backup-dir", str(backup),
             "--url", redis_url, "--batch-size", str(BATCH))  # fmt: skip

    killed = cli(*apply, crash_at=crash_at)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    resumed = cli(*apply)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Result: succeeded" in resumed.stdout
    assert not list(sync_client.scan_iter(match=f"{old}*", count=1000))
    assert snapshot(sync_client, new, "hash") == expected_after(before, old, new, "hash")
    assert ttl_keys(sync_client, new) == with_ttl
    assert int(sync_client.ft(schema.name).info()["num_docs"]) == DOCS

    back = cli("rollback", "--backup-dir", str(backup), "--url", redis_url, "--recreate-index")
    assert back.returncode == 0, back.stdout + back.stderr
    assert snapshot(sync_client, old, "hash") == before
    assert not list(sync_client.scan_iter(match=f"{new}*", count=1000))
    assert ttl_keys(sync_client, old) == with_ttl


def shadow_of(client: redis.Redis, name: str) -> bytes:
    """The physical index ``name`` resolves to (FT.INFO reports the index's own name);
    ``client`` speaks RESP2."""
    info = client.execute_command("FT.INFO", name)
    return bytes(info[info.index(b"index_name") + 1])


def _patch_file(directory: Path, changes: dict[str, Any]) -> Path:
    path = directory / "patch.yaml"
    path.write_text(json.dumps({"version": 1, "changes": changes}))
    return path


# ---------------------------------------------------------------------------- writes


async def test_application_writes_during_apply_are_never_lost(
    aclient: aioredis.Redis, sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path
) -> None:
    """test_safety's writer (updates, inserts, deletes all through the run) on this path."""
    await test_safety.writes_during_apply(aclient, sync_client, redis_url, ns, tmp_path, 1, 15_000)
    manifest = read_manifest(next(tmp_path.glob("*.manifest.json")))
    assert manifest.nodes is not None


async def test_a_killed_apply_resumed_while_the_application_writes_loses_nothing(
    aclient: aioredis.Redis, sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path
) -> None:
    await test_safety.test_a_killed_apply_resumed_while_the_application_writes_loses_nothing(
        aclient, sync_client, redis_url, ns, tmp_path
    )


async def test_prefix_that_extends_the_old_one_moves_every_key_once(
    aclient: aioredis.Redis, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    await test_safety.test_prefix_that_extends_the_old_one_moves_every_key_once(
        aclient, sync_client, ns, tmp_path
    )


async def test_any_error_after_the_drop_is_undone(
    aclient: aioredis.Redis,
    sync_client: redis.Redis,
    ns: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await test_safety.test_any_error_after_the_drop_is_undone(
        aclient, sync_client, ns, tmp_path, monkeypatch
    )


# ---------------------------------------------------------------------------- online


async def test_online_index_change_cuts_over_in_steps_and_resumes_between_them(
    aclient: aioredis.Redis, sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path
) -> None:
    """An index-only change online: no MULTI, the window said in the report; a run
    killed after the drop, before the alias, completes when run again."""
    prefix = f"{ns}:po:"
    schema = make_schema(f"{ns}_po", prefix, "hash")
    sync_client.execute_command(*ft_create_args(schema))
    load(sync_client, prefix, "hash")
    sync_client.execute_command("FT.ALIASADD", f"{ns}_po_alias", schema.name)
    before = snapshot(sync_client, prefix, "hash")
    patch = _patch_file(tmp_path, {"add_fields": [{"name": "extra", "type": "tag"}]})
    made = cli(
        "plan", "--url", redis_url, "--index", schema.name, "--schema-patch", str(patch),
        "--plan-out", str(tmp_path / "plan.yaml"), "--alias", f"{ns}_po_alias",
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    apply = ("apply", "--plan", str(tmp_path / "plan.yaml"), "--backup-dir",
             str(tmp_path / "b"), "--url", redis_url)  # fmt: skip
    # the user alias moves (1), then the name: FT.ALIASADD of it (2; search 8 refuses
    # an alias named like an index, and the drop comes first there), FT.DROPINDEX (3):
    # killed with the name an index and an alias at once, before the drop
    killed = cli(*apply, crash_at="cut_over_step:2")
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    resumed = cli(*apply, "--report-out", str(tmp_path / "report.yaml"))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    report = MigrationReport.load(tmp_path / "report.yaml")
    assert report.result == "succeeded" and report.resumed
    assert report.validation is not None
    assert [(s.node_id, s.documents) for s in report.validation.shards] == [(ONE_SERVER_ID, DOCS)]
    assert any(w.startswith("The cut-over was not atomic") for w in report.warnings)
    resp2 = redis.Redis.from_url(redis_url, protocol=2)
    listed = resp2.execute_command("FT._LIST")
    assert schema.name.encode() not in listed  # the source index was dropped
    shadow = shadow_of(resp2, schema.name)
    assert shadow in listed and shadow == shadow_of(resp2, f"{ns}_po_alias")
    for name in (schema.name, f"{ns}_po_alias"):
        info = resp2.execute_command("FT.INFO", name)
        fields = info[info.index(b"attributes") + 1]
        assert any(b"extra" in attribute for attribute in fields)
        assert int(info[info.index(b"num_docs") + 1]) == DOCS
    assert snapshot(sync_client, prefix, "hash") == before  # no document was touched

    again = cli(*apply)
    assert again.returncode == 0, again.stdout + again.stderr


async def test_online_index_change_states_the_cut_over_window(
    aclient: aioredis.Redis, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    prefix = f"{ns}:pw:"
    schema = make_schema(f"{ns}_pw", prefix, "hash")
    sync_client.execute_command(*ft_create_args(schema))
    load(sync_client, prefix, "hash")
    plan = await plan_for(aclient, schema, {"add_fields": [{"name": "extra", "type": "tag"}]})
    assert plan.mode.__struct_config__.tag == "online"
    # the plan says it before the run (search 2.10 lets the alias come first)
    assert any(w.startswith("The cut-over is not atomic") for w in plan.warnings), plan.warnings
    report = await AsyncMigrationExecutor().apply(plan, redis_client=aclient, backup_dir=tmp_path)
    assert report.result == "succeeded", (report.error, report.validation)
    assert report.downtime_seconds == 0
    said = [w for w in report.warnings if w.startswith("The cut-over was not atomic")]
    assert len(said) == 1, report.warnings
    assert int(sync_client.ft(schema.name).info()["num_docs"]) == DOCS


async def test_online_reencoding_is_refused_on_this_path_before_anything(
    aclient: aioredis.Redis, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    prefix = f"{ns}:pr:"
    schema = make_schema(f"{ns}_pr", prefix, "hash")
    sync_client.execute_command(*ft_create_args(schema))
    load(sync_client, prefix, "hash")
    patch = SchemaPatch.from_dict(
        {"changes": {"update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]}}
    )
    plan = await AsyncMigrationPlanner().create_plan(
        schema.name, redis_client=aclient, schema_patch=patch, mode="online"
    )
    assert not plan.supported
    assert any("Redis Cluster" in b.reason for b in plan.diff_classification.blocked_reasons)
    chosen = await AsyncMigrationPlanner().create_plan(
        schema.name, redis_client=aclient, schema_patch=patch
    )
    assert chosen.mode.__struct_config__.tag == "drop_recreate"
    assert "Redis Cluster" in chosen.warnings[0]
