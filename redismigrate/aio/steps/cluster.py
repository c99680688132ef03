"""The key-level steps on a Redis Cluster, through one connection per primary.

- :func:`open_or_start`: the backup an earlier run of the plan left (taken again when
  it was not finished), or a new one with one shard per primary, the manifest naming
  each primary and its slots;
- :func:`back_up`: SCAN on every primary at once, each primary's keys and vectors into
  its own shard, read over that primary's fast wire;
- :func:`check_before_drop`: the cluster held still (no slot migrating or importing,
  no failover, no slot moved) and no document's new name is taken;
- :func:`move_keys` (and :func:`move`, :func:`move_back`): prefix moves across slots,
  from the snapshot of keys: DUMP + PTTL on the primary of the old name, RESTORE with
  the TTL on the primary of the new name (never over an existing key), then DEL of the
  old name only where it still holds what was dumped;
- :func:`undo_documents`: the rollback of the documents, from the same snapshot.

Re-encoding is steps/reencode.py itself, run with a ClusterWire and a ClusterCapture:
its guarded writes then make one transaction per slot (aio/guarded.py). Each step
resumes after a crash as on one server: the backup is taken again, a move finds its
old name gone (or, cut short between RESTORE and DEL, the same document under both
names, and deletes the old one), re-encoding goes on from its last checkpoint.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import hiredis
import msgspec
import redis.asyncio as aioredis
import redis.exceptions as rexc

from redismigrate.aio import guarded
from redismigrate.aio.capture import ChangeCapture
from redismigrate.aio.cluster import ClusterConnections, ClusterWire
from redismigrate.aio.connection import execute
from redismigrate.aio.fastwire import pack
from redismigrate.aio.keys import KeyCollision, moved_key
from redismigrate.aio.keyspace import rename_json_fields_on
from redismigrate.aio.steps import backup as backup_step
from redismigrate.aio.steps import prefix as prefix_step
from redismigrate.aio.steps import reencode as reencode_step
from redismigrate.aio.steps.state import BackupSet, Run, crash_point
from redismigrate.backup import (
    RESTARTED_SUFFIX,
    BackupBatch,
    BackupHeader,
    Manifest,
    ShardNode,
    VectorBackup,
    backup_paths,
    new_manifest,
    read_manifest,
    set_aside,
    write_manifest,
)
from redismigrate.cluster import ClusterChanged, key_slot, name_in_slot, owner_table
from redismigrate.errors import BadInputError, RedisMigrateError
from redismigrate.integrity import expected_backup_fields
from redismigrate.plan import MigrationPlan, PrefixChange, now_iso, plan_hash, schema_hash

SETTLE_ATTEMPTS = 5
SPARE_NAME = "redismigrate:settle"
# KEYS[1] a moved key's new name, KEYS[2] a spare name of its slot; ARGV[1] the payload
# this run restored there. Where the new name still holds that copy (compared with the
# payload restored again under the spare name: the server's own serialisation of it),
# it gets ARGV[3] with TTL ARGV[2] (the document as the application left it), or is
# deleted when ARGV[3] is empty (the application deleted the document); 0: it holds
# something else, and nothing is written
SETTLE_NEW_NAME = b"""redis.call('RESTORE', KEYS[2], 0, ARGV[1], 'REPLACE')
local ours = redis.call('DUMP', KEYS[2])
redis.call('DEL', KEYS[2])
if redis.call('DUMP', KEYS[1]) ~= ours then return 0 end
if ARGV[3] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('RESTORE', KEYS[1], ARGV[2], ARGV[3], 'REPLACE')
end
return 1"""
# DEL of a moved key's old name where it still holds what was dumped; 0: it is gone,
# -1: it holds something else (written since the DUMP)
DELETE_IF_DUMPED = b"""local now = redis.call('DUMP', KEYS[1])
if not now then return 0 end
if now ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1])
return 1"""


# ---------------------------------------------------------------------------- backup


def cluster_manifest(backup_dir: Path, index_name: str) -> Manifest:
    """The manifest of a backup taken on a cluster; BadInputError for any other."""
    path = backup_paths(backup_dir, index_name).manifest
    manifest = read_manifest(path) if path.exists() else None
    if manifest is None or manifest.nodes is None:
        raise BadInputError(
            f"the backup of index {index_name!r} in {backup_dir} was not taken on a Redis "
            "Cluster (its manifest names no primaries); resume it against the server it "
            "was taken on"
        )
    return manifest


def _new_header(run: Run) -> BackupHeader:
    plan = run.plan
    return BackupHeader(
        index_name=plan.source.index_name,
        plan_hash=plan_hash(plan),
        source_schema_hash=plan.source.schema_hash,
        target_schema_hash=schema_hash(plan.merged_target_schema),
        fields=expected_backup_fields(plan),
        batch_size=run.batch_size,
        created_at=now_iso(),
        updated_at=now_iso(),
    )


async def open_or_start(run: Run, connections: ClusterConnections) -> str:
    """The phase to go on from: that of the backup an earlier run of this plan left
    (adopted; one still in phase ``dump`` is set aside and taken again), or ``dump``
    for a new backup with one shard per primary of the cluster, recorded in its
    manifest (node id, address, slots)."""
    plan = run.plan
    index = plan.source.index_name
    existing = BackupSet.open(run.backup_dir, index)
    if existing is not None:
        if existing.header.plan_hash != plan_hash(plan):
            existing.close()
            raise BadInputError(
                f"{run.backup_dir} holds the backup of a different plan for index {index!r}; "
                "use another --backup-dir, or remove it if that migration is finished"
            )
        if existing.header.phase != "dump":
            try:
                cluster_manifest(run.backup_dir, index)
            except BadInputError:
                existing.close()
                raise
            run.backups, run.backup, run.resumed = existing, existing.main, True
            run.documents = existing.keys_backed_up
            return existing.header.phase
        # taken again; with the shards a run killed before writing its manifest left
        files = set(existing.files()) | set(shard_files(run.backup_dir, index))
        existing.close()
        set_aside(run.backup_dir, index, sorted(files), RESTARTED_SUFFIX)
    return await start_backup(run, connections)


async def start_backup(run: Run, connections: ClusterConnections) -> str:
    """A new backup with one shard per primary of the cluster, recorded in its manifest
    (node id, address, slots), once no key is found under a new prefix; ``dump``."""
    plan = run.plan
    index = plan.source.index_name
    change = plan.rename_operations.change_prefix
    if change is not None:
        await refuse_keys_under_new_prefix(connections, change)
    header = _new_header(run)
    main = VectorBackup.create(run.backup_dir, header)
    nodes = [
        ShardNode(
            worker=worker,
            node_id=shard.primary.node_id,
            address=shard.primary.address,
            slots=[(r.first, r.last) for r in shard.slots],
        )
        for worker, shard in enumerate(s for s in connections.topology.shards if s.slots)
    ]
    manifest = new_manifest(index, header.plan_hash, len(nodes), nodes)
    shards = [
        VectorBackup.create(run.backup_dir, msgspec.structs.replace(header, worker=node.worker))
        for node in nodes
    ]
    write_manifest(run.backup_dir, manifest)
    run.backups = BackupSet(main, shards)
    run.backup = main
    return "dump"


def shard_files(backup_dir: Path, index_name: str) -> list[Path]:
    """The shard files of a backup in ``backup_dir``, listed in its manifest or not (a
    run killed before it wrote its manifest)."""
    base = backup_paths(backup_dir, index_name).prefix.name
    shard = re.compile(re.escape(base) + r"\.w\d+(\.header\.json|\.data)")
    return [p for p in backup_dir.iterdir() if shard.fullmatch(p.name)]


async def back_up(run: Run, connections: ClusterConnections, checkpoint_seconds: float) -> None:
    """Every document key and original vector, each primary's into its own shard:
    SCAN on every primary at once (steps/backup.py does the reading and writing).

    A key SCAN returns twice is backed up twice, as on one server (the set of keys
    seen is not kept: memory stays bounded)."""
    assert run.backups is not None
    manifest = cluster_manifest(run.backup_dir, run.plan.source.index_name)
    assert manifest.nodes is not None
    shard_of_node = {node.node_id: node.worker for node in manifest.nodes}
    missing = [p.label for p in connections.primaries if p.node_id not in shard_of_node]
    if missing:
        raise ClusterChanged(
            f"primaries {', '.join(missing)} serve slots now but have no shard in the backup "
            "begun a moment ago: the cluster is changing; try again once it has settled"
        )
    owners = owner_table(connections.topology)
    keyspace = run.plan.source.keyspace

    def shard_of(keys: list[bytes]) -> int:
        return shard_of_node[owners[key_slot(keys[0])] or ""]

    async with connections.scan_per_primary(
        keyspace.prefixes, run.batch_size, storage_type=keyspace.storage_type, dedupe=False
    ) as found:

        async def batches() -> AsyncIterator[list[bytes]]:
            async for _, keys in found:
                yield keys

        await backup_step.back_up(run, batches(), checkpoint_seconds, shard_of=shard_of)


async def _frames(backups: BackupSet) -> AsyncIterator[BackupBatch]:
    """The snapshot's frames, read from disk in a worker thread, one at a time."""
    frames: Iterator[BackupBatch] = backups.iter_frames()
    while True:
        frame = await anyio.to_thread.run_sync(next, frames, None)
        if frame is None:
            return
        yield frame


# ---------------------------------------------------------------------------- checks


async def refuse_keys_under_new_prefix(
    connections: ClusterConnections, change: PrefixChange
) -> None:
    """Before anything is written: no key may live under the new prefix on any primary."""
    found: list[bytes] = []
    async with connections.scan_per_primary(
        [change.new], prefix_step.SHOWN_KEYS + 1, dedupe=False
    ) as batches:
        async for _, keys in batches:
            found.extend(keys)
            if len(found) > prefix_step.SHOWN_KEYS:
                break
    if found:
        raise BadInputError(
            f"keys already exist under the new prefix {change.new!r} "
            f"({prefix_step.shown_keys(found)}); moving documents there could collide, and a "
            "rollback could not tell them apart"
        )


async def find_collisions(
    wire: ClusterWire, keys: Sequence[bytes], change: PrefixChange
) -> list[bytes]:
    """Keys of the snapshot whose new name is taken (EXISTS on its primary)."""
    targets = [moved_key(k, change.old, change.new) for k in keys]
    exists = [False] * len(targets)

    async def check(node_id: str, positions: list[int]) -> None:
        async with wire.wires[node_id].connection() as conn:
            replies = await conn.call(
                b"".join(pack(b"EXISTS", targets[p]) for p in positions), len(positions)
            )
        for position, reply in zip(positions, replies, strict=True):
            exists[position] = bool(reply)

    await wire.per_primary(targets, check)
    return [key for key, taken in zip(keys, exists, strict=True) if taken]


async def check_before_drop(run: Run, connections: ClusterConnections) -> None:
    """ClusterChanged unless the cluster held still since it was connected to (no slot
    migrating or importing, none moved, no failover); BadInputError when a document's
    new name is taken. Nothing is written."""
    await connections.ensure_stable("before the drop")
    change = run.plan.rename_operations.change_prefix
    if change is None:
        return
    assert run.backups is not None
    assert isinstance(run.wire, ClusterWire)
    taken: list[bytes] = []
    async for frame in _frames(run.backups):
        taken += await find_collisions(run.wire, frame.keys, change)
    prefix_step.refuse_collisions(taken, change)


# ---------------------------------------------------------------------------- moves


@dataclass
class Moves:
    """What a batch of moves did."""

    moved: int = 0
    gone: int = 0  # no key under the old name (deleted, or moved by an earlier run)
    finished: int = 0  # of ``moved``: restored by an earlier run cut short before its DEL
    # (old, new) where the new name holds another document: not moved
    taken: list[tuple[bytes, bytes]] = field(default_factory=list)
    # (old, new) where the application wrote the old name between its DUMP and its DEL,
    # and the new name got the document as it left it (counted in ``moved``)
    rewritten: list[tuple[bytes, bytes]] = field(default_factory=list)
    deleted: int = 0  # deleted by the application during their move: under neither name
    # (old, new) left with both names: the application wrote the new name as well, or
    # kept writing the old one; the new name holds an earlier copy
    changed: list[tuple[bytes, bytes]] = field(default_factory=list)

    def add(self, other: Moves) -> None:
        self.moved += other.moved
        self.gone += other.gone
        self.finished += other.finished
        self.taken += other.taken
        self.rewritten += other.rewritten
        self.deleted += other.deleted
        self.changed += other.changed


def _ttl(pttl: int) -> bytes:
    """RESTORE's TTL for a PTTL reply: 0 (none) for -1; at least 1 ms otherwise."""
    return b"0" if pttl < 0 else b"%d" % max(pttl, 1)


async def _content(client: aioredis.Redis, key: bytes) -> tuple[Any, Any]:
    kind = await client.type(key)
    if kind == b"hash":
        return kind, await client.hgetall(key)
    if kind == b"ReJSON-RL":
        return kind, await execute(client, "JSON.GET", key, "$")
    return kind, await client.dump(key)


async def _same_document(wire: ClusterWire, old: bytes, new: bytes) -> bool:
    """Whether ``old`` and ``new`` hold the same document (type and content)."""
    table = owner_table(wire.topology)
    found = []
    for key in (old, new):
        owner = table[key_slot(key)] or ""
        with wire.answers(owner):
            found.append(await _content(wire.connections.client(owner), key))
    return found[0] == found[1]


async def move_pairs(
    wire: ClusterWire, pairs: Sequence[tuple[bytes, bytes]], capture: ChangeCapture | None
) -> Moves:
    """Move each ``(old, new)`` across slots: DUMP + PTTL of ``old`` on its primary,
    RESTORE of ``new`` with that TTL on its own (never over an existing key), then DEL
    of ``old`` where it still holds what was dumped (a script comparing the DUMP).

    A ``new`` holding the same document as ``old`` is the move of an earlier run cut
    short before its DEL: only the DEL is left to do. The primaries work at once;
    every step is one pipeline per primary."""
    out = Moves()
    if not pairs:
        return out
    olds = [old for old, _ in pairs]
    dumped: list[tuple[bytes, int] | None] = [None] * len(pairs)

    async def dump(node_id: str, positions: list[int]) -> None:
        commands = b"".join(pack(b"DUMP", olds[p]) + pack(b"PTTL", olds[p]) for p in positions)
        async with wire.wires[node_id].connection() as conn:
            replies = await conn.call(commands, 2 * len(positions))
        for n, position in enumerate(positions):
            payload, pttl = replies[2 * n], replies[2 * n + 1]
            if payload is not None and pttl != -2:
                dumped[position] = (bytes(payload), int(pttl))

    await wire.per_primary(olds, dump)
    todo = [p for p in range(len(pairs)) if dumped[p] is not None]
    out.gone = len(pairs) - len(todo)
    news = [pairs[p][1] for p in todo]
    restored = [False] * len(todo)
    busy: list[int] = []
    if capture is not None:
        capture.expect((new, 1) for new in news)

    async def restore(node_id: str, positions: list[int]) -> None:
        commands = []
        for n in positions:
            found = dumped[todo[n]]
            assert found is not None
            commands.append(pack(b"RESTORE", news[n], _ttl(found[1]), found[0]))
        async with wire.wires[node_id].connection() as conn:
            replies = await conn.call(b"".join(commands), len(positions), raise_errors=False)
        for n, reply in zip(positions, replies, strict=True):
            if isinstance(reply, hiredis.ReplyError):
                if not str(reply).startswith("BUSYKEY"):
                    raise rexc.ResponseError(str(reply))
                busy.append(n)
            else:
                restored[n] = True

    try:
        await wire.per_primary(news, restore)
    finally:
        if capture is not None:
            capture.unexpect((news[n], 1) for n in range(len(todo)) if not restored[n])
    finishing: set[int] = set()
    for n in sorted(busy):
        old, new = pairs[todo[n]]
        if await _same_document(wire, old, new):
            restored[n] = True
            finishing.add(todo[n])
        else:
            out.taken.append((old, new))
    crash_point("during_key_moves")
    moving = [todo[n] for n in range(len(todo)) if restored[n]]
    deleting = [olds[p] for p in moving]
    deleted = [False] * len(moving)
    if capture is not None:
        capture.expect((old, 1) for old in deleting)

    async def delete(node_id: str, positions: list[int]) -> None:
        commands = []
        for n in positions:
            found = dumped[moving[n]]
            assert found is not None
            commands.append(pack(b"EVAL", DELETE_IF_DUMPED, b"1", deleting[n], found[0]))
        async with wire.wires[node_id].connection() as conn:
            replies = await conn.call(b"".join(commands), len(positions))
        for n, reply in zip(positions, replies, strict=True):
            deleted[n] = reply == 1

    try:
        await wire.per_primary(deleting, delete)
    finally:
        if capture is not None:
            capture.unexpect((deleting[n], 1) for n in range(len(moving)) if not deleted[n])
    for n, position in enumerate(moving):
        if deleted[n]:
            out.moved += 1
            out.finished += position in finishing
            continue
        found = dumped[position]
        assert found is not None
        old, new = pairs[position]
        settled = await _settle(wire, old, new, found[0], capture)
        if settled == "moved":
            out.moved += 1
            out.rewritten.append(pairs[position])
        elif settled == "deleted":
            out.deleted += 1
        else:
            out.changed.append(pairs[position])
    if capture is not None and (out.changed or out.rewritten):
        capture.suspect(key for pair in [*out.changed, *out.rewritten] for key in pair)
    return out


async def _settle(
    wire: ClusterWire,
    old: bytes,
    new: bytes,
    restored: bytes,
    capture: ChangeCapture | None,
) -> str:
    """A document the application wrote or deleted under ``old`` between its DUMP and
    its DEL, while ``new`` holds the copy restored from that DUMP (``restored``): what
    the application did wins. Deleted: ``new`` is deleted too (a deleted document never
    comes back); written: ``new`` gets the document as it is now, and ``old`` is
    deleted once it still holds that. Each write only where ``new`` still holds what
    this run restored there. ``moved``, ``deleted``, or ``changed`` (the new name was
    written as well, or the application kept writing: both names are left)."""
    table = owner_table(wire.topology)
    old_owner, new_owner = table[key_slot(old)] or "", table[key_slot(new)] or ""
    old_client = wire.connections.client(old_owner)
    new_client = wire.connections.client(new_owner)
    spare = name_in_slot(key_slot(new), SPARE_NAME)
    for _ in range(SETTLE_ATTEMPTS):
        with wire.answers(old_owner):
            async with old_client.pipeline(transaction=True) as pipe:
                pipe.dump(old)
                pipe.pttl(old)
                payload, pttl = await pipe.execute()
        now = b"" if payload is None else bytes(payload)  # empty: deleted by the application
        if capture is not None:
            capture.expect([(new, 1)])
        with wire.answers(new_owner):
            settled = await execute(
                new_client, "EVAL", SETTLE_NEW_NAME, 2, new, spare, restored, _ttl(int(pttl)), now
            )
        if settled != 1:
            if capture is not None:
                capture.unexpect([(new, 1)])
            return "changed"
        if payload is None:
            return "deleted"
        restored = now
        if capture is not None:
            capture.expect([(old, 1)])
        with wire.answers(old_owner):
            gone = await execute(old_client, "EVAL", DELETE_IF_DUMPED, 1, old, restored)
        if gone == 1:
            return "moved"
        if capture is not None:
            capture.unexpect([(old, 1)])
    return "changed"


async def move(
    wire: ClusterWire, keys: Sequence[bytes], change: PrefixChange, capture: ChangeCapture | None
) -> Moves:
    """Move snapshot ``keys`` to the new prefix; KeyCollision (after moving the others)
    if a new name is taken."""
    moves = await move_pairs(
        wire, [(k, moved_key(k, change.old, change.new)) for k in keys], capture
    )
    if moves.taken:
        raise KeyCollision(
            f"cannot move {prefix_step.shown_keys([old for old, _ in moves.taken])} to prefix "
            f"{change.new!r}: a key with the new name appeared during the run; nothing was "
            "overwritten"
        )
    return moves


async def move_back(
    wire: ClusterWire, keys: Sequence[bytes], change: PrefixChange, capture: ChangeCapture | None
) -> Moves:
    """Give snapshot ``keys`` (original names) their names back; those whose original
    name is taken, or that changed during their move, are listed and left."""
    return await move_pairs(
        wire, [(moved_key(k, change.old, change.new), k) for k in keys], capture
    )


async def move_keys(run: Run) -> Moves:
    """The prefix move of every key of the snapshot, batch by batch (each once); the
    documents that changed during their move are left to the reconcile step."""
    total = Moves()
    change = run.plan.rename_operations.change_prefix
    if change is None:
        return total
    assert run.backups is not None
    assert isinstance(run.wire, ClusterWire)
    started = time.perf_counter()
    run.tick("key_renames", 0, run.documents or None)
    async for frame in _frames(run.backups):
        moves = await move(run.wire, frame.keys, change, run.capture)
        total.add(moves)
        # written by the application while moving: the reconcile step looks at them again
        run.skipped.update(new for _, new in [*moves.changed, *moves.rewritten])
        run.tick("key_renames", total.moved, run.documents or None)
    run.keys_renamed += total.moved
    run.timed("key_renames", started, total.moved)
    return total


# ---------------------------------------------------------------------------- undo


@dataclass
class Undone:
    """What :func:`undo_documents` did: vector values restored, and the documents
    left as the application left them (their names as they are now)."""

    restored: int = 0
    conflicts: list[bytes] = field(default_factory=list)
    moves: Moves = field(default_factory=Moves)  # the keys given their names back


async def undo_documents(wire: ClusterWire, plan: MigrationPlan, backup: BackupSet) -> Undone:
    """From the snapshot in the backup: every key gets its name back, every vector the
    migration re-encoded its original bytes, every renamed hash field its old name.

    Guarded like every write of the migrator: a document the application wrote since
    is left and listed. The first batch is read back afterwards to check the restore.
    Idempotent: a rollback cut short is run again."""
    change = plan.rename_operations.change_prefix
    renames = [(r.new_path, r.old_path) for r in plan.rename_operations.rename_fields]
    is_json = plan.source.keyspace.storage_type == "json"
    fields = backup.header.fields
    changes = {vc.source_field: vc for vc in plan.vector_changes if vc.rewrite_documents}
    done = Undone()
    check: list[tuple[bytes, bytes, bytes]] = []
    async for frame in _frames(backup):
        names = list(frame.keys)
        if change is not None:
            moves = await move_back(wire, frame.keys, change, None)
            done.moves.add(moves)
            left = {new for new, _ in [*moves.taken, *moves.changed]}
            if left:
                done.conflicts.extend(sorted(left))
                names = [
                    moved_key(k, change.old, change.new)
                    if moved_key(k, change.old, change.new) in left
                    else k
                    for k in frame.keys
                ]
        outcome, restored_here = await reencode_step.restore(wire, names, frame, fields, changes)
        done.restored += outcome.written
        done.conflicts.extend(outcome.skipped)
        if not check:
            check = restored_here
        if renames and is_json:
            await rename_json_fields_on(wire.connections, names, renames)
        elif renames:
            renamed = await guarded.rename_fields(wire, names, renames, capture=None)
            done.conflicts.extend(renamed.skipped)
    by_field: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for name, field_name, original in check:
        for new, old in renames:
            if field_name == new.encode():
                field_name = old.encode()
        by_field.setdefault(field_name, []).append((name, original))
    for field_name, expected in by_field.items():
        (column,) = await wire.read_columns([name for name, _ in expected], [field_name])
        wrong = [
            name
            for (name, original), now in zip(expected, column, strict=True)
            if now is not None and bytes(now) != original
        ]
        if wrong:
            raise RedisMigrateError(
                f"undo check failed: {len(wrong)} restored vector(s) do not hold their "
                f"original bytes (for example {wrong[0]!r})"
            )
    return done


__all__ = [
    "DELETE_IF_DUMPED",
    "Moves",
    "Undone",
    "back_up",
    "check_before_drop",
    "cluster_manifest",
    "find_collisions",
    "move",
    "move_back",
    "move_keys",
    "move_pairs",
    "open_or_start",
    "refuse_keys_under_new_prefix",
    "shard_files",
    "start_backup",
    "undo_documents",
]
