"""Index aliases: read before the drop, pointed at the new index once it is ready.

FT.DROPINDEX removes every alias of the index it drops, so a migration that drops
the source must put the aliases back on the target, and an undo back on the source.
Where the server lists aliases (``FT.ALIASLIST index``, search 8.10+) the plan takes
them all; elsewhere only those named with ``--alias`` can be seen and moved.

The index name itself after an online migration (``<name>`` pointing at
``<name>__rm<n>``) is not a user alias: it is the name the plan migrates. A
drop_recreate plan for such a name drops the index behind it (``<name>__rm<n>``; the
name's alias goes with it) and creates the target under the name itself, a plain
index again: no extra physical name to track, the same downtime as any drop_recreate,
and an undo recreates the source under the name too, so the name answers either way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis
import redis.exceptions as rexc

from redismigrate.aio.connection import execute
from redismigrate.aio.online import physical_name
from redismigrate.errors import BadInputError
from redismigrate.ftinfo import text
from redismigrate.plan import MigrationPlan, schema_hash
from redismigrate.schema import IndexSchema

_NOT_LISTABLE = re.compile(r"unknown command|NOPERM", re.IGNORECASE)
_REPLAN = "run `redismigrate plan` again"


def parse_alias_list(reply: Any) -> list[str]:
    """The alias names in an FT.ALIASLIST reply (RESP2 array or RESP3 set), sorted."""
    if reply is None:
        return []
    if isinstance(reply, (bytes, str)):
        raise ValueError(f"FT.ALIASLIST replied {reply!r}, not a list of aliases")
    return sorted({text(name) for name in reply})


async def list_aliases(client: aioredis.Redis, index: str) -> list[str] | None:
    """``FT.ALIASLIST index``: the aliases of the physical ``index``, sorted; None when the
    server cannot list them (no such command before search 8.10, or not allowed)."""
    try:
        reply = await execute(client, "FT.ALIASLIST", index)
    except rexc.ResponseError as exc:
        if _NOT_LISTABLE.search(str(exc)):
            return None
        raise
    return parse_alias_list(reply)


async def plan_aliases(
    client: aioredis.Redis, index_name: str, physical: str, named: Sequence[str]
) -> tuple[list[str], bool]:
    """The user aliases of ``physical`` (the index behind ``index_name``) and whether the
    server listed them. Each name in ``named`` must be an alias of ``physical``;
    BadInputError otherwise."""
    for alias in dict.fromkeys(named):
        if alias in (index_name, physical):
            raise BadInputError(f"--alias {alias!r} is the index's own name, not an alias to move")
        behind = await physical_name(client, alias)
        if behind is None:
            raise BadInputError(f"--alias {alias!r}: no alias or index of that name exists")
        if behind == alias:
            raise BadInputError(f"--alias {alias!r} is an index, not an alias")
        if behind != physical:
            raise BadInputError(
                f"--alias {alias!r} points at index {behind!r}, not at {physical!r} "
                f"(the index behind {index_name!r})"
            )
    listed = await list_aliases(client, physical)
    found = set(named) | set(listed or ())
    found.discard(index_name)  # after an online migration: the name itself
    return sorted(found), listed is not None


async def assign_aliases(
    client: aioredis.Redis, named: Sequence[str], index_names: Iterable[str]
) -> dict[str, list[str]]:
    """Which of the aliases ``named`` belong to which of ``index_names`` (a batch);
    BadInputError for an alias that points at none of them."""
    behind: dict[str, str] = {}
    for name in index_names:
        physical = await physical_name(client, name)
        if physical is not None:
            behind[physical] = name
    assigned: dict[str, list[str]] = {}
    for alias in dict.fromkeys(named):
        physical = await physical_name(client, alias)
        if physical is None or physical == alias:
            raise BadInputError(f"--alias {alias!r}: no alias of that name exists")
        if physical not in behind:
            raise BadInputError(
                f"--alias {alias!r} points at index {physical!r}, which this batch does not migrate"
            )
        assigned.setdefault(behind[physical], []).append(alias)
    return assigned


def source_index(plan: MigrationPlan) -> str:
    """The physical source index (the plan's name, or the index behind it)."""
    return plan.source.physical_index or plan.source.index_name


def source_matches(plan: MigrationPlan, live: IndexSchema) -> bool:
    """True when ``live`` (read by the plan's index name) is the plan's source: the same
    schema under the name users query, and the same physical index behind that name."""
    if live.name != source_index(plan):
        return False
    index = msgspec.structs.replace(live.index, name=plan.source.index_name)
    under_name = msgspec.structs.replace(live, index=index)
    return schema_hash(under_name) == plan.source.schema_hash


async def check_before_drop(
    client: aioredis.Redis, plan: MigrationPlan, *, moved_to: str | None = None
) -> None:
    """Refuse (BadInputError, nothing touched) when the plan's aliases no longer point at
    the source, or the server lists an alias of the source the plan does not move.
    ``moved_to``: an index the aliases may point at already (a cut-over made in steps
    that a killed run began)."""
    source = source_index(plan)
    for alias in plan.source.aliases:
        behind = await physical_name(client, alias)
        if behind != source and (moved_to is None or behind != moved_to):
            now = "no longer exists" if behind is None else f"now points at {behind!r}"
            raise BadInputError(
                f"alias {alias!r} of index {plan.source.index_name!r} {now}; {_REPLAN}"
            )
    listed = await list_aliases(client, source)
    if listed is None:
        return
    unplanned = set(listed) - set(plan.source.aliases)
    unplanned -= {plan.source.index_name, plan.target_index_name}
    if unplanned:
        shown = ", ".join(repr(a) for a in sorted(unplanned))
        raise BadInputError(
            f"index {plan.source.index_name!r} has aliases the plan does not move ({shown}); "
            f"{_REPLAN}"
        )


async def point(client: aioredis.Redis, aliases: Sequence[str], index: str) -> list[str]:
    """Point each alias at ``index`` (FT.ALIASUPDATE adds a missing one, moves one that
    points elsewhere); returns those it changed. Idempotent, so a resume may repeat it."""
    moved: list[str] = []
    for alias in aliases:
        if await physical_name(client, alias) == index:
            continue
        await execute(client, "FT.ALIASUPDATE", alias, index)
        moved.append(alias)
    return moved


async def point_at_target(client: aioredis.Redis, plan: MigrationPlan) -> list[str]:
    """After the target is created and indexed: its aliases follow it."""
    return await point(client, plan.source.aliases, plan.target_index_name)


async def point_at_source(client: aioredis.Redis, plan: MigrationPlan) -> list[str]:
    """After an undo recreated the source index: its aliases come back to it."""
    return await point(client, plan.source.aliases, plan.source.index_name)
