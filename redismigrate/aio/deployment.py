"""Where a run's commands go: one server, or every primary of a cluster.

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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis

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


@asynccontextmanager
async def primaries_of(client: aioredis.Redis) -> AsyncIterator[ClusterConnections | None]:
    """Every primary of the cluster ``client`` is a node of (connections closed on exit);
    on a single server None, or :class:`OneServer` under the test hook."""
    if await is_cluster(client):
        async with connect_cluster(redis_client=client) as cluster:
            yield cluster
    elif per_primary_requested():
        yield OneServer(client)
    else:
        yield None


__all__ = ["ONE_SERVER_ID", "PER_PRIMARY_ENV", "OneServer", "per_primary_requested", "primaries_of"]
