"""Read-only look at a live server: its indexes, one index's definition, its capabilities."""

from __future__ import annotations

import msgspec

from redismigrate.aio.connection import AsyncRedisClient, connect
from redismigrate.aio.deployment import primaries_of
from redismigrate.aio.indexes import (
    IndexDescription,
    known_aliases,
    list_indexes,
    read_schema_and_stats,
    server_capabilities,
)
from redismigrate.aio.ledger import cluster_route, recall_unreported
from redismigrate.aio.topology import describe_topology, refuse_partial_listing
from redismigrate.capabilities import ServerCapabilities


class AsyncIndexInspector:
    """Inspect the indexes of a Redis server without changing anything.

    Every method takes exactly one of ``redis_url`` (a connection is opened and
    closed for the call) or ``redis_client`` (the caller's client, left open).
    """

    def __init__(self) -> None:
        """An inspector holds no state; one can serve any number of servers."""

    async def list_indexes(
        self,
        *,
        redis_url: str | None = None,
        redis_client: AsyncRedisClient | None = None,
    ) -> list[str]:
        """Names of every index on the server, sorted. ClusterUnsupported on a cluster
        whose primaries each have their own indexes (no search coordinator), naming
        them per primary: one node's list would be a part taken for the whole."""
        async with connect(redis_url, redis_client) as client:
            refuse_partial_listing(await describe_topology(client))
            return await list_indexes(client)

    async def describe(
        self,
        index_name: str,
        *,
        redis_url: str | None = None,
        redis_client: AsyncRedisClient | None = None,
    ) -> IndexDescription:
        """The full schema and the FT.INFO counters of ``index_name``.

        Vector parameters the server does not report are listed in ``unreported``; the
        schema holds the value an earlier redismigrate run recorded for one (its
        migration ledger, or the plan kept in its backup directory), else None (the
        server's default). Raises IndexNotFound when the server has no such index.
        """
        async with connect(redis_url, redis_client) as client:
            described = await read_schema_and_stats(client, index_name)
            async with primaries_of(client) as cluster:  # the ledger's key has its owner
                schema, unreported = await recall_unreported(
                    cluster_route(cluster) if cluster is not None else client,
                    index_name,
                    described.schema,
                    described.unreported,
                )
            return msgspec.structs.replace(described, schema=schema, unreported=unreported)

    async def capabilities(
        self,
        *,
        redis_url: str | None = None,
        redis_client: AsyncRedisClient | None = None,
    ) -> ServerCapabilities:
        """Versions of Redis and its search and JSON modules.

        Raises SearchModuleMissing when the server has no search module.
        """
        async with connect(redis_url, redis_client) as client:
            return await server_capabilities(client)

    async def describe_all(
        self,
        *,
        redis_url: str | None = None,
        redis_client: AsyncRedisClient | None = None,
    ) -> list[IndexDescription]:
        """Every index on the server, described, in name order.

        Raises SearchModuleMissing when the server has no search module, and
        ClusterUnsupported as ``list_indexes`` does.
        """
        async with connect(redis_url, redis_client) as client:
            await server_capabilities(client)
            refuse_partial_listing(await describe_topology(client))
            aliases = await known_aliases(client)
            described = []
            for name in await list_indexes(client):
                one = await read_schema_and_stats(client, name)
                names = [alias for alias, index in aliases.items() if index == name]
                described.append(msgspec.structs.replace(one, aliases=names))
            return described
