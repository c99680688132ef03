"""The preflight's facts: what the server, the user's permissions, the disk and the data
say before a run writes anything. The rules that judge them are pure (preflight.py)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import anyio
import redis.asyncio as aioredis
import redis.exceptions as rexc

from redismigrate.aio.capture import MARKER_PREFIX, ORIGINAL_KEY
from redismigrate.aio.cluster import ClusterConnections, connect_cluster, gather_all
from redismigrate.aio.connection import execute
from redismigrate.aio.keyspace import Servers, keys_by_holder
from redismigrate.aio.steps.state import Run
from redismigrate.aio.topology import describe_topology, topology_check
from redismigrate.cluster import NodeInfo
from redismigrate.errors import RedisMigrateError
from redismigrate.estimate import build_estimate
from redismigrate.keytext import key_text
from redismigrate.ledger import LEDGER_KEY, lock_key
from redismigrate.memory import plan_memory
from redismigrate.plan import MigrationPlan, Online
from redismigrate.preflight import (
    Preflight,
    PreflightCheck,
    data_check,
    disk_check,
    eviction_check,
    memory_check,
    merge_per_node,
    ordered,
    parameters_check,
)
from redismigrate.schema import DATATYPE_BYTES

Command = Literal["plan", "estimate", "apply", "rollback"]
# keys shown as examples of malformed vectors
SAMPLE_KEYS = 5
SCAN_BATCH = 1000
EVICTION_POLL_SECONDS = 0.2


def writes_documents(plan: MigrationPlan) -> bool:
    """Whether a run of ``plan`` writes documents (not only index definitions)."""
    if isinstance(plan.mode, Online):
        return plan.mode.reencode is not None  # shadow vectors
    renames = plan.rename_operations
    return bool(
        renames.rename_fields
        or renames.change_prefix is not None
        or any(c.rewrite_documents for c in plan.vector_changes)
    )


def memory_growth(plan: MigrationPlan, command: Command) -> int:
    """Bytes the server's memory grows by during a run (negative: it shrinks)."""
    if isinstance(plan.mode, Online):
        # the shadow index, plus the shadow vectors of an online re-encoding
        return plan_memory(plan).peak_growth if command != "rollback" else 0
    change = build_estimate(plan).memory_change_bytes
    return -change if command == "rollback" else change


# ---------------------------------------------------------------------------- topology


async def refuse_cluster(client: aioredis.Redis) -> None:
    """PreflightBlocked when the server is a cluster node or a replica (plan, estimate:
    a plan made from one shard's index cannot be applied)."""
    found = ordered([topology_check(await describe_topology(client))])
    found.raise_if_blocked()


# ---------------------------------------------------------------------------- permissions


def _commands(plan: MigrationPlan, command: Command, db: int) -> list[tuple[list[Any], bool]]:
    """Every command a run sends, with example arguments (key names decide key
    permissions), and whether the run needs it (False: it falls back without it)."""
    source = plan.source.schema_snapshot
    target = plan.merged_target_schema
    index = plan.source.physical_index or plan.source.index_name
    sample = (source.prefixes[0] if source.prefixes else "") + "redismigrate-preflight"
    target_sample = (target.prefixes[0] if target.prefixes else "") + "redismigrate-preflight"
    json = source.storage_type == "json"
    lock = lock_key(plan.source.index_name)
    run: list[tuple[list[Any], bool]] = [
        (["FT.INFO", index], True),
        (["SET", lock, "x", "NX", "PX", "1000"], True),
        (["GET", lock], True),
        (["EVALSHA", "0" * 40, "1", lock], True),
        (["EVAL", "return 1", "1", lock], True),
        (["XADD", LEDGER_KEY, "MAXLEN", "~", "1000", "*", "e", "x"], True),
        (["INFO", "stats"], True),
    ]
    if command == "plan" or command == "estimate":
        return [(["FT.INFO", index], True), (["SCAN", "0"], True)]
    if isinstance(plan.mode, Online) and command == "apply":
        switch: list[tuple[list[Any], bool]] = [
            (["FT.CREATE", plan.mode.shadow_index, "SCHEMA", "f", "TEXT"], True),
            (["FT.ALIASADD", plan.source.index_name, index], True),
            (["FT.ALIASUPDATE", plan.source.index_name, index], True),
            (["FT.DROPINDEX", index], True),
            (["MULTI"], True),
            (["EXEC"], True),
        ]
        if plan.mode.reencode is None:
            return [*run, *switch]
        run += switch  # and the shadow vectors: the document commands below
    run += [
        (["FT.DROPINDEX", index], True),
        (["FT.CREATE", plan.target_index_name, "SCHEMA", "f", "TEXT"], True),
        (["SCAN", "0"], True),
        (["EXISTS", sample], True),
        (["WATCH", sample], True),
        (["MULTI"], True),
        (["EXEC"], True),
    ]
    if plan.source.aliases:
        run += [(["FT.ALIASUPDATE", a, plan.target_index_name], True) for a in plan.source.aliases]
    if json:
        run += [
            (["JSON.GET", sample, "$"], True),
            (["JSON.SET", sample, "$", "1"], True),
        ]
    else:
        run += [
            (["HGET", sample, "f"], True),
            (["HMGET", sample, "f", "g"], True),
            (["HSET", sample, "f", "v"], True),
            (["HDEL", sample, "f"], True),
        ]
    if plan.rename_operations.change_prefix is not None:
        run += [(["RENAMENX", sample, target_sample], True), (["PTTL", sample], True)]
    prefixes = sorted({*source.prefixes, *target.prefixes})
    run += [
        (["CONFIG", "GET", "notify-keyspace-events"], False),
        (["CONFIG", "SET", "notify-keyspace-events", "Khgxed"], False),
        (["GET", ORIGINAL_KEY], False),
        (["SET", ORIGINAL_KEY, "x", "NX"], False),
        (["PUBLISH", MARKER_PREFIX.decode() + "0", "x"], False),
        (["PUBSUB", "CHANNELS", MARKER_PREFIX.decode() + "*"], False),
        *[(["PSUBSCRIBE", f"__keyspace@{db}__:{p}*"], False) for p in prefixes],
    ]
    return run


async def permissions_check(
    client: aioredis.Redis, plan: MigrationPlan, command: Command
) -> PreflightCheck:
    """Every command of the run, dry-run for the connected user (ACL DRYRUN, Redis 7+)."""
    try:
        user = _text(await execute(client, "ACL", "WHOAMI"))
    except rexc.ResponseError as exc:
        return PreflightCheck(
            check="permissions",
            status="warn",
            detail=f"cannot check the user's permissions (ACL WHOAMI: {_one_line(exc)})",
        )
    db = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
    denied: list[str] = []
    degraded: list[str] = []
    for args, needed in _commands(plan, command, db):
        try:
            answer = _text(await execute(client, "ACL", "DRYRUN", user, *args))
        except rexc.NoPermissionError as exc:
            return PreflightCheck(
                check="permissions",
                status="warn",
                detail=f"cannot check the permissions of user {user!r}: {_one_line(exc)}",
            )
        except rexc.ResponseError as exc:
            text = _one_line(exc)
            if "not found" in text or "unknown" in text.lower():
                continue  # a command this server does not have: not sent to it either
            answer = text
        if answer.upper() != "OK":
            (denied if needed else degraded).append(_denial(args, answer))
    if denied:
        return PreflightCheck(
            check="permissions",
            status="block",
            detail=f"user {user!r} may not run {', '.join(_unique(denied))}; grant them "
            "(ACL SETUSER) or run as a user who may",
        )
    if degraded:
        return PreflightCheck(
            check="permissions",
            status="warn",
            detail=f"user {user!r} may not run {', '.join(_unique(degraded))}: the "
            "application's writes during the run are found by a sweep of every key instead "
            "of keyspace notifications",
        )
    return PreflightCheck(
        check="permissions",
        status="pass",
        detail=f"user {user!r} may run every command the {command} sends",
    )


def _denial(args: Sequence[Any], answer: str) -> str:
    """``FT.DROPINDEX``, or ``HSET on key 'p:x'``, from ACL DRYRUN's answer."""
    name = str(args[0])
    if name in ("CONFIG", "PUBSUB") and len(args) > 1:
        name += f" {args[1]}"
    found = re.search(r"to access the '(.*)' (key|channel)", answer)
    if found:
        return f"{name} on {found.group(2)} {found.group(1)!r}"
    return name


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


# ---------------------------------------------------------------------------- memory


async def memory_checks(
    client: aioredis.Redis, plan: MigrationPlan, command: Command, *, allow_eviction: bool
) -> list[PreflightCheck]:
    memory = await _info(client, "memory")
    writes = writes_documents(plan) or command == "rollback"
    return [
        memory_check(
            growth_bytes=memory_growth(plan, command),
            used_bytes=int(memory.get("used_memory", 0) or 0),
            maxmemory=int(memory.get("maxmemory", 0) or 0),
            writes_documents=writes,
        ),
        eviction_check(
            policy=str(memory.get("maxmemory_policy", "noeviction")),
            writes_documents=writes,
            allow_eviction=allow_eviction,
        ),
    ]


async def evicted_keys(servers: aioredis.Redis | ClusterConnections) -> int:
    """The server's count of keys evicted since it started (a cluster's: every
    primary's, added up)."""
    clients = (
        list(servers.clients.values()) if isinstance(servers, ClusterConnections) else [servers]
    )
    total = 0
    for client in clients:
        stats = await _info(client, "stats")
        total += int(stats.get("evicted_keys", 0) or 0)
    return total


class EvictionDetected(RedisMigrateError):
    """The server evicted keys while a run was writing: the run stops and is undone."""


async def watch_evictions(run: Run, interval: float = EVICTION_POLL_SECONDS) -> None:
    """Poll the server's evicted_keys for the whole run; on any eviction, halt the run
    (its next step raises EvictionDetected, and what it did is undone)."""
    if run.evictions_at_start is None:
        run.evictions_at_start = await evicted_keys(run.servers)
    while run.halt is None:
        await anyio.sleep(interval)
        try:
            await check_evictions(run, raise_now=False)
        except (rexc.ConnectionError, rexc.TimeoutError, OSError):
            continue  # the run itself meets the connection problem


async def check_evictions(run: Run, *, raise_now: bool = True) -> None:
    """Halt the run (and raise, with ``raise_now``) when the server evicted any key
    since the run started."""
    if run.evictions_at_start is not None and run.halt is None:
        evicted = await evicted_keys(run.servers) - run.evictions_at_start
        if evicted > 0:
            run.halt = EvictionDetected(
                f"the server evicted {evicted:,} key(s) during the run (maxmemory is full "
                "and its policy evicts): the run stopped, since an evicted document is "
                "lost; free memory or raise maxmemory, then apply again"
            )
    if raise_now:
        run.check_halt()


# ---------------------------------------------------------------------------- disk


def backup_bytes(plan: MigrationPlan) -> int:
    """What the backup of a run of ``plan`` writes to disk, about."""
    stats = plan.source.stats_snapshot
    documents = stats.num_docs + stats.hash_indexing_failures
    if not writes_documents(plan) or isinstance(plan.mode, Online):
        return 0  # online: the originals stay in the documents, nothing is backed up
    estimate = build_estimate(plan).backup_disk_bytes
    key_bytes = documents * 64  # key names and framing
    return estimate + key_bytes


def disk_free(path: Path) -> int | None:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


# ---------------------------------------------------------------------------- data


async def malformed_vectors(servers: Servers, plan: MigrationPlan) -> PreflightCheck:
    """Hash documents whose re-encoded vector has another byte length than its field's
    (or is missing), counted over every key (on a cluster, on every primary); skipped
    when nothing is re-encoded."""
    changes = [c for c in plan.vector_changes if c.rewrite_documents and c.encoding is not None]
    source = plan.source.schema_snapshot
    if not changes or source.storage_type != "hash":
        return data_check(malformed=0, missing=0, sample=[], vector_fields=len(changes))
    fields: list[tuple[bytes, int]] = []
    for change in changes:
        field = source.field(change.source_field)
        assert field is not None
        name = (field.path or field.name).encode()
        fields.append((name, change.dims * DATATYPE_BYTES[change.source_datatype]))
    malformed = missing = 0
    sample: list[str] = []
    async for client, keys in keys_by_holder(servers, source.prefixes, "hash", SCAN_BATCH):
        pipe = client.pipeline(transaction=False)
        for key in keys:
            for name, _ in fields:
                pipe.hstrlen(key, name)
        lengths = await pipe.execute(raise_on_error=False)
        for position, key in enumerate(keys):
            row = lengths[position * len(fields) : (position + 1) * len(fields)]
            wrong = False
            for (_, size), length in zip(fields, row, strict=True):
                if not isinstance(length, int):
                    continue
                if length == 0:
                    missing += 1
                elif length != size:
                    wrong = True
            if wrong:
                malformed += 1
                if len(sample) < SAMPLE_KEYS:
                    sample.append(key_text(key))
    return data_check(
        malformed=malformed, missing=missing, sample=sample, vector_fields=len(changes)
    )


# ---------------------------------------------------------------------------- a cluster


async def primaries_checks(
    cluster: ClusterConnections,
    plan: MigrationPlan,
    command: Command,
    *,
    allow_eviction: bool = False,
) -> list[PreflightCheck]:
    """The permissions, memory and eviction checks on every primary of ``cluster``, one
    line each (``merge_per_node``): a run on a cluster writes on every primary, and ACL
    users, maxmemory and the eviction policy are each node's own. A primary is held to
    its share of the plan's memory growth: the share of the index's keys it holds
    (counted by SCAN on every primary; SCAN's rare repeats are counted too)."""
    growth = memory_growth(plan, command)
    writes = writes_documents(plan) or command == "rollback"
    primaries = cluster.primaries
    counts = {p.node_id: 0 for p in primaries}
    prefixes = plan.source.keyspace.prefixes or [""]
    async with cluster.scan_per_primary(prefixes, SCAN_BATCH, dedupe=False) as batches:
        async for node_id, keys in batches:
            counts[node_id] += len(keys)
    total = sum(counts.values())
    found: dict[str, list[PreflightCheck]] = {}

    async def check(node: NodeInfo) -> None:
        client = cluster.client(node.node_id)
        with cluster.answers(node.node_id):
            share = growth * counts[node.node_id] // total if total else growth // len(primaries)
            memory = await _info(client, "memory")
            found[node.node_id] = [
                await permissions_check(client, plan, command),
                memory_check(
                    growth_bytes=share,
                    used_bytes=int(memory.get("used_memory", 0) or 0),
                    maxmemory=int(memory.get("maxmemory", 0) or 0),
                    writes_documents=writes,
                ),
                eviction_check(
                    policy=str(memory.get("maxmemory_policy", "noeviction")),
                    writes_documents=writes,
                    allow_eviction=allow_eviction,
                ),
            ]

    await gather_all([partial(check, node) for node in primaries])
    return [
        merge_per_node(name, [(p.label, found[p.node_id][i]) for p in primaries])
        for i, name in enumerate(("permissions", "memory", "eviction"))
    ]


# ---------------------------------------------------------------------------- all


async def preflight(
    client: aioredis.Redis,
    plan: MigrationPlan,
    command: Command,
    *,
    backup_dir: Path | None = None,
    allow_eviction: bool = False,
    scan_data: bool = False,
    backup_on_disk: int = 0,
    force: bool = False,
) -> Preflight:
    """Every check for ``command`` on ``plan``; nothing is written.

    ``backup_on_disk``: bytes an earlier run of the plan already wrote (a resume needs
    only the rest); ``force`` turns a memory block into a warning.
    """
    topology = await describe_topology(client)
    checks = [topology_check(topology)]
    if checks[0].status == "block":
        return ordered(checks)  # nothing else can be asked of it
    if topology.cluster_enabled:  # with the search coordinator: every primary is asked
        async with connect_cluster(redis_client=client) as cluster:
            permissions, memory, eviction = await primaries_checks(
                cluster, plan, command, allow_eviction=allow_eviction
            )
            if scan_data:
                checks.append(await malformed_vectors(cluster, plan))
    else:
        permissions = await permissions_check(client, plan, command)
        memory, eviction = await memory_checks(client, plan, command, allow_eviction=allow_eviction)
        if scan_data:
            checks.append(await malformed_vectors(client, plan))
    checks.append(permissions)
    checks.append(parameters_check(plan.merged_target_schema))
    if force and memory.status == "block":
        memory = PreflightCheck(
            check="memory", status="warn", detail=memory.detail + " (--force: going ahead)"
        )
    checks += [memory, eviction]
    if backup_dir is not None and command != "rollback":
        checks.append(
            disk_check(
                needed_bytes=max(backup_bytes(plan) - backup_on_disk, 0),
                free_bytes=disk_free(backup_dir),
                path=str(backup_dir),
            )
        )
    return ordered(checks)


async def _info(client: aioredis.Redis, section: str) -> dict[str, Any]:
    try:
        found = await client.info(section)
    except rexc.ResponseError:
        return {}
    return {str(k): v for k, v in found.items()}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


__all__ = [
    "EvictionDetected",
    "backup_bytes",
    "check_evictions",
    "disk_free",
    "evicted_keys",
    "malformed_vectors",
    "memory_checks",
    "permissions_check",
    "preflight",
    "primaries_checks",
    "refuse_cluster",
    "watch_evictions",
    "writes_documents",
]
