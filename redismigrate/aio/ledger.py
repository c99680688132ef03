"""The migration ledger: a Redis stream with a ``started`` and a ``finished`` event per run.

redismigrate's own keys (the ledger, the index locks) are sent through a :data:`KeyRoute`:
on a single server its one client, on a cluster the client of the primary owning the
key's slot (:func:`cluster_route`). Each function here takes a client or a route.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import redis.asyncio as aioredis
import redis.exceptions as rexc

from redismigrate.aio.connection import execute
from redismigrate.errors import BadInputError, RedisMigrateError
from redismigrate.ledger import (
    LEDGER_KEY,
    LEDGER_MAXLEN,
    LedgerEntry,
    LedgerEvent,
    LockHolder,
    decode_event,
    lock_key,
    merge_events,
    recall_recorded,
)
from redismigrate.plan import MigrationPlan, plan_hash
from redismigrate.schema import IndexSchema, UnreportedAttribute, with_recorded

if TYPE_CHECKING:
    from redismigrate.aio.cluster import ClusterConnections

_PAGE = 1000
_FIELD = b"event"

KeyRoute: TypeAlias = Callable[[str | bytes], aioredis.Redis]
"""Given one of redismigrate's own keys, the client to send its commands to."""


def single_route(client: aioredis.Redis) -> KeyRoute:
    """The route of a single server: ``client`` for every key."""

    def route(key: str | bytes) -> aioredis.Redis:
        return client

    return route


def cluster_route(connections: ClusterConnections) -> KeyRoute:
    """The route of a cluster: the client of the primary owning the key's slot (as the
    topology read at connect time says)."""
    return connections.client_for_key


def as_route(client: aioredis.Redis | KeyRoute) -> KeyRoute:
    """``client`` when it is a route, else the route always giving ``client``."""
    if isinstance(client, aioredis.Redis):
        return single_route(client)
    return client


def permission_error(action: str, key: str, exc: BaseException) -> BadInputError:
    """One line for an ACL refusal on one of redismigrate's own keys."""
    return BadInputError(
        f"the Redis user may not {action} {key!r} ({str(exc).strip()}); grant it read and "
        "write on the keys ~redismigrate:* (strings and streams, plus EVAL/EVALSHA)"
    )


async def record(client: aioredis.Redis | KeyRoute, event: LedgerEvent) -> None:
    """Append ``event`` to the ledger (trimmed to about LEDGER_MAXLEN records)."""
    try:
        await as_route(client)(LEDGER_KEY).xadd(
            LEDGER_KEY, {_FIELD: event.encode()}, maxlen=LEDGER_MAXLEN, approximate=True
        )
    except rexc.NoPermissionError as exc:
        raise permission_error("write the migration ledger", LEDGER_KEY, exc) from None


async def read_events(client: aioredis.Redis | KeyRoute) -> list[LedgerEvent]:
    """Every readable event in the ledger, oldest first."""
    ledger = as_route(client)(LEDGER_KEY)
    events: list[LedgerEvent] = []
    start = "-"
    try:
        while True:
            page = await execute(ledger, "XRANGE", LEDGER_KEY, start, "+", "COUNT", _PAGE)
            for _, fields in page or []:
                values = _as_dict(fields)
                raw = values.get(_FIELD) or values.get(_FIELD.decode())
                event = decode_event(raw) if isinstance(raw, bytes | str) else None
                if event is not None:
                    events.append(event)
            if not page or len(page) < _PAGE:
                return events
            last = page[-1][0]
            start = "(" + (last.decode() if isinstance(last, bytes) else str(last))
    except rexc.NoPermissionError as exc:
        raise permission_error("read the migration ledger", LEDGER_KEY, exc) from None


def _as_dict(fields: Any) -> dict[Any, Any]:
    """A stream record's fields (RESP2 gives a flat list, RESP3 a map)."""
    if isinstance(fields, dict):
        return fields
    items = list(fields or [])
    return dict(zip(items[::2], items[1::2], strict=False))


async def read_history(
    client: aioredis.Redis | KeyRoute, *, index_name: str | None = None, limit: int | None = None
) -> list[LedgerEntry]:
    """The runs in the ledger, newest first; only those on ``index_name`` when given."""
    route = as_route(client)
    events = await read_events(route)
    if index_name is not None:
        events = [e for e in events if index_name in (e.index_name, e.target_index)]
    open_runs = {e.run_id: e.index_name for e in events if e.event == "started"}
    for event in events:
        if event.event == "finished":
            open_runs.pop(event.run_id, None)
    running = []
    for run_id, name in open_runs.items():
        try:
            key = lock_key(name)
            holder = LockHolder.decode(await route(key).get(key))
        except rexc.NoPermissionError:
            holder = None
        if holder is not None and holder.run_id == run_id and not holder.is_dead():
            running.append(run_id)
    entries = merge_events(events, running)[::-1]
    return entries[:limit] if limit is not None else entries


def plan_of(entry: LedgerEntry) -> MigrationPlan | None:
    """The plan a run applied, from the copy kept beside its backup (also once rolled back
    and renamed), when it is on this machine and still the plan the ledger names."""
    if entry.backup_dir is None or entry.plan_hash is None:
        return None
    from redismigrate.aio.executor import plan_copy_path  # the executor imports this module

    copy = plan_copy_path(Path(entry.backup_dir), entry.index_name)
    candidates = [copy, *sorted(copy.parent.glob(f"{copy.name}.rolled-back-*"), reverse=True)]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            plan = MigrationPlan.load(path)
        except (RedisMigrateError, OSError):
            continue
        if plan_hash(plan) == entry.plan_hash:
            return plan
    return None


async def recall_unreported(
    client: aioredis.Redis | KeyRoute,
    index_name: str,
    schema: IndexSchema,
    unreported: list[UnreportedAttribute],
) -> tuple[IndexSchema, list[UnreportedAttribute]]:
    """``schema`` and ``unreported`` with the values an earlier redismigrate run recorded
    for parameters the server does not report (see ``ledger.recall_recorded``); unchanged
    when the ledger cannot be read."""
    if not unreported:
        return schema, unreported
    try:
        entries = await read_history(client, index_name=index_name)
    except (BadInputError, rexc.RedisError):
        return schema, unreported
    recalled = recall_recorded(entries, index_name, schema, unreported, plan_of)
    return with_recorded(schema, recalled), recalled
