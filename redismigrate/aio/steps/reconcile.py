"""Reconciling what the application wrote while a drop_recreate migration ran.

drop_recreate asks the application to pause its writes; this step makes sure that when
it does not, nothing it wrote is lost or left unsearchable. After the re-encode, every
key the application wrote (seen by change capture, or skipped by a guarded write because
it no longer held its backed-up bytes) is brought to the target's shape: a key under the
old prefix is moved, renamed fields are renamed, a vector in the old encoding is
re-encoded (guarded again), and anything else is touched so the target index sees it.
Rounds repeat until a round finds nothing new. Without complete change capture (no
notifications, the subscription dropped, a resumed run) every key under the prefixes is
swept instead, by the byte length of its vectors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from redismigrate.aio import guarded
from redismigrate.aio.capture import ChangeCapture
from redismigrate.aio.cluster import ClusterConnections, ClusterWire
from redismigrate.aio.fastwire import Wire
from redismigrate.aio.keyspace import Servers, keys_by_holder, rename_json_fields_on
from redismigrate.aio.steps import cluster as cluster_step
from redismigrate.aio.steps import prefix as prefix_step
from redismigrate.backup import BackupField
from redismigrate.keytext import key_text
from redismigrate.plan import MigrationPlan, VectorChange
from redismigrate.quantize import reencode_bytes
from redismigrate.report import ConcurrentWrites
from redismigrate.schema import DATATYPE_BYTES

BATCH = 500
MAX_ROUNDS = 50
LISTED_KEYS = 1000


@dataclass
class _Tally:
    keys: int = 0
    reencoded: int = 0
    moved: int = 0
    fields_renamed: int = 0
    touched: int = 0
    unreconciled: list[str] = field(default_factory=list)
    unreconciled_count: int = 0

    def refuse(self, key: bytes, why: str) -> None:
        self.unreconciled_count += 1
        if len(self.unreconciled) < LISTED_KEYS:
            self.unreconciled.append(f"{key_text(key)}: {why}")


class Reconciler:
    """Brings keys the application wrote during the run to the target's shape."""

    def __init__(
        self,
        client: aioredis.Redis,
        wire: Wire,
        plan: MigrationPlan,
        fields: dict[str, BackupField],
        capture: ChangeCapture | None,
        *,
        touch: bool,
        servers: Servers | None = None,
    ) -> None:
        self.client = client
        self.wire = wire
        # where the documents live: ``client``'s server, or every primary of a cluster
        self.servers: Servers = servers if servers is not None else client
        self.plan = plan
        self.capture = capture
        self.touch = touch
        self.tally = _Tally()
        self.skipped: set[bytes] = set()  # keys guarded writes skipped: to look at again
        self.found_by_sweep: set[bytes] = set()  # old-encoding writes only a sweep found
        changes = {vc.source_field: vc for vc in plan.vector_changes if vc.rewrite_documents}
        self.changes: list[tuple[bytes, VectorChange, int, int]] = [
            (
                fields[name].document_field.encode(),
                vc,
                vc.dims * DATATYPE_BYTES[vc.source_datatype],
                vc.dims * DATATYPE_BYTES[vc.target_datatype],
            )
            for name, vc in changes.items()
            if name in fields and vc.encoding is not None
        ]
        self.storage = plan.source.keyspace.storage_type
        self.change = plan.rename_operations.change_prefix
        self.renames = [(r.old_path, r.new_path) for r in plan.rename_operations.rename_fields]

    @property
    def target_prefixes(self) -> list[str]:
        return list(self.plan.merged_target_schema.index.prefixes)

    async def run(self, *, sweep_reason: str | None) -> ConcurrentWrites:
        """Rounds until nothing new is found; ``sweep_reason``: capture was not complete."""
        capture = self.capture
        if sweep_reason is None and (capture is None or not capture.complete):
            sweep_reason = capture.problem if capture and capture.problem else "no capture"
        if sweep_reason is not None:
            async for keys in self._all_keys():
                await self._batch(keys, sweeping=True)
        for _ in range(MAX_ROUNDS):
            if capture is not None:
                await capture.sync()
            found = set(self.skipped)
            self.skipped.clear()
            if capture is not None:
                found |= capture.drain()
            if not found:
                break
            self.tally.keys += len(found)
            ordered = sorted(found)
            for start in range(0, len(ordered), BATCH):
                await self._batch(ordered[start : start + BATCH], sweeping=False)
        else:
            left = set(self.skipped) | (capture.drain() if capture is not None else set())
            for key in sorted(left):
                self.tally.refuse(key, "the application kept writing it to the end of the run")
        if capture is not None and not capture.complete and sweep_reason is None:
            sweep_reason = capture.problem or "change capture stopped"
            async for keys in self._all_keys():
                await self._batch(keys, sweeping=True)
        t = self.tally
        return ConcurrentWrites(
            capture="notifications" if sweep_reason is None else f"sweep: {sweep_reason}",
            writes_seen=capture.foreign_events if capture is not None else 0,
            keys_written=t.keys,
            reencoded=t.reencoded,
            moved=t.moved,
            fields_renamed=t.fields_renamed,
            touched=t.touched,
            unreconciled=t.unreconciled_count,
            unreconciled_keys=t.unreconciled,
        )

    async def _all_keys(self) -> AsyncIterator[list[bytes]]:
        async for _, keys in keys_by_holder(
            self.servers, self.target_prefixes, self.storage, BATCH
        ):
            yield keys

    def _under_old_name(self, key: bytes) -> bool:
        change = self.change
        if change is None:
            return False
        if change.new.startswith(change.old) and key.startswith(change.new.encode()):
            return False
        return key.startswith(change.old.encode())

    async def _batch(self, keys: Sequence[bytes], *, sweeping: bool) -> None:
        keys = list(keys)
        if self.change is not None and not sweeping:
            keys = await self._move(keys)
        if self.renames and not sweeping:
            if self.storage == "json":
                self.tally.fields_renamed += await rename_json_fields_on(
                    self.servers, keys, self.renames
                )
            else:
                done = await guarded.rename_fields(
                    self.wire, keys, self.renames, capture=self.capture
                )
                self.tally.fields_renamed += done.written
                self.skipped.update(done.skipped)
        if self.storage != "hash":
            return
        rewritten: set[bytes] = set()
        if self.changes:
            rewritten = await self._reencode(keys, sweeping=sweeping)
            if sweeping:
                # written in the old encoding while no capture watched: the application's
                self.found_by_sweep |= rewritten
        if self.touch and not sweeping:
            rest = [k for k in keys if k not in rewritten]
            done = await guarded.touch(self.wire, rest, capture=self.capture)
            self.tally.touched += done.written

    async def _move(self, keys: list[bytes]) -> list[bytes]:
        change = self.change
        assert change is not None
        old_names = [k for k in keys if self._under_old_name(k)]
        if not old_names:
            return keys
        pairs = [(k, change.new.encode() + k[len(change.old) :]) for k in old_names]
        if isinstance(self.servers, ClusterConnections):
            assert isinstance(self.wire, ClusterWire)
            moves = await cluster_step.move_pairs(self.wire, pairs, self.capture)
            moved, taken = moves.moved, moves.taken
            for old, _ in moves.changed:
                self.tally.refuse(old, "written by the application while it was being moved")
        else:
            moved, taken = await prefix_step.rename_batch(self.client, pairs, self.capture)
        self.tally.moved += moved
        for old, new in taken:
            self.tally.refuse(old, f"written under the old prefix while {new!r} exists")
        stay = set(old_names)
        return [k for k in keys if k not in stay] + [
            change.new.encode() + k[len(change.old) :] for k in old_names
        ]

    async def _reencode(self, keys: list[bytes], *, sweeping: bool) -> set[bytes]:
        names = [name for name, _, _, _ in self.changes]
        columns = await self.wire.read_columns(keys, names)
        expected: list[list[bytes | None]] = []
        encoded: list[list[bytes | None]] = []
        for (_, vc, old_size, new_size), column in zip(self.changes, columns, strict=True):
            assert vc.encoding is not None
            values = [bytes(v) if v is not None else None for v in column]
            old = [v if v is not None and len(v) == old_size else None for v in values]
            if old_size == new_size and not sweeping:
                for key, value in zip(keys, values, strict=True):
                    if value is not None:
                        self.tally.refuse(
                            key,
                            f"written during the run; {vc.source_datatype} and "
                            f"{vc.target_datatype} vectors cannot be told apart",
                        )
                old = [None] * len(keys)
            elif old_size == new_size:
                old = [None] * len(keys)
            present = [v for v in old if v is not None]
            blobs = iter(reencode_bytes(present, vc.encoding, vc.dims)) if present else iter(())
            expected.append(old)
            encoded.append([next(blobs) if v is not None else None for v in old])
        targets = [
            k for i, k in enumerate(keys) if any(column[i] is not None for column in expected)
        ]
        if not targets:
            return set()
        index = {k: i for i, k in enumerate(keys)}
        done = await guarded.reencode(
            self.wire,
            targets,
            names,
            [[column[index[k]] for k in targets] for column in expected],
            [[column[index[k]] for k in targets] for column in encoded],
            touch=False,
            capture=self.capture,
        )
        self.tally.reencoded += done.written
        self.skipped.update(done.skipped)
        return set(targets) - set(done.skipped)
