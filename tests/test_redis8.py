"""What only search 8.0+ can do (INT8/UINT8 vectors). Runs where REDIS_URL or Docker gives
such a server; elsewhere it skips, and the pure tests cover parsing and rendering."""

from __future__ import annotations

import anyio
import redis

from redismigrate.aio.connection import connect
from redismigrate.aio.indexes import read_schema_and_stats, server_capabilities
from redismigrate.render import ft_create_args
from redismigrate.schema import IndexSchema


def test_int8_and_uint8_vectors_round_trip(redis8_url: str) -> None:
    schema = IndexSchema.from_dict(
        {
            "index": {"name": "r8_int8_idx", "prefix": "r8int8:"},
            "fields": [
                {"name": "a", "type": "vector", "attrs": {"dims": 8, "datatype": "int8"}},
                {
                    "name": "b",
                    "type": "vector",
                    "attrs": {"dims": 8, "datatype": "uint8", "algorithm": "hnsw"},
                },
            ],
        }
    ).canonical()
    client = redis.Redis.from_url(redis8_url)
    client.execute_command(*ft_create_args(schema))

    async def work() -> tuple[IndexSchema, list[str]]:
        async with connect(redis8_url) as aclient:
            caps = await server_capabilities(aclient)
            described = await read_schema_and_stats(aclient, schema.name)
            # HNSW EF_RUNTIME and EPSILON are not in search 8's FT.INFO (and _FT.DEBUG is
            # refused without enable-debug-command): compared only where reported
            return described.comparable_to(schema), caps.vector_datatypes

    try:
        got, datatypes = anyio.run(work)
        assert {"int8", "uint8"} <= set(datatypes)
        assert got.canonical() == schema
    finally:
        client.execute_command("FT.DROPINDEX", schema.name)
        client.close()


def test_indexall_and_what_ft_info_leaves_out_on_search_8(redis8_url: str) -> None:
    schema = IndexSchema.from_dict(
        {
            "index": {
                "name": "r8_indexall",
                "prefix": "r8all:",
                "options": {"indexes_all": True},
            },
            "fields": [
                {"name": "t", "type": "text"},
                {
                    "name": "v",
                    "type": "vector",
                    "attrs": {"dims": 4, "algorithm": "hnsw", "ef_runtime": 150},
                },
            ],
        }
    ).canonical()
    client = redis.Redis.from_url(redis8_url)
    client.execute_command(*ft_create_args(schema))

    async def work() -> tuple[IndexSchema, set[tuple[str, str]]]:
        async with connect(redis8_url) as aclient:
            described = await read_schema_and_stats(aclient, schema.name)
            unreported = {(u.field, u.attribute) for u in described.unreported}
            return described.comparable_to(schema), unreported

    try:
        got, unreported = anyio.run(work)
        assert got.index.options.indexes_all is True
        assert got.canonical() == schema
        assert ("v", "initial_cap") in unreported
    finally:
        client.execute_command("FT.DROPINDEX", schema.name)
        client.close()
