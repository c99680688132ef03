"""Schemas go both ways between redismigrate and RedisVL (installed for the tests only).

RedisVL's ``IndexSchema.from_dict`` loads every schema redismigrate prints or writes
(``index info --json``, a plan's source snapshot and merged target, a report's target
schema), for hash and JSON, FLAT and HNSW, with every vector parameter as the index
has it; and a schema RedisVL writes (``to_yaml``) is taken by ``plan --target-schema``
with every attribute kept, or named in the plan's warnings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import yaml
from redisvl.index import SearchIndex
from redisvl.schema import IndexSchema as RedisVLSchema

from redismigrate.plan import MigrationPlan
from redismigrate.schema import IndexSchema, TagField, VectorField, default_json_path, type_name
from tests.test_cli import cli

DIMS = 8
DOCS = 20

VECTOR_ATTRS = {
    "flat": {"block_size": 256, "initial_cap": 64, "distance_metric": "l2"},
    "hnsw": {"m": 24, "ef_construction": 150, "ef_runtime": 150, "epsilon": 0.05},
}


def redisvl_dict(name: str, prefix: str, storage: str, algorithm: str) -> dict[str, Any]:
    """A RedisVL schema with a field of each kind it has, attributes set off their defaults."""
    return {
        "index": {"name": name, "prefix": prefix, "storage_type": storage},
        "fields": [
            {"name": "title", "type": "text", "attrs": {"weight": 2.0, "sortable": True}},
            {"name": "brand", "type": "tag", "attrs": {"separator": "|", "case_sensitive": True}},
            {"name": "price", "type": "numeric", "attrs": {"sortable": True}},
            {"name": "loc", "type": "geo"},
            {
                "name": "embedding",
                "type": "vector",
                "attrs": {"dims": DIMS, "algorithm": algorithm, **VECTOR_ATTRS[algorithm]},
            },
        ],
    }


def load_docs(client: redis.Redis, prefix: str, storage: str) -> None:
    rng = np.random.default_rng(5)
    pipe = client.pipeline(transaction=False)
    for i in range(DOCS):
        vector = rng.normal(size=DIMS).astype(np.float32)
        doc = {"title": f"item {i}", "brand": "a|b", "price": i, "loc": "13.4,52.5"}
        if storage == "hash":
            pipe.hset(f"{prefix}:{i}", mapping={**doc, "embedding": vector.tobytes()})
        else:
            body = json.dumps({**doc, "embedding": vector.tolist()})
            pipe.execute_command("JSON.SET", f"{prefix}:{i}", "$", body)
    pipe.execute()


def vector_of_named(schema: RedisVLSchema, name: str) -> dict[str, Any]:
    """A vector field's attributes as RedisVL holds them, enums as lower-case text."""
    attrs: dict[str, Any] = schema.fields[name].attrs.model_dump(exclude_none=True)
    return {k: (v.value.lower() if hasattr(v, "value") else v) for k, v in attrs.items()}


def vector_of(schema: RedisVLSchema) -> dict[str, Any]:
    return vector_of_named(schema, "embedding")


def assert_vector_as_created(
    loaded: RedisVLSchema, algorithm: str, datatype: str = "float32"
) -> None:
    """RedisVL reads the algorithm, datatype, metric and every parameter the server keeps
    (on this server FT.DEBUG reports all but INITIAL_CAP, which nothing reports)."""
    got = vector_of(loaded)
    wanted = {"dims": DIMS, "algorithm": algorithm, "datatype": datatype}
    wanted.update({k: v for k, v in VECTOR_ATTRS[algorithm].items() if k != "initial_cap"})
    wanted.setdefault("distance_metric", "cosine")
    for key, value in wanted.items():
        assert got[key] == value, (key, got)


@pytest.fixture(params=[("hash", "flat"), ("hash", "hnsw"), ("json", "flat"), ("json", "hnsw")])
def redisvl_index(
    request: pytest.FixtureRequest, redis_url: str, sync_client: redis.Redis, ns: str
) -> tuple[str, str, str]:
    storage, algorithm = request.param
    name = f"{ns}_{storage}_{algorithm}"
    schema = RedisVLSchema.from_dict(redisvl_dict(name, f"{ns}:{storage}", storage, algorithm))
    index = SearchIndex(schema, redis_url=redis_url)
    index.create(overwrite=False)
    index.disconnect()
    load_docs(sync_client, f"{ns}:{storage}", storage)
    return name, storage, algorithm


def test_redisvl_loads_index_info_plans_and_reports(
    redis_url: str, redisvl_index: tuple[str, str, str], tmp_path: Path
) -> None:
    name, storage, algorithm = redisvl_index

    info = cli("index", "info", "--index", name, "--url", redis_url, "--json")
    assert info.returncode == 0, info.stderr
    from_info = RedisVLSchema.from_dict(json.loads(info.stdout)["schema"])
    assert from_info.index.name == name and from_info.index.storage_type.value == storage
    assert_vector_as_created(from_info, algorithm)

    patch = tmp_path / "patch.yaml"
    patch.write_text(
        "version: 1\nchanges:\n  update_fields:\n"
        "    - {name: embedding, attrs: {datatype: float16}}\n"
    )
    plan_path = tmp_path / "plan.yaml"
    planned = cli(
        "plan", "--index", name, "--schema-patch", str(patch), "--url", redis_url,
        "--plan-out", str(plan_path),
    )  # fmt: skip
    assert planned.returncode == 0, planned.stdout + planned.stderr
    written = yaml.safe_load(plan_path.read_text())
    source = RedisVLSchema.from_dict(written["source"]["schema_snapshot"])
    target = RedisVLSchema.from_dict(written["merged_target_schema"])
    assert_vector_as_created(source, algorithm)
    assert_vector_as_created(target, algorithm, datatype="float16")
    assert set(target.field_names) == {"title", "brand", "price", "loc", "embedding"}

    report_path = tmp_path / "report.yaml"
    applied = cli(
        "apply", "--plan", str(plan_path), "--backup-dir", str(tmp_path / "backup"),
        "--url", redis_url, "--report-out", str(report_path),
    )  # fmt: skip
    assert applied.returncode == 0, applied.stdout + applied.stderr
    report = yaml.safe_load(report_path.read_text())
    from_report = RedisVLSchema.from_dict(report["target_schema"])
    assert_vector_as_created(from_report, algorithm, datatype="float16")
    # and the index the apply built is the one the report states (JSON float16 runs
    # online: the name is then an alias of the new index, which index info shows)
    after = json.loads(cli("index", "info", "--index", name, "--url", redis_url, "--json").stdout)
    assert after["schema"]["fields"] == report["target_schema"]["fields"]


# ----------------------------------------------------------------- RedisVL -> redismigrate


def rich_redisvl_dict(name: str, prefix: str, storage: str) -> dict[str, Any]:
    """Every attribute RedisVL writes for text, tag, numeric, geo, FLAT and HNSW fields."""
    return {
        "index": {
            "name": name,
            "prefix": prefix,
            "key_separator": ":",
            "storage_type": storage,
            "stopwords": [],
        },
        "fields": [
            {
                "name": "title",
                "type": "text",
                "attrs": {
                    "weight": 2.5,
                    "no_stem": True,
                    "withsuffixtrie": True,
                    "phonetic_matcher": "dm:fr",
                    "sortable": True,
                    "index_missing": True,
                    "index_empty": True,
                },
            },
            {"name": "body", "type": "text", "attrs": {"no_index": True, "sortable": True}},
            {
                "name": "brand",
                "type": "tag",
                "attrs": {
                    "separator": ";",
                    "case_sensitive": True,
                    "withsuffixtrie": True,
                    "sortable": True,
                    "index_missing": True,
                    "index_empty": True,
                },
            },
            {
                "name": "price",
                "type": "numeric",
                "attrs": {"sortable": True, "unf": True, "index_missing": True},
            },
            {"name": "loc", "type": "geo", "attrs": {"sortable": True, "index_missing": True}},
            {
                "name": "embedding",
                "type": "vector",
                "attrs": {
                    "dims": DIMS,
                    "algorithm": "hnsw",
                    "datatype": "float32",
                    "distance_metric": "ip",
                    "m": 24,
                    "ef_construction": 150,
                    "ef_runtime": 150,
                    "epsilon": 0.05,
                    "initial_cap": 100,
                    # (index_missing on a vector: RedisVL 0.28 cannot create that index)
                },
            },
            {
                "name": "thumb",
                "type": "vector",
                "attrs": {
                    "dims": DIMS,
                    "algorithm": "flat",
                    "datatype": "float64",
                    "distance_metric": "l2",
                    "block_size": 256,
                    "initial_cap": 50,
                },
            },
        ],
    }


def _plain(value: Any) -> Any:
    if hasattr(value, "value"):
        value = value.value
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def _ours(schema: IndexSchema, field_name: str, key: str) -> Any:
    field = schema.field(field_name)
    assert field is not None, field_name
    value = getattr(field.attrs, key)
    if isinstance(field, TagField) and key == "separator" and value is None:
        return ","  # the hash default, left out of the canonical form
    return value


def _implied(field: dict[str, Any], key: str, storage: str) -> bool:
    """Flags the server sets itself: UNF of a sortable numeric, case-sensitive tag or
    any sortable JSON value (FT.INFO reports them, so the canonical form has them)."""
    attrs = field.get("attrs", {})
    if key != "unf" or not attrs.get("sortable"):
        return False
    return field["type"] == "numeric" or storage == "json" or bool(attrs.get("case_sensitive"))


def assert_every_attribute_kept(
    written: dict[str, Any], plan: MigrationPlan, storage: str
) -> list[str]:
    """Each attribute of RedisVL's file is in the plan's merged target as written, or a
    warning names it; returns the attributes that were warned about."""
    target = plan.merged_target_schema
    warned: list[str] = []
    index = written["index"]
    assert target.name == index["name"]
    assert target.prefixes == [index["prefix"]]
    assert target.index.key_separator == index["key_separator"]
    assert target.storage_type == index["storage_type"]
    assert target.index.options.stopwords == index["stopwords"]
    assert target.field_names == [f["name"] for f in written["fields"]]
    for field in written["fields"]:
        ours = target.field(field["name"])
        assert ours is not None and type_name(ours) == field["type"]
        if storage == "json":
            assert (ours.path or default_json_path(ours.name)) == field["path"]
        for key, value in field.get("attrs", {}).items():
            got = _ours(target, field["name"], key)
            if _plain(got) == _plain(value):
                continue
            if _implied(field, key, storage) and got is True:
                continue
            notes = [w for w in plan.warnings if f"{field['name']!r}" in w and key in w]
            assert notes, f"{field['name']}.{key}: {value!r} became {got!r} without a warning"
            warned.append(f"{field['name']}.{key}")
    return warned


@pytest.mark.parametrize("storage", ["hash", "json"])
def test_a_schema_redisvl_writes_is_a_target_schema_with_nothing_dropped(
    storage: str, redis_url: str, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    name = f"{ns}_rich_{storage}"
    live = RedisVLSchema.from_dict(rich_redisvl_dict(name, f"{ns}:rich", storage))
    index = SearchIndex(live, redis_url=redis_url)
    index.create(overwrite=False)
    index.disconnect()

    wanted = rich_redisvl_dict(name, f"{ns}:rich", storage)
    vector = wanted["fields"][5]["attrs"]
    vector.update(ef_runtime=200, initial_cap=500)
    if storage == "hash":
        vector["datatype"] = "float16"
    schema_file = tmp_path / "target.yaml"
    RedisVLSchema.from_dict(wanted).to_yaml(str(schema_file))
    written = yaml.safe_load(schema_file.read_text())

    plan_path = tmp_path / "plan.yaml"
    planned = cli(
        "plan", "--index", name, "--target-schema", str(schema_file), "--url", redis_url,
        "--plan-out", str(plan_path),
    )  # fmt: skip
    assert planned.returncode == 0, planned.stdout + planned.stderr
    plan = MigrationPlan.load(plan_path)
    warned = assert_every_attribute_kept(written, plan, storage)
    # the one thing the server cannot keep as written: the phonetic matcher's language
    assert warned == ["title.phonetic_matcher"]
    embedding = plan.merged_target_schema.field("embedding")
    assert isinstance(embedding, VectorField)
    assert (embedding.attrs.ef_runtime, embedding.attrs.initial_cap) == (200, 500)

    # the plan's schemas load back in RedisVL with the same vector settings
    plan_data = yaml.safe_load(plan_path.read_text())
    back = RedisVLSchema.from_dict(plan_data["merged_target_schema"])
    assert vector_of(back)["ef_runtime"] == 200 and vector_of(back)["initial_cap"] == 500
    assert back.index.stopwords == []


def test_svs_vamana_schemas_go_both_ways() -> None:
    """RedisVL writes compression lower-case and reads only the server's spelling; ours
    writes the server's spelling, so each side reads what the other wrote."""
    written = RedisVLSchema.from_dict(
        {
            "index": {"name": "svs", "prefix": "svs", "storage_type": "hash"},
            "fields": [
                {
                    "name": "v",
                    "type": "vector",
                    "attrs": {
                        "algorithm": "svs-vamana",
                        "dims": DIMS,
                        "datatype": "float16",
                        "compression": "LeanVec4x8",
                        "reduce": 4,
                        "search_window_size": 30,
                    },
                }
            ],
        }
    ).to_dict()
    ours = IndexSchema.from_dict(written)
    field = ours.field("v")
    assert isinstance(field, VectorField)
    assert (field.attrs.compression or "").lower() == "leanvec4x8"
    assert (field.attrs.reduce, field.attrs.search_window_size) == (4, 30)
    back = RedisVLSchema.from_dict(ours.to_dict())
    attrs = vector_of_named(back, "v")
    assert attrs["compression"] == "leanvec4x8" and attrs["reduce"] == 4
    assert attrs["search_window_size"] == 30 and attrs["datatype"] == "float16"
    # RedisVL's own defaults (40 / 250) are written by it, and kept
    assert (attrs["graph_max_degree"], attrs["construction_window_size"]) == (40, 250)
