"""Aliases of a migrated index answer afterwards, in both modes, and after a rollback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from redismigrate.aio import aliases as aliases_module
from redismigrate.aio.aliases import list_aliases, parse_alias_list
from redismigrate.aio.batch import AsyncBatchMigrationPlanner
from redismigrate.aio.executor import AsyncMigrationExecutor
from redismigrate.aio.planner import AsyncMigrationPlanner
from redismigrate.errors import BadInputError
from redismigrate.patch import SchemaPatch
from redismigrate.plan import MigrationPlan
from redismigrate.render import ft_create_args
from tests.test_cli import assert_one_line_error, cli
from tests.test_executor import BATCH, DIMS, DOCS, load, make_schema

REENCODE_AND_ADD = {
    "update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}],
    "add_fields": [{"name": "brand", "type": "tag"}],
}
INDEX_ONLY = {"add_fields": [{"name": "brand", "type": "tag"}]}


def count(client: redis.Redis, name: str, query: str = "*") -> int:
    """How many documents ``name`` (an index or an alias) answers a query with."""
    reply = client.execute_command("FT.SEARCH", name, query, "LIMIT", "0", "0")
    if isinstance(reply, dict):  # RESP3
        return int(reply.get(b"total_results", reply.get("total_results", -1)))
    return int(reply[0])


def behind(client: redis.Redis, name: str) -> str:
    info = client.ft(name).info()
    value = info["index_name"]
    return value.decode() if isinstance(value, bytes) else str(value)


def vector_widths(client: redis.Redis, prefix: str) -> set[int]:
    return {
        len(client.hget(key, "embedding") or b"")
        for key in client.scan_iter(match=f"{prefix}*", count=1000)
    }


def indexes(client: redis.Redis) -> list[str]:
    return sorted(n.decode() for n in client.execute_command("FT._LIST"))


@pytest.fixture
def indexed(sync_client: redis.Redis, ns: str) -> str:
    """A hash index of DOCS float32 documents with the user alias ``<ns>_ua``."""
    schema = make_schema(f"{ns}_x", f"{ns}:d:", "hash")
    load(sync_client, f"{ns}:d:", "hash")
    sync_client.execute_command(*ft_create_args(schema))
    sync_client.execute_command("FT.ALIASADD", f"{ns}_ua", schema.name)
    wait_ready(sync_client, schema.name)
    assert count(sync_client, schema.name) == DOCS
    assert count(sync_client, f"{ns}_ua") == DOCS
    return schema.name


def wait_ready(client: redis.Redis, name: str) -> None:
    import time

    while True:
        info = client.ft(name).info()
        if str(info["indexing"]) == "0" and float(info["percent_indexed"]) >= 1.0:
            return
        time.sleep(0.02)


async def plan(
    aclient: aioredis.Redis,
    name: str,
    changes: dict[str, Any],
    *,
    mode: str | None = None,
    aliases: tuple[str, ...] = (),
) -> MigrationPlan:
    made = await AsyncMigrationPlanner().create_plan(
        name,
        redis_client=aclient,
        schema_patch=SchemaPatch.from_dict({"changes": changes}),
        mode=mode,
        aliases=aliases,
    )
    assert made.supported, [str(b) for b in made.diff_classification.blocked_reasons]
    return made


async def apply(aclient: aioredis.Redis, made: MigrationPlan, backup: Path) -> None:
    report = await AsyncMigrationExecutor().apply(
        made, redis_client=aclient, backup_dir=backup, batch_size=BATCH
    )
    assert report.result == "succeeded", (report.error, report.validation)


# --------------------------------------------------------------------------- pure


def test_an_alias_list_reply_is_read_in_both_protocols() -> None:
    # RESP2: an array of bulk strings; RESP3: a set; empty when the index has none
    assert parse_alias_list([b"alias2", b"alias1"]) == ["alias1", "alias2"]
    assert parse_alias_list({b"b", "a"}) == ["a", "b"]
    assert parse_alias_list([]) == [] and parse_alias_list(None) == []
    with pytest.raises(ValueError):
        parse_alias_list(b"OK")


async def test_this_server_either_lists_aliases_or_says_it_cannot(
    aclient: aioredis.Redis, sync_client: redis.Redis, indexed: str, ns: str
) -> None:
    listed = await list_aliases(aclient, indexed)
    search = next(
        int(m[b"ver"]) for m in sync_client.module_list() if m[b"name"].lower() == b"search"
    )
    if search < 81000:
        assert listed is None  # FT.ALIASLIST is search 8.10+
    else:
        assert listed == [f"{ns}_ua"]


# --------------------------------------------------------------------------- drop_recreate


async def test_a_user_alias_answers_after_drop_recreate_and_after_rollback(
    aclient: aioredis.Redis, sync_client: redis.Redis, indexed: str, ns: str, tmp_path: Path
) -> None:
    alias = f"{ns}_ua"
    made = await plan(aclient, indexed, REENCODE_AND_ADD, aliases=(alias,), mode="drop_recreate")
    assert made.mode.__struct_config__.tag == "drop_recreate"
    assert made.source.aliases == [alias]
    assert f"source:\n  index_name: {indexed}" in made.to_yaml()
    assert f"aliases:\n  - {alias}" in made.to_yaml()
    assert any(alias in w and "moved to the new index" in w for w in made.warnings)
    if await list_aliases(aclient, indexed) is None:
        assert any("cannot list aliases" in w for w in made.warnings)

    await apply(aclient, made, tmp_path / "b")
    assert count(sync_client, alias) == DOCS
    assert count(sync_client, indexed) == DOCS
    assert behind(sync_client, alias) == indexed
    assert vector_widths(sync_client, f"{ns}:d:") == {DIMS * 2}
    # the new field is queryable through the alias
    sync_client.hset(f"{ns}:d:0", "brand", "acme")
    assert count(sync_client, alias, "@brand:{acme}") == 1

    await AsyncMigrationExecutor().rollback(
        backup_dir=tmp_path / "b", redis_client=aclient, recreate_index=True
    )
    assert count(sync_client, alias) == DOCS
    assert count(sync_client, indexed) == DOCS
    assert behind(sync_client, alias) == indexed
    assert vector_widths(sync_client, f"{ns}:d:") == {DIMS * 4}
    assert indexes(sync_client) == [indexed]


async def test_an_automatic_undo_points_the_alias_back_at_the_source(
    aclient: aioredis.Redis,
    sync_client: redis.Redis,
    indexed: str,
    ns: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failure after the drop is undone: the recreated source gets its alias again."""
    alias = f"{ns}_ua"
    made = await plan(aclient, indexed, REENCODE_AND_ADD, aliases=(alias,), mode="drop_recreate")
    calls = 0

    async def failing(client: Any, plan: MigrationPlan) -> list[str]:
        nonlocal calls
        calls += 1
        raise redis.exceptions.ResponseError("injected failure once the target is ready")

    monkeypatch.setattr(aliases_module, "point_at_target", failing)
    report = await AsyncMigrationExecutor().apply(
        made, redis_client=aclient, backup_dir=tmp_path / "b", batch_size=BATCH
    )
    assert calls == 1 and report.result == "rolled_back", report.error
    assert indexes(sync_client) == [indexed]
    assert count(sync_client, alias) == DOCS
    assert behind(sync_client, alias) == indexed
    assert vector_widths(sync_client, f"{ns}:d:") == {DIMS * 4}


async def test_apply_refuses_when_an_alias_moved_after_planning(
    aclient: aioredis.Redis, sync_client: redis.Redis, indexed: str, ns: str, tmp_path: Path
) -> None:
    alias = f"{ns}_ua"
    made = await plan(aclient, indexed, REENCODE_AND_ADD, aliases=(alias,), mode="drop_recreate")
    other = make_schema(f"{ns}_other", f"{ns}:o:", "hash")
    sync_client.execute_command(*ft_create_args(other))
    sync_client.execute_command("FT.ALIASUPDATE", alias, other.name)
    with pytest.raises(BadInputError, match="now points at"):
        await AsyncMigrationExecutor().apply(made, redis_client=aclient, backup_dir=tmp_path / "b")
    assert indexes(sync_client) == sorted([indexed, other.name])
    assert count(sync_client, indexed) == DOCS
    assert vector_widths(sync_client, f"{ns}:d:") == {DIMS * 4}


# --------------------------------------------------------------------------- online


async def test_online_keeps_a_user_alias_and_so_does_its_rollback(
    aclient: aioredis.Redis, sync_client: redis.Redis, indexed: str, ns: str, tmp_path: Path
) -> None:
    alias = f"{ns}_ua"
    made = await plan(aclient, indexed, INDEX_ONLY, aliases=(alias,))
    assert made.mode.__struct_config__.tag == "online"
    assert made.source.aliases == [alias]
    await apply(aclient, made, tmp_path / "b")
    shadow = f"{indexed}__rm1"
    assert indexes(sync_client) == [shadow]
    assert behind(sync_client, alias) == shadow and behind(sync_client, indexed) == shadow
    assert count(sync_client, alias) == DOCS and count(sync_client, indexed) == DOCS

    await AsyncMigrationExecutor().rollback(backup_dir=tmp_path / "b", redis_client=aclient)
    (back,) = indexes(sync_client)
    assert back != shadow
    assert behind(sync_client, alias) == back and behind(sync_client, indexed) == back
    assert count(sync_client, alias) == DOCS and count(sync_client, indexed) == DOCS


async def test_drop_recreate_after_an_online_migration_acts_on_the_index_behind_the_name(
    aclient: aioredis.Redis, sync_client: redis.Redis, indexed: str, ns: str, tmp_path: Path
) -> None:
    alias = f"{ns}_ua"
    await apply(aclient, await plan(aclient, indexed, INDEX_ONLY, aliases=(alias,)), tmp_path / "o")
    shadow = f"{indexed}__rm1"
    assert indexes(sync_client) == [shadow]

    # the name itself is not a user alias to move; the user alias is
    made = await plan(
        aclient,
        indexed,
        {"update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]},
        aliases=(alias,),
        mode="drop_recreate",
    )
    assert made.mode.__struct_config__.tag == "drop_recreate"
    assert made.source.physical_index == shadow
    assert made.source.aliases == [alias]
    await apply(aclient, made, tmp_path / "d")
    # the target took the public name as a plain index; the shadow is gone
    assert indexes(sync_client) == [indexed]
    assert behind(sync_client, indexed) == indexed and behind(sync_client, alias) == indexed
    assert count(sync_client, indexed) == DOCS and count(sync_client, alias) == DOCS
    assert vector_widths(sync_client, f"{ns}:d:") == {DIMS * 2}

    # rollback restores a working name (a plain index) and the alias
    await AsyncMigrationExecutor().rollback(
        backup_dir=tmp_path / "d", redis_client=aclient, recreate_index=True
    )
    assert indexes(sync_client) == [indexed]
    assert count(sync_client, indexed) == DOCS and count(sync_client, alias) == DOCS
    assert behind(sync_client, alias) == indexed
    assert vector_widths(sync_client, f"{ns}:d:") == {DIMS * 4}
    assert "brand" in str(sync_client.ft(indexed).info()["attributes"])  # the online schema


async def test_drop_recreate_by_name_after_online_without_any_user_alias(
    aclient: aioredis.Redis, sync_client: redis.Redis, indexed: str, ns: str, tmp_path: Path
) -> None:
    sync_client.execute_command("FT.ALIASDEL", f"{ns}_ua")
    await apply(aclient, await plan(aclient, indexed, INDEX_ONLY), tmp_path / "o")
    made = await plan(
        aclient,
        indexed,
        {"update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]},
        mode="drop_recreate",
    )
    assert made.source.aliases == []  # the name is the index, not an alias to move
    await apply(aclient, made, tmp_path / "d")
    assert indexes(sync_client) == [indexed]
    assert count(sync_client, indexed) == DOCS
    vectors = [
        np.frombuffer(sync_client.hget(f"{ns}:d:{i}", "embedding") or b"", dtype=np.float16)
        for i in range(3)
    ]
    assert all(v.shape == (DIMS,) for v in vectors)


# --------------------------------------------------------------------------- refusals


def test_plan_refuses_an_alias_that_is_missing_or_points_elsewhere(
    redis_url: str, sync_client: redis.Redis, indexed: str, ns: str, tmp_path: Path
) -> None:
    other = make_schema(f"{ns}_other", f"{ns}:o:", "hash")
    sync_client.execute_command(*ft_create_args(other))
    sync_client.execute_command("FT.ALIASADD", f"{ns}_elsewhere", other.name)
    patch = tmp_path / "patch.yaml"
    patch.write_text("version: 1\nchanges:\n  add_fields:\n    - {name: brand, type: tag}\n")
    out = tmp_path / "plan.yaml"
    base = ["plan", "--index", indexed, "--schema-patch", str(patch), "--url", redis_url]
    missing = cli(*base, "--plan-out", str(out), "--alias", f"{ns}_ua", "--alias", f"{ns}_nope")
    assert_one_line_error(missing, 2, f"{ns}_nope", "no alias or index")
    elsewhere = cli(*base, "--plan-out", str(out), "--alias", f"{ns}_elsewhere")
    assert_one_line_error(elsewhere, 2, f"{ns}_elsewhere", f"points at index {other.name!r}")
    own = cli(*base, "--plan-out", str(out), "--alias", indexed)
    assert_one_line_error(own, 2, "own name")
    assert not out.exists()
    assert indexes(sync_client) == sorted([indexed, other.name])
    assert behind(sync_client, f"{ns}_ua") == indexed
    assert count(sync_client, indexed) == DOCS

    made = cli(*base, "--plan-out", str(out), "--alias", f"{ns}_ua")
    assert made.returncode == 0, made.stderr
    assert MigrationPlan.load(out).source.aliases == [f"{ns}_ua"]


async def test_batch_plan_gives_each_alias_to_the_plan_of_its_index(
    aclient: aioredis.Redis, sync_client: redis.Redis, indexed: str, ns: str, tmp_path: Path
) -> None:
    other = make_schema(f"{ns}_other", f"{ns}:o:", "hash")
    sync_client.execute_command(*ft_create_args(other))
    outsider = make_schema(f"{ns}_out", f"{ns}:z:", "hash")
    sync_client.execute_command(*ft_create_args(outsider))
    sync_client.execute_command("FT.ALIASADD", f"{ns}_oa", outsider.name)
    patch = SchemaPatch.from_dict({"changes": INDEX_ONLY})
    planner = AsyncBatchMigrationPlanner()
    with pytest.raises(BadInputError, match="does not migrate"):
        await planner.create_batch_plan(
            redis_client=aclient,
            indexes=[indexed, other.name],
            schema_patch=patch,
            plans_dir=tmp_path / "p0",
            aliases=[f"{ns}_ua", f"{ns}_oa"],
        )
    assert not (tmp_path / "p0").exists()
    batch = await planner.create_batch_plan(
        redis_client=aclient,
        indexes=[indexed, other.name],
        schema_patch=patch,
        plans_dir=tmp_path / "p",
        aliases=[f"{ns}_ua"],
    )
    plans = {e.name: MigrationPlan.load(tmp_path / "p" / f"{e.name}.yaml") for e in batch.indexes}
    assert plans[indexed].source.aliases == [f"{ns}_ua"]
    assert plans[other.name].source.aliases == []
