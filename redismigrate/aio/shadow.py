"""Guarded writes of shadow vectors: each document's re-encoded vector in ``<field>__rm``.

A shadow field is written only where the original field still holds the bytes its
re-encoding was made from: the keys are WATCHed, their originals read again and
compared, and only the matching writes go out in one MULTI/EXEC (aio/guarded.py's
``_guarded``), which the server aborts if anyone wrote one of those keys in between.
So a shadow never holds the encoding of a value the application has replaced, and a
document the application deleted is never recreated (its original is gone, nothing
matches). The same guard removes shadows: on rollback only where the shadow still
holds what was read (and, after the cut-over, what the migrator writes for the
original), and during a run where the original itself was removed.

Everything here is idempotent: a document whose shadow already holds the re-encoding
of its original is left alone (``already``), so a resumed run's sweep writes only
what is wrong.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import hiredis

from redismigrate.aio.capture import ChangeCapture
from redismigrate.aio.fastwire import Wire, pack
from redismigrate.aio.guarded import UNCHANGED, Events, Outcome, _guarded
from redismigrate.plan import MigrationPlan, Online
from redismigrate.quantize import Encoding, reencode_bytes
from redismigrate.schema import DATATYPE_BYTES

# encode in a worker thread from this many vectors on (below, a thread costs more)
THREAD_FROM = 256
# a key whose guarded write keeps being aborted is read and decided again this often
RETRIES = 3


@dataclass(frozen=True)
class ShadowSpec:
    """One re-encoded field as the writes need it."""

    document_field: bytes  # the original (the application's field)
    shadow_field: bytes
    size: int  # byte length of a well-formed original in the old encoding
    dims: int
    encoding: Encoding
    # byte length in the new encoding: an original of this length (written by the
    # application after the cut-over) is copied as it is; the same as ``size`` only in
    # the keep_shadow_field variant, where no original is ever taken as new
    target_size: int = -1
    source_field: str = ""  # its name in the source schema (the backup's field key)

    @property
    def tells_encodings_apart(self) -> bool:
        return self.target_size > 0 and self.target_size != self.size

    def is_new(self, value: Any) -> bool:
        """``value`` is a vector in the new encoding (told apart by its length)."""
        return self.tells_encodings_apart and value is not None and len(value) == self.target_size

    def is_vector(self, value: Any) -> bool:
        return value is not None and (len(value) == self.size or self.is_new(value))

    @classmethod
    def for_plan(cls, plan: MigrationPlan) -> list[ShadowSpec]:
        assert isinstance(plan.mode, Online) and plan.mode.reencode is not None
        changes = {vc.field: vc for vc in plan.vector_changes}
        specs: list[ShadowSpec] = []
        for shadow in plan.mode.reencode.fields:
            vc = changes[shadow.field]
            assert vc.encoding is not None
            specs.append(
                cls(
                    document_field=shadow.document_field.encode(),
                    shadow_field=shadow.shadow_field.encode(),
                    size=vc.dims * DATATYPE_BYTES[vc.source_datatype],
                    dims=vc.dims,
                    encoding=vc.encoding,
                    target_size=vc.dims * DATATYPE_BYTES[vc.target_datatype]
                    if plan.mode.reencode.variant == "finish"
                    else -1,
                    source_field=vc.source_field,
                )
            )
        return specs


@dataclass
class ShadowOutcome:
    """What one call did, by document."""

    written: int = 0  # shadows written (new or fixed); originals, for rewrite_originals
    copied: int = 0  # of those, copies of an original already in the new encoding
    removed: int = 0  # shadows removed
    already: int = 0  # already right: nothing to do
    missing: int = 0  # documents that are not there (deleted): nothing written
    malformed: list[bytes] = field(default_factory=list)  # originals of another length
    skipped: list[bytes] = field(default_factory=list)  # changed again meanwhile: left
    left: list[bytes] = field(default_factory=list)  # removal refused: not ours to remove

    def add(self, other: ShadowOutcome) -> None:
        self.written += other.written
        self.copied += other.copied
        self.removed += other.removed
        self.already += other.already
        self.missing += other.missing
        self.malformed += other.malformed
        self.skipped += other.skipped
        self.left += other.left


Op = tuple[bytes, bytes, bytes | None]  # (HSET or HDEL, field, value)


def _names(specs: Sequence[ShadowSpec]) -> list[bytes]:
    """The fields read per key: each original, then its shadow."""
    out: list[bytes] = []
    for spec in specs:
        out += [spec.document_field, spec.shadow_field]
    return out


async def read_rows(wire: Wire, keys: Sequence[bytes], specs: Sequence[ShadowSpec]) -> list[Any]:
    """Per key its ``[original, shadow, ...]`` (bytes or None), or a ReplyError for a key
    that is not a hash."""
    if not keys:
        return []
    names = _names(specs)
    async with wire.connection() as conn:
        return await conn.call(
            b"".join(pack(b"HMGET", key, *names) for key in keys), len(keys), raise_errors=False
        )


def _plain(value: Any) -> Any:
    return value.tobytes() if isinstance(value, memoryview) else value


async def encode_rows(rows: Sequence[Any], specs: Sequence[ShadowSpec]) -> list[list[bytes | None]]:
    """Per key and field: the re-encoding of the original read, the original itself
    where it is in the new encoding already, or None (none, or not a vector)."""
    out: list[list[bytes | None]] = [[None] * len(specs) for _ in rows]
    for position, spec in enumerate(specs):
        if spec.tells_encodings_apart:
            for i, row in enumerate(rows):
                if isinstance(row, list) and spec.is_new(row[2 * position]):
                    out[i][position] = _plain(row[2 * position])
        where = [
            i
            for i, row in enumerate(rows)
            if isinstance(row, list)
            and row[2 * position] is not None
            and len(row[2 * position]) == spec.size
        ]
        if not where:
            continue
        blobs = [bytes(rows[i][2 * position]) for i in where]
        if len(blobs) >= THREAD_FROM:
            encoded = await anyio.to_thread.run_sync(
                reencode_bytes, blobs, spec.encoding, spec.dims
            )
        else:
            encoded = reencode_bytes(blobs, spec.encoding, spec.dims)
        for i, value in zip(where, encoded, strict=True):
            out[i][position] = value
    return out


def _sync_ops(
    row: list[Any], wanted: list[bytes | None], specs: Sequence[ShadowSpec]
) -> tuple[list[Op], bool]:
    """What makes ``row``'s shadows right, and whether an original is malformed."""
    ops: list[Op] = []
    malformed = False
    for position, spec in enumerate(specs):
        original, shadow = row[2 * position], _plain(row[2 * position + 1])
        want = wanted[position]
        if original is not None and not spec.is_vector(original):
            malformed = True  # no vector of this field: no shadow either (as the source)
        if want is None:
            if shadow is not None:
                ops.append((b"HDEL", spec.shadow_field, None))
        elif shadow != want:
            ops.append((b"HSET", spec.shadow_field, want))
    return ops, malformed


def _originals(row: list[Any], count: int) -> list[Any]:
    return [_plain(row[2 * i]) for i in range(count)]


def _command(key: bytes, op: Op) -> bytes:
    verb, name, value = op
    return pack(verb, key, name) if value is None else pack(verb, key, name, value)


async def _apply(
    wire: Wire,
    keys: Sequence[bytes],
    specs: Sequence[ShadowSpec],
    decide: Callable[[bytes, list[Any]], list[Op] | None],
    capture: ChangeCapture | None,
    read_before: dict[bytes, list[Any]] | None = None,
) -> tuple[Outcome, dict[bytes, list[Op]]]:
    """Guarded writes of ``decide(key, row as it is now)`` for ``keys`` (None: leave the
    key, in ``skipped``; []: nothing to do, ``already``). Returns the outcome and what
    was written to each key whose transaction went through.

    ``read_before``: each key's row as read since change capture started; with complete
    capture, a key the application never wrote still holds it and is not read again
    (aio/guarded.py vouches for it with a capture marker after the WATCH).
    """
    names = _names(specs)
    decided: dict[bytes, list[Op]] = {}
    unwritten: Callable[[bytes], bool] | None = None
    if read_before is not None and capture is not None and capture.complete:

        def unwritten(key: bytes) -> bool:
            assert capture is not None
            return not capture.written_by_application(key)

    def decide_one(
        key: bytes, reply: Any, writes: list[bytes], events: Events, out: Outcome
    ) -> None:
        decided.pop(key, None)  # an aborted round's decision does not count
        if isinstance(reply, hiredis.ReplyError):
            out.skipped.append(key)
            return
        if reply is UNCHANGED:
            assert read_before is not None
            reply = read_before[key]
        row = list(reply)
        if all(value is None for value in row):
            out.missing += 1  # deleted meanwhile: nothing is written to it
            return
        ops = decide(key, row)
        if ops is None:
            out.skipped.append(key)
            return
        if not ops:
            out.already += 1
            return
        decided[key] = ops
        writes.extend(_command(key, op) for op in ops)
        events.append((key, len(ops)))
        out.written += 1
        out.values += len(ops)

    outcome = await _guarded(
        wire, keys, lambda key: pack(b"HMGET", key, *names), -1, decide_one, capture, unwritten
    )
    for key in outcome.skipped:
        decided.pop(key, None)
    return outcome, decided


async def sync_shadows(
    wire: Wire,
    keys: Sequence[bytes],
    specs: Sequence[ShadowSpec],
    capture: ChangeCapture | None,
) -> ShadowOutcome:
    """Make each key's shadows hold the re-encoding of its originals as they are now.

    The originals are read and encoded, then written with ``write_shadows`` (guarded).
    A key the application changed in between is read and decided anew (``RETRIES``
    times), then left in ``skipped`` (change capture has seen that write: it comes
    back to be mirrored). ``capture``, when given, was started before this call: a key
    it never saw the application write is not read a second time under the WATCH.
    """
    total = ShadowOutcome()
    todo = list(keys)
    for _ in range(RETRIES):
        if not todo:
            break
        rows = await read_rows(wire, todo, specs)
        found = await write_shadows(wire, todo, rows, specs, capture)
        todo = found.skipped
        found.skipped = []
        total.add(found)
    total.skipped += todo
    return total


async def write_shadows(
    wire: Wire,
    keys: Sequence[bytes],
    rows: Sequence[Any],
    specs: Sequence[ShadowSpec],
    capture: ChangeCapture | None,
) -> ShadowOutcome:
    """Write the re-encoding of the originals in ``rows`` (as ``read_rows`` read them)
    into the shadows of ``keys``, guarded: only where each original still holds those
    bytes (else the key is in ``skipped``, nothing written); a deleted document is
    never written to (``missing``). A shadow already right is left (``already``); one
    whose original is gone or malformed is removed."""
    total = ShadowOutcome()
    wanted = await encode_rows(rows, specs)
    expected: dict[bytes, tuple[list[Any], list[bytes | None]]] = {}
    read: dict[bytes, list[Any]] = {}
    for key, row, want in zip(keys, rows, wanted, strict=True):
        if not isinstance(row, list):
            continue  # not a hash: no document of this index
        if all(value is None for value in row):
            total.missing += 1  # deleted: deletions need nothing
            continue
        ops, malformed = _sync_ops(row, want, specs)
        if malformed:
            total.malformed.append(key)
        if not ops:
            total.already += 1
            continue
        expected[key] = (_originals(row, len(specs)), want)
        read[key] = row
    if not expected:
        return total

    def decide(key: bytes, row: list[Any]) -> list[Op] | None:
        originals, want = expected[key]
        if _originals(row, len(specs)) != originals:
            return None  # the application wrote the original since the read
        return _sync_ops(row, want, specs)[0]

    outcome, done = await _apply(wire, list(expected), specs, decide, capture, read)
    total.missing += outcome.missing
    total.already += outcome.already
    total.skipped += outcome.skipped
    for key, ops in done.items():
        if any(verb == b"HSET" for verb, _, _ in ops):
            total.written += 1
            originals = expected[key][0]
            if any(spec.is_new(originals[i]) for i, spec in enumerate(specs)):
                total.copied += 1
        else:
            total.removed += 1
    return total


BackupWriter = Callable[[list[bytes], dict[str, list[bytes | None]]], Awaitable[None]]


async def rewrite_originals(
    wire: Wire,
    keys: Sequence[bytes],
    specs: Sequence[ShadowSpec],
    capture: ChangeCapture | None,
    backup: BackupWriter,
    *,
    shadows: bool,
) -> ShadowOutcome:
    """Rewrite each original still in the old encoding in place, in the new one (and,
    with ``shadows``, its shadow to the same bytes), guarded: only where the original
    still holds the bytes that were read and backed up (``backup`` is awaited with them
    before anything is written). An original in the new encoding already is left.
    ``written`` counts the documents rewritten; ``skipped`` those the application
    changed again each time (change capture brings them back)."""
    total = ShadowOutcome()
    todo = list(keys)
    for _ in range(RETRIES):
        if not todo:
            break
        rows = await read_rows(wire, todo, specs)
        wanted = await encode_rows(rows, specs)
        expected: dict[bytes, tuple[list[Any], list[Op]]] = {}
        read: dict[bytes, list[Any]] = {}
        copies: set[bytes] = set()  # only a shadow to bring up to date: nothing to back up
        for key, row, want in zip(todo, rows, wanted, strict=True):
            if not isinstance(row, list):
                continue
            if all(value is None for value in row):
                total.missing += 1
                continue
            ops: list[Op] = []
            rewrites = False
            for position, spec in enumerate(specs):
                original, new = row[2 * position], want[position]
                if original is None or new is None:
                    continue
                if len(original) == spec.size and not spec.is_new(original):
                    ops.append((b"HSET", spec.document_field, new))
                    rewrites = True
                if shadows and _plain(row[2 * position + 1]) != new:
                    ops.append((b"HSET", spec.shadow_field, new))  # a copy, or the encoding
            if ops:
                expected[key] = (_originals(row, len(specs)), ops)
                read[key] = row
                if not rewrites:
                    copies.add(key)
            else:
                total.already += 1
        if not expected:
            todo = []
            break
        chosen = list(expected)
        kept = [k for k in chosen if k not in copies]
        if kept:
            await backup(
                kept,
                {
                    spec.source_field: [expected[k][0][i] for k in kept]
                    for i, spec in enumerate(specs)
                },
            )

        def decide(
            key: bytes,
            row: list[Any],
            expected: dict[bytes, tuple[list[Any], list[Op]]] = expected,
        ) -> list[Op] | None:
            originals, ops = expected[key]
            if _originals(row, len(specs)) != originals:
                return None  # written since it was read: read, backed up, decided again
            return ops

        outcome, done = await _apply(wire, chosen, specs, decide, capture, read)
        total.written += len([k for k in done if k not in copies])
        total.copied += len([k for k in done if k in copies])
        total.missing += outcome.missing
        total.already += outcome.already
        todo = list(outcome.skipped)
    total.skipped += todo
    return total


async def remove_shadows(
    wire: Wire,
    keys: Sequence[bytes],
    specs: Sequence[ShadowSpec],
    *,
    only_our_encoding: bool,
    capture: ChangeCapture | None = None,
) -> ShadowOutcome:
    """Remove the shadow fields of ``keys``, guarded: only where the shadow still holds
    what was read just before (and, with ``only_our_encoding``, what the migrator
    writes for the original as it is now: after the cut-over the application may have
    written a shadow of its own, which is left and listed in ``left``). ``capture``
    (started before this call) spares a second read of keys the application never
    wrote."""
    total = ShadowOutcome()
    todo = list(keys)
    for _ in range(RETRIES):
        if not todo:
            break
        rows = await read_rows(wire, todo, specs)
        wanted = await encode_rows(rows, specs) if only_our_encoding else None
        expected: dict[bytes, list[Any]] = {}
        for position, (key, row) in enumerate(zip(todo, rows, strict=True)):
            if not isinstance(row, list):
                continue
            shadows = [_plain(row[2 * i + 1]) for i in range(len(specs))]
            if all(s is None for s in shadows):
                total.already += 1
                continue
            if wanted is not None:
                mine = [s is None or s == w for s, w in zip(shadows, wanted[position], strict=True)]
                if not all(mine):
                    total.left.append(key)
                    continue
            expected[key] = [_plain(v) for v in row]
        if not expected:
            todo = []
            break

        def decide(
            key: bytes, row: list[Any], expected: dict[bytes, list[Any]] = expected
        ) -> list[Op] | None:
            if [_plain(v) for v in row] != expected[key]:
                return None  # written since it was read: read and decided again
            return [
                (b"HDEL", spec.shadow_field, None)
                for i, spec in enumerate(specs)
                if row[2 * i + 1] is not None
            ]

        read = {key: expected[key] for key in expected}
        outcome, done = await _apply(wire, list(expected), specs, decide, capture, read)
        total.removed += len(done)
        total.missing += outcome.missing
        total.already += outcome.already
        todo = list(outcome.skipped)
    total.skipped += todo
    return total


async def return_originals(
    wire: Wire,
    keys: Sequence[bytes],
    specs: Sequence[ShadowSpec],
    inverse: Sequence[Encoding | None],
) -> ShadowOutcome:
    """Rollback of the finish variant: each original still in the new encoding (written
    by the application after the cut-over; the backed-up ones are put back before)
    becomes its old encoding again through ``inverse[i]`` (None: no way back, the key
    is ``left``), guarded. Its shadow is not touched (it holds the new encoding, which
    the index serving meanwhile reads). ``written`` counts the documents changed."""
    total = ShadowOutcome()
    todo = list(keys)
    for _ in range(RETRIES):
        if not todo:
            break
        rows = await read_rows(wire, todo, specs)
        expected: dict[bytes, tuple[list[Any], list[Op]]] = {}
        for key, row in zip(todo, rows, strict=True):
            if not isinstance(row, list) or all(value is None for value in row):
                continue
            ops: list[Op] = []
            stuck = False
            for position, spec in enumerate(specs):
                original = row[2 * position]
                if not spec.is_new(original):
                    continue
                way_back = inverse[position]
                if way_back is None:
                    stuck = True
                    continue
                old = reencode_bytes([_plain(original)], way_back, spec.dims)[0]
                ops.append((b"HSET", spec.document_field, old))
            if stuck:
                total.left.append(key)
            if ops:
                expected[key] = (_originals(row, len(specs)), ops)
            elif not stuck:
                total.already += 1
        if not expected:
            todo = []
            break

        def decide(
            key: bytes,
            row: list[Any],
            expected: dict[bytes, tuple[list[Any], list[Op]]] = expected,
        ) -> list[Op] | None:
            originals, ops = expected[key]
            return ops if _originals(row, len(specs)) == originals else None

        outcome, done = await _apply(wire, list(expected), specs, decide, None)
        total.written += len(done)
        total.missing += outcome.missing
        todo = list(outcome.skipped)
    total.skipped += todo
    return total
