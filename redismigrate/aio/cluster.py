"""One Redis Cluster, one plain connection per primary: the Redis I/O of cluster support.

:func:`connect_cluster` takes any node's URL (or a redis.asyncio client of one node),
reads the topology (CLUSTER SHARDS; CLUSTER SLOTS where SHARDS is missing or denied)
and opens a plain ``redis.asyncio.Redis`` to every primary that serves slots, with the
credentials and TLS settings of the given one (the password is never shown). Each
client is checked to be the node the topology names (CLUSTER MYID).

:class:`ClusterConnections` then gives

- :meth:`~ClusterConnections.snapshot`: every primary's view of the slots, the slots any
  of them is migrating or importing (CLUSTER NODES shows those only on the node doing
  it) and what else was wrong; :meth:`~ClusterConnections.ensure_stable` compares it
  with the snapshot taken at connect time, for the checks before the first write,
  before the drop and at the end;
- :meth:`~ClusterConnections.scan_per_primary`: SCAN on every primary at once (one task
  each, batches through one bounded stream), every key exactly once;
- :meth:`~ClusterConnections.probe_search`: whether the search module runs with its
  coordinator (Redis 8) or alone on each shard (Redis Stack 7.4, refused).

:class:`ClusterWire` is the fast wire (aio/fastwire.py) of every primary at once: bulk
reads and writes with each key's commands sent to the primary serving its slot.

A MOVED or ASK reply met here means the slots moved since the topology was read: it
becomes :class:`~redismigrate.cluster.ClusterChanged`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from functools import partial
from typing import Any, TypeAlias

import anyio
import redis.asyncio as aioredis
import redis.exceptions as rexc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from redismigrate.aio.connection import CONNECT_TIMEOUT_SECONDS, client_from_url, execute
from redismigrate.aio.fastwire import Caller, Wire
from redismigrate.aio.keys import SCAN_COUNT, glob_escape
from redismigrate.aio.topology import cluster_reply
from redismigrate.cluster import (
    ClusterChanged,
    ClusterSnapshot,
    ClusterTopology,
    NodeInfo,
    NodeSearch,
    SearchCoordination,
    SlotMigration,
    Stability,
    TopologyError,
    cluster_partitions,
    compare,
    disagreements,
    group_by_primary,
    group_positions,
    judge_search,
    key_slot,
    migrations_of,
    owner_table,
    parse_cluster_nodes,
    parse_cluster_shards,
    parse_cluster_slots,
    search_version,
)
from redismigrate.errors import BadInputError, ConnectionFailed, RedisMigrateError
from redismigrate.keytext import key_text
from redismigrate.urls import redact_text, redact_url, url_password

KeyBatch: TypeAlias = tuple[str, list[bytes]]  # (primary node id, keys it holds)
PROBE_NAME = "redismigrate-coordinator-probe-{}"
_CLUSTER_DISABLED = re.compile(r"cluster support disabled|cluster mode is not enabled", re.I)
_NO_INDEX = re.compile(r"unknown index name|no such index|not found", re.I)
_REDIS_TYPES = {"hash": "hash", "json": "ReJSON-RL"}


class NotACluster(BadInputError):
    """The server is not a Redis Cluster node (cluster support is disabled)."""


def _text(value: Any) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _first_error(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups, not the closed-stream
    errors the other tasks meet once one of them failed."""
    leaves: list[BaseException] = []

    def walk(node: BaseException) -> None:
        inner = getattr(node, "exceptions", None)
        if isinstance(inner, list | tuple) and inner:
            for child in inner:
                walk(child)
        else:
            leaves.append(node)

    walk(exc)
    plumbing = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)
    return next((e for e in leaves if not isinstance(e, plumbing)), leaves[0])


async def gather_all(calls: Sequence[Callable[[], Coroutine[Any, Any, None]]]) -> None:
    """Run ``calls`` concurrently (one task each); the first real error is raised as
    itself, not inside an exception group."""
    try:
        async with anyio.create_task_group() as group:
            for call in calls:
                group.start_soon(call)
    except Exception as exc:
        raise _first_error(exc) from None


@contextmanager
def _answers(where: str, password: str | None) -> Iterator[None]:
    """Redis errors of one node as one line naming it; a redirection as ClusterChanged."""
    try:
        yield
    except rexc.ResponseError as exc:
        reply = cluster_reply(exc)
        if reply is None:
            raise
        raise ClusterChanged(
            f"{where} answered {reply}: the cluster's slots moved since its topology was read"
        ) from None
    except rexc.AuthenticationError as exc:
        message = redact_text(str(exc), password)
        raise ConnectionFailed(f"{where} refused the credentials: {message}") from None
    except (rexc.ConnectionError, rexc.TimeoutError, OSError, TimeoutError) as exc:
        message = redact_text(str(exc) or type(exc).__name__, password)
        raise ConnectionFailed(f"cannot reach {where}: {message}") from None


# ---------------------------------------------------------------------------- reading


async def read_topology(client: aioredis.Redis, *, default_host: str = "") -> ClusterTopology:
    """The topology as the node ``client`` talks to sees it: CLUSTER SHARDS, or CLUSTER
    SLOTS where SHARDS is unknown (Redis 6) or not allowed."""
    try:
        reply = await execute(client, "CLUSTER", "SHARDS")
    except rexc.ResponseError as exc:
        if cluster_reply(exc) is None and _CLUSTER_DISABLED.search(str(exc)):
            raise NotACluster(
                "the server is not a Redis Cluster node (cluster support is disabled)"
            ) from None
        try:
            reply = await execute(client, "CLUSTER", "SLOTS")
        except rexc.ResponseError as again:
            raise TopologyError(
                f"the node would give neither CLUSTER SHARDS ({exc}) nor CLUSTER SLOTS ({again})"
            ) from None
        return parse_cluster_slots(reply, default_host=default_host)
    return parse_cluster_shards(reply, default_host=default_host)


def node_client(seed: aioredis.Redis, node: NodeInfo) -> aioredis.Redis:
    """A plain client (bytes replies) of ``node`` with ``seed``'s credentials, TLS
    settings, timeouts and protocol; its own connection pool."""
    pool = seed.connection_pool
    kwargs: dict[str, Any] = dict(pool.connection_kwargs)
    connection_class = pool.connection_class
    tls = issubclass(connection_class, aioredis.SSLConnection)
    if issubclass(connection_class, aioredis.UnixDomainSocketConnection):
        connection_class = aioredis.Connection  # the other nodes are reached over TCP
        kwargs.pop("path", None)
    port = node.tls_port if tls and node.tls_port else node.port
    kwargs.update(host=node.host, port=port, decode_responses=False)
    return aioredis.Redis.from_pool(
        aioredis.ConnectionPool(
            connection_class=connection_class, max_connections=pool.max_connections, **kwargs
        )
    )


# ---------------------------------------------------------------------------- connections


class ClusterConnections:
    """A plain client per primary of one cluster, and the snapshot taken when they were
    opened (its topology says which primary holds which slots). Use
    :func:`connect_cluster`."""

    def __init__(
        self,
        clients: dict[str, aioredis.Redis],
        topology: ClusterTopology,
        pinned: str,
        password: str | None,
    ) -> None:
        self._clients = clients
        self.topology = topology
        self.pinned = pinned  # the primary FT.* commands are sent to
        self._password = password
        self.first: ClusterSnapshot | None = None

    def __repr__(self) -> str:
        nodes = ", ".join(p.label for p in self.topology.primaries)
        return f"ClusterConnections({nodes})"

    @property
    def primaries(self) -> tuple[NodeInfo, ...]:
        return self.topology.primaries

    def client(self, node_id: str) -> aioredis.Redis:
        """The plain client of primary ``node_id`` (KeyError for any other id)."""
        return self._clients[node_id]

    @property
    def clients(self) -> dict[str, aioredis.Redis]:
        """``{primary node id: its client}``."""
        return dict(self._clients)

    def client_for_key(self, key: str | bytes) -> aioredis.Redis:
        """The plain client of the primary serving ``key``'s slot (as the topology read
        at connect time says); TopologyError when no primary serves it."""
        slot = key_slot(key)
        owner = owner_table(self.topology)[slot]
        if owner is None:
            raise TopologyError(f"slot {slot} is served by no node of the cluster")
        return self._clients[owner]

    def group(self, keys: Sequence[bytes]) -> dict[str, list[bytes]]:
        """``keys`` by the primary that holds them (see ``group_by_primary``)."""
        return group_by_primary(self.topology, keys)

    def _answers(self, node: NodeInfo) -> AbstractContextManager[None]:
        return _answers(f"cluster node {node.label}", self._password)

    def answers(self, node_id: str) -> AbstractContextManager[None]:
        """Errors of primary ``node_id`` as one line naming it; MOVED / ASK (the slots
        moved) as ClusterChanged."""
        node = self.topology.node(node_id)
        if node is None:
            raise KeyError(node_id)
        return self._answers(node)

    async def _verify(self) -> None:
        async def check(node: NodeInfo) -> None:
            with self._answers(node):
                with anyio.fail_after(CONNECT_TIMEOUT_SECONDS):
                    found = _text(await execute(self._clients[node.node_id], "CLUSTER", "MYID"))
            if found != node.node_id:
                raise TopologyError(
                    f"the node at {node.address} is {found[:8]}, not {node.label} as the "
                    "topology says (an address the cluster announces that leads elsewhere?)"
                )

        await gather_all([partial(check, node) for node in self.primaries])

    # ------------------------------------------------------------ stability

    async def snapshot(self) -> ClusterSnapshot:
        """Every primary's view of the slots and what it is moving, now.

        The topology is the pinned primary's view (another's if it did not answer);
        primaries that disagree with it, primaries seen failing, and primaries that
        would not say are the snapshot's problems.
        """
        views: dict[str, ClusterTopology] = {}
        migrations: set[SlotMigration] = set()
        problems: list[str] = []

        async def ask(node: NodeInfo) -> None:
            client = self._clients[node.node_id]
            try:
                with self._answers(node):
                    views[node.node_id] = await read_topology(client, default_host=node.host)
            except (ConnectionFailed, ClusterChanged, TopologyError, rexc.RedisError) as exc:
                problems.append(f"{node.label} did not give the topology: {exc}")
                return
            try:
                with self._answers(node):
                    lines = parse_cluster_nodes(await execute(client, "CLUSTER", "NODES"))
            except (ConnectionFailed, ClusterChanged, TopologyError, rexc.RedisError) as exc:
                problems.append(
                    f"cannot tell whether {node.label} is moving slots: CLUSTER NODES: {exc}"
                )
                return
            migrations.update(migrations_of(lines))
            for line in lines:
                if line.is_primary and line.slots and line.failing:
                    problems.append(
                        f"{node.label} sees primary {line.node_id[:8]} ({line.host}:{line.port}) "
                        f"as {line.failing}"
                    )

        await gather_all([partial(ask, node) for node in self.primaries])
        if not views:
            raise ConnectionFailed(f"no primary of the cluster answered: {'; '.join(problems)}")
        reference = self.pinned if self.pinned in views else sorted(views)[0]
        problems.extend(disagreements(reference, views))
        return ClusterSnapshot(
            topology=views[reference],
            migrations=tuple(sorted(migrations, key=lambda m: (m.slot, m.state, m.node_id))),
            problems=tuple(sorted(problems)),
        )

    async def check_stable(self, before: ClusterSnapshot | None = None) -> Stability:
        """A fresh snapshot compared with ``before`` (by default the one taken at
        connect time): every reason the cluster is not fit or did not hold still."""
        reference = before or self.first
        after = await self.snapshot()
        assert reference is not None
        return compare(reference, after)

    async def ensure_stable(
        self, when: str, before: ClusterSnapshot | None = None
    ) -> ClusterSnapshot:
        """A fresh snapshot; ClusterChanged (one line, every reason) unless the cluster
        held still since ``before`` (default: connect time) and no slot is moving.
        ``when`` names the moment, e.g. ``"before the drop"``."""
        reference = before or self.first
        assert reference is not None
        after = await self.snapshot()
        compare(reference, after).raise_if_unstable(when)
        return after

    # ------------------------------------------------------------ keys

    async def _scan_node(
        self,
        node: NodeInfo,
        prefixes: Sequence[str],
        batch_size: int,
        redis_type: str | None,
        dedupe: bool,
    ) -> AsyncIterator[list[bytes]]:
        client = self._clients[node.node_id]
        owners = owner_table(self.topology)
        seen: set[bytes] | None = set() if dedupe else None
        buffer: list[bytes] = []
        for position, prefix in enumerate(prefixes):
            earlier = tuple(p.encode() for p in prefixes[:position])
            cursor = 0
            while True:
                with self._answers(node):
                    cursor, found = await client.scan(
                        cursor=cursor,
                        match=glob_escape(prefix) + "*",
                        count=SCAN_COUNT,
                        _type=redis_type,
                    )
                for item in found:
                    key = item if isinstance(item, bytes) else str(item).encode()
                    if earlier and key.startswith(earlier):
                        continue  # an earlier prefix's SCAN has it
                    if seen is not None:
                        if key in seen:
                            continue  # SCAN may repeat a key when the node's table shrinks
                        seen.add(key)
                    slot = key_slot(key)
                    if owners[slot] != node.node_id:
                        raise ClusterChanged(
                            f"SCAN on {node.label} found {key_text(key)!r} of slot {slot}, which "
                            f"{self.topology.label(owners[slot] or '')} serves: the cluster's "
                            "slots moved since its topology was read"
                        )
                    buffer.append(key)
                while len(buffer) >= batch_size:
                    yield buffer[:batch_size]
                    buffer = buffer[batch_size:]
                if int(cursor) == 0:
                    break
        if buffer:
            yield buffer

    @asynccontextmanager
    async def scan_per_primary(
        self,
        prefixes: Sequence[str],
        batch_size: int,
        *,
        storage_type: str | None = None,
        dedupe: bool = True,
    ) -> AsyncIterator[MemoryObjectReceiveStream[KeyBatch]]:
        """``(primary node id, keys)`` batches of the keys under ``prefixes`` (of
        ``storage_type``: ``"hash"`` or ``"json"``; None: any type), from every primary
        at once: one task per primary, at most one waiting batch per primary.

        Every key once: a primary holds only its slots' keys, a key under several
        prefixes is taken for the first, and ``dedupe`` drops SCAN's repeats (it keeps
        each key seen, about a hundred bytes a key). A key of a slot its node does not
        serve (the slots moved) stops it with ClusterChanged. Use::

            async with cluster.scan_per_primary(["doc:"], 500) as batches:
                async for node_id, keys in batches:
                    ...
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        redis_type = None if storage_type is None else _REDIS_TYPES[storage_type]
        primaries = self.primaries
        send, receive = anyio.create_memory_object_stream[KeyBatch](len(primaries))

        async def worker(node: NodeInfo, out: MemoryObjectSendStream[KeyBatch]) -> None:
            async with out:
                async for keys in self._scan_node(node, prefixes, batch_size, redis_type, dedupe):
                    await out.send((node.node_id, keys))

        try:
            async with anyio.create_task_group() as group:
                with send:
                    for node in primaries:
                        group.start_soon(worker, node, send.clone())
                try:
                    yield receive
                finally:
                    # a consumer that stops early must not leave the workers waiting
                    group.cancel_scope.cancel()
        except Exception as exc:
            raise _first_error(exc) from None
        finally:
            receive.close()

    # ------------------------------------------------------------ search

    def _probe_name(self, node_id: str) -> str | None:
        """An index name whose slot another primary serves; None on a one-primary cluster."""
        owners = owner_table(self.topology)
        for n in range(4096):
            name = PROBE_NAME.format(n)
            owner = owners[key_slot(name)]
            if owner is not None and owner != node_id:
                return name
        return None

    async def _search_facts(self, node: NodeInfo) -> NodeSearch:
        client = self._clients[node.node_id]
        errors: list[str] = []
        version = None
        indexes: tuple[str, ...] | None = None
        with self._answers(node):
            try:
                version = search_version(await execute(client, "MODULE", "LIST"))
            except rexc.ResponseError as exc:
                errors.append(f"MODULE LIST: {exc}")
            try:
                indexes = tuple(sorted(_text(n) for n in await execute(client, "FT._LIST")))
            except rexc.ResponseError as exc:
                errors.append(f"FT._LIST: {exc}")
        redirected: str | None = None
        probed = False
        name = self._probe_name(node.node_id)
        if name is not None and (version is not None or indexes is not None):
            with self._answers(node):
                try:
                    await execute(client, "FT.INFO", name)
                    probed = True
                except rexc.ResponseError as exc:
                    reply = cluster_reply(exc)
                    if reply is not None and reply.split()[0] in ("MOVED", "ASK"):
                        redirected, probed = reply, True
                    elif _NO_INDEX.search(str(exc)):
                        probed = True  # answered here: the name is no key of a slot
                    else:
                        errors.append(f"FT.INFO: {exc}")
        partitions = None
        try:
            with self._answers(node):
                partitions = cluster_partitions(await execute(client, "SEARCH.CLUSTERINFO"))
        except rexc.ResponseError:
            partitions = None  # no coordinator command here (Redis Stack 7.4), or denied
        return NodeSearch(
            node_id=node.node_id,
            address=node.address,
            search_version=version,
            indexes=indexes,
            redirected=redirected,
            probed=probed,
            partitions=partitions,
            errors=tuple(errors),
        )

    async def probe_search(self) -> SearchCoordination:
        """Whether the search module runs with its coordinator on this cluster (read only).

        Asks every primary: MODULE LIST, FT._LIST, FT.INFO of a made-up index name that
        hashes to another primary's slot (the coordinator answers it, "Unknown index
        name"; a shard working alone answers MOVED) and SEARCH.CLUSTERINFO where there is
        one (the coordinator's count of shards). See ``judge_search``.
        """
        found: dict[str, NodeSearch] = {}

        async def ask(node: NodeInfo) -> None:
            found[node.node_id] = await self._search_facts(node)

        await gather_all([partial(ask, node) for node in self.primaries])
        nodes = [found[p.node_id] for p in self.primaries]
        return judge_search(nodes, len(self.primaries))

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()


# ---------------------------------------------------------------------------- the wire


class ClusterWire(Wire):
    """Bulk reads and writes on a cluster: each key's commands go to the primary
    serving its slot, over that primary's own :class:`Wire` (raw connections where
    they can be made), the primaries at once. Guarded writes (aio/guarded.py) over it
    make one transaction per slot. A MOVED or ASK reply becomes ClusterChanged.

    A :class:`Wire` to the steps that take one; it has no single connection
    (``connection`` is refused: a conversation belongs to one primary, ``wires[id]``).
    """

    def __init__(self, connections: ClusterConnections) -> None:
        super().__init__(connections.client(connections.pinned))
        self.connections = connections
        self.topology = connections.topology
        self.wires = {node_id: Wire(client) for node_id, client in connections.clients.items()}

    def answers(self, node_id: str) -> AbstractContextManager[None]:
        """See :meth:`ClusterConnections.answers`."""
        return self.connections.answers(node_id)

    def slot_groups(self, keys: Sequence[bytes], size: int) -> dict[str, list[Sequence[bytes]]]:
        """``{primary node id: groups of its keys}``: each group's keys share one slot
        (at most ``size`` of them), in the order of ``keys``."""
        table = owner_table(self.topology)
        slots: dict[int, list[bytes]] = {}
        for key in keys:
            slots.setdefault(key_slot(key), []).append(key)
        groups: dict[str, list[Sequence[bytes]]] = {}
        for slot, members in slots.items():
            owner = table[slot]
            if owner is None:
                raise TopologyError(f"slot {slot} is served by no node of the cluster")
            mine = groups.setdefault(owner, [])
            mine.extend(members[start : start + size] for start in range(0, len(members), size))
        return groups

    async def per_primary(
        self, keys: Sequence[bytes], work: Callable[[str, list[int]], Awaitable[None]]
    ) -> None:
        """``work(primary node id, positions of its keys in keys)`` for every primary
        holding some of ``keys``, at once; its errors as ``answers`` gives them."""
        groups = group_positions(self.topology, keys)

        async def run(node_id: str, positions: list[int]) -> None:
            with self.answers(node_id):
                await work(node_id, positions)

        await gather_all(
            [partial(run, node_id, positions) for node_id, positions in groups.items()]
        )

    async def read_columns(
        self, keys: Sequence[bytes], fields: Sequence[bytes], value_size: int = -1
    ) -> list[list[Any]]:
        """As :meth:`Wire.read_columns`, each primary asked for its keys."""
        columns: list[list[Any]] = [[None] * len(keys) for _ in fields]

        async def read(node_id: str, positions: list[int]) -> None:
            found = await self.wires[node_id].read_columns(
                [keys[p] for p in positions], fields, value_size
            )
            for column, values in zip(columns, found, strict=True):
                for position, value in zip(positions, values, strict=True):
                    column[position] = value

        await self.per_primary(keys, read)
        return columns

    async def hset_many(self, items: Sequence[tuple[bytes, bytes, bytes]]) -> None:
        async def write(node_id: str, positions: list[int]) -> None:
            await self.wires[node_id].hset_many([items[p] for p in positions])

        await self.per_primary([key for key, _, _ in items], write)

    async def touch_many(self, keys: Sequence[bytes]) -> None:
        async def touch(node_id: str, positions: list[int]) -> None:
            await self.wires[node_id].touch_many([keys[p] for p in positions])

        await self.per_primary(keys, touch)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Caller]:
        raise RedisMigrateError(
            "a cluster has no single connection for a conversation: use the wire of the "
            "primary serving the keys (ClusterWire.wires)"
        )
        yield  # pragma: no cover

    async def close(self) -> None:
        for wire in self.wires.values():
            await wire.close()


@asynccontextmanager
async def connect_cluster(
    redis_url: str | None = None, redis_client: aioredis.Redis | None = None
) -> AsyncIterator[ClusterConnections]:
    """Connections to every primary of the cluster ``redis_url`` or ``redis_client``
    (any node, a replica too) belongs to; closed on exit (the caller's client is left
    open). NotACluster when the server is no cluster node."""
    if (redis_url is None) == (redis_client is None):
        raise BadInputError("give exactly one of redis_url or redis_client")
    seed = redis_client if redis_client is not None else client_from_url(str(redis_url))
    password = (
        url_password(redis_url)
        if redis_url
        else seed.connection_pool.connection_kwargs.get("password")
    )
    where = redact_url(redis_url) if redis_url else "the Redis server"
    connections: ClusterConnections | None = None
    try:
        with _answers(where, password):
            with anyio.fail_after(CONNECT_TIMEOUT_SECONDS):
                await seed.ping()
            default_host = str(seed.connection_pool.connection_kwargs.get("host") or "")
            topology = await read_topology(seed, default_host=default_host)
            seed_id = _text(await execute(seed, "CLUSTER", "MYID"))
        primaries = topology.primaries
        if not primaries:
            raise TopologyError("no primary of the cluster serves any slot")
        pinned = seed_id if any(p.node_id == seed_id for p in primaries) else primaries[0].node_id
        clients = {p.node_id: node_client(seed, p) for p in primaries}
        connections = ClusterConnections(clients, topology, pinned, password)
        await connections._verify()
        connections.first = await connections.snapshot()
        if owner_table(connections.first.topology) != owner_table(topology):
            raise ClusterChanged(
                f"the primaries' view of the slots differs from {where}'s: the cluster is "
                "changing (a failover or a resharding); try again once it has settled"
            )
        yield connections
    finally:
        if connections is not None:
            await connections.aclose()
        if redis_client is None:
            await seed.aclose()


__all__ = [
    "PROBE_NAME",
    "ClusterConnections",
    "ClusterWire",
    "KeyBatch",
    "NotACluster",
    "connect_cluster",
    "gather_all",
    "node_client",
    "read_topology",
]
