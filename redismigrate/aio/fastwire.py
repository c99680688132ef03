"""A bare RESP connection for the hot path: commands packed by hand, replies parsed by hiredis.

Moving every vector twice (read for the backup, write re-encoded) is most of a
migration's work, and a general client spends more time per command than the server
does. This connection does one thing: send a batch of commands as one buffer and read
that many replies. Everything else goes through redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
import redis.exceptions as rexc

READ_CHUNK = 1 << 20
# hiredis moves its unread buffer down after each reply: fed a large chunk, it copies
# that chunk again for every reply in it. Small slices keep those copies small.
FEED_SLICE = 16 << 10
TOUCH_FIELD = b"__redismigrate_touch__"


def pack(*parts: bytes) -> bytes:
    """One command as RESP (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n" % len(part))
        out.append(part)
        out.append(b"\r\n")
    return b"".join(out)


class RawConnection:
    """One RESP2 connection used only for pipelined batches of simple commands."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._parser = hiredis.Reader()

    @classmethod
    async def like(cls, client: aioredis.Redis) -> RawConnection | None:
        """A raw connection to the server ``client`` talks to, or None where that cannot
        be reproduced simply (then callers use ``client`` itself)."""
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        kind = pool.connection_class.__name__
        try:
            if kind == "UnixDomainSocketConnection":
                reader, writer = await asyncio.open_unix_connection(kwargs["path"])
            elif kind in ("Connection", "SSLConnection"):
                context = None
                if kind == "SSLConnection":
                    context = ssl.create_default_context(cafile=kwargs.get("ssl_ca_certs"))
                    if kwargs.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
                        context.check_hostname = False
                        context.verify_mode = ssl.CERT_NONE
                    if kwargs.get("ssl_certfile"):
                        context.load_cert_chain(kwargs["ssl_certfile"], kwargs.get("ssl_keyfile"))
                reader, writer = await asyncio.open_connection(
                    kwargs.get("host", "localhost"), int(kwargs.get("port", 6379)), ssl=context
                )
            else:
                return None
        except OSError:
            return None
        connection = cls(reader, writer)
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
        if setup:
            try:
                await connection.call(b"".join(setup), len(setup))
            except rexc.ResponseError:
                await connection.close()
                return None
        return connection

    async def call(self, commands: bytes, count: int) -> list[Any]:
        """Send ``commands`` (``count`` packed commands) and return their ``count`` replies.

        A command the server refuses raises ResponseError after all replies are read.
        """
        self._writer.write(commands)
        await self._writer.drain()
        replies: list[Any] = []
        parser = self._parser
        data, offset = b"", 0
        while len(replies) < count:
            reply = parser.gets()
            if reply is False:
                if offset >= len(data):
                    data, offset = await self._reader.read(READ_CHUNK), 0
                    if not data:
                        raise rexc.ConnectionError("the server closed the connection")
                size = min(FEED_SLICE, len(data) - offset)
                parser.feed(data, offset, size)
                offset += size
                continue
            replies.append(reply)
        if offset < len(data):  # not expected (no reply is unasked for), but never lose bytes
            parser.feed(data, offset, len(data) - offset)
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise rexc.ResponseError(str(reply))
        return replies

    async def hmget_many(self, keys: Sequence[bytes], fields: Sequence[bytes]) -> list[Any]:
        """``[[value, ...], ...]``: each key's values of ``fields`` (None where missing)."""
        if len(fields) == 1:
            # HGET: a bulk reply per key is cheaper to parse than an array
            head = b"*3\r\n$4\r\nHGET\r\n"
            tail = pack(fields[0])[4:]  # "$n\r\nfield\r\n" without the array header
            commands = b"".join(b"%s$%d\r\n%s\r\n%s" % (head, len(key), key, tail) for key in keys)
            return [[value] for value in await self.call(commands, len(keys))]
        commands = b"".join(pack(b"HMGET", key, *fields) for key in keys)
        return await self.call(commands, len(keys))

    async def hset_many(self, items: Sequence[tuple[bytes, bytes, bytes]]) -> list[Any]:
        head = b"*4\r\n$4\r\nHSET\r\n"
        commands = b"".join(
            b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
            % (head, len(key), key, len(field), field, len(value), value)
            for key, field, value in items
        )
        return await self.call(commands, len(items))

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


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

    async def hmget_many(self, keys: Sequence[bytes], fields: Sequence[bytes]) -> list[Any]:
        connection = await self._acquire()
        if connection is None:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, list(fields))
            return list(await pipe.execute())
        try:
            rows = await connection.hmget_many(keys, fields)
        except BaseException:
            await connection.close()
            raise
        self._idle.append(connection)
        return rows

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

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().close()
