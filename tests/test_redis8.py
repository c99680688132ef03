"""What only search 8.0+ can do (INT8/UINT8 vectors). Runs where REDIS_URL or Docker gives
such a server; elsewhere it skips, and the pure tests cover parsing and rendering."""

from __future__ import annotations

import anyio
import redis

from redismigrate.aio.connection import connect
from redismigrate.aio.indexes import read_schema, server_capabilities
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
            return await read_schema(aclient, schema.name), caps.vector_datatypes

    try:
        got, datatypes = anyio.run(work)
        assert {"int8", "uint8"} <= set(datatypes)
        assert got == schema
    finally:
        client.execute_command("FT.DROPINDEX", schema.name)
        client.close()
