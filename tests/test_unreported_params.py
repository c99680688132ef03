"""Vector parameters the server does not report back: HNSW EF_RUNTIME and EPSILON, FLAT
BLOCK_SIZE (FT.INFO leaves them out; search 2.x tells them through FT.DEBUG VECSIM_INFO,
search 8 refuses _FT.DEBUG unless enable-debug-command is on), INITIAL_CAP (reported
nowhere), SVS-VAMANA SEARCH_WINDOW_SIZE and EPSILON.

Against the real server: they survive a migration and a rollback where FT.DEBUG answers;
where it does not (a user without FT.DEBUG, which is how Redis 8 behaves) the plan says
they are unknown, a patch sets them without failing validation, and the next plan keeps
the values the earlier run recorded. The pure part: FT.INFO of search 8 and the ledger's
recall.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import yaml

from redismigrate.capabilities import ServerCapabilities
from redismigrate.ftinfo import schema_from_ft_info, unreported_in_ft_info
from redismigrate.ledger import LedgerEntry, recall_recorded, unreportable_params
from redismigrate.plan import MigrationPlan
from redismigrate.render import ft_create_args
from redismigrate.schema import IndexSchema, UnreportedAttribute, VectorField
from tests.test_cli import cli

DIMS = 8
DOCS = 50


def make_index(client: redis.Redis, name: str, prefix: str) -> None:
    """HNSW EF_RUNTIME 150 EPSILON 0.05 and FLAT BLOCK_SIZE 256, as a user creates them."""
    client.execute_command(
        "FT.CREATE", name, "ON", "HASH", "PREFIX", "1", prefix, "SCHEMA",
        "title", "TEXT",
        "h", "VECTOR", "HNSW", "10", "TYPE", "FLOAT32", "DIM", str(DIMS),
        "DISTANCE_METRIC", "COSINE", "EF_RUNTIME", "150", "EPSILON", "0.05",
        "f", "VECTOR", "FLAT", "8", "TYPE", "FLOAT32", "DIM", str(DIMS),
        "DISTANCE_METRIC", "L2", "BLOCK_SIZE", "256",
    )  # fmt: skip
    rng = np.random.default_rng(11)
    pipe = client.pipeline(transaction=False)
    for i in range(DOCS):
        h = rng.normal(size=DIMS).astype(np.float32).tobytes()
        f = rng.normal(size=DIMS).astype(np.float32).tobytes()
        pipe.hset(f"{prefix}{i}", mapping={"title": f"doc {i}", "h": h, "f": f})
    pipe.execute()


def vecsim(client: redis.Redis, index: str, field: str) -> dict[str, Any]:
    """FT.DEBUG VECSIM_INFO as a dict (the HNSW backend of a tiered index)."""

    def as_dict(reply: Any) -> dict[str, Any]:
        items = list(reply)
        return {
            (k.decode() if isinstance(k, bytes) else str(k)).upper(): v
            for k, v in zip(items[::2], items[1::2], strict=True)
        }

    info = as_dict(client.execute_command("FT.DEBUG", "VECSIM_INFO", index, field))
    if "BACKEND_INDEX" in info:
        info = as_dict(info["BACKEND_INDEX"])
    return info


def assert_made_as_created(client: redis.Redis, index: str) -> None:
    hnsw, flat = vecsim(client, index, "h"), vecsim(client, index, "f")
    assert int(hnsw["EF_RUNTIME"]) == 150
    assert float(hnsw["EPSILON"]) == pytest.approx(0.05)
    assert int(flat["BLOCK_SIZE"]) == 256


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


FLOAT16 = "version: 1\nchanges:\n  update_fields:\n    - {name: h, attrs: {datatype: float16}}\n"


FLAT16_BOTH = (
    "version: 1\nchanges:\n  update_fields:\n"
    "    - {name: h, attrs: {datatype: float16}}\n"
    "    - {name: f, attrs: {datatype: float16}}\n"
)


def plan_cli(index: str, patch: Path, url: str, out: Path) -> MigrationPlan:
    result = cli(
        "plan", "--index", index, "--schema-patch", str(patch), "--url", url,
        "--plan-out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return MigrationPlan.load(out)


def apply_cli(plan: Path, backup: Path, url: str) -> Any:
    result = cli("apply", "--plan", str(plan), "--backup-dir", str(backup), "--url", url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation: passed" in result.stdout
    return result


def rollback_cli(backup: Path, url: str) -> None:
    result = cli("rollback", "--backup-dir", str(backup), "--url", url, "--recreate-index")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_migration_and_a_rollback_keep_ef_runtime_epsilon_and_block_size(
    redis_url: str, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    index = f"{ns}_kept"
    make_index(sync_client, index, f"{ns}:kept:")
    patch = write(tmp_path / "patch.yaml", FLAT16_BOTH)
    plan = plan_cli(index, patch, redis_url, tmp_path / "plan.yaml")
    # FT.DEBUG answers here: only INITIAL_CAP is unknown
    assert {(u.field, u.attribute) for u in plan.source.unreported} == {
        ("h", "initial_cap"),
        ("f", "initial_cap"),
    }
    apply_cli(tmp_path / "plan.yaml", tmp_path / "backup", redis_url)
    assert_made_as_created(sync_client, index)
    assert vecsim(sync_client, index, "h")["TYPE"] in (b"FLOAT16", "FLOAT16")
    rollback_cli(tmp_path / "backup", redis_url)
    assert_made_as_created(sync_client, index)
    assert vecsim(sync_client, index, "h")["TYPE"] in (b"FLOAT32", "FLOAT32")


@pytest.fixture
def no_debug_url(redis_url: str, sync_client: redis.Redis) -> Iterator[str]:
    """A user that may run everything but FT.DEBUG: FT.INFO is all it learns, as on Redis 8
    (where _FT.DEBUG is refused unless the server runs with enable-debug-command)."""
    user, password = f"nodebug{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    sync_client.execute_command(
        "ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-ft.debug"
    )
    try:
        yield redis_url.replace("redis://", f"redis://{user}:{password}@", 1)
    finally:
        sync_client.execute_command("ACL", "DELUSER", user)


def test_where_the_server_cannot_tell_the_plan_says_so_and_a_patch_sets_them(
    no_debug_url: str, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    index = f"{ns}_blind"
    make_index(sync_client, index, f"{ns}:blind:")
    denied = redis.Redis.from_url(no_debug_url)
    with pytest.raises(redis.exceptions.NoPermissionError):
        denied.execute_command("FT.DEBUG", "VECSIM_INFO", index, "h")
    denied.close()

    # 1. a plain float16 plan: every unreported parameter is listed, with what it becomes
    blind = plan_cli(index, write(tmp_path / "p1.yaml", FLOAT16), no_debug_url, tmp_path / "1.yaml")
    assert {(u.field, u.attribute, u.recorded) for u in blind.source.unreported} == {
        ("h", "ef_runtime", None),
        ("h", "epsilon", None),
        ("h", "initial_cap", None),
        ("f", "block_size", None),
        ("f", "initial_cap", None),
    }
    [h_line] = [w for w in blind.warnings if w.startswith("Vector field 'h'")]
    assert "ef_runtime 10" in h_line and "epsilon 0.01" in h_line
    assert "search quality may change" in h_line and "a patch can set them" in h_line
    [f_line] = [w for w in blind.warnings if w.startswith("Vector field 'f'")]
    assert "block_size 1024" in f_line
    info = cli("index", "info", "--index", index, "--url", no_debug_url)
    assert "h.ef_runtime: unknown" in info.stdout, info.stdout

    # 2. a patch sets them: applied, and validation (which checks only what the server
    # reports) passes
    set_them = write(
        tmp_path / "p2.yaml",
        "version: 1\nchanges:\n  update_fields:\n"
        "    - {name: h, attrs: {datatype: float16, ef_runtime: 150, epsilon: 0.05}}\n"
        "    - {name: f, attrs: {block_size: 256}}\n",
    )
    patched = plan_cli(index, set_them, no_debug_url, tmp_path / "2.yaml")
    [h_line] = [w for w in patched.warnings if w.startswith("Vector field 'h'")]
    assert "ef_runtime 150" in h_line and "as this change sets" in h_line
    apply_cli(tmp_path / "2.yaml", tmp_path / "backup2", no_debug_url)
    assert_made_as_created(sync_client, index)

    # 3. the next plan keeps what that run recorded in the ledger (and index info says so)
    add_tag = write(
        tmp_path / "p3.yaml", "version: 1\nchanges:\n  add_fields:\n    - {name: tag, type: tag}\n"
    )
    kept = plan_cli(index, add_tag, no_debug_url, tmp_path / "3.yaml")
    recorded = {(u.field, u.attribute): u for u in kept.source.unreported}
    assert recorded["h", "ef_runtime"].recorded == 150
    assert recorded["f", "block_size"].recorded == 256
    assert "apply run" in (recorded["h", "ef_runtime"].recorded_by or "")
    target = kept.merged_target_schema
    h, f = target.field("h"), target.field("f")
    assert isinstance(h, VectorField) and isinstance(f, VectorField)
    assert (h.attrs.ef_runtime, h.attrs.epsilon, f.attrs.block_size) == (150, 0.05, 256)
    assert any("kept as an earlier redismigrate run made it" in w for w in kept.warnings)
    info = cli("index", "info", "--index", index, "--url", no_debug_url)
    assert "h.ef_runtime: 150, as recorded by apply run" in info.stdout, info.stdout

    # ... through that migration and its rollback
    apply_cli(tmp_path / "3.yaml", tmp_path / "backup3", no_debug_url)
    assert_made_as_created(sync_client, index)
    rollback_cli(tmp_path / "backup3", no_debug_url)
    assert_made_as_created(sync_client, index)
    back = schema_from_ft_info(sync_client.execute_command("FT.INFO", index))
    assert back.field_names == ["title", "h", "f"]


# --------------------------------------------------------------------------- pure


def redis8_ft_info() -> dict[str, Any]:
    """FT.INFO of search 8 (RESP3) for INDEXALL ENABLE, an HNSW and a FLAT field: the
    vector branch of the attributes loop in RediSearch src/info/info_command.c."""
    return {
        "index_name": "idx",
        "index_options": [],
        "index_definition": {
            "key_type": "HASH",
            "prefixes": ["doc:"],
            "default_score": 1.0,
            "indexes_all": "true",
        },
        "attributes": [
            {
                "identifier": "h",
                "attribute": "h",
                "type": "VECTOR",
                "algorithm": "HNSW",
                "data_type": "FLOAT32",
                "dim": 8,
                "distance_metric": "COSINE",
                "M": 16,
                "ef_construction": 200,
                "flags": [],
            },
            {
                "identifier": "f",
                "attribute": "f",
                "type": "VECTOR",
                "algorithm": "FLAT",
                "data_type": "FLOAT32",
                "dim": 8,
                "distance_metric": "L2",
                "flags": [],
            },
        ],
    }


def test_search_8_ft_info_names_what_it_leaves_out_and_indexall_round_trips() -> None:
    reply = redis8_ft_info()
    schema = schema_from_ft_info(reply)
    assert schema.index.options.indexes_all is True
    assert [(u.field, u.attribute) for u in unreported_in_ft_info(reply)] == [
        ("h", "ef_runtime"),
        ("h", "epsilon"),
        ("h", "initial_cap"),
        ("f", "block_size"),
        ("f", "initial_cap"),
    ]
    create = ft_create_args(schema.canonical())
    assert create[create.index("INDEXALL") + 1] == "ENABLE"
    # the schema file says so, and reads back
    again = IndexSchema.from_dict(yaml.safe_load(schema.to_yaml()))
    assert again.index.options.indexes_all is True
    old = ServerCapabilities(redis_version="7.4.1", search_version=(2, 10, 5))
    assert any("INDEXALL" in p for p in old.problems_with(schema))
    new = ServerCapabilities(redis_version="8.0.2", search_version=(8, 0, 2))
    assert new.problems_with(schema) == []


def test_svs_reports_of_search_8_are_read_in_full() -> None:
    reply = redis8_ft_info()
    reply["attributes"] = [
        {
            "identifier": "s",
            "attribute": "s",
            "type": "VECTOR",
            "algorithm": "SVS-VAMANA",
            "data_type": "FLOAT32",
            "dim": 8,
            "distance_metric": "L2",
            "graph_max_degree": 32,
            "construction_window_size": 200,
            "compression": "LeanVec4x8",
            "training_threshold": 10240,
            "reduced_dim": 4,
            "flags": [],
        }
    ]
    schema = schema_from_ft_info(reply)
    field = schema.field("s")
    assert isinstance(field, VectorField) and field.attrs.reduce == 4
    # FLAT/HNSW/SVS defaults fill in as the server does: a patch-made target equals it
    made = IndexSchema.from_dict(
        {
            "index": {"name": "idx", "prefix": "doc:", "options": {"indexes_all": True}},
            "fields": [
                {
                    "name": "s",
                    "type": "vector",
                    "attrs": {
                        "dims": 8,
                        "algorithm": "svs-vamana",
                        "distance_metric": "l2",
                        "compression": "LeanVec4x8",
                    },
                }
            ],
        }
    )
    assert schema.same_index_as(made)
    assert [(u.field, u.attribute) for u in unreported_in_ft_info(reply)] == [
        ("s", "search_window_size"),
        ("s", "epsilon"),
    ]


def _entry(**kwargs: Any) -> LedgerEntry:
    base: dict[str, Any] = {
        "run_id": "r1",
        "command": "apply",
        "index_name": "idx",
        "status": "succeeded",
        "started_at": "2025-01-01T00:00:00+00:00",
        "finished_at": "2025-01-01T00:01:00+00:00",
        "host": "h",
        "pid": 1,
    }
    return LedgerEntry(**{**base, **kwargs})


def _live() -> IndexSchema:
    return schema_from_ft_info(redis8_ft_info())


UNKNOWN = [
    UnreportedAttribute(field="h", attribute="ef_runtime"),
    UnreportedAttribute(field="f", attribute="block_size"),
]


def _made(ef_runtime: int, block_size: int, dims: int = 8) -> IndexSchema:
    return IndexSchema.from_dict(
        {
            "index": {"name": "idx", "prefix": "doc:"},
            "fields": [
                {
                    "name": "h",
                    "type": "vector",
                    "attrs": {"dims": dims, "algorithm": "hnsw", "ef_runtime": ef_runtime},
                },
                {
                    "name": "f",
                    "type": "vector",
                    "attrs": {"dims": 8, "distance_metric": "l2", "block_size": block_size},
                },
            ],
        }
    )


def test_the_newest_run_that_made_the_index_gives_the_values() -> None:
    live = _live()
    newer = _entry(run_id="r2", target_params=unreportable_params(_made(150, 256)))
    older = _entry(run_id="r1", target_params=unreportable_params(_made(99, 99)))
    got = recall_recorded([newer, older], "idx", live, UNKNOWN, lambda e: None)
    assert [(u.attribute, u.recorded) for u in got] == [("ef_runtime", 150), ("block_size", 256)]
    assert all("run r2" in (u.recorded_by or "") for u in got)
    # a rollback puts the source back: its values count
    undone = _entry(
        run_id="r3",
        command="rollback",
        source_params=unreportable_params(_made(40, 512)),
        target_params=unreportable_params(_made(1, 1)),
    )
    got = recall_recorded([undone, newer], "idx", live, UNKNOWN, lambda e: None)
    assert [u.recorded for u in got] == [40, 512]


def test_nothing_is_recalled_from_a_run_that_no_longer_made_the_live_index() -> None:
    live = _live()
    made = _entry(target_params=unreportable_params(_made(150, 256)))
    # a later run renamed the index away: whatever is called idx now, it did not make it
    moved = _entry(run_id="r2", target_index="elsewhere")
    assert recall_recorded([moved, made], "idx", live, UNKNOWN, lambda e: None) == UNKNOWN
    # another dims: the index was made again since
    other = _entry(target_params=unreportable_params(_made(150, 256, dims=16)))
    got = recall_recorded([other], "idx", live, UNKNOWN, lambda e: None)
    assert [u.recorded for u in got] == [None, 256]
    # failed and refused runs are passed over
    failed = _entry(run_id="r9", status="failed", target_params=unreportable_params(_made(1, 1)))
    got = recall_recorded([failed, made], "idx", live, UNKNOWN, lambda e: None)
    assert [u.recorded for u in got] == [150, 256]


def test_a_run_the_ledger_kept_no_values_for_is_read_from_its_plan_copy() -> None:
    live = _live()
    entry = _entry(backup_dir="/somewhere", plan_hash="sha256:x")

    class Plan:
        merged_target_schema = _made(150, 256)

        class source:
            schema_snapshot = _made(10, 1024)

    seen: list[LedgerEntry] = []

    def load(e: LedgerEntry) -> Any:
        seen.append(e)
        return Plan

    got = recall_recorded([entry], "idx", live, UNKNOWN, load)
    assert seen == [entry] and [u.recorded for u in got] == [150, 256]
