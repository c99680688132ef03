"""Integrity before destruction: an edited plan is never applied, a damaged or edited backup
is never restored from. Against the real server, every document compared byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio as aioredis
import yaml

from redismigrate.aio.executor import AsyncMigrationExecutor
from redismigrate.backup import (
    HEADER_CHECKSUM,
    MANIFEST_CHECKSUM,
    BackupCorrupt,
    BackupField,
    BackupHeader,
    VectorBackup,
    backup_paths,
    content_checksum,
    new_manifest,
    read_header,
    read_manifest,
    verify_backup,
    write_manifest,
)
from redismigrate.errors import BadInputError
from redismigrate.ftinfo import IndexStats
from redismigrate.integrity import (
    backup_problems,
    check_plan,
    expected_backup_fields,
    plan_problems,
    verify_backup_for_plan,
)
from redismigrate.patch import SchemaPatch
from redismigrate.plan import (
    MigrationPlan,
    build_plan,
    plan_content_hash,
    plan_hash,
    schema_hash,
    seal_plan,
)
from redismigrate.render import ft_create_args
from redismigrate.sync import IndexInspector, MigrationPlanner
from tests.test_cli import assert_one_line_error
from tests.test_executor import DOCS, load, make_schema, snapshot
from tests.test_plan_rules import REDIS_8_0, plan, source
from tests.test_recovery import apply_cli, make_plan

# --------------------------------------------------------------------------- helpers


def rollback_cli(redis_url: str, backup: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redismigrate", "rollback", "--backup-dir", str(backup),
         "--url", redis_url, *extra],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def edit_json(path: Path, change: Any, *, reseal: str | None = None) -> None:
    """Apply ``change`` to a JSON file's data; with ``reseal``, recompute that checksum key
    (someone who knows the format and covers their tracks)."""
    data = json.loads(path.read_text())
    change(data)
    if reseal is not None:
        data.pop(reseal, None)
        data[reseal] = content_checksum(data)
    path.write_text(json.dumps(data, indent=2))


def edit_plan_file(path: Path, change: Any, *, reseal: bool = False) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    if reseal:
        seal_plan(MigrationPlan.from_dict(data)).dump(path)
    else:
        path.write_text(yaml.safe_dump(data, sort_keys=False))


def embedding_attrs(schema: dict[str, Any]) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == "embedding")["attrs"]  # type: ignore[no-any-return]


def target_to_bfloat16(data: dict[str, Any]) -> None:
    embedding_attrs(data["merged_target_schema"])["datatype"] = "bfloat16"


def vector_change_to_bfloat16(data: dict[str, Any]) -> None:
    data["vector_changes"][0]["target_datatype"] = "bfloat16"
    data["vector_changes"][0]["encoding"]["target"] = "bfloat16"


def index_state(client: redis.Redis, redis_url: str, name: str) -> Any:
    """What FT.INFO says of ``name`` (schema and document count), or None when it is gone."""
    names = {n.decode() if isinstance(n, bytes) else n for n in client.execute_command("FT._LIST")}
    if name not in names:
        return None
    described = IndexInspector().describe(name, redis_url=redis_url)
    return described.schema.canonical(), described.stats.num_docs


def files_in(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------- plans (pure)

PLANS = {
    "float16": lambda: plan({"datatype": "float16"}),
    "int8 l2": lambda: plan({"datatype": "int8"}, schema=source("l2")),
    "int8 cosine": lambda: plan({"datatype": "int8"}),
    "uint8 l2": lambda: plan({"datatype": "uint8"}, schema=source("l2")),
    "uint8 ip forced": lambda: plan({"datatype": "uint8"}, schema=source("ip"), force=True),
    "json bfloat16": lambda: plan({"datatype": "bfloat16"}, schema=source(storage="json")),
    "index only": lambda: plan({"algorithm": "hnsw", "m": 8}),
    "online": lambda: plan({"algorithm": "hnsw"}, mode="online"),
}


@pytest.mark.parametrize("name", PLANS)
@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_a_plan_carries_a_content_hash_that_survives_its_file(
    name: str, suffix: str, tmp_path: Path
) -> None:
    made = PLANS[name]()
    assert made.supported
    assert made.content_hash == plan_content_hash(made) and made.content_hash.startswith("sha256:")
    assert plan_problems(made) == []
    path = tmp_path / f"plan.{suffix}"
    made.dump(path)
    loaded = MigrationPlan.load(path)
    assert loaded == made
    assert plan_problems(loaded) == []
    # the same hashes whether the plan comes from memory or from its file
    assert plan_hash(loaded) == plan_hash(made)
    assert plan_content_hash(loaded) == made.content_hash
    assert list(made.to_dict())[:3] == ["version", "mode", "content_hash"]


def test_renames_prefix_moves_and_field_changes_make_consistent_plans() -> None:
    for changes in (
        {"rename_fields": [{"old_name": "embedding", "new_name": "vec"}]},
        {"rename_fields": [{"old_name": "title", "new_name": "name"}]},
        {"index": {"name": "idx2", "prefix": "doc:v2:"}},
        {"remove_fields": ["title"], "add_fields": [{"name": "brand", "type": "tag"}]},
    ):
        made = build_plan(
            source_schema=source(),
            source_stats=IndexStats(num_docs=10),
            key_sample=["doc:1"],
            capabilities=REDIS_8_0,
            patch=SchemaPatch.from_dict({"changes": changes}),
        )
        assert made.supported, made.diff_classification
        assert plan_problems(made) == [], changes


@pytest.mark.parametrize("reseal", [False, True], ids=["edited", "edited-and-resealed"])
@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (target_to_bfloat16, "merged_target_schema.fields['embedding'].attrs.datatype"),
        (vector_change_to_bfloat16, "vector_changes['embedding'].target_datatype"),
        (
            lambda d: d["vector_changes"][0].update(target_datatype="bfloat16"),
            "vector_changes['embedding'] goes float32 -> bfloat16 but its encoding goes",
        ),
        (
            lambda d: embedding_attrs(d["source"]["schema_snapshot"]).update(datatype="float16"),
            "source.schema_hash",
        ),
        (
            lambda d: d["rename_operations"].update(
                rename_fields=[
                    {"old_name": "title", "new_name": "t", "old_path": "title", "new_path": "t"}
                ]
            ),
            "rename_operations.rename_fields",
        ),
        (
            lambda d: d["vector_changes"][0].update(rewrite_documents=False),
            "vector_changes['embedding'].rewrite_documents",
        ),
    ],
)
def test_a_plan_edited_after_review_is_refused(
    edit: Any, needle: str, reseal: bool, tmp_path: Path
) -> None:
    path = tmp_path / "plan.yaml"
    plan({"datatype": "float16"}).dump(path)
    edit_plan_file(path, edit, reseal=reseal)
    edited = MigrationPlan.load(path)
    problems = plan_problems(edited)
    if not reseal:
        assert problems[0].startswith("its content does not match its content_hash")
    assert any(needle in p for p in problems), problems
    with pytest.raises(BadInputError) as info:
        check_plan(edited, source=str(path))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"plan {path} cannot be applied: ")
    assert message.endswith("run `redismigrate plan` again and review the new plan")


def test_a_plan_without_content_hash_or_unblocked_by_hand_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    made = plan({"datatype": "float16"})
    data = made.to_dict()
    del data["content_hash"]  # as a plan written before content hashes
    old = MigrationPlan.from_dict(data)
    assert plan_problems(old)[0].startswith("it has no content_hash")

    blocked = plan({"datatype": "uint8"}, schema=source("ip"))  # uint8 + IP needs --force
    assert not blocked.supported and plan_problems(blocked) == []
    data = blocked.to_dict()
    data["diff_classification"] = {"supported": True}
    MigrationPlan.from_dict({**data, "content_hash": ""}).dump(path)
    unblocked = seal_plan(MigrationPlan.load(path))
    problems = plan_problems(unblocked)
    assert problems and "it says it is supported, but re-encode 'embedding'" in problems[0]


# --------------------------------------------------------------------------- backup files


def header(**changes: Any) -> BackupHeader:
    fields = {
        "embedding": BackupField(
            source_datatype="float32", target_datatype="float16", dims=2, document_field="emb"
        )
    }
    values: dict[str, Any] = {
        "index_name": "idx",
        "plan_hash": "p",
        "source_schema_hash": "s",
        "target_schema_hash": "t",
        "fields": fields,
        "batch_size": 2,
    }
    return BackupHeader(**{**values, **changes})


def write_backup(directory: Path, batches: int = 3, **changes: Any) -> VectorBackup:
    backup = VectorBackup.create(directory, header(**changes))
    for b in range(batches):
        keys = [f"doc:{b}:{i}".encode() for i in range(2)]
        backup.append_batch(keys, {"embedding": [bytes([b, i]) * 4 for i in range(2)]})
    backup.close()
    return backup


def test_header_and_manifest_carry_a_checksum_and_an_edit_is_named(tmp_path: Path) -> None:
    write_backup(tmp_path)
    paths = backup_paths(tmp_path, "idx")
    on_disk = json.loads(paths.header.read_text())
    claimed = on_disk.pop(HEADER_CHECKSUM)
    assert claimed == content_checksum(on_disk)
    assert read_header(paths.header).dump_completed_batches == 3

    edit_json(paths.header, lambda d: d["fields"]["embedding"].update(document_field="title"))
    with pytest.raises(BackupCorrupt) as info:
        read_header(paths.header)
    assert str(paths.header) in str(info.value) and "header_checksum" in str(info.value)
    with pytest.raises(BackupCorrupt):
        VectorBackup.open(tmp_path, "idx")

    edit_json(paths.header, lambda d: d.pop(HEADER_CHECKSUM))
    with pytest.raises(BackupCorrupt, match="has no header_checksum"):
        read_header(paths.header)

    manifest = write_manifest(tmp_path, new_manifest("idx", "p", 2))
    assert read_manifest(manifest).workers == 2
    edit_json(manifest, lambda d: d.update(workers=1, shards=d["shards"][:1]))
    with pytest.raises(BackupCorrupt) as info:
        read_manifest(manifest)
    assert str(manifest) in str(info.value) and MANIFEST_CHECKSUM in str(info.value)


def test_verify_backup_reads_every_frame_and_count(tmp_path: Path) -> None:
    write_backup(tmp_path, batches=4)
    contents = verify_backup(tmp_path, "idx")
    assert (contents.frames, contents.keys) == (4, 8)
    paths = backup_paths(tmp_path, "idx")

    committed = paths.data.read_bytes()
    flip_byte(paths.data, len(committed) - 3)  # inside the last frame's payload
    with pytest.raises(BackupCorrupt, match="checksum mismatch") as info:
        verify_backup(tmp_path, "idx")
    assert str(paths.data) in str(info.value)
    paths.data.write_bytes(committed)

    # a header resealed with a wrong count: the frames say otherwise
    edit_json(paths.header, lambda d: d.update(keys_backed_up=9), reseal=HEADER_CHECKSUM)
    with pytest.raises(BackupCorrupt, match="holds 8 keys but its header counts 9"):
        verify_backup(tmp_path, "idx")
    edit_json(paths.header, lambda d: d.update(keys_backed_up=8), reseal=HEADER_CHECKSUM)
    # a header claiming fewer frames than the file holds
    edit_json(paths.header, lambda d: d.update(dump_completed_batches=5), reseal=HEADER_CHECKSUM)
    with pytest.raises(BackupCorrupt, match="counts 5 batches"):
        verify_backup(tmp_path, "idx")


def test_verify_backup_checks_every_shard_belongs(tmp_path: Path) -> None:
    write_manifest(tmp_path, new_manifest("idx", "p", 2))
    VectorBackup.create(tmp_path, header()).close()
    for worker in range(2):
        write_backup(tmp_path, batches=2 + worker, worker=worker)
    contents = verify_backup(tmp_path, "idx")
    assert (contents.frames, contents.keys, len(contents.shards)) == (5, 10, 2)

    shard = backup_paths(tmp_path, "idx", 1).header
    edit_json(shard, lambda d: d.update(plan_hash="other"), reseal=HEADER_CHECKSUM)
    with pytest.raises(BackupCorrupt, match="plan_hash differ"):
        verify_backup(tmp_path, "idx")
    edit_json(shard, lambda d: d.update(plan_hash="p"), reseal=HEADER_CHECKSUM)
    flip_byte(backup_paths(tmp_path, "idx", 1).data)
    with pytest.raises(BackupCorrupt, match=r"idx\.w1\.data is corrupt"):
        verify_backup(tmp_path, "idx")


def test_a_header_is_checked_against_its_plan(tmp_path: Path) -> None:
    made = plan({"datatype": "float16"})
    expected = expected_backup_fields(made)
    assert expected == {
        "embedding": BackupField(
            source_datatype="float32",
            target_datatype="float16",
            dims=16,
            document_field="embedding",
        )
    }
    good = header(
        plan_hash=plan_hash(made),
        source_schema_hash=made.source.schema_hash,
        target_schema_hash=schema_hash(made.merged_target_schema),
        fields=expected,
    )
    VectorBackup.create(tmp_path, good).close()
    assert backup_problems(verify_backup(tmp_path, "idx"), made) == []
    assert verify_backup_for_plan(tmp_path, made).frames == 0
    bad_field = {"embedding": msgspec.structs.replace(expected["embedding"], dims=8)}
    (tmp_path / "b").mkdir()
    VectorBackup.create(tmp_path / "b", msgspec.structs.replace(good, fields=bad_field)).close()
    with pytest.raises(BackupCorrupt) as info:
        verify_backup_for_plan(tmp_path / "b", made)
    assert "nothing was undone" in str(info.value) and "dims 8" in str(info.value)


# --------------------------------------------------------------------------- the real server


@pytest.fixture
def migrated(
    sync_client: redis.Redis,
    redis_url: str,
    ns: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> tuple[str, Path, str]:
    """A float32 index migrated to float16 by the CLI: (index, backup dir, key prefix)."""
    workers = getattr(request, "param", "1")
    schema = make_schema(f"{ns}_i", f"{ns}:i:", "hash")
    sync_client.execute_command(*ft_create_args(schema))
    load(sync_client, f"{ns}:i:", "hash")
    plan_path = make_plan(redis_url, schema.name, "float16", tmp_path / "plan.yaml")
    backup = tmp_path / "backup"
    done = apply_cli(redis_url, plan_path, backup, None, "--workers", workers)
    assert done.returncode == 0, done.stdout + done.stderr
    return schema.name, backup, f"{ns}:i:"


def assert_nothing_changed(
    client: redis.Redis,
    redis_url: str,
    prefix: str,
    index: str,
    before: Any,
    files: dict[str, bytes],
    backup: Path,
) -> None:
    docs, state = before
    after = snapshot(client, prefix, "hash")
    assert len(after) == len(docs) == DOCS
    assert after == docs  # every field of every document, byte for byte
    assert index_state(client, redis_url, index) == state
    assert files_in(backup) == files  # the backup is not renamed away either


@pytest.mark.parametrize("migrated", ["1", "3"], indirect=True, ids=["1 worker", "3 workers"])
def test_rollback_refuses_a_flipped_byte_and_changes_nothing(
    sync_client: redis.Redis, redis_url: str, migrated: tuple[str, Path, str]
) -> None:
    index, backup, prefix = migrated
    data_files = sorted(p for p in backup.glob("*.data") if p.stat().st_size)
    flip_byte(data_files[-1])
    before = snapshot(sync_client, prefix, "hash"), index_state(sync_client, redis_url, index)
    assert before[1] is not None
    files = files_in(backup)

    refused = rollback_cli(redis_url, backup, "--recreate-index")
    assert_one_line_error(refused, 1, "nothing was undone", str(data_files[-1]), "corrupt at byte")
    assert_nothing_changed(sync_client, redis_url, prefix, index, before, files, backup)


async def test_rollback_api_refuses_before_touching_redis(
    aclient: aioredis.Redis,
    sync_client: redis.Redis,
    redis_url: str,
    migrated: tuple[str, Path, str],
) -> None:
    index, backup, prefix = migrated
    flip_byte(next(backup.glob("*.data")), 20)
    before = snapshot(sync_client, prefix, "hash"), index_state(sync_client, redis_url, index)
    files = files_in(backup)
    with pytest.raises(BackupCorrupt, match="checksum mismatch"):
        await AsyncMigrationExecutor().rollback(
            backup_dir=backup, redis_client=aclient, recreate_index=True
        )
    assert_nothing_changed(sync_client, redis_url, prefix, index, before, files, backup)


@pytest.mark.parametrize("reseal", [False, True], ids=["edited", "edited-and-resealed"])
def test_rollback_refuses_an_edited_header_and_changes_nothing(
    sync_client: redis.Redis, redis_url: str, migrated: tuple[str, Path, str], reseal: bool
) -> None:
    index, backup, prefix = migrated
    header_file = backup_paths(backup, index).header
    edit_json(
        header_file,
        lambda d: d["fields"]["embedding"].update(document_field="title"),
        reseal=HEADER_CHECKSUM if reseal else None,
    )
    before = snapshot(sync_client, prefix, "hash"), index_state(sync_client, redis_url, index)
    files = files_in(backup)
    refused = rollback_cli(redis_url, backup, "--recreate-index")
    if reseal:  # a valid header, but not the one the plan kept beside it makes
        needles = ["nothing was undone", "does not match its plan", "document_field 'title'"]
    else:
        needles = [str(header_file), "does not match its header_checksum"]
    assert_one_line_error(refused, 1, *needles)
    assert_nothing_changed(sync_client, redis_url, prefix, index, before, files, backup)


def test_rollback_refuses_an_edited_plan_copy_and_changes_nothing(
    sync_client: redis.Redis, redis_url: str, migrated: tuple[str, Path, str]
) -> None:
    index, backup, prefix = migrated
    copy = next(backup.glob("*.plan.yaml"))
    edit_plan_file(copy, lambda d: d["source"]["keyspace"].update(prefixes=["elsewhere:"]))
    before = snapshot(sync_client, prefix, "hash"), index_state(sync_client, redis_url, index)
    files = files_in(backup)
    refused = rollback_cli(redis_url, backup, "--recreate-index")
    assert_one_line_error(refused, 1, "nothing was undone", "plan_hash")
    assert_nothing_changed(sync_client, redis_url, prefix, index, before, files, backup)


def test_automatic_undo_refuses_a_corrupt_backup_and_changes_nothing(
    sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path
) -> None:
    """Killed right after the drop; a byte of the first frame flips on disk; the resumed
    run cannot re-encode from it, and its automatic undo must not start either."""
    schema = make_schema(f"{ns}_u", f"{ns}:u:", "hash")
    sync_client.execute_command(*ft_create_args(schema))
    load(sync_client, f"{ns}:u:", "hash")
    before_docs = snapshot(sync_client, f"{ns}:u:", "hash")
    plan_path = make_plan(redis_url, schema.name, "float16", tmp_path / "plan.yaml")
    backup = tmp_path / "backup"
    killed = apply_cli(redis_url, plan_path, backup, "after_drop")
    assert killed.returncode != 0
    data = backup_paths(backup, schema.name).data
    flip_byte(data, 40)  # inside frame 0's payload

    resumed = apply_cli(redis_url, plan_path, backup)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 1, output
    assert "Traceback" not in output
    assert "nothing was undone" in output and "corrupt at byte 0" in output
    after = snapshot(sync_client, f"{ns}:u:", "hash")
    assert len(after) == DOCS and after == before_docs  # no vector restored, none re-encoded
    assert data.exists() and not list(backup.glob("*.rolled-back-*"))


@pytest.mark.parametrize("reseal", [False, True], ids=["edited", "edited-and-resealed"])
@pytest.mark.parametrize(
    "edit", [target_to_bfloat16, vector_change_to_bfloat16], ids=["target", "vector_changes"]
)
def test_apply_refuses_a_plan_edited_after_review_and_changes_nothing(
    sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path, edit: Any, reseal: bool
) -> None:
    schema = make_schema(f"{ns}_p", f"{ns}:p:", "hash")
    sync_client.execute_command(*ft_create_args(schema))
    load(sync_client, f"{ns}:p:", "hash")
    plan_path = make_plan(redis_url, schema.name, "float16", tmp_path / "plan.yaml")
    edit_plan_file(plan_path, edit, reseal=reseal)
    before = (
        snapshot(sync_client, f"{ns}:p:", "hash"),
        index_state(sync_client, redis_url, schema.name),
    )
    assert before[1] is not None and before[1][0].same_index_as(schema)

    refused = apply_cli(redis_url, plan_path, tmp_path / "backup")
    assert_one_line_error(refused, 2, f"plan {plan_path} cannot be applied", "plan` again")
    backup = tmp_path / "backup"
    assert not backup.exists() or not list(backup.glob("migration_backup_*"))
    after = snapshot(sync_client, f"{ns}:p:", "hash")
    assert len(after) == DOCS and after == before[0]
    assert index_state(sync_client, redis_url, schema.name) == before[1]


async def test_apply_api_refuses_an_edited_plan(
    aclient: aioredis.Redis, sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path
) -> None:
    schema = make_schema(f"{ns}_q", f"{ns}:q:", "hash")
    sync_client.execute_command(*ft_create_args(schema))
    load(sync_client, f"{ns}:q:", "hash")
    plan_path = make_plan(redis_url, schema.name, "float16", tmp_path / "plan.yaml")
    edit_plan_file(plan_path, target_to_bfloat16)
    before = (
        snapshot(sync_client, f"{ns}:q:", "hash"),
        index_state(sync_client, redis_url, schema.name),
    )
    with pytest.raises(BadInputError, match="content_hash"):
        await AsyncMigrationExecutor().apply(
            MigrationPlan.load(plan_path), redis_client=aclient, backup_dir=tmp_path / "b"
        )
    assert snapshot(sync_client, f"{ns}:q:", "hash") == before[0]
    assert index_state(sync_client, redis_url, schema.name) == before[1]


def test_rollback_verifies_and_restores_a_renamed_re_encoded_vector_field(
    sync_client: redis.Redis, redis_url: str, ns: str, tmp_path: Path
) -> None:
    """The header's document_field is the renamed hash field: the check before the rollback
    agrees with what the apply wrote, and the rollback puts every byte back."""
    schema = make_schema(f"{ns}_n", f"{ns}:n:", "hash")
    sync_client.execute_command(*ft_create_args(schema))
    load(sync_client, f"{ns}:n:", "hash")
    before = snapshot(sync_client, f"{ns}:n:", "hash")
    changes = {
        "rename_fields": [{"old_name": "embedding", "new_name": "vec"}],
        "update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}],
    }
    made = MigrationPlanner().create_plan(
        schema.name, redis_url=redis_url, schema_patch=SchemaPatch.from_dict({"changes": changes})
    )
    assert made.supported, made.diff_classification
    assert expected_backup_fields(made)["embedding"].document_field == "vec"
    path = tmp_path / "plan.yaml"
    made.dump(path)
    backup = tmp_path / "backup"
    done = apply_cli(redis_url, path, backup)
    assert done.returncode == 0, done.stdout + done.stderr
    assert verify_backup_for_plan(backup, MigrationPlan.load(path)).keys == DOCS
    rolled = rollback_cli(redis_url, backup, "--recreate-index")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert snapshot(sync_client, f"{ns}:n:", "hash") == before
