"""Online migrations: build the target as a shadow index, then move the name to it.

While the shadow builds, the live index keeps serving and every write is indexed by
both (the server indexes synchronously on write). When the shadow holds as many
documents as the live index, one MULTI/EXEC drops the old definition and points the
name at the shadow as an alias: queries never see a missing index.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import redis.asyncio as aioredis

from redismigrate.aio.connection import execute
from redismigrate.aio.indexes import create_index, ft_info
from redismigrate.errors import BadInputError, IndexNotFound, RedisMigrateError
from redismigrate.estimate import shadow_index_bytes
from redismigrate.ftinfo import IndexStats, stats_from_ft_info, text
from redismigrate.plan import MigrationPlan, Online, schema_hash, shadow_name
from redismigrate.schema import IndexSchema

SHADOW_READY_TIMEOUT = 3600.0


class InsufficientMemory(BadInputError):
    """The shadow index would not fit in the server's memory limit."""


async def physical_name(client: aioredis.Redis, name: str) -> str | None:
    """The index behind ``name`` (itself, or the target of an alias), or None."""
    try:
        reply = await ft_info(client, name)
    except IndexNotFound:
        return None
    info = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
    for key, value in info.items():
        if text(key) == "index_name":
            return text(value)
    return None


async def _stats(client: aioredis.Redis, name: str) -> IndexStats:
    return stats_from_ft_info(await ft_info(client, name))


async def check_memory(client: aioredis.Redis, plan: MigrationPlan, *, force: bool) -> None:
    """Refuse, with the figures, when the shadow index will not fit under maxmemory."""
    memory = await client.info("memory")
    limit = int(memory.get("maxmemory", 0))
    if limit <= 0:
        return
    used = int(memory.get("used_memory", 0))
    needed = shadow_index_bytes(plan)
    if used + needed > limit and not force:
        raise InsufficientMemory(
            f"the shadow index needs about {needed / 1_048_576:,.1f} MB, but the server uses "
            f"{used / 1_048_576:,.1f} MB of its {limit / 1_048_576:,.1f} MB maxmemory; free "
            "memory, raise maxmemory, use --mode drop_recreate, or pass --force"
        )


async def wait_until_caught_up(
    client: aioredis.Redis,
    shadow: str,
    live: str,
    *,
    timeout: float,
    poll: float,
    tick: Callable[[str, int, int | None], None] | None = None,
) -> IndexStats:
    """Wait until ``shadow`` is fully indexed and counts as many documents as ``live``;
    returns the live index's counters at that moment. ``tick("indexing", have, want)``
    as it goes (documents indexed by the shadow, of the live index's), last with
    ``have == want``."""
    deadline = time.monotonic() + timeout
    while True:
        shadow_stats = await _stats(client, shadow)
        live_stats = await _stats(client, live)
        have = shadow_stats.num_docs + shadow_stats.hash_indexing_failures
        want = live_stats.num_docs + live_stats.hash_indexing_failures
        if tick is not None:
            tick("indexing", have, want)
        if not shadow_stats.indexing and shadow_stats.percent_indexed >= 1.0 and have == want:
            return live_stats
        if time.monotonic() > deadline:
            raise RedisMigrateError(
                f"timeout waiting for the shadow index {shadow!r}: {have:,} of {want:,} "
                f"documents after {timeout:g} s; the live index still serves, nothing was "
                "switched; drop the shadow with `redismigrate rollback`, or run apply again"
            )
        await anyio.sleep(poll)


async def cut_over(
    client: aioredis.Redis,
    *,
    name: str,
    new_name: str,
    shadow: str,
    aliases: Sequence[str] = (),
    also: Sequence[Sequence[Any]] = (),
) -> str:
    """In one MULTI/EXEC: point ``new_name`` and the user ``aliases`` at ``shadow`` and drop
    what ``name`` served (the drop would remove the aliases still on it). ``also``: more
    commands for the same transaction, after the switch (a capture marker, say).

    Returns the physical index that was dropped.
    """
    current = await physical_name(client, name)
    if current is None:
        raise IndexNotFound(f"index {name!r} does not exist")
    pipe = client.pipeline(transaction=True)
    for alias in aliases:
        if alias not in (name, new_name):
            pipe.execute_command("FT.ALIASUPDATE", alias, shadow)
    if current == name:  # a plain index: its name becomes an alias
        pipe.execute_command("FT.DROPINDEX", name)
        pipe.execute_command("FT.ALIASADD", new_name, shadow)
    else:  # already an alias: move it, drop the index behind it
        if new_name == name:
            pipe.execute_command("FT.ALIASUPDATE", name, shadow)
        else:
            pipe.execute_command("FT.ALIASDEL", name)
            pipe.execute_command("FT.ALIASADD", new_name, shadow)
        pipe.execute_command("FT.DROPINDEX", current)
    for command in also:
        pipe.execute_command(*command)
    await pipe.execute()
    return current


async def source_matches(client: aioredis.Redis, plan: MigrationPlan, live: IndexSchema) -> bool:
    from redismigrate.aio.planner import renamed

    return schema_hash(renamed(live, plan.source.index_name)) == plan.source.schema_hash


async def reverse(
    client: aioredis.Redis,
    plan: MigrationPlan,
    *,
    timeout: float,
    poll: float,
    tick: Callable[[str, int, int | None], None] | None = None,
    serving: str | None = None,
) -> str:
    """Undo an online migration: before the cut-over drop the shadow; after it, build the
    source schema under a new physical name and swap the name back the same way.
    ``serving``: the index the name was moved to, when not the plan's shadow index (a
    rollback that rebuilt it under another name)."""
    assert isinstance(plan.mode, Online)
    shadow = serving or plan.mode.shadow_index
    behind_target = await physical_name(client, plan.target_index_name)
    if behind_target != shadow:
        if await physical_name(client, shadow) == shadow:
            await execute(client, "FT.DROPINDEX", shadow)
            return "dropped the shadow index before the cut-over"
        return "nothing to undo: the shadow index does not exist"
    from redismigrate.aio.indexes import list_indexes
    from redismigrate.plan import OtherIndex

    others = [
        OtherIndex(name=n, storage_type="hash", prefixes=[]) for n in await list_indexes(client)
    ]
    back = shadow_name(plan.source.index_name, others, shadow)
    await create_index(client, plan.source.schema_snapshot, index_name=back)
    await wait_until_caught_up(client, back, shadow, timeout=timeout, poll=poll, tick=tick)
    await cut_over(
        client,
        name=plan.target_index_name,
        new_name=plan.source.index_name,
        shadow=back,
        aliases=plan.source.aliases,
    )
    return f"the name {plan.source.index_name!r} serves the source schema again (as {back!r})"
