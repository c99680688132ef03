"""Online migrations: build the target as a shadow index, then move the name to it.

While the shadow builds, the live index keeps serving and every write is indexed by
both (the server indexes synchronously on write). When the shadow holds as many
documents as the live index, one MULTI/EXEC drops the old definition and points the
name at the shadow as an alias: queries never see a missing index. Where FT.* commands
may not run inside MULTI (a Redis Cluster with the search coordinator),
``cut_over_in_steps`` sends the same switch one command at a time (redismigrate.cutover
describes its orders and the window between the alias move and the drop).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import redis.asyncio as aioredis
import redis.exceptions as rexc

from redismigrate.aio.connection import execute
from redismigrate.aio.indexes import create_index, ft_info
from redismigrate.cutover import (
    ALIAS_THEN_DROP,
    DROP_THEN_ALIAS,
    CutOverSteps,
    alias_already_there,
    alias_name_taken,
    cut_over_window_sentence,
)
from redismigrate.errors import BadInputError, IndexNotFound, RedisMigrateError
from redismigrate.estimate import shadow_index_bytes
from redismigrate.ftinfo import IndexStats, stats_from_ft_info, text
from redismigrate.plan import MigrationPlan, Online, OtherIndex, schema_hash, shadow_name
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
            "memory, raise maxmemory, plan again with --mode drop_recreate, or pass --force"
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


class _Sender:
    """Sends the cut-over's commands one at a time and notes when the first one started."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.first: float | None = None

    async def send(self, *args: Any) -> float:
        """Send one command; returns the perf_counter time it started."""
        from redismigrate.aio.steps.state import crash_point

        started = time.perf_counter()
        if self.first is None:
            self.first = started
        await execute(self.client, *args)
        crash_point("cut_over_step")  # test hook: killed between two commands
        return started


async def _point_alias(sender: _Sender, alias: str, index: str) -> float | None:
    """Make ``alias`` an alias of ``index`` unless it resolves there already (an
    interrupted run did it); the perf_counter time the command started, None when none
    was needed."""
    behind = await physical_name(sender.client, alias)
    if behind == index:
        return None
    return await sender.send("FT.ALIASADD" if behind is None else "FT.ALIASUPDATE", alias, index)


async def cut_over_in_steps(
    client: aioredis.Redis,
    *,
    name: str,
    new_name: str,
    shadow: str,
    aliases: Sequence[str] = (),
    also: Sequence[Sequence[Any]] = (),
    previous: str | None = None,
    alias_first: bool = True,
) -> CutOverSteps:
    """``cut_over`` without MULTI/EXEC, one command at a time, for a Redis Cluster whose
    search coordinator refuses FT.* commands inside a transaction. The same effect:
    ``new_name`` and the user ``aliases`` end up pointing at ``shadow``, the index
    ``name`` served is dropped, then the ``also`` commands are sent.

    The order keeps ``new_name`` resolvable where the server allows it: the user aliases
    move first (FT.ALIASUPDATE), then

    - ``name`` a plain index: FT.ALIASADD new_name shadow, then FT.DROPINDEX name. Until
      the drop, lookups of the name still reach the index of that name; after it, the
      alias. Where the server refuses an alias named like an existing index (search 8:
      "Alias conflicts with an existing index name"), or with ``alias_first=False``,
      FT.DROPINDEX name comes first and FT.ALIASADD after, and the name resolves to no
      index in between (``order`` says ``drop_then_alias``);
    - ``name`` an alias: FT.ALIASUPDATE name shadow (or, to rename, FT.ALIASADD new_name
      shadow and FT.ALIASDEL name), then FT.DROPINDEX of the index it pointed at.

    Every step is skipped when an earlier run that was killed between two commands did it
    already, so calling again with the same arguments completes the cut-over. Once the
    name no longer leads to the old index, only ``previous`` (the physical index the name
    served before the cut-over, ``Online.previous_physical_index``) says which index is
    left to drop when the name was an alias; without it that drop is left undone
    (``dropped`` None). With ``previous`` given, a name that now serves any other index
    is refused before anything is sent.

    IndexNotFound when ``shadow`` does not exist (nothing sent); a server error from any
    command propagates, and a rerun picks up from where it stopped.
    """
    if await physical_name(client, shadow) != shadow:
        raise IndexNotFound(f"the shadow index {shadow!r} does not exist; nothing was switched")
    if previous == shadow:
        raise BadInputError(f"the index to drop ({previous!r}) is the shadow index itself")
    current = await physical_name(client, name)
    if previous is not None and current not in (None, shadow, previous):
        raise RedisMigrateError(
            f"{name!r} now serves index {current!r}, not {previous!r} as when the cut-over "
            "was planned; nothing was switched"
        )
    sender = _Sender(client)
    resumed = False
    for alias in dict.fromkeys(aliases):
        if alias in (name, new_name):
            continue
        if await physical_name(client, alias) == shadow:
            resumed = True
            continue
        await sender.send("FT.ALIASUPDATE", alias, shadow)

    order = ALIAS_THEN_DROP
    dropped: str | None = None
    drop_started: float | None = None
    end: float | None = None
    if current is not None and current != shadow and current == name:
        # a plain index: its name becomes an alias of the shadow
        if new_name != name:
            resumed |= await _point_alias(sender, new_name, shadow) is None
        elif alias_first:
            try:
                await sender.send("FT.ALIASADD", new_name, shadow)
            except rexc.ResponseError as exc:
                if not alias_name_taken(str(exc)):
                    raise
                # an alias of that name exists already, hidden by the index (an earlier
                # run added it), or the server refuses to let an alias shadow an index
                resumed |= alias_already_there(str(exc))
        drop_started = await sender.send("FT.DROPINDEX", name)
        dropped = name
        end = time.perf_counter()
        if await _point_alias(sender, new_name, shadow) is not None:
            order = DROP_THEN_ALIAS
            end = time.perf_counter()
    elif current is not None and current != shadow:
        # an alias: move it (or add the new name and remove the old), drop what it served
        if new_name == name:
            await sender.send("FT.ALIASUPDATE", name, shadow)
        else:
            resumed |= await _point_alias(sender, new_name, shadow) is None
            await sender.send("FT.ALIASDEL", name)
        await sender.send("FT.DROPINDEX", current)
        dropped = current
        end = time.perf_counter()
    else:
        # an earlier run moved the name already (or dropped a plain index and was killed
        # before the alias was added): finish what is left
        resumed = True
        drop_started = await _point_alias(sender, new_name, shadow)
        if drop_started is not None:  # the drop was in the earlier run: this call's part
            order = DROP_THEN_ALIAS
            end = time.perf_counter()
        if previous is not None and await physical_name(client, previous) == previous:
            await sender.send("FT.DROPINDEX", previous)
            dropped = previous
            end = time.perf_counter()
    start = drop_started if order == DROP_THEN_ALIAS else sender.first
    window = end - start if start is not None and end is not None else 0.0
    for command in also:
        await execute(client, *command)
    return CutOverSteps(dropped=dropped, order=order, window_seconds=window, resumed=resumed)


async def source_matches(client: aioredis.Redis, plan: MigrationPlan, live: IndexSchema) -> bool:
    from redismigrate.aio.planner import renamed

    return schema_hash(renamed(live, plan.source.index_name)) == plan.source.schema_hash


async def _built_by_an_earlier_rollback(
    client: aioredis.Redis, plan: MigrationPlan, others: Sequence[OtherIndex], serving: str
) -> str | None:
    """An index ``<source>__rm<n>`` (not ``serving``) with the plan's source schema."""
    from redismigrate.aio.indexes import read_schema_and_stats

    pattern = re.compile(rf"^{re.escape(plan.source.index_name)}__rm(\d+)$")
    candidates = sorted(
        (o.name for o in others if o.name != serving and pattern.match(o.name)),
        key=lambda n: -int(n.rsplit("__rm", 1)[1]),
    )
    for name in candidates:
        try:
            live = await read_schema_and_stats(client, name)
        except IndexNotFound:
            continue
        if await source_matches(client, plan, live.comparable_to(plan.source.schema_snapshot)):
            return name
    return None


async def reverse(
    client: aioredis.Redis,
    plan: MigrationPlan,
    *,
    timeout: float,
    poll: float,
    tick: Callable[[str, int, int | None], None] | None = None,
    serving: str | None = None,
    in_steps: bool = False,
) -> str:
    """Undo an online migration: before the cut-over drop the shadow; after it, build the
    source schema under a new physical name and swap the name back the same way.
    ``serving``: the index the name was moved to, when not the plan's shadow index (a
    rollback that rebuilt it under another name). ``in_steps``: swap without MULTI
    (``cut_over_in_steps``; a cluster with the search coordinator)."""
    assert isinstance(plan.mode, Online)
    shadow = serving or plan.mode.shadow_index
    behind_target = await physical_name(client, plan.target_index_name)
    if behind_target != shadow:
        if await physical_name(client, shadow) == shadow:
            await execute(client, "FT.DROPINDEX", shadow)
            return "dropped the shadow index before the cut-over"
        return "nothing to undo: the shadow index does not exist"
    from redismigrate.aio.indexes import list_indexes
    from redismigrate.aio.steps.state import crash_point

    others = [
        OtherIndex(name=n, storage_type="hash", prefixes=[]) for n in await list_indexes(client)
    ]
    # a rollback killed after it built the source schema left that index: use it, or
    # it would stay behind, unused, indexing every write
    back = await _built_by_an_earlier_rollback(client, plan, others, shadow)
    if back is None:
        back = shadow_name(plan.source.index_name, others, shadow)
        await create_index(client, plan.source.schema_snapshot, index_name=back)
    crash_point("rollback_source_built")
    await wait_until_caught_up(client, back, shadow, timeout=timeout, poll=poll, tick=tick)
    if in_steps:
        steps = await cut_over_in_steps(
            client,
            name=plan.target_index_name,
            new_name=plan.source.index_name,
            shadow=back,
            aliases=plan.source.aliases,
            previous=shadow,
        )
        return (
            f"the name {plan.source.index_name!r} serves the source schema again (as "
            f"{back!r}). {cut_over_window_sentence(steps.order, steps.window_seconds)}"
        )
    await cut_over(
        client,
        name=plan.target_index_name,
        new_name=plan.source.index_name,
        shadow=back,
        aliases=plan.source.aliases,
    )
    return f"the name {plan.source.index_name!r} serves the source schema again (as {back!r})"
