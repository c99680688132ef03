"""Document keys: enumerate them in bounded batches, move them, rename their fields."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import redis.asyncio as aioredis
import redis.exceptions as rexc

from redismigrate.aio.connection import execute
from redismigrate.aio.topology import cluster_reply
from redismigrate.errors import RedisMigrateError
from redismigrate.ftinfo import pairs_to_dict

SCAN_COUNT = 1000
_GLOB_SPECIALS = set("*?[]\\")


class KeyCollision(RedisMigrateError):
    """A key with the new name already exists; nothing was overwritten."""


def glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in _GLOB_SPECIALS else ch for ch in text)


def _redis_type(storage_type: str) -> str:
    return "ReJSON-RL" if storage_type == "json" else "hash"


async def scan_prefixes(
    client: aioredis.Redis, prefixes: Sequence[str], storage_type: str, batch_size: int
) -> AsyncIterator[list[bytes]]:
    """Keys under ``prefixes`` of the storage's type, in batches; each key once per prefix set."""
    buffer: list[bytes] = []
    for position, prefix in enumerate(prefixes):
        earlier = tuple(p.encode() for p in prefixes[:position])
        cursor: int | bytes = 0
        while True:
            cursor, keys = await client.scan(
                cursor=int(cursor),
                match=glob_escape(prefix) + "*",
                count=SCAN_COUNT,
                _type=_redis_type(storage_type),
            )
            found: list[bytes] = [k if isinstance(k, bytes) else str(k).encode() for k in keys]
            if earlier:
                found = [key for key in found if not key.startswith(earlier)]
            buffer.extend(found)
            while len(buffer) >= batch_size:
                yield buffer[:batch_size]
                buffer = buffer[batch_size:]
            if int(cursor) == 0:
                break
    if buffer:
        yield buffer


async def count_documents(
    client: aioredis.Redis, prefixes: Sequence[str], storage_type: str
) -> int:
    """How many keys of the storage's type live under ``prefixes`` now."""
    total = 0
    async for keys in scan_prefixes(client, prefixes, storage_type, SCAN_COUNT):
        total += len(keys)
    return total


async def aggregate_keys(
    client: aioredis.Redis, index_name: str, batch_size: int
) -> AsyncIterator[list[bytes]]:
    """Keys of the documents in ``index_name``, streamed with FT.AGGREGATE ... WITHCURSOR."""
    reply = await execute(
        client, "FT.AGGREGATE", index_name, "*", "LOAD", "1", "@__key",
        "WITHCURSOR", "COUNT", str(batch_size), "DIALECT", "2",
    )  # fmt: skip
    while True:
        rows, cursor = _cursor_reply(reply)
        if rows:
            yield rows
        if cursor == 0:
            return
        reply = await execute(
            client, "FT.CURSOR", "READ", index_name, str(cursor), "COUNT", str(batch_size)
        )


def _cursor_reply(reply: object) -> tuple[list[bytes], int]:
    if not isinstance(reply, (list, tuple)) or len(reply) != 2:
        raise rexc.ResponseError("unexpected FT.AGGREGATE cursor reply")
    body, cursor = reply
    keys: list[bytes] = []
    if isinstance(body, dict):  # RESP3
        for row in pairs_to_dict(body).get("results", []):
            extra = pairs_to_dict(pairs_to_dict(row).get("extra_attributes", {}))
            if "__key" in extra:
                keys.append(_as_bytes(extra["__key"]))
    else:  # RESP2: [total, [k, v, ...], ...]; LOAD 1 @__key gives [b"__key", key]
        for row in list(body)[1:]:
            if len(row) == 2 and row[0] == b"__key":
                keys.append(_as_bytes(row[1]))
                continue
            fields = pairs_to_dict(row)
            if "__key" in fields:
                keys.append(_as_bytes(fields["__key"]))
    return keys, int(cursor)


def _as_bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


async def enumerate_keys(
    client: aioredis.Redis,
    index_name: str,
    prefixes: Sequence[str],
    storage_type: str,
    batch_size: int,
    *,
    use_scan: bool,
) -> AsyncIterator[list[bytes]]:
    """Document keys in batches: the index's own cursor, or SCAN where it cannot be trusted.

    SCAN is used when the index has indexing failures (failed documents are not in
    it) or its cursor breaks; then every key under the prefixes is returned.
    """
    if not use_scan:
        try:
            async for batch in aggregate_keys(client, index_name, batch_size):
                yield batch
            return
        except rexc.ResponseError as exc:
            if cluster_reply(exc):
                raise  # another node's keys: a SCAN here would find only this node's
            # cursor broke (e.g. expired): fall back to SCAN below from the start
    async for batch in scan_prefixes(client, prefixes, storage_type, batch_size):
        yield batch


def moved_key(key: bytes, old_prefix: str, new_prefix: str) -> bytes:
    old = old_prefix.encode()
    return new_prefix.encode() + key[len(old) :] if key.startswith(old) else key


async def is_cluster(client: aioredis.Redis) -> bool:
    info = await client.info("cluster")
    return bool(int(info.get("cluster_enabled", 0)))


async def rename_keys(
    client: aioredis.Redis,
    keys: Sequence[bytes],
    old_prefix: str,
    new_prefix: str,
    *,
    cluster: bool,
) -> int:
    """Move ``keys`` from ``old_prefix`` to ``new_prefix`` keeping TTLs; never overwrite.

    One server: RENAMENX. Cluster (keys may land in other slots): DUMP + PTTL, then
    RESTORE (which refuses an existing key) + DEL. Returns how many moved; a key that
    is already gone (moved by an earlier, interrupted run) is skipped.
    """
    if not keys:
        return 0
    targets = [moved_key(k, old_prefix, new_prefix) for k in keys]
    if not cluster:
        pipe = client.pipeline(transaction=False)
        for old, new in zip(keys, targets, strict=True):
            pipe.renamenx(old, new)
        results = await pipe.execute(raise_on_error=False)
        moved = 0
        for old, new, result in zip(keys, targets, results, strict=True):
            if isinstance(result, rexc.ResponseError):
                if "no such key" in str(result).lower():
                    continue
                raise result
            if not result:
                raise KeyCollision(
                    f"cannot move {old!r} to {new!r}: that key already exists; nothing was "
                    "overwritten"
                )
            moved += 1
        return moved
    moved = 0
    for old, new in zip(keys, targets, strict=True):
        dumped = await client.dump(old)
        if dumped is None:
            continue
        ttl = await client.pttl(old)
        try:
            await client.restore(new, max(int(ttl), 0), dumped)
        except rexc.ResponseError as exc:
            if "busykey" in str(exc).lower():
                raise KeyCollision(
                    f"cannot move {old!r} to {new!r}: that key already exists; nothing was "
                    "overwritten"
                ) from None
            raise
        await client.delete(old)
        moved += 1
    return moved


async def rename_hash_fields(
    client: aioredis.Redis, keys: Sequence[bytes], renames: Sequence[tuple[str, str]]
) -> int:
    """Rename hash fields in ``keys`` (HGET, HSET, HDEL, pipelined); idempotent."""
    if not keys or not renames:
        return 0
    pipe = client.pipeline(transaction=False)
    for key in keys:
        for old, _ in renames:
            pipe.hget(key, old)
    values = await pipe.execute()
    pipe = client.pipeline(transaction=False)
    changed = 0
    position = 0
    for key in keys:
        touched = False
        for old, new in renames:
            value = values[position]
            position += 1
            if value is not None:
                pipe.hset(key, new, value)
                pipe.hdel(key, old)
                touched = True
        changed += touched
    if changed:
        await pipe.execute()
    return changed


async def rename_json_fields(
    client: aioredis.Redis, keys: Sequence[bytes], renames: Sequence[tuple[str, str]]
) -> int:
    """Move JSON values between top-level paths (``$.old`` to ``$.new``); idempotent."""
    if not keys or not renames:
        return 0
    pipe = client.pipeline(transaction=False)
    for key in keys:
        for old, _ in renames:
            pipe.execute_command("JSON.GET", key, old)
    values = await pipe.execute(raise_on_error=False)
    pipe = client.pipeline(transaction=False)
    changed = 0
    position = 0
    for key in keys:
        touched = False
        for old, new in renames:
            raw = values[position]
            position += 1
            if isinstance(raw, (bytes, str)):
                found = json.loads(raw)
                if found:
                    pipe.execute_command("JSON.SET", key, new, json.dumps(found[0]))
                    pipe.execute_command("JSON.DEL", key, old)
                    touched = True
        changed += touched
    if changed:
        await pipe.execute()
    return changed
