"""The keys of an index, wherever they live: one server, or every primary of a cluster.

Key-level reads that go over every document (the preflight's data check, say) take a
:data:`Servers`, a single server's client or a cluster's :class:`ClusterConnections`,
and get each batch of keys together with the client of the node that holds them: one
code path, run on a single server as on a cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TypeAlias

import redis.asyncio as aioredis

from redismigrate.aio.cluster import ClusterConnections
from redismigrate.aio.keys import scan_prefixes
from redismigrate.report import ShardDocuments

Servers: TypeAlias = aioredis.Redis | ClusterConnections
COUNT_BATCH = 1000


async def keys_by_holder(
    servers: Servers, prefixes: Sequence[str], storage_type: str, batch_size: int
) -> AsyncIterator[tuple[aioredis.Redis, list[bytes]]]:
    """``(client of the node holding them, keys)`` batches of the keys under ``prefixes``
    of the storage's type: on a cluster from every primary at once, each key once (SCAN's
    repeats dropped, see ``ClusterConnections.scan_per_primary``)."""
    if isinstance(servers, ClusterConnections):
        async with servers.scan_per_primary(
            prefixes, batch_size, storage_type=storage_type
        ) as batches:
            async for node_id, keys in batches:
                yield servers.client(node_id), keys
        return
    async for keys in scan_prefixes(servers, prefixes, storage_type, batch_size):
        yield servers, keys


async def documents_by_primary(
    cluster: ClusterConnections, prefixes: Sequence[str], storage_type: str
) -> list[ShardDocuments]:
    """How many documents of the storage's type each primary holds under ``prefixes``
    (each key once), in the topology's order: the per-shard figures of a validation."""
    counts = {p.node_id: 0 for p in cluster.primaries}
    # counted as found (no set of every key held): a key SCAN returns twice while a
    # node rehashes is counted twice, as count_documents does on a single server
    async with cluster.scan_per_primary(
        prefixes, COUNT_BATCH, storage_type=storage_type, dedupe=False
    ) as batches:
        async for node_id, keys in batches:
            counts[node_id] += len(keys)
    return [
        ShardDocuments(node_id=p.node_id, address=p.address, documents=counts[p.node_id])
        for p in cluster.primaries
    ]


__all__ = ["Servers", "documents_by_primary", "keys_by_holder"]
