"""Change capture: which documents the application writes while a migration runs.

Keyspace notifications for the index's prefixes are enabled for the run (and put back
as they were at the end) and read on a connection of their own. The migrator's own
writes notify too: before each of its writes it says which events it will cause
(``expect``), and every event nobody expected is the application's. What the
application wrote is handed out by ``drain``; ``sync`` waits until every event that
happened before it has been read, so a drain after it misses nothing.

Where notifications cannot be had (the user may not run CONFIG SET, a connection
cannot be made) or the subscription drops, ``complete`` is False: callers then sweep
every key instead of trusting what was captured.

On a Redis Cluster notifications are per node: :class:`ClusterCapture` runs one
capture on every primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
import redis.exceptions as rexc

from redismigrate.aio.connection import execute
from redismigrate.aio.fastwire import open_like, pack
from redismigrate.aio.keys import glob_escape
from redismigrate.cluster import ClusterTopology, key_served_by, key_slot, owner_table
from redismigrate.errors import RedisMigrateError

SYNC_TIMEOUT_SECONDS = 30.0
# the user's notify-keyspace-events from before the first run that changed it
ORIGINAL_KEY = "redismigrate:notify-keyspace-events:original"
MARKER_PREFIX = b"redismigrate:capture:"
# every capture says so here when it starts: the others stop switching notifications off
HELLO_CHANNEL = b"redismigrate:capture-hello"
# hash writes, generic (del, rename, expire), expired, evicted; module events (JSON)
_WANTED_FLAGS = "Khgxed"
_CLASS_ALIAS = "g$lshzxetd"  # what "A" stands for


def _flags_with(current: str, wanted: str) -> str:
    have = set(current.replace("A", _CLASS_ALIAS))
    return current + "".join(flag for flag in wanted if flag not in have)


class _Subscriber(asyncio.Protocol):
    def __init__(self, capture: ChangeCapture) -> None:
        self._capture = capture
        self._reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        capture = self._capture
        expected = capture._expected
        skip = len(capture._channel_head)
        while True:
            message = reader.gets()
            if message is False:
                return
            if type(message) is list and len(message) == 4 and message[0] == b"pmessage":
                # the migrator's own writes are most of the traffic: settled here, inline
                key = message[2][skip:]
                left = expected.get(key)
                if left is None:
                    capture._event(key, message[3])
                elif left > 1:
                    expected[key] = left - 1
                else:
                    del expected[key]
            elif isinstance(message, list) and message:
                capture._message(message)
            elif isinstance(message, hiredis.ReplyError):
                capture._lost(f"the server refused the subscription: {message}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._capture._lost(f"the notification connection was lost: {exc or 'closed'}")


class ChangeCapture:
    """The keys the application wrote under ``prefixes`` since ``start``."""

    def __init__(
        self, client: aioredis.Redis, prefixes: Sequence[str], *, original_key: str = ORIGINAL_KEY
    ) -> None:
        self.client = client
        self._original_key = original_key
        # a prefix under another one would deliver its events twice
        self.prefixes = [
            p
            for p in dict.fromkeys(prefixes)
            if not any(p != q and p.startswith(q) for q in prefixes)
        ]
        self.complete = False  # True while every write is being seen
        self.problem: str | None = None  # why capture is (or became) incomplete
        self.foreign_events = 0
        self._foreign: set[bytes] = set()
        self._expected: dict[bytes, int] = {}
        self._deleted: set[bytes] = set()
        self._ever: set[bytes] = set()  # every key the application wrote (its writes, not all keys)
        self._transport: asyncio.Transport | None = None
        self._channel_head = b""
        self._marker_channel = MARKER_PREFIX + secrets.token_hex(8).encode()
        # the marker channels of the captures this one works with (on a cluster's other
        # primaries): their hello is no other migration's
        self.siblings: frozenset[bytes] = frozenset()
        self._markers = itertools.count()  # tokens: unique on this capture's own channel
        self._marker_waiters: dict[bytes, asyncio.Future[None]] = {}
        self._restore_flags: str | None = None
        # (off, on): CONFIG SET commands that switch hash events off and back on around
        # the migrator's own writes in one transaction (aio/guarded.py); None: not allowed
        self.quiet: tuple[bytes, bytes] | None = None
        self.quiet_problem: str | None = None  # why quiet was given up, if it was
        self._user_flags = ""
        self._subscribed: asyncio.Future[None] | None = None
        self._pending_subscriptions = 0

    # ---- life cycle

    async def start(self) -> ChangeCapture:
        """Enable notifications and subscribe; on any refusal stay incomplete (no error).

        The setting found before the first run enabled it is kept in Redis
        (``ORIGINAL_KEY``), so runs going on at once, or a run after a crashed one,
        put back the setting the user had, once the last of them stops.
        """
        try:
            current = await self._flags()
            wanted = _flags_with(current, _WANTED_FLAGS)
            saved = await self.client.get(self._original_key)
            self._user_flags = _text(saved) if saved is not None else current
            if wanted != current:
                if saved is None:
                    await self.client.set(self._original_key, current, nx=True)
                await self.client.config_set("notify-keyspace-events", wanted)
            self._restore_flags = "" if (saved is not None or wanted != current) else None
        except rexc.RedisError as exc:
            self.problem = f"keyspace notifications could not be enabled: {exc}"
            return self
        opened = await open_like(self.client, lambda: _Subscriber(self))
        if opened is None:
            self.problem = "no connection for keyspace notifications could be made"
            await self._restore()
            return self
        transport, _, setup = opened
        self._transport = transport
        db = int(self.client.connection_pool.connection_kwargs.get("db") or 0)
        head = f"__keyspace@{db}__:".encode()
        patterns = [head + glob_escape(p).encode() + b"*" for p in self.prefixes]
        self._channel_head = head
        loop = asyncio.get_running_loop()
        self._subscribed = loop.create_future()
        self._pending_subscriptions = len(patterns) + 2
        transport.write(
            b"".join(setup)
            + pack(b"PSUBSCRIBE", *patterns)
            + pack(b"SUBSCRIBE", self._marker_channel, HELLO_CHANNEL)
        )
        try:
            await asyncio.wait_for(asyncio.shield(self._subscribed), SYNC_TIMEOUT_SECONDS)
        except (asyncio.TimeoutError, rexc.RedisError) as exc:
            self.problem = self.problem or f"subscribing to keyspace notifications failed: {exc}"
            await self.stop()
            return self
        if self.problem is None:
            # another run may have put the setting back between our read and our
            # subscription; subscribed now, we are seen by any run that stops later
            try:
                current = await self._flags()
                wanted = _flags_with(current, _WANTED_FLAGS)
                if wanted != current:
                    await self.client.config_set("notify-keyspace-events", wanted)
                await self._allow_quiet(wanted)
            except rexc.RedisError as exc:
                self.problem = f"keyspace notifications could not be enabled: {exc}"
        if self.problem is None:
            self.complete = True
        else:
            await self.stop()
        return self

    async def _allow_quiet(self, flags: str) -> None:
        """Allow quiet transactions when nobody else can be relying on hash events: the
        user had them off before any run turned them on, and no other capture is live
        (one starting later says hello, and quiet ends)."""
        await execute(self.client, "PUBLISH", HELLO_CHANNEL, self._marker_channel)
        if "h" in self._user_flags or "A" in self._user_flags or "A" in flags:
            return
        live = await execute(self.client, "PUBSUB", "CHANNELS", MARKER_PREFIX + b"*")
        if any(channel != self._marker_channel for channel in live or []):
            return
        if self.quiet_problem is None:
            off = flags.replace("h", "")
            self.quiet = (
                pack(b"CONFIG", b"SET", b"notify-keyspace-events", off.encode()),
                pack(b"CONFIG", b"SET", b"notify-keyspace-events", flags.encode()),
            )

    @property
    def marker_channel(self) -> bytes:
        """The channel this capture's markers (and its hello) are published on."""
        return self._marker_channel

    def no_quiet(self, why: str) -> None:
        """Stop switching notifications off around the migrator's writes."""
        self.quiet = None
        self.quiet_problem = self.quiet_problem or why

    def lost(self, why: str) -> None:
        """Capture can no longer vouch for seeing every write (``why``)."""
        self._lost(why)

    async def _flags(self) -> str:
        config = await self.client.config_get("notify-keyspace-events")
        return _text(next(iter(config.values()), b"")) if config else ""

    async def stop(self) -> None:
        """Unsubscribe and put the notification setting back as it was."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            await asyncio.sleep(0)
        self.complete = False
        self.quiet = None
        await self._restore()

    async def _restore(self) -> None:
        """Put the user's setting back, unless another run's capture is still live."""
        if self._restore_flags is None:
            return
        self._restore_flags = None
        with contextlib.suppress(rexc.RedisError, OSError):
            live = await execute(self.client, "PUBSUB", "CHANNELS", MARKER_PREFIX + b"*")
            if any(channel != self._marker_channel for channel in live or []):
                return  # the last capture to stop puts it back
            original = await self.client.get(self._original_key)
            if original is not None:
                await self.client.config_set("notify-keyspace-events", _text(original))
                await self.client.delete(self._original_key)

    async def __aenter__(self) -> ChangeCapture:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ---- what the migrator tells it

    def expect(self, events: Iterable[tuple[bytes, int]]) -> None:
        """The migrator is about to cause ``count`` events on each ``key``."""
        expected = self._expected
        for key, count in events:
            expected[key] = expected.get(key, 0) + count

    def unexpect(self, events: Iterable[tuple[bytes, int]]) -> None:
        """Those writes did not happen after all (a transaction was aborted)."""
        expected = self._expected
        for key, count in events:
            left = expected.get(key, 0) - count
            if left > 0:
                expected[key] = left
            else:
                expected.pop(key, None)

    def suspect(self, keys: Iterable[bytes]) -> None:
        """Treat ``keys`` as written by the application (one of them was, which one
        cannot be told)."""
        for key in keys:
            self._foreign.add(key)
            self._ever.add(key)

    def written_by_application(self, key: bytes) -> bool:
        """The application wrote ``key`` at some point of the run."""
        return key in self._ever

    def deleted(self, key: bytes) -> bool:
        return key in self._deleted

    @property
    def pending(self) -> int:
        """Keys the application wrote that no drain has handed out yet."""
        return len(self._foreign)

    async def sync(self) -> None:
        """Return once every event that happened before this call has been read."""
        if not self.complete:
            return
        token = b"%d" % next(self._markers)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._marker_waiters[token] = future
        try:
            await execute(self.client, "PUBLISH", self._marker_channel, token)
            await asyncio.wait_for(asyncio.shield(future), SYNC_TIMEOUT_SECONDS)
            if not self.complete:
                return
        except (asyncio.TimeoutError, rexc.RedisError) as exc:
            self._lost(f"notifications stopped arriving: {exc or 'timed out'}")
        finally:
            self._marker_waiters.pop(token, None)

    def marker(self) -> tuple[bytes, bytes, asyncio.Future[None]]:
        """A marker for the caller to PUBLISH on its own connection: ``(channel, token,
        arrival)``; wait for it with ``arrived``."""
        token = b"%d" % next(self._markers)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._marker_waiters[token] = future
        return self._marker_channel, token, future

    async def arrived(self, token: bytes, arrival: asyncio.Future[None]) -> bool:
        """True once the marker came back; False when capture broke meanwhile."""
        try:
            if not arrival.done():  # most often it is back already: no timer needed
                await asyncio.wait_for(asyncio.shield(arrival), SYNC_TIMEOUT_SECONDS)
            return self.complete
        except (asyncio.TimeoutError, rexc.RedisError) as exc:
            self._lost(f"notifications stopped arriving: {exc or 'timed out'}")
            return False
        finally:
            self._marker_waiters.pop(token, None)

    def drain(self) -> set[bytes]:
        """The keys the application wrote since the last drain (taken out)."""
        found, self._foreign = self._foreign, set()
        return found

    # ---- the subscriber's side

    def _message(self, message: list[Any]) -> None:
        kind = message[0]
        if kind == b"message" and len(message) == 3 and message[1] == HELLO_CHANNEL:
            if message[2] != self._marker_channel and message[2] not in self.siblings:
                self.no_quiet("another migration's change capture started")
        elif kind == b"message" and len(message) == 3:
            waiter = self._marker_waiters.get(message[2])
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif kind in (b"psubscribe", b"subscribe"):
            self._pending_subscriptions -= 1
            subscribed = self._subscribed
            if self._pending_subscriptions <= 0 and subscribed and not subscribed.done():
                subscribed.set_result(None)

    def _event(self, key: bytes, event: bytes) -> None:
        """An event nobody expected: the application's."""
        self.foreign_events += 1
        self._foreign.add(key)
        if event in (b"del", b"expired", b"evicted", b"rename_from"):
            self._deleted.add(key)
        else:
            self._deleted.discard(key)
        self._ever.add(key)

    def _lost(self, why: str) -> None:
        if self.problem is None:
            self.problem = why
        self.complete = False
        self.quiet = None
        # waiters are woken, not failed: they look at ``complete`` (nobody may be waiting)
        if self._subscribed is not None and not self._subscribed.done():
            self._subscribed.set_result(None)
        for waiter in self._marker_waiters.values():
            if not waiter.done():
                waiter.set_result(None)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ClusterCapture(ChangeCapture):
    """Change capture on every primary of a cluster (keyspace notifications are per
    node): a :class:`ChangeCapture` each, with its own subscription and markers, and
    the user's setting kept under a key that primary serves. What the migrator says
    of a key (``expect``, ``suspect``) and asks of it (``written_by_application``) goes
    to the capture of the primary serving it; ``complete`` while every one is.

    A ChangeCapture to the steps that take one; guarded writes on a cluster take each
    primary's (``node``), as markers and quiet transactions belong to one node.
    """

    def __init__(
        self,
        clients: Mapping[str, aioredis.Redis],
        topology: ClusterTopology,
        prefixes: Sequence[str],
    ) -> None:
        self.nodes: dict[str, ChangeCapture] = {}
        super().__init__(next(iter(clients.values())), prefixes)
        self.topology = topology
        self._owners = owner_table(topology)
        self.nodes = {
            node_id: ChangeCapture(
                client, prefixes, original_key=key_served_by(topology, node_id, ORIGINAL_KEY)
            )
            for node_id, client in clients.items()
        }
        channels = frozenset(capture.marker_channel for capture in self.nodes.values())
        for capture in self.nodes.values():
            capture.siblings = channels

    # the base class sets these as attributes; here they are every primary's
    @property
    def complete(self) -> bool:
        return bool(self.nodes) and all(c.complete for c in self.nodes.values())

    @complete.setter
    def complete(self, value: bool) -> None:
        if not value:
            for capture in self.nodes.values():
                capture.complete = False

    @property
    def problem(self) -> str | None:
        for node_id, capture in self.nodes.items():
            if capture.problem is not None:
                return f"on primary {self.topology.label(node_id)}: {capture.problem}"
        return None

    @problem.setter
    def problem(self, value: str | None) -> None:
        pass  # each primary's capture keeps its own

    @property
    def foreign_events(self) -> int:
        return sum(c.foreign_events for c in self.nodes.values())

    @foreign_events.setter
    def foreign_events(self, value: int) -> None:
        pass  # counted by each primary's capture

    @property
    def pending(self) -> int:
        return sum(c.pending for c in self.nodes.values())

    def node(self, node_id: str) -> ChangeCapture:
        """The capture of primary ``node_id``."""
        return self.nodes[node_id]

    def of(self, key: bytes) -> ChangeCapture:
        """The capture of the primary serving ``key``."""
        owner = self._owners[key_slot(key)]
        if owner is None:
            raise RedisMigrateError(f"slot {key_slot(key)} is served by no node of the cluster")
        return self.nodes[owner]

    async def start(self) -> ClusterCapture:
        """Start every primary's capture (at once); incomplete if any one is."""
        await asyncio.gather(*(c.start() for c in self.nodes.values()))
        return self

    async def stop(self) -> None:
        """Stop every primary's capture (each one, whatever another raises)."""
        results = await asyncio.gather(
            *(c.stop() for c in self.nodes.values()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def expect(self, events: Iterable[tuple[bytes, int]]) -> None:
        for key, count in events:
            self.of(key).expect(((key, count),))

    def unexpect(self, events: Iterable[tuple[bytes, int]]) -> None:
        for key, count in events:
            self.of(key).unexpect(((key, count),))

    def suspect(self, keys: Iterable[bytes]) -> None:
        for key in keys:
            self.of(key).suspect((key,))

    def written_by_application(self, key: bytes) -> bool:
        return self.of(key).written_by_application(key)

    def deleted(self, key: bytes) -> bool:
        return self.of(key).deleted(key)

    async def sync(self) -> None:
        await asyncio.gather(*(c.sync() for c in self.nodes.values()))

    def drain(self) -> set[bytes]:
        found: set[bytes] = set()
        for capture in self.nodes.values():
            found |= capture.drain()
        return found

    def marker(self) -> tuple[bytes, bytes, asyncio.Future[None]]:
        raise RedisMigrateError("markers are per primary: use ClusterCapture.node(id).marker()")

    def no_quiet(self, why: str) -> None:
        for capture in self.nodes.values():
            capture.no_quiet(why)

    def lost(self, why: str) -> None:
        for capture in self.nodes.values():
            capture.lost(why)
