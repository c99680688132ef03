"""A bare RESP connection for the hot path: commands packed by hand, replies parsed by hiredis.

Moving every vector twice (read for the backup, write re-encoded) is most of a
migration's work, and a general client spends more time per command than the server
does. This connection does one thing: send a batch of commands as one buffer and read
that many replies. Everything else goes through redis-py.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import hiredis
import numpy as np
import redis.asyncio as aioredis
import redis.exceptions as rexc

# hiredis moves its unread buffer down after each reply: fed a large chunk, it copies
# that chunk again for every reply in it. Small slices keep those copies small.
FEED_SLICE = 16 << 10
RECEIVE_MIN_FREE = 256 << 10
_CRLF = np.frombuffer(b"\r\n", np.uint8)
TOUCH_FIELD = b"__redismigrate_touch__"


def pack(*parts: bytes) -> bytes:
    """One command as RESP (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n" % len(part))
        out.append(part)
        out.append(b"\r\n")
    return b"".join(out)


class _Replies(asyncio.BufferedProtocol):
    """Receives a connection's bytes into a buffer it owns and wakes the caller once
    the replies it waits for are in.

    Two ways to read a batch: ``expect(count)`` parses ``count`` replies of any kind
    with hiredis; ``expect(count, size)`` waits for ``count`` bulk strings of exactly
    ``size`` bytes (vectors of one field), checks each reply's frame where it must be
    and hands the values out as views of the buffer, with no parser and no copy. The first reply
    that is anything else (a missing field, another size, an error) turns the batch
    over to hiredis from its first byte, so no reply is ever misread.
    """

    def __init__(self) -> None:
        self._parser = hiredis.Reader()
        self._buffer = bytearray(RECEIVE_MIN_FREE)
        self._filled = 0
        self._fed = 0  # bytes of the buffer handed to hiredis
        self._waiter: asyncio.Future[list[Any]] | None = None
        self._replies: list[Any] = []
        self._count = 0
        self._size = -1  # value size of an expect(count, size) batch; -1: parse with hiredis
        self._header = b""
        self._checked = 0  # replies of such a batch whose frame is checked
        self._lost: BaseException | None = None
        self.transport: asyncio.Transport | None = None

    # ---- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self._buffer) - self._filled < RECEIVE_MIN_FREE:
            grown = bytearray(max(2 * len(self._buffer), self._filled + RECEIVE_MIN_FREE))
            grown[: self._filled] = memoryview(self._buffer)[: self._filled]
            self._buffer = grown
        return memoryview(self._buffer)[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        if self._waiter is not None and not self._waiter.done():
            try:
                self._advance()
            except Exception as exc:  # a protocol error: the caller sees it, not the loop
                self._waiter.set_exception(exc)

    def eof_received(self) -> bool:
        self._fail(rexc.ConnectionError("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(rexc.ConnectionError(f"connection lost: {exc or 'closed by the server'}"))

    # ---- the caller's side

    def expect(self, count: int, size: int = -1) -> asyncio.Future[list[Any]]:
        if self._lost is not None:
            raise self._lost
        self._waiter = asyncio.get_running_loop().create_future()
        self._replies, self._count, self._checked = [], count, 0
        self._size = -1
        if self._filled == self._fed:  # nothing unread: this batch starts the buffer
            self._filled = self._fed = 0
            self._size = size
        if self._size >= 0:
            self._header = b"$%d\r\n" % size
            needed = count * (len(self._header) + size + 2)
            if len(self._buffer) < needed + RECEIVE_MIN_FREE:
                self._buffer = bytearray(needed + RECEIVE_MIN_FREE)
        if count == 0:
            self._waiter.set_result([])
        elif self._filled > self._fed:
            self._advance()
        return self._waiter

    # ---- parsing

    def _fail(self, exc: BaseException) -> None:
        self._lost = exc
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def _advance(self) -> None:
        assert self._waiter is not None
        if self._size >= 0 and not self._advance_values():
            return
        if self._size < 0:
            self._advance_parser()

    def _advance_values(self) -> bool:
        """Check the frames of the replies in so far; True: hand over to hiredis."""
        buffer, header, size, count = self._buffer, self._header, self._size, self._count
        head = len(header)
        stride = head + size + 2
        filled = self._filled
        complete = min(count, filled // stride)
        if complete > self._checked:
            rows = np.frombuffer(buffer, np.uint8, complete * stride).reshape(complete, stride)
            rows = rows[self._checked :]
            framed = (rows[:, :head] == np.frombuffer(header, np.uint8)).all() and (
                rows[:, -2:] == _CRLF
            ).all()
            del rows  # the buffer must not stay exported
            if not framed:
                self._size = -1  # not all values of the expected size: let hiredis parse all
                return True
            self._checked = complete
        if complete < count:
            # the next reply's first bytes already tell a missing field or an error,
            # which may never be followed by a whole value's worth of bytes
            position = complete * stride
            have = min(head, filled - position)
            if have > 0 and buffer[position : position + have] != header[:have]:
                self._size = -1
                return True
            return False
        end = count * stride
        # The values are views of this batch's buffer, which is handed over with them
        # (the next batch gets a fresh one): no copy of the vector bytes is made here.
        view = memoryview(buffer).toreadonly()
        values = [view[p + head : p + head + size] for p in range(0, end, stride)]
        if end < filled:  # not expected (no reply is unasked for), but never lose bytes
            self._parser.feed(bytes(buffer[end:filled]))
        self._buffer = bytearray(RECEIVE_MIN_FREE)
        self._filled = self._fed = 0
        self._finish(values)
        return False

    def _advance_parser(self) -> None:
        parser, replies = self._parser, self._replies
        while True:
            while len(replies) < self._count:
                reply = parser.gets()
                if reply is False:
                    break
                replies.append(reply)
            if len(replies) >= self._count or self._fed >= self._filled:
                break
            size = min(FEED_SLICE, self._filled - self._fed)
            parser.feed(self._buffer, self._fed, size)  # type: ignore[arg-type]  # any buffer
            self._fed += size
        self._consume()
        if len(replies) >= self._count:
            self._finish(replies)

    def _consume(self) -> None:
        if self._fed >= self._filled:
            self._filled = self._fed = 0
        elif self._size < 0:  # hand the rest to hiredis now: the buffer is about to be reused
            parser = self._parser
            while self._fed < self._filled:
                size = min(FEED_SLICE, self._filled - self._fed)
                parser.feed(self._buffer, self._fed, size)  # type: ignore[arg-type]  # any buffer
                self._fed += size
            self._filled = self._fed = 0

    def _finish(self, replies: list[Any]) -> None:
        assert self._waiter is not None
        self._waiter.set_result(replies)


P = TypeVar("P", bound=asyncio.BaseProtocol)


async def open_like(
    client: aioredis.Redis, factory: Callable[[], P]
) -> tuple[asyncio.Transport, P, list[bytes]] | None:
    """A new connection to the server ``client`` talks to, with ``factory``'s protocol,
    and the AUTH / SELECT commands to send first; None where that cannot be reproduced."""
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kind = pool.connection_class.__name__
    loop = asyncio.get_running_loop()
    try:
        if kind == "UnixDomainSocketConnection":
            transport, protocol = await loop.create_unix_connection(factory, kwargs["path"])
        elif kind in ("Connection", "SSLConnection"):
            context = None
            if kind == "SSLConnection":
                context = ssl.create_default_context(cafile=kwargs.get("ssl_ca_certs"))
                if kwargs.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                if kwargs.get("ssl_certfile"):
                    context.load_cert_chain(kwargs["ssl_certfile"], kwargs.get("ssl_keyfile"))
            transport, protocol = await loop.create_connection(
                factory,
                kwargs.get("host", "localhost"),
                int(kwargs.get("port", 6379)),
                ssl=context,
            )
        else:
            return None
    except OSError:
        return None
    assert isinstance(transport, asyncio.Transport)
    setup: list[bytes] = []
    password = kwargs.get("password")
    if password:
        username = kwargs.get("username")
        if username:
            setup.append(pack(b"AUTH", username.encode(), password.encode()))
        else:
            setup.append(pack(b"AUTH", password.encode()))
    db = int(kwargs.get("db") or 0)
    if db:
        setup.append(pack(b"SELECT", str(db).encode()))
    return transport, protocol, setup


class RawConnection:
    """One RESP2 connection used only for pipelined batches of simple commands."""

    def __init__(self, transport: asyncio.Transport, protocol: _Replies) -> None:
        self._transport = transport
        self._protocol = protocol

    @classmethod
    async def like(cls, client: aioredis.Redis) -> RawConnection | None:
        """A raw connection to the server ``client`` talks to, or None where that cannot
        be reproduced simply (then callers use ``client`` itself)."""
        opened = await open_like(client, _Replies)
        if opened is None:
            return None
        transport, protocol, setup = opened
        connection = cls(transport, protocol)
        if setup:
            try:
                await connection.call(b"".join(setup), len(setup))
            except rexc.ResponseError:
                await connection.close()
                return None
        return connection

    async def call(
        self, commands: bytes, count: int, value_size: int = -1, *, raise_errors: bool = True
    ) -> list[Any]:
        """Send ``commands`` (``count`` packed commands) and return their ``count`` replies.

        With ``value_size``, replies are expected to be bulk strings of that many bytes
        and read without a parser (any other reply still comes back right, parsed).
        A command the server refuses raises ResponseError after all replies are read,
        unless ``raise_errors`` is False (then its reply is a ``hiredis.ReplyError``).
        """
        replies = self._protocol.expect(count, value_size)
        self._transport.write(commands)
        result = await replies
        if raise_errors:
            for reply in result:
                if isinstance(reply, hiredis.ReplyError):
                    raise rexc.ResponseError(str(reply))
        return result

    async def hget_values(
        self, keys: Sequence[bytes], field: bytes, value_size: int = -1
    ) -> list[Any]:
        """Each key's value of ``field`` (None where missing); ``value_size``: the size
        most values have (vectors of one type and dimension), read the fast way: then
        the values may come back as read-only views (memoryview) instead of bytes."""
        head = b"*3\r\n$4\r\nHGET\r\n"
        tail = pack(field)[4:]  # "$n\r\nfield\r\n" without the array header
        commands = b"".join([b"%s$%d\r\n%s\r\n%s" % (head, len(key), key, tail) for key in keys])
        return await self.call(commands, len(keys), value_size)

    async def hmget_many(self, keys: Sequence[bytes], fields: Sequence[bytes]) -> list[Any]:
        """``[[value, ...], ...]``: each key's values of ``fields`` (None where missing)."""
        commands = b"".join(pack(b"HMGET", key, *fields) for key in keys)
        return await self.call(commands, len(keys))

    async def hset_many(self, items: Sequence[tuple[bytes, bytes, bytes]]) -> list[Any]:
        head = b"*4\r\n$4\r\nHSET\r\n"
        commands = b"".join(
            [
                b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                % (head, len(key), key, len(field), field, len(value), value)
                for key, field, value in items
            ]
        )
        return await self.call(commands, len(items))

    async def close(self) -> None:
        self._transport.close()
        await asyncio.sleep(0)  # let the loop run connection_lost


class Wire:
    """Bulk reads and writes over raw connections (one per concurrent caller), falling
    back to redis-py pipelines where a raw connection cannot be made (or on a cluster)."""

    def __init__(self, client: aioredis.Redis, *, enabled: bool = True) -> None:
        self.client = client
        self.enabled = enabled
        self._idle: list[RawConnection] = []

    async def _acquire(self) -> RawConnection | None:
        if not self.enabled:
            return None
        if self._idle:
            return self._idle.pop()
        connection = await RawConnection.like(self.client)
        if connection is None:
            self.enabled = False
        return connection

    async def read_columns(
        self, keys: Sequence[bytes], fields: Sequence[bytes], value_size: int = -1
    ) -> list[list[Any]]:
        """One column per field: each key's value of it, None where missing.

        ``value_size`` is the size most values of a single field have (vectors): such
        replies are read without a parser.
        """
        connection = await self._acquire()
        if connection is None:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, list(fields))
            rows = list(await pipe.execute())
        else:
            try:
                if len(fields) == 1:  # HGET: a bulk reply per key, no array around it
                    column = await connection.hget_values(keys, fields[0], value_size)
                    self._idle.append(connection)
                    return [column]
                rows = await connection.hmget_many(keys, fields)
            except BaseException:
                await connection.close()
                raise
            self._idle.append(connection)
        return [[row[i] for row in rows] for i in range(len(fields))]

    async def hset_many(self, items: Sequence[tuple[bytes, bytes, bytes]]) -> None:
        if not items:
            return
        connection = await self._acquire()
        if connection is None:
            pipe = self.client.pipeline(transaction=False)
            for key, field, value in items:
                pipe.hset(key, field, value)
            await pipe.execute()
            return
        try:
            await connection.hset_many(items)
        except BaseException:
            await connection.close()
            raise
        self._idle.append(connection)

    async def touch_many(self, keys: Sequence[bytes]) -> None:
        """Make the server re-index ``keys`` without changing them: set and delete a
        scratch field (an index sees every write to a hash it covers)."""
        if not keys:
            return
        connection = await self._acquire()
        if connection is None:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hset(key, TOUCH_FIELD, b"1")
                pipe.hdel(key, TOUCH_FIELD)
            await pipe.execute()
            return
        commands = b"".join(
            pack(b"HSET", key, TOUCH_FIELD, b"1") + pack(b"HDEL", key, TOUCH_FIELD) for key in keys
        )
        try:
            await connection.call(commands, 2 * len(keys))
        except BaseException:
            await connection.close()
            raise
        self._idle.append(connection)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Caller]:
        """A connection of its own for a conversation (WATCH ... EXEC): raw where it can
        be, else one taken from ``client``'s pool."""
        raw = await self._acquire()
        if raw is not None:
            try:
                yield raw
            except BaseException:
                await raw.close()
                raise
            self._idle.append(raw)
            return
        pooled = await self.client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        caller = PooledConnection(pooled)
        try:
            yield caller
        except BaseException:
            await pooled.disconnect()
            raise
        finally:
            await self.client.connection_pool.release(pooled)

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().close()


class Caller(Protocol):
    async def call(
        self, commands: bytes, count: int, value_size: int = -1, *, raise_errors: bool = True
    ) -> list[Any]: ...


class PooledConnection:
    """``RawConnection.call`` over a connection of redis-py's pool."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def call(
        self, commands: bytes, count: int, value_size: int = -1, *, raise_errors: bool = True
    ) -> list[Any]:
        await self._connection.send_packed_command(commands)
        replies: list[Any] = []
        first_error: rexc.ResponseError | None = None
        for _ in range(count):
            try:
                replies.append(await self._connection.read_response())
            except rexc.ResponseError as exc:
                replies.append(hiredis.ReplyError(str(exc)))
                first_error = first_error or exc
        if raise_errors and first_error is not None:
            raise first_error
        return replies
