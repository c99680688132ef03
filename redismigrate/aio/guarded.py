"""Guarded writes: the migrator's writes to documents land only where nobody else wrote.

Every write of the migrator to a document (a re-encoded vector, a restored original,
a renamed field, a touch that makes an index see a document) is a compare-and-set: the
keys are WATCHed, their current bytes read and compared with what the migrator expects
(the bytes it backed up, or what it wrote itself), and only the matching writes are
sent in one MULTI/EXEC. A write by anyone else between the WATCH and the EXEC aborts
the transaction and the batch is read and decided again. So a write of the migrator
never replaces a newer value of the application, and never creates a document that
was deleted: a missing key never matches.

A WATCHed transaction costs the server a read of each value on top of the write; a
Lua script comparing the bytes costs several times more (each argument becomes a Lua
string), which is why it is not used.

On a Redis Cluster (a :class:`~redismigrate.aio.cluster.ClusterWire` given for the
wire) WATCH and MULTI refuse keys of different slots: there the transactions hold the
keys of one slot each and go to the primary serving it, the primaries at once, each
with its own change capture (``ClusterCapture.node``). One server's transactions are
made as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import hiredis
import redis.exceptions as rexc

from redismigrate.aio.capture import ChangeCapture, ClusterCapture
from redismigrate.aio.cluster import ClusterWire, gather_all
from redismigrate.aio.fastwire import TOUCH_FIELD, Caller, Wire, pack

# a batch whose transaction keeps being aborted is split into single keys after this
# many tries; a single key is given up (left to reconcile) after as many
ATTEMPTS = 3
# WATCH looks through the keys a connection already watches for each key it adds
# (quadratic in their number): transactions stay small
WATCH_GROUP = 40

Events = list[tuple[bytes, int]]
Decision = tuple[list[bytes], Events]


@dataclass
class Outcome:
    """What a batch of guarded writes did."""

    written: int = 0  # documents written
    values: int = 0  # field values written
    already: int = 0  # documents that already held what was to be written
    missing: int = 0  # documents (or fields) that are not there (deleted meanwhile)
    skipped: list[bytes] = field(default_factory=list)  # held something else: not written

    def add(self, other: Outcome) -> None:
        self.written += other.written
        self.values += other.values
        self.already += other.already
        self.missing += other.missing
        self.skipped.extend(other.skipped)


def _read_command(key: bytes, fields: Sequence[bytes]) -> bytes:
    if len(fields) == 1:
        field = fields[0]
        return b"*3\r\n$4\r\nHGET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            len(key),
            key,
            len(field),
            field,
        )
    return pack(b"HMGET", key, *fields)


def _hset(key: bytes, field: bytes, value: bytes) -> bytes:
    return b"*4\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        len(key),
        key,
        len(field),
        field,
        len(value),
        value,
    )


def _plain(value: Any) -> Any:
    return value.tobytes() if isinstance(value, memoryview) else value


def _row(reply: Any, width: int) -> list[Any] | None:
    """A reply of ``_read_command`` as one value per field; None: not a hash."""
    if isinstance(reply, hiredis.ReplyError):
        return None
    if width == 1:
        return [reply]
    return list(reply)


class _Unchanged:
    """The reply given for a key that change capture vouches for: it still holds what
    the migrator last saw (nothing but the migrator wrote it since)."""


UNCHANGED = _Unchanged()


async def _transact(
    conn: Caller,
    keys: Sequence[bytes],
    read: Callable[[bytes], bytes],
    value_size: int,
    decide: Callable[[list[Any]], tuple[Decision, Outcome]],
    capture: ChangeCapture | None,
    unwritten: Callable[[bytes], bool] | None,
) -> Outcome | None:
    """One WATCH / read / decide / MULTI ... EXEC round; None when it was aborted.

    With ``unwritten`` and complete change capture, a marker is published right after
    the WATCH on the same connection; once it has come back through the subscription,
    every write made before the WATCH has been seen, so the keys ``unwritten`` vouches
    for (the application never wrote them) need not be read: they hold what the
    migrator saw, and any write after the WATCH aborts the EXEC.
    """
    watch = pack(b"WATCH", *keys)
    unsure: Sequence[bytes] = keys
    if unwritten is not None and capture is not None and capture.complete:
        channel, token, delivered = capture.marker()
        await conn.call(watch + pack(b"PUBLISH", channel, token), 2)
        if await capture.arrived(token, delivered):
            unsure = [k for k in keys if not unwritten(k)]
    else:
        await conn.call(watch, 1)
    replies: list[Any]
    if len(unsure) == len(keys):
        replies = await conn.call(
            b"".join([read(k) for k in keys]), len(keys), value_size, raise_errors=False
        )
    else:
        found: dict[bytes, Any] = {}
        if unsure:
            read_back = await conn.call(
                b"".join([read(k) for k in unsure]), len(unsure), value_size, raise_errors=False
            )
            found = dict(zip(unsure, read_back, strict=True))
        replies = [found.get(k, UNCHANGED) for k in keys]
    (writes, events), outcome = decide(replies)
    if not writes:
        await conn.call(pack(b"UNWATCH"), 1)
        return outcome
    sent, count, quiet = _transaction(writes, events, capture)
    done = _executed(await conn.call(sent, count, raise_errors=False), count, quiet, capture)
    if not done:
        if capture is not None and done is not None:
            # someone wrote one of these keys after the WATCH, and that write's event
            # may have been taken for one of the writes announced above: all are suspect
            if not quiet:
                capture.unexpect(events)
            capture.suspect(keys)
        return None
    return outcome


def _transaction(
    writes: list[bytes], events: Events, capture: ChangeCapture | None
) -> tuple[bytes, int, bool]:
    """The MULTI ... EXEC of ``writes``: (commands, their count, quiet).

    Quiet: the transaction switches the hash class of keyspace notifications off around
    the writes (capture.quiet says when that is allowed), so the server does not
    publish the migrator's own writes and capture need not expect them. Inside the
    transaction no other client runs, so no write of the application goes unseen.
    Otherwise the events the writes will cause are announced to capture.
    """
    quiet = capture.quiet if capture is not None else None
    if quiet is None:
        if capture is not None:
            capture.expect(events)
        return pack(b"MULTI") + b"".join(writes) + pack(b"EXEC"), len(writes) + 2, False
    off, on = quiet
    return pack(b"MULTI") + off + b"".join(writes) + on + pack(b"EXEC"), len(writes) + 4, True


def _executed(
    replies: list[Any], count: int, quiet: bool, capture: ChangeCapture | None
) -> bool | None:
    """Whether the transaction of ``_transaction`` (its replies start ``replies``) went
    through. False: aborted by a write to a watched key; None: not run because the
    switch was refused. Either way it is to be read and decided again."""
    executed = replies[count - 1]
    if quiet and capture is not None:
        if isinstance(replies[1], hiredis.ReplyError):
            # the switch itself was refused (the user's rights changed): nothing ran
            capture.no_quiet(f"switching notifications off was refused: {replies[1]}")
            return None
        if isinstance(executed, list):
            if isinstance(executed[-1], hiredis.ReplyError):
                capture.lost(f"switching notifications back on failed: {executed[-1]}")
            if isinstance(executed[0], hiredis.ReplyError):
                capture.no_quiet(f"switching notifications off failed: {executed[0]}")
            executed = executed[1:-1]
    for reply in replies[:count]:
        if isinstance(reply, hiredis.ReplyError):
            raise rexc.ResponseError(str(reply))  # refused when queued (OOM, rights)
    if executed is None:
        return False
    for reply in executed:
        if isinstance(reply, hiredis.ReplyError):
            raise hiredis.ReplyError(str(reply))  # not expected: the keys were checked
    return True


def _decider(
    decide_one: Callable[[bytes, Any, list[bytes], Events, Outcome], None],
    vouched: Callable[[Sequence[bytes]], tuple[Decision, Outcome] | None] | None,
) -> Callable[[Sequence[bytes]], Callable[[list[Any]], tuple[Decision, Outcome]]]:
    """``decide_for(group)``: what to write for a group's replies (see ``_guarded``)."""

    def decide_for(batch: Sequence[bytes]) -> Callable[[list[Any]], tuple[Decision, Outcome]]:
        def decide(replies: list[Any]) -> tuple[Decision, Outcome]:
            if vouched is not None and all(reply is UNCHANGED for reply in replies):
                whole = vouched(batch)
                if whole is not None:
                    return whole
            writes: list[bytes] = []
            events: Events = []
            outcome = Outcome()
            for key, reply in zip(batch, replies, strict=True):
                decide_one(key, reply, writes, events, outcome)
            return (writes, events), outcome

        return decide

    return decide_for


async def _guarded(
    wire: Wire,
    keys: Sequence[bytes],
    read: Callable[[bytes], bytes],
    value_size: int,
    decide_one: Callable[[bytes, Any, list[bytes], Events, Outcome], None],
    capture: ChangeCapture | None,
    unwritten: Callable[[bytes], bool] | None = None,
    vouched: Callable[[Sequence[bytes]], tuple[Decision, Outcome] | None] | None = None,
) -> Outcome:
    """Run ``decide_one`` over ``keys`` in WATCHed transactions, retrying aborted ones.

    ``vouched``, when given, decides a whole group that change capture vouched for in
    one go (the common case, kept fast); None from it: decide key by key.
    """
    decide_for = _decider(decide_one, vouched)
    if isinstance(wire, ClusterWire):
        return await _by_slot(wire, keys, read, value_size, decide_for, capture, unwritten)
    total = Outcome()
    groups = [keys[start : start + WATCH_GROUP] for start in range(0, len(keys), WATCH_GROUP)]
    async with wire.connection() as conn:
        if unwritten is not None and capture is not None and capture.complete and groups:
            groups = await _pipelined(
                conn, groups, read, value_size, decide_for, capture, unwritten, total
            )
        for group in groups:
            total.add(
                await _guarded_group(conn, group, read, value_size, decide_for, capture, unwritten)
            )
    return total


async def _by_slot(
    wire: ClusterWire,
    keys: Sequence[bytes],
    read: Callable[[bytes], bytes],
    value_size: int,
    decide_for: Callable[[Sequence[bytes]], Callable[[list[Any]], tuple[Decision, Outcome]]],
    capture: ChangeCapture | None,
    unwritten: Callable[[bytes], bool] | None,
) -> Outcome:
    """``_guarded`` on a cluster: the keys of each primary in groups of one slot (WATCH
    and MULTI refuse keys of several), on a connection to that primary, with its own
    capture; the primaries at once."""
    if capture is not None and not isinstance(capture, ClusterCapture):
        raise TypeError("guarded writes on a cluster need its ClusterCapture (or none)")
    total = Outcome()

    async def on(node_id: str, groups: list[Sequence[bytes]]) -> None:
        mine = capture.node(node_id) if capture is not None else None
        outcome = Outcome()
        with wire.answers(node_id):
            async with wire.wires[node_id].connection() as conn:
                if unwritten is not None and mine is not None and mine.complete:
                    groups = await _pipelined(
                        conn, groups, read, value_size, decide_for, mine, unwritten, outcome
                    )
                for group in groups:
                    outcome.add(
                        await _guarded_group(
                            conn, group, read, value_size, decide_for, mine, unwritten
                        )
                    )
        total.add(outcome)

    groups = wire.slot_groups(keys, WATCH_GROUP)
    await gather_all([partial(on, node_id, found) for node_id, found in groups.items()])
    return total


async def _pipelined(
    conn: Caller,
    groups: list[Sequence[bytes]],
    read: Callable[[bytes], bytes],
    value_size: int,
    decide_for: Callable[[Sequence[bytes]], Callable[[list[Any]], tuple[Decision, Outcome]]],
    capture: ChangeCapture,
    unwritten: Callable[[bytes], bool],
    total: Outcome,
) -> list[Sequence[bytes]]:
    """The groups one after another with one round trip each: the EXEC of a group goes
    out with the WATCH (and marker) of the next. Returns the groups whose transaction
    was aborted, to be done again one by one."""
    aborted: list[Sequence[bytes]] = []
    channel, token, arrival = capture.marker()
    await conn.call(pack(b"WATCH", *groups[0]) + pack(b"PUBLISH", channel, token), 2)
    for position, group in enumerate(groups):
        vouched = await capture.arrived(token, arrival)
        unsure = [k for k in group if not (vouched and unwritten(k))]
        replies: list[Any] = [UNCHANGED] * len(group)
        if unsure:
            read_back = await conn.call(
                b"".join([read(k) for k in unsure]), len(unsure), value_size, raise_errors=False
            )
            found = dict(zip(unsure, read_back, strict=True))
            replies = [found.get(k, UNCHANGED) for k in group]
        (writes, events), outcome = decide_for(group)(replies)
        tail, tail_count = b"", 0
        if position + 1 < len(groups):
            channel, token, arrival = capture.marker()
            tail = pack(b"WATCH", *groups[position + 1]) + pack(b"PUBLISH", channel, token)
            tail_count = 2
        if not writes:
            await conn.call(pack(b"UNWATCH") + tail, 1 + tail_count)
            total.add(outcome)
            continue
        sent, count, quiet = _transaction(writes, events, capture)
        replies = await conn.call(sent + tail, count + tail_count, raise_errors=False)
        for reply in replies[count:]:
            if isinstance(reply, hiredis.ReplyError):
                raise rexc.ResponseError(str(reply))
        done = _executed(replies, count, quiet, capture)
        if not done:
            if done is not None:
                if not quiet:
                    capture.unexpect(events)
                capture.suspect(group)
            aborted.append(group)
            continue
        total.add(outcome)
    return aborted


async def _guarded_group(
    conn: Caller,
    keys: Sequence[bytes],
    read: Callable[[bytes], bytes],
    value_size: int,
    decide_for: Callable[[Sequence[bytes]], Callable[[list[Any]], tuple[Decision, Outcome]]],
    capture: ChangeCapture | None,
    unwritten: Callable[[bytes], bool] | None,
) -> Outcome:
    total = Outcome()
    for _ in range(ATTEMPTS):
        done = await _transact(conn, keys, read, value_size, decide_for(keys), capture, unwritten)
        if done is not None:
            total.add(done)
            return total
    for key in keys:  # contended: one key at a time
        for _ in range(ATTEMPTS):
            done = await _transact(
                conn, [key], read, value_size, decide_for([key]), capture, unwritten
            )
            if done is not None:
                total.add(done)
                break
        else:
            total.skipped.append(key)
    return total


async def reencode(
    wire: Wire,
    keys: Sequence[bytes],
    fields: Sequence[bytes],
    expected: Sequence[Sequence[Any]],
    encoded: Sequence[Sequence[bytes | None]],
    *,
    touch: bool,
    capture: ChangeCapture | None,
    value_size: int = -1,
    unwritten: Callable[[bytes], bool] | None = None,
) -> Outcome:
    """Write ``encoded[f][i]`` to ``fields[f]`` of ``keys[i]`` where it still holds
    ``expected[f][i]``; with ``touch``, make the index see the documents of ``keys``
    that hold none of those vectors (guarded too: a deleted document stays deleted).

    A document holding anything else is ``skipped`` (the application wrote it).
    """
    position = {key: i for i, key in enumerate(keys)}
    width = len(fields)
    if width == 1:
        vectorless = {key for key, value in zip(keys, expected[0], strict=True) if value is None}
    else:
        vectorless = {
            key for i, key in enumerate(keys) if all(column[i] is None for column in expected)
        }

    def read(key: bytes) -> bytes:
        return pack(b"EXISTS", key) if key in vectorless else _read_command(key, fields)

    def decide_one(
        key: bytes, reply: Any, writes: list[bytes], events: Events, out: Outcome
    ) -> None:
        if key in vectorless:
            if reply is UNCHANGED:
                reply = 1  # it existed when the backup read it, and nobody wrote it since
            if touch and reply == 1:
                writes.append(pack(b"HSET", key, TOUCH_FIELD, b"1"))
                writes.append(pack(b"HDEL", key, TOUCH_FIELD))
                events.append((key, 2))
            elif reply != 1:
                out.missing += 1
            return
        i = position[key]
        if reply is UNCHANGED and width == 1:  # the common case, kept short
            value = encoded[0][i]
            if expected[0][i] is not None and value is not None:
                writes.append(_hset(key, fields[0], value))
                events.append((key, 1))
                out.written += 1
                out.values += 1
            return
        row = [column[i] for column in expected] if reply is UNCHANGED else _row(reply, width)
        if row is None:
            out.skipped.append(key)
            return
        pending: list[tuple[bytes, bytes]] = []
        for n, name in enumerate(fields):
            # bytes, not memoryviews: comparing views goes element by element, slowly
            was, becomes, now = _plain(expected[n][i]), encoded[n][i], _plain(row[n])
            if was is None or becomes is None or (now == becomes and was != becomes):
                continue  # nothing to write, or written already (a resumed batch)
            if now != was:
                out.skipped.append(key)  # the application wrote it (or deleted it)
                return
            pending.append((name, becomes))
        if not pending:
            out.already += 1
            return
        # one HSET for all of the document's vectors: the index reads the document on
        # each write, and one still in the old encoding would fail it (a failure the
        # server never takes back)
        if len(pending) == 1:
            writes.append(_hset(key, *pending[0]))
        else:
            writes.append(pack(b"HSET", key, *(part for pair in pending for part in pair)))
        events.append((key, 1))
        out.written += 1
        out.values += len(pending)

    def vouched(group: Sequence[bytes]) -> tuple[Decision, Outcome] | None:
        if width != 1 or not vectorless.isdisjoint(group):
            return None
        name, new = fields[0], encoded[0]
        pairs = [(key, new[position[key]]) for key in group]
        writes = [_hset(key, name, value) for key, value in pairs if value is not None]
        events: Events = [(key, 1) for key, value in pairs if value is not None]
        return (writes, events), Outcome(written=len(writes), values=len(writes))

    # the fast read path needs every reply to be a value of one size: not with EXISTS
    fast = value_size if width == 1 and not vectorless else -1
    return await _guarded(wire, keys, read, fast, decide_one, capture, unwritten, vouched)


async def touch(wire: Wire, keys: Sequence[bytes], *, capture: ChangeCapture | None) -> Outcome:
    """Make the indexes see ``keys`` again (set and delete a scratch field) where they
    exist; a key that does not exist is left alone."""

    def decide_one(
        key: bytes, reply: Any, writes: list[bytes], events: Events, out: Outcome
    ) -> None:
        if reply == 1:
            writes.append(pack(b"HSET", key, TOUCH_FIELD, b"1"))
            writes.append(pack(b"HDEL", key, TOUCH_FIELD))
            events.append((key, 2))
            out.written += 1
        else:
            out.missing += 1

    return await _guarded(wire, keys, lambda k: pack(b"EXISTS", k), -1, decide_one, capture)


async def restore(
    wire: Wire,
    keys: Sequence[bytes],
    field_name: bytes,
    originals: Sequence[bytes],
    encoded: Sequence[bytes],
    *,
    capture: ChangeCapture | None,
) -> Outcome:
    """Put ``originals[i]`` back into ``field_name`` of ``keys[i]`` where it holds what
    the migration wrote (``encoded[i]``). Already original: ``already``; gone:
    ``missing``; anything else (written by the application since): ``skipped``."""
    position = {key: i for i, key in enumerate(keys)}

    def decide_one(
        key: bytes, reply: Any, writes: list[bytes], events: Events, out: Outcome
    ) -> None:
        i = position[key]
        if isinstance(reply, hiredis.ReplyError):
            out.skipped.append(key)
        elif reply is None:
            out.missing += 1
        elif reply == originals[i]:
            out.already += 1
        elif reply == encoded[i]:
            writes.append(pack(b"HSET", key, field_name, originals[i]))
            events.append((key, 1))
            out.written += 1
            out.values += 1
        else:
            out.skipped.append(key)

    return await _guarded(
        wire, keys, lambda k: pack(b"HGET", k, field_name), -1, decide_one, capture
    )


async def rename_fields(
    wire: Wire,
    keys: Sequence[bytes],
    renames: Sequence[tuple[str, str]],
    *,
    capture: ChangeCapture | None,
) -> Outcome:
    """Move each hash field ``old`` to ``new`` in ``keys`` where ``old`` is present
    (idempotent: a moved field is not there any more)."""
    olds = [old.encode() for old, _ in renames]
    news = [new.encode() for _, new in renames]

    def decide_one(
        key: bytes, reply: Any, writes: list[bytes], events: Events, out: Outcome
    ) -> None:
        row = _row(reply, len(olds))
        if row is None:
            out.skipped.append(key)
            return
        count = 0
        for old, new, value in zip(olds, news, row, strict=True):
            if value is not None:
                writes.append(pack(b"HSET", key, new, value))
                writes.append(pack(b"HDEL", key, old))
                count += 2
        if count:
            events.append((key, count))
            out.written += 1
            out.values += count // 2
        else:
            out.already += 1

    return await _guarded(wire, keys, lambda k: _read_command(k, olds), -1, decide_one, capture)
