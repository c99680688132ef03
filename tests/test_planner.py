"""Planning against the real server: every supported and blocked change, hash and JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from redismigrate.aio.planner import AsyncMigrationPlanner
from redismigrate.errors import BadInputError, SchemaError
from redismigrate.patch import SchemaPatch
from redismigrate.plan import MigrationPlan
from redismigrate.render import ft_create_args
from redismigrate.schema import IndexSchema, VectorField

DIMS = 8
DOCS = 40


def base_schema(name: str, prefix: str, storage: str) -> IndexSchema:
    return IndexSchema.from_dict(
        {
            "index": {"name": name, "prefix": prefix, "storage_type": storage},
            "fields": [
                {"name": "title", "type": "text"},
                {"name": "category", "type": "tag"},
                {"name": "price", "type": "numeric"},
                {"name": "loc", "type": "geo"},
                {
                    "name": "embedding",
                    "type": "vector",
                    "attrs": {
                        "dims": DIMS,
                        "algorithm": "hnsw",
                        "datatype": "float32",
                        "distance_metric": "cosine",
                    },
                },
            ],
        }
    )


def load_docs(client: redis.Redis, prefix: str, storage: str, docs: int = DOCS) -> None:
    rng = np.random.default_rng(3)
    pipe = client.pipeline(transaction=False)
    for i in range(docs):
        vector = rng.normal(size=DIMS).astype(np.float32)
        doc: dict[str, Any] = {
            "title": f"item {i}",
            "category": "a" if i % 2 else "b",
            "price": i,
            "loc": "13.4,52.5",
        }
        if storage == "hash":
            pipe.hset(f"{prefix}{i}", mapping={**doc, "embedding": vector.tobytes()})
        else:
            pipe.execute_command(
                "JSON.SET", f"{prefix}{i}", "$", json.dumps({**doc, "embedding": vector.tolist()})
            )
    pipe.execute()


@pytest.fixture(params=["hash", "json"])
def live_index(request: pytest.FixtureRequest, sync_client: redis.Redis, ns: str) -> IndexSchema:
    storage = request.param
    schema = base_schema(f"{ns}_{storage}", f"{ns}:{storage}:", storage)
    sync_client.execute_command(*ft_create_args(schema))
    load_docs(sync_client, schema.prefixes[0], storage)
    return schema


async def plan_for(
    client: aioredis.Redis, index: IndexSchema, changes: dict[str, Any], **kwargs: Any
) -> MigrationPlan:
    patch = SchemaPatch.from_dict({"version": 1, "changes": changes})
    return await AsyncMigrationPlanner().create_plan(
        index.name, redis_client=client, schema_patch=patch, **kwargs
    )


def assert_supported(plan: MigrationPlan) -> None:
    assert plan.supported, [str(b) for b in plan.diff_classification.blocked_reasons]
    assert plan.diff_classification.blocked_reasons == []


def assert_blocked(plan: MigrationPlan, *needles: str) -> None:
    assert not plan.supported
    text = " | ".join(str(b) for b in plan.diff_classification.blocked_reasons)
    for needle in needles:
        assert needle in text, text
    for blocked in plan.diff_classification.blocked_reasons:
        assert blocked.reason and blocked.workaround


def assert_round_trips(plan: MigrationPlan, tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    plan.dump(path)
    assert MigrationPlan.load(path) == plan
    as_json = tmp_path / "plan.json"
    plan.dump(as_json)
    assert MigrationPlan.load(as_json) == plan


# ------------------------------------------------------------------ supported rows


@pytest.mark.parametrize(
    ("field", "expected_type"),
    [
        ({"name": "brand", "type": "text", "attrs": {"weight": 2}}, "text"),
        ({"name": "colour", "type": "tag", "attrs": {"separator": "|"}}, "tag"),
        ({"name": "stock", "type": "numeric", "attrs": {"sortable": True}}, "numeric"),
        ({"name": "shop", "type": "geo"}, "geo"),
    ],
)
async def test_add_a_field(
    aclient: aioredis.Redis,
    live_index: IndexSchema,
    tmp_path: Path,
    field: dict[str, Any],
    expected_type: str,
) -> None:
    plan = await plan_for(aclient, live_index, {"add_fields": [field]})
    assert_supported(plan)
    added = plan.merged_target_schema.field(field["name"])
    assert added is not None
    assert plan.merged_target_schema.field_names[-1] == field["name"]
    if live_index.storage_type == "json":
        assert added.path == f"$.{field['name']}"
    # needs no document rewrite: online by default, drop_recreate on request
    assert plan.mode.__struct_config__.tag == "online"
    assert any(w.startswith("No downtime") for w in plan.warnings)
    assert_round_trips(plan, tmp_path)
    offline = await plan_for(aclient, live_index, {"add_fields": [field]}, mode="drop_recreate")
    assert offline.mode.__struct_config__.tag == "drop_recreate"
    assert any("downtime is required" in w for w in offline.warnings)


async def test_remove_a_field(aclient: aioredis.Redis, live_index: IndexSchema) -> None:
    plan = await plan_for(aclient, live_index, {"remove_fields": ["category"]})
    assert_supported(plan)
    assert "category" not in plan.merged_target_schema.field_names
    assert plan.source.schema_snapshot.field("category") is not None


async def test_rename_a_field(
    aclient: aioredis.Redis, live_index: IndexSchema, tmp_path: Path
) -> None:
    plan = await plan_for(
        aclient, live_index, {"rename_fields": [{"old_name": "title", "new_name": "headline"}]}
    )
    assert_supported(plan)
    assert plan.merged_target_schema.field_names[0] == "headline"
    (op,) = plan.rename_operations.rename_fields
    if live_index.storage_type == "hash":
        assert (op.old_path, op.new_path) == ("title", "headline")
    else:
        assert (op.old_path, op.new_path) == ("$.title", "$.headline")
    assert any("rewrites every document" in w for w in plan.warnings)
    assert_round_trips(plan, tmp_path)


async def test_change_the_key_prefix(aclient: aioredis.Redis, live_index: IndexSchema) -> None:
    new = live_index.prefixes[0] + "v2:"
    plan = await plan_for(aclient, live_index, {"index": {"prefix": new}})
    assert_supported(plan)
    assert plan.rename_operations.change_prefix is not None
    assert plan.rename_operations.change_prefix.old == live_index.prefixes[0]
    assert plan.rename_operations.change_prefix.new == new
    assert plan.merged_target_schema.prefixes == [new]


async def test_rename_the_index(aclient: aioredis.Redis, live_index: IndexSchema) -> None:
    plan = await plan_for(aclient, live_index, {"index": {"name": live_index.name + "_v2"}})
    assert_supported(plan)
    assert plan.rename_operations.rename_index == live_index.name + "_v2"
    assert plan.target_index_name == live_index.name + "_v2"


async def test_make_a_field_sortable_and_change_options(
    aclient: aioredis.Redis, live_index: IndexSchema
) -> None:
    plan = await plan_for(
        aclient,
        live_index,
        {
            "update_fields": [
                {"name": "title", "attrs": {"sortable": True, "no_stem": True}},
                {"name": "category", "attrs": {"separator": ";"}},
            ]
        },
    )
    assert_supported(plan)
    title = plan.merged_target_schema.field("title")
    tag = plan.merged_target_schema.field("category")
    assert title is not None and title.attrs.sortable and title.attrs.no_stem  # type: ignore[union-attr]
    assert tag is not None and tag.attrs.separator == ";"  # type: ignore[union-attr]
    assert plan.vector_changes == []


@pytest.mark.parametrize(
    ("attrs", "check"),
    [
        ({"algorithm": "flat"}, lambda a: a.algorithm == "flat" and a.m is None),
        ({"distance_metric": "l2"}, lambda a: a.distance_metric == "l2"),
        ({"m": 32, "ef_construction": 400}, lambda a: (a.m, a.ef_construction) == (32, 400)),
    ],
)
async def test_index_only_vector_changes(
    aclient: aioredis.Redis, live_index: IndexSchema, attrs: dict[str, Any], check: Any
) -> None:
    plan = await plan_for(
        aclient, live_index, {"update_fields": [{"name": "embedding", "attrs": attrs}]}
    )
    assert_supported(plan)
    vector = plan.merged_target_schema.field("embedding")
    assert isinstance(vector, VectorField) and check(vector.attrs)
    assert plan.vector_changes == []


@pytest.mark.parametrize("datatype", ["float16", "bfloat16"])
async def test_quantize_to_a_float_type(
    aclient: aioredis.Redis, live_index: IndexSchema, tmp_path: Path, datatype: str
) -> None:
    plan = await plan_for(
        aclient,
        live_index,
        {"update_fields": [{"name": "embedding", "attrs": {"datatype": datatype}}]},
    )
    assert_supported(plan)
    (change,) = plan.vector_changes
    assert (change.dims, change.source_datatype, change.target_datatype) == (
        DIMS,
        "float32",
        datatype,
    )
    assert change.rewrite_documents == (live_index.storage_type == "hash")
    assert change.encoding is not None and change.encoding.__struct_config__.tag == "cast"
    assert any("lossy" in w for w in plan.warnings)
    assert_round_trips(plan, tmp_path)


# ------------------------------------------------------------------ blocked rows


async def test_changing_dims_is_blocked(aclient: aioredis.Redis, live_index: IndexSchema) -> None:
    plan = await plan_for(
        aclient, live_index, {"update_fields": [{"name": "embedding", "attrs": {"dims": 16}}]}
    )
    assert_blocked(plan, "dimensions", "re-embed")


async def test_changing_storage_type_is_blocked(
    aclient: aioredis.Redis, live_index: IndexSchema, tmp_path: Path
) -> None:
    other = "json" if live_index.storage_type == "hash" else "hash"
    target = live_index.to_dict()
    target["index"]["storage_type"] = other
    for field in target["fields"]:
        field.pop("path", None)
    path = tmp_path / "target.yaml"
    IndexSchema.from_dict(target).dump(path)
    plan = await AsyncMigrationPlanner().create_plan(
        live_index.name, redis_client=aclient, target_schema_path=path
    )
    assert_blocked(plan, "storage type", "export")


async def test_adding_a_vector_field_is_blocked(
    aclient: aioredis.Redis, live_index: IndexSchema
) -> None:
    plan = await plan_for(
        aclient,
        live_index,
        {"add_fields": [{"name": "v2", "type": "vector", "attrs": {"dims": 4}}]},
    )
    assert_blocked(plan, "add vector field 'v2'", "write the vectors")


@pytest.mark.parametrize(
    "changes",
    [
        {"remove_fields": ["nope"]},
        {"update_fields": [{"name": "nope", "attrs": {"sortable": True}}]},
        {"rename_fields": [{"old_name": "nope", "new_name": "x"}]},
    ],
)
async def test_a_field_that_does_not_exist_is_blocked(
    aclient: aioredis.Redis, live_index: IndexSchema, changes: dict[str, Any]
) -> None:
    plan = await plan_for(aclient, live_index, changes)
    assert_blocked(plan, "has no field 'nope'")


async def test_rename_onto_an_existing_field_is_blocked(
    aclient: aioredis.Redis, live_index: IndexSchema
) -> None:
    plan = await plan_for(
        aclient, live_index, {"rename_fields": [{"old_name": "title", "new_name": "category"}]}
    )
    assert_blocked(plan, "'category' already exists")


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        (
            {
                "remove_fields": ["title"],
                "update_fields": [{"name": "title", "attrs": {"weight": 2}}],
            },
            "also removes it",
        ),
        (
            {
                "update_fields": [
                    {"name": "title", "attrs": {"weight": 2}},
                    {"name": "title", "attrs": {"weight": 3}},
                ]
            },
            "set to both",
        ),
        (
            {
                "rename_fields": [
                    {"old_name": "title", "new_name": "a"},
                    {"old_name": "title", "new_name": "b"},
                ]
            },
            "renamed to",
        ),
        (
            {
                "remove_fields": ["title"],
                "rename_fields": [{"old_name": "title", "new_name": "t2"}],
            },
            "also removes it",
        ),
    ],
)
async def test_contradicting_changes_to_one_field_are_blocked(
    aclient: aioredis.Redis, live_index: IndexSchema, changes: dict[str, Any], needle: str
) -> None:
    plan = await plan_for(aclient, live_index, changes)
    assert_blocked(plan, needle)


# ------------------------------------------------------------------ beyond the usual tools


async def test_int8_and_svs_are_blocked_where_the_server_cannot_take_them(
    aclient: aioredis.Redis, live_index: IndexSchema
) -> None:
    if live_index.storage_type == "json":
        changes = {"update_fields": [{"name": "embedding", "attrs": {"algorithm": "svs-vamana"}}]}
        plan = await plan_for(aclient, live_index, changes)
        assert_blocked(plan, "SVS-VAMANA needs search module 8.2.0")
        return
    plan = await plan_for(
        aclient,
        live_index,
        {"update_fields": [{"name": "embedding", "attrs": {"datatype": "int8"}}]},
    )
    assert_blocked(plan, "datatype int8 needs search module 8.0.0", "this server has 2.")


async def test_reencoding_keys_that_another_index_covers_is_blocked(
    aclient: aioredis.Redis, sync_client: redis.Redis, ns: str
) -> None:
    schema = base_schema(f"{ns}_main", f"{ns}:p:", "hash")
    sync_client.execute_command(*ft_create_args(schema))
    load_docs(sync_client, f"{ns}:p:", "hash")
    sync_client.execute_command(
        "FT.CREATE", f"{ns}_premium", "ON", "HASH", "PREFIX", "1", f"{ns}:p:premium:",
        "SCHEMA", "title", "TEXT",
    )  # fmt: skip
    sync_client.execute_command(
        "FT.CREATE", f"{ns}_json_other", "ON", "JSON", "PREFIX", "1", f"{ns}:p:",
        "SCHEMA", "$.title", "AS", "title", "TEXT",
    )  # fmt: skip
    plan = await plan_for(
        aclient,
        schema,
        {"update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]},
    )
    assert_blocked(plan, f"index '{ns}_premium' also covers these keys")
    text = " ".join(str(b) for b in plan.diff_classification.blocked_reasons)
    assert f"{ns}_json_other" not in text  # a JSON index never reads hash keys
    # index-only changes are fine with the neighbour present
    plan = await plan_for(
        aclient, schema, {"update_fields": [{"name": "title", "attrs": {"weight": 2}}]}
    )
    assert_supported(plan)


async def test_the_same_patch_gives_a_different_plan_per_index(
    aclient: aioredis.Redis, sync_client: redis.Redis, ns: str
) -> None:
    first = base_schema(f"{ns}_a", f"{ns}:a:", "hash")
    second_dict = base_schema(f"{ns}_b", f"{ns}:b:", "hash").to_dict()
    second_dict["fields"] = [f for f in second_dict["fields"] if f["name"] != "category"]
    second = IndexSchema.from_dict(second_dict)
    for schema in (first, second):
        sync_client.execute_command(*ft_create_args(schema))
    changes = {"update_fields": [{"name": "category", "attrs": {"sortable": True}}]}
    assert_supported(await plan_for(aclient, first, changes))
    assert_blocked(await plan_for(aclient, second, changes), "has no field 'category'")


async def test_a_target_schema_is_diffed_into_a_patch(
    aclient: aioredis.Redis, live_index: IndexSchema, tmp_path: Path
) -> None:
    target = live_index.to_dict()
    target["fields"] = [f for f in target["fields"] if f["name"] != "loc"]
    target["fields"].append({"name": "brand", "type": "tag"})
    target["fields"][0]["attrs"] = {"sortable": True}
    target["index"]["name"] = live_index.name + "_new"
    path = tmp_path / "target.yaml"
    IndexSchema.from_dict(target).dump(path)
    plan = await AsyncMigrationPlanner().create_plan(
        live_index.name, redis_client=aclient, target_schema_path=path
    )
    assert_supported(plan)
    assert plan.merged_target_schema.same_index_as(IndexSchema.from_dict(target))
    changes = plan.requested_changes
    assert changes.remove_fields == ["loc"]
    assert [f["name"] for f in changes.add_fields] == ["brand"]
    assert plan.rename_operations.rename_index == live_index.name + "_new"


# ------------------------------------------------------------------ bad input


async def test_bad_input_is_refused_before_anything(
    aclient: aioredis.Redis, live_index: IndexSchema, tmp_path: Path
) -> None:
    planner = AsyncMigrationPlanner()
    with pytest.raises(SchemaError, match="does not exist"):
        await planner.create_plan(
            live_index.name, redis_client=aclient, schema_patch_path=tmp_path / "missing.yaml"
        )
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nchanges:\n  add_feilds: []\n")
    with pytest.raises(SchemaError, match="add_feilds"):
        await planner.create_plan(live_index.name, redis_client=aclient, schema_patch_path=bad)
    other = tmp_path / "other.yaml"
    other.write_text("version: 1\nsource_index: someone_else\nchanges: {remove_fields: [title]}\n")
    with pytest.raises(BadInputError, match="for index 'someone_else'"):
        await planner.create_plan(live_index.name, redis_client=aclient, schema_patch_path=other)
    with pytest.raises(BadInputError, match="exactly one"):
        await planner.create_plan(live_index.name, redis_client=aclient)


async def test_the_sync_planner_works_inside_a_running_event_loop(
    redis_url: str, live_index: IndexSchema
) -> None:
    import asyncio

    from redismigrate.sync import MigrationPlanner

    patch = SchemaPatch.from_dict(
        {"changes": {"update_fields": [{"name": "title", "attrs": {"sortable": True}}]}}
    )
    # this test body runs on an event loop, as a notebook cell does
    asyncio.get_running_loop()
    coroutine = AsyncMigrationPlanner().create_plan(
        live_index.name, redis_url=redis_url, schema_patch=patch
    )
    with pytest.raises(RuntimeError):
        asyncio.run(coroutine)  # the naive way fails here
    coroutine.close()
    plan = MigrationPlanner().create_plan(live_index.name, redis_url=redis_url, schema_patch=patch)
    assert plan.supported
    title = plan.merged_target_schema.field("title")
    assert title is not None and title.attrs.sortable  # type: ignore[union-attr]
    estimate = MigrationPlanner().estimate(plan, redis_url=redis_url)
    assert estimate.documents == DOCS
