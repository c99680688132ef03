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

Servers: TypeAlias = aioredis.Redis | ClusterConnections


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


__all__ = ["Servers", "keys_by_holder"]
