"""The keys of an index, wherever they live: one server, or every primary of a cluster.

Key-level reads that go over every document (the preflight's data check, say) take a
:data:`Servers`, a single server's client or a cluster's :class:`ClusterConnections`,
and get each batch of keys together with the client of the node that holds them: one
code path, run on a single server as on a cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import Any, TypeAlias

import redis.asyncio as aioredis

from redismigrate.aio.cluster import ClusterConnections, gather_all
from redismigrate.aio.keys import count_documents, rename_json_fields, scan_prefixes
from redismigrate.cluster import group_positions
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


def by_holder(servers: Servers, keys: Sequence[bytes]) -> list[tuple[aioredis.Redis, list[int]]]:
    """``(client of a node, positions in keys of the keys it holds)`` for every node
    holding some of ``keys``."""
    if isinstance(servers, ClusterConnections):
        groups = group_positions(servers.topology, keys)
        return [(servers.client(node_id), positions) for node_id, positions in groups.items()]
    return [(servers, list(range(len(keys))))] if keys else []


async def _per_holder(
    servers: Servers,
    keys: Sequence[bytes],
    commands: Sequence[Sequence[Any]],
    *,
    raise_on_error: bool = True,
) -> list[Any]:
    """``commands[i]`` (about ``keys[i]``) each sent to the node holding its key, one
    pipeline per node, the nodes at once; the replies in the order of ``keys``."""
    replies: list[Any] = [None] * len(keys)

    async def send(client: aioredis.Redis, positions: list[int]) -> None:
        pipe = client.pipeline(transaction=False)
        for position in positions:
            pipe.execute_command(*commands[position])
        found = await pipe.execute(raise_on_error=raise_on_error)
        for position, reply in zip(positions, found, strict=True):
            replies[position] = reply

    if isinstance(servers, ClusterConnections):
        cluster = servers

        async def send_to(node_id: str, positions: list[int]) -> None:
            with cluster.answers(node_id):  # MOVED: ClusterChanged
                await send(cluster.client(node_id), positions)

        groups = group_positions(cluster.topology, keys)
        await gather_all([partial(send_to, node, positions) for node, positions in groups.items()])
    elif keys:
        await send(servers, list(range(len(keys))))
    return replies


async def hash_field_of_each(
    servers: Servers, keys: Sequence[bytes], field: bytes | str
) -> list[bytes | None]:
    """HGET ``field`` of every key, each asked of the node holding it."""
    return await _per_holder(servers, keys, [("HGET", key, field) for key in keys])


async def json_path_of_each(servers: Servers, keys: Sequence[bytes], path: str) -> list[Any]:
    """JSON.GET ``path`` of every key (an error reply where it fails), each asked of
    the node holding it."""
    return await _per_holder(
        servers, keys, [("JSON.GET", key, path) for key in keys], raise_on_error=False
    )


async def exists_each(servers: Servers, names: Sequence[Sequence[bytes]]) -> list[bool]:
    """Whether some name of each entry exists (a key that is not UTF-8 has up to two
    candidate names; they may live on different nodes)."""
    flat = [name for entry in names for name in entry]
    found = await _per_holder(servers, flat, [("EXISTS", name) for name in flat])
    answers: list[bool] = []
    position = 0
    for entry in names:
        answers.append(any(found[position : position + len(entry)]))
        position += len(entry)
    return answers


async def count_documents_on(servers: Servers, prefixes: Sequence[str], storage_type: str) -> int:
    """How many keys of the storage's type live under ``prefixes`` now, on every node."""
    if isinstance(servers, ClusterConnections):
        shards = await documents_by_primary(servers, prefixes, storage_type)
        return sum(shard.documents for shard in shards)
    return await count_documents(servers, prefixes, storage_type)


async def rename_json_fields_on(
    servers: Servers, keys: Sequence[bytes], renames: Sequence[tuple[str, str]]
) -> int:
    """``rename_json_fields`` with each key's commands sent to the node holding it."""
    if not isinstance(servers, ClusterConnections):
        return await rename_json_fields(servers, keys, renames)
    changed = 0
    for node_id, positions in group_positions(servers.topology, keys).items():
        with servers.answers(node_id):
            changed += await rename_json_fields(
                servers.client(node_id), [keys[p] for p in positions], renames
            )
    return changed


__all__ = [
    "Servers",
    "by_holder",
    "count_documents_on",
    "documents_by_primary",
    "exists_each",
    "hash_field_of_each",
    "json_path_of_each",
    "keys_by_holder",
    "rename_json_fields_on",
]
