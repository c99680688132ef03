"""What kind of server a client talks to: a single primary, a replica, a cluster node.

redismigrate migrates an index on a single Redis server, a primary.  A node of a Redis
Cluster holds only its own slots (and, on Redis Stack 7.4 without the search coordinator,
only its own shard's index), and a replica refuses writes: both are refused by the
``topology`` line of the preflight, and a cluster's redirections (MOVED, ASK) met anywhere
else become one :class:`ClusterUnsupported` line saying so.

:func:`describe_topology` asks the server (INFO cluster, INFO replication; CLUSTER MYID and
ROLE where INFO is not allowed); :func:`topology_check` is pure over its answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rexc

from redismigrate.errors import BadInputError, RedisMigrateError
from redismigrate.preflight import PreflightCheck

SUPPORTED = "redismigrate supports a single Redis server (a primary) only"
CLUSTER_NEEDS = (
    "redismigrate migrates a Redis Cluster only where the search coordinator runs "
    "(Redis 8 or later), so that one index spans every shard"
)

# replies only a cluster node gives, by the redis-py class that carries them
_CLUSTER_REPLIES: tuple[tuple[type[rexc.ResponseError], str], ...] = (
    (rexc.MovedError, "MOVED"),  # before AskError: MovedError subclasses it
    (rexc.AskError, "ASK"),
    (rexc.ClusterDownError, "CLUSTERDOWN"),
    (rexc.TryAgainError, "TRYAGAIN"),
    (rexc.ClusterCrossSlotError, "CROSSSLOT"),
)
# the same replies as plain text (hiredis' ReplyError turned into ResponseError keeps the code)
_CLUSTER_TEXT = re.compile(r"^\s*(MOVED|ASK|CLUSTERDOWN|TRYAGAIN|CROSSSLOT)\b\s*(.*)$", re.S)
_REDIRECTED = re.compile(r"answered (?:MOVED|ASK) \d+ \S+")
_CLUSTER_DISABLED = re.compile(r"cluster support disabled|cluster mode is not enabled", re.I)


class ClusterUnsupported(BadInputError):
    """The server answered like a Redis Cluster node (MOVED, ASK, CLUSTERDOWN, ...)."""


@dataclass(frozen=True)
class Topology:
    """What the server said about itself; None where it would not say (ACL)."""

    cluster_enabled: bool | None
    role: str | None  # "master" or "slave" (INFO's words); None: unknown
    connected_replicas: int = 0
    primary: str | None = None  # "host:port" of a replica's primary, when known
    # a cluster node: how many primaries the cluster has (0: not found) and whether its
    # search module runs with the coordinator (None: not found), and why not
    cluster_primaries: int = 0
    coordinator: bool | None = None
    search_reasons: tuple[str, ...] = ()
    # each primary's own indexes (FT._LIST): (its label, the names)
    node_indexes: tuple[tuple[str, tuple[str, ...]], ...] = ()


# ---------------------------------------------------------------------------- asking


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _field(info: Any, name: str) -> Any:
    """``info[name]`` whether the client decodes replies or not."""
    if not isinstance(info, dict):
        return None
    for key, value in info.items():
        if _text(key) == name:
            return value
    return None


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(_text(value))
    except (TypeError, ValueError):
        return default


async def _info(client: aioredis.Redis, section: str) -> dict[Any, Any] | None:
    """``INFO section``; None when it is not allowed (NOPERM) or renamed away."""
    try:
        found = await client.info(section)
    except rexc.ResponseError:
        return None
    return found if isinstance(found, dict) else None


async def _command(client: aioredis.Redis, *args: Any) -> Any:
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


async def _cluster_enabled(client: aioredis.Redis) -> bool | None:
    info = await _info(client, "cluster")
    if info is not None and _field(info, "cluster_enabled") is not None:
        return bool(_int(_field(info, "cluster_enabled")))
    try:
        await _command(client, "CLUSTER", "MYID")
    except rexc.ResponseError as exc:
        if _CLUSTER_DISABLED.search(str(exc)):
            return False
        return None  # NOPERM or unknown: not known
    return True


async def _replication(client: aioredis.Redis) -> tuple[str | None, int, str | None]:
    """(role, connected replicas, "host:port" of the primary)."""
    info = await _info(client, "replication")
    if info is not None and _field(info, "role") is not None:
        role = _text(_field(info, "role"))
        host = _field(info, "master_host")
        primary = f"{_text(host)}:{_text(_field(info, 'master_port'))}" if host else None
        return role, _int(_field(info, "connected_slaves")), primary
    try:
        reply = await _command(client, "ROLE")
    except rexc.ResponseError:
        return None, 0, None  # NOPERM: what INFO and ROLE would have said is unknown
    if not isinstance(reply, list | tuple) or not reply:
        return None, 0, None
    role = _text(reply[0])
    if role == "master":
        replicas = reply[2] if len(reply) > 2 and isinstance(reply[2], list | tuple) else []
        return role, len(replicas), None
    if role == "slave" and len(reply) > 2:
        return role, 0, f"{_text(reply[1])}:{_text(reply[2])}"
    return role, 0, None


async def describe_topology(client: aioredis.Redis) -> Topology:
    """Ask the server whether it is a cluster node, a primary or a replica (read-only).

    INFO cluster and INFO replication; where the user may not run INFO, CLUSTER MYID and
    ROLE; where those are denied too, the unknown parts are None.
    """
    cluster = await _cluster_enabled(client)
    role, replicas, primary = await _replication(client)
    found = Topology(
        cluster_enabled=cluster, role=role, connected_replicas=replicas, primary=primary
    )
    if cluster:
        found = await _with_search(client, found)
    return found


async def _with_search(client: aioredis.Redis, found: Topology) -> Topology:
    """``found`` with the cluster's primaries counted and its search coordination probed
    (read only); as it was where the cluster would not say (ACL, a changing cluster)."""
    from redismigrate.aio.cluster import connect_cluster

    try:
        async with connect_cluster(redis_client=client) as cluster:
            search = await cluster.probe_search()
            count = len(cluster.primaries)
    except (RedisMigrateError, rexc.RedisError, OSError, TimeoutError):
        return found
    return replace(
        found,
        cluster_primaries=count,
        coordinator=search.coordinator,
        search_reasons=tuple(search.reasons),
        node_indexes=tuple((n.label, n.indexes) for n in search.nodes if n.indexes is not None),
    )


# ---------------------------------------------------------------------------- the rule


def topology_check(topology: Topology) -> PreflightCheck:
    """The ``topology`` line of the preflight: a single primary passes; a cluster node
    and a replica block; what the server would not say is a warning."""
    if topology.cluster_enabled:
        count = topology.cluster_primaries
        of = f" of {count} primar{'ies' if count != 1 else 'y'}" if count else ""
        if topology.coordinator is False:
            why = (
                _REDIRECTED.sub("redirected to the node holding it", topology.search_reasons[0])
                if topology.search_reasons
                else "not found"
            )
            what = (
                f"a node of a Redis Cluster{of} without the search coordinator ({why}): "
                "each shard's index covers only that shard's keys"
            )
        elif topology.coordinator:
            return PreflightCheck(
                check="topology",
                status="pass",
                detail=f"a node of a Redis Cluster{of} with the search coordinator: index "
                "commands go to this node, which forwards them to every shard; document keys "
                "to the primary serving each",
            )
        else:
            what = (
                "a Redis Cluster node (cluster_enabled:1) whose search coordinator could not "
                "be confirmed"
            )
        return PreflightCheck(
            check="topology",
            status="block",
            detail=f"the server is {what}; {CLUSTER_NEEDS}",
        )
    if topology.role is not None and topology.role != "master":
        if topology.role in ("slave", "replica"):
            of = f" of {topology.primary}" if topology.primary else ""
            where = f" ({topology.primary})" if topology.primary else ""
            return PreflightCheck(
                check="topology",
                status="block",
                detail=f"the server is a replica{of}, where writes fail (READONLY) or would "
                f"not reach the primary; connect to the primary{where} instead",
            )
        return PreflightCheck(
            check="topology",
            status="block",
            detail=f"the server's role is {topology.role!r}; {SUPPORTED}",
        )
    unknown = [
        what
        for what, value in (
            ("whether it is a cluster node (INFO cluster, CLUSTER MYID)", topology.cluster_enabled),
            ("whether it is a primary (INFO replication, ROLE)", topology.role),
        )
        if value is None
    ]
    if unknown:
        return PreflightCheck(
            check="topology",
            status="warn",
            detail=f"the server would not say {' or '.join(unknown)}: not allowed for this "
            f"user; {SUPPORTED}, and a cluster's MOVED or ASK reply stops the run",
        )
    count = topology.connected_replicas
    if count:
        replicas = f"{count} connected replica{'s' if count != 1 else ''}"
        detail = f"a single Redis server, a primary with {replicas}: every write replicates"
    else:
        detail = "a single Redis server, a primary (no connected replicas)"
    return PreflightCheck(check="topology", status="pass", detail=detail)


def refuse_partial_listing(topology: Topology) -> None:
    """ClusterUnsupported when the server is a node of a cluster whose primaries each
    have their own indexes (no search coordinator): its FT._LIST would be one shard's."""
    if not topology.cluster_enabled or topology.coordinator is not False:
        return
    listed = "; ".join(
        f"{node}: {', '.join(names) or 'none'}" for node, names in topology.node_indexes
    )
    raise ClusterUnsupported(
        f"the server is a node of a Redis Cluster of {topology.cluster_primaries} primaries "
        "without the search coordinator: each primary has only its own indexes"
        + (f" ({listed})" if listed else "")
        + "; list one node's with --url redis://<that node>"
    )


# ---------------------------------------------------------------------------- redirections


def cluster_reply(exc: BaseException) -> str | None:
    """``"MOVED 13556 127.0.0.1:7003"`` (code and text) when ``exc`` is a reply only a
    Redis Cluster gives (MOVED, ASK, CLUSTERDOWN, TRYAGAIN, CROSSSLOT); else None."""
    if not isinstance(exc, rexc.ResponseError):
        return None
    message = " ".join(str(exc).split())
    for cls, code in _CLUSTER_REPLIES:
        if isinstance(exc, cls):
            if isinstance(exc, rexc.AskError):
                # from its fields: a pipeline rewrites the message ("Command # 1 (...) of
                # pipeline caused error: ...") but keeps them
                return f"{code} {exc.slot_id} {exc.host}:{exc.port}"
            return f"{code} {message}".strip()
    found = _CLUSTER_TEXT.match(message)
    if found is not None:
        return f"{found.group(1)} {found.group(2)}".strip()
    return None


def cluster_error(exc: BaseException) -> ClusterUnsupported | None:
    """The one-line error for a cluster's reply, or None when ``exc`` is not one."""
    reply = cluster_reply(exc)
    if reply is None:
        return None
    return ClusterUnsupported(
        f"the server answered {reply}: it is a node of a Redis Cluster whose slots moved, "
        f"or that was not recognised as one (INFO cluster not allowed?); {CLUSTER_NEEDS}"
    )


def describe_error(exc: BaseException) -> str:
    """``str(exc)``, except that a cluster's reply is named and explained."""
    found = cluster_error(exc)
    if found is not None:
        return str(found)
    return str(exc) or type(exc).__name__


__all__ = [
    "ClusterUnsupported",
    "Topology",
    "cluster_error",
    "cluster_reply",
    "describe_error",
    "describe_topology",
    "refuse_partial_listing",
    "topology_check",
]
