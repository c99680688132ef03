"""Where a run's commands go: one server, or every primary of a cluster.

A proxy in front of several shards that says it is no cluster node (Redis Enterprise
or Redis Cloud without the OSS Cluster API) takes one command at a time for any key,
but refuses a transaction or a RENAME over keys of two slots (CROSSSLOT). A run there
takes the cluster's path through :class:`OneServer` as well: its guarded writes are one
transaction per slot and its prefix moves DUMP, RESTORE and DEL, each of one key.

A run on a Redis Cluster with the search coordinator sends its FT.* commands to one
pinned primary (the coordinator forwards them to every shard) and its key-level work to
every primary at once through :class:`~redismigrate.aio.cluster.ClusterConnections`.

:class:`OneServer` is a single server seen as a cluster of one primary that serves
every slot. With ``REDISMIGRATE_PER_PRIMARY=1`` (a test hook, like
``REDISMIGRATE_CRASH_AT``) a run on a single server takes the cluster's code path
through it, step for step, so that path is exercised wherever a single server is.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
import redis.exceptions as rexc

from redismigrate.aio.cluster import ClusterConnections, connect_cluster
from redismigrate.aio.keys import is_cluster
from redismigrate.cluster import (
    SLOTS,
    ClusterSnapshot,
    ClusterTopology,
    NodeInfo,
    Shard,
    SlotRange,
)

PER_PRIMARY_ENV = "REDISMIGRATE_PER_PRIMARY"
ONE_SERVER_ID = "single-server"
# two names of different slots (15495 and 3300): a transaction over both is refused
# where the keys may live on different shards
CROSS_SLOT_PROBE = ("redismigrate:probe:{a}", "redismigrate:probe:{b}")


class OneServer(ClusterConnections):
    """A single server as a cluster of one primary serving every slot; the caller's
    client is used as it is (and left open)."""

    def __init__(self, client: aioredis.Redis) -> None:
        kwargs = client.connection_pool.connection_kwargs
        node = NodeInfo(
            node_id=ONE_SERVER_ID,
            host=str(kwargs.get("host") or kwargs.get("path") or "localhost"),
            port=int(kwargs.get("port") or 0),
        )
        topology = ClusterTopology(
            shards=(Shard(primary=node, slots=(SlotRange(first=0, last=SLOTS - 1),)),)
        )
        super().__init__({node.node_id: client}, topology, node.node_id, kwargs.get("password"))
        self.first = ClusterSnapshot(topology=topology)

    async def snapshot(self) -> ClusterSnapshot:
        return ClusterSnapshot(topology=self.topology)

    async def aclose(self) -> None:
        return None


def per_primary_requested() -> bool:
    """Whether the test hook asks a single server to take the cluster's code path."""
    return os.environ.get(PER_PRIMARY_ENV, "") not in ("", "0")


async def refuses_cross_slot(
    client: aioredis.Redis, keys: Sequence[str] = CROSS_SLOT_PROBE
) -> bool:
    """Whether the server answers CROSSSLOT to a WATCH of ``keys`` (of different slots),
    as a proxy in front of several shards does; read only (UNWATCH right after, on the
    same connection). False where WATCH is not allowed: the preflight says so."""
    async with client.pipeline(transaction=True) as pipe:  # its reset sends UNWATCH
        try:
            await pipe.watch(*keys)
        except rexc.ClusterCrossSlotError:
            return True
        except rexc.ResponseError as exc:
            return "CROSSSLOT" in str(exc)  # as a raw reply, where the code is kept
    return False


@asynccontextmanager
async def primaries_of(client: aioredis.Redis) -> AsyncIterator[ClusterConnections | None]:
    """Every primary of the cluster ``client`` is a node of (connections closed on exit);
    on a single server None, or :class:`OneServer` under the test hook or where the
    server refuses transactions across slots (a proxy in front of several shards)."""
    if await is_cluster(client):
        async with connect_cluster(redis_client=client) as cluster:
            yield cluster
    elif per_primary_requested() or await refuses_cross_slot(client):
        yield OneServer(client)
    else:
        yield None


__all__ = [
    "CROSS_SLOT_PROBE",
    "ONE_SERVER_ID",
    "PER_PRIMARY_ENV",
    "OneServer",
    "per_primary_requested",
    "primaries_of",
    "refuses_cross_slot",
]
