"""Moving documents to a new key prefix, from the snapshot of keys taken before the drop.

The keys to move are exactly the keys the backup enumerated (its frames), so a key is
moved once whatever the prefixes look like (``product:`` to ``product:v2:`` included):
a key the move just created is never seen as one to move. Collisions are looked for
before the drop; a rename never overwrites (RENAMENX) and never recreates a key the
application deleted meanwhile (RENAME of a missing key fails).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import redis.asyncio as aioredis
import redis.exceptions as rexc

from redismigrate.aio.capture import ChangeCapture
from redismigrate.aio.keys import KeyCollision, glob_escape, moved_key
from redismigrate.errors import BadInputError
from redismigrate.keytext import key_text
from redismigrate.plan import PrefixChange

SHOWN_KEYS = 5


def shown_keys(keys: Sequence[bytes]) -> str:
    """The first few of ``keys`` for a message, and how many more there are."""
    names = ", ".join(repr(key_text(k)) for k in keys[:SHOWN_KEYS])
    more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return names + more


async def refuse_keys_under_new_prefix(client: aioredis.Redis, change: PrefixChange) -> None:
    """Before anything is written: no key may already live under the new prefix (an
    original key there would be moved into a chain, any other could collide)."""
    found: list[bytes] = []
    async for key in client.scan_iter(match=glob_escape(change.new) + "*", count=1000):
        found.append(key if isinstance(key, bytes) else str(key).encode())
        if len(found) > SHOWN_KEYS:
            break
    if found:
        raise BadInputError(
            f"keys already exist under the new prefix {change.new!r} ({shown_keys(found)}); "
            "moving documents there could collide, and a rollback could not tell them apart"
        )


async def find_collisions(
    client: aioredis.Redis, batches: Iterable[Sequence[bytes]], change: PrefixChange
) -> list[bytes]:
    """Keys of the snapshot whose new name is taken (checked just before the drop)."""
    taken: list[bytes] = []
    for keys in batches:
        if not keys:
            continue
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.exists(moved_key(key, change.old, change.new))
        for key, exists in zip(keys, await pipe.execute(), strict=True):
            if exists:
                taken.append(key)
    return taken


def refuse_collisions(taken: Sequence[bytes], change: PrefixChange) -> None:
    if taken:
        raise BadInputError(
            f"{len(taken)} document(s) cannot move to prefix {change.new!r}: a key with the "
            f"new name already exists for {shown_keys(taken)}; nothing was changed"
        )


async def rename_batch(
    client: aioredis.Redis,
    pairs: Sequence[tuple[bytes, bytes]],
    capture: ChangeCapture | None,
) -> tuple[int, list[tuple[bytes, bytes]]]:
    """RENAMENX each ``(old, new)``: how many moved, and the pairs whose new name was taken.
    A missing ``old`` (deleted, or moved by an interrupted run) is skipped."""
    if not pairs:
        return 0, []
    events = [(k, 1) for pair in pairs for k in pair]
    if capture is not None:
        capture.expect(events)
    pipe = client.pipeline(transaction=False)
    for old, new in pairs:
        pipe.renamenx(old, new)
    results = await pipe.execute(raise_on_error=False)
    moved = 0
    taken: list[tuple[bytes, bytes]] = []
    not_done: list[tuple[bytes, int]] = []
    for (old, new), result in zip(pairs, results, strict=True):
        if isinstance(result, rexc.ResponseError):
            if "no such key" not in str(result).lower():
                raise result
            not_done += [(old, 1), (new, 1)]
        elif not result:
            taken.append((old, new))
            not_done += [(old, 1), (new, 1)]
        else:
            moved += 1
    if capture is not None and not_done:
        capture.unexpect(not_done)
    return moved, taken


async def move(
    client: aioredis.Redis,
    keys: Sequence[bytes],
    change: PrefixChange,
    capture: ChangeCapture | None,
) -> int:
    """Move snapshot ``keys`` to the new prefix; KeyCollision if a new name is taken."""
    pairs = [(k, moved_key(k, change.old, change.new)) for k in keys]
    moved, taken = await rename_batch(client, pairs, capture)
    if taken:
        raise KeyCollision(
            f"cannot move {shown_keys([old for old, _ in taken])} to prefix {change.new!r}: "
            "a key with the new name appeared during the run; nothing was overwritten"
        )
    return moved


async def move_back(
    client: aioredis.Redis,
    keys: Sequence[bytes],
    change: PrefixChange,
    capture: ChangeCapture | None,
) -> tuple[int, list[bytes]]:
    """Give snapshot ``keys`` their original names back: how many moved, and the keys
    whose original name is taken (left where they are)."""
    pairs = [(moved_key(k, change.old, change.new), k) for k in keys]
    moved, taken = await rename_batch(client, pairs, capture)
    return moved, [new for new, _ in taken]
