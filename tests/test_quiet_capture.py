"""Quiet transactions: the migrator's own writes switch hash notifications off inside
their MULTI/EXEC, so the server publishes nothing for them, while every write of the
application is still seen, and the switch is only made when nobody else relies on
hash events."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis
import redis.asyncio as aioredis
from redis.commands.search.query import Query

from redismigrate.aio import guarded
from redismigrate.aio.capture import ChangeCapture
from redismigrate.aio.fastwire import Wire

COUNT = 200


def flags(client: redis.Redis) -> set[str]:
    return set(str(client.config_get("notify-keyspace-events")["notify-keyspace-events"]))


@contextmanager
def listening(client: redis.Redis, prefix: str) -> Iterator[list[tuple[bytes, bytes]]]:
    """(key, event) of every keyspace notification under ``prefix`` while inside."""
    heard: list[tuple[bytes, bytes]] = []
    pubsub = client.pubsub()
    head = b"__keyspace@0__:"
    pubsub.psubscribe(head + prefix.encode() + b"*")
    while pubsub.get_message(timeout=1) is None:
        pass  # the subscription's confirmation
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.05)
            if message and message["type"] == "pmessage":
                heard.append((message["channel"][len(head) :], message["data"]))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        yield heard
        time.sleep(0.3)  # what was published has arrived
    finally:
        stop.set()
        reader.join()
        pubsub.close()


def seed(client: redis.Redis, prefix: str) -> list[bytes]:
    keys = [f"{prefix}{i}".encode() for i in range(COUNT)]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hset(key, mapping={"v": b"old", "t": b"x"})
    pipe.execute()
    return keys


async def test_quiet_writes_publish_nothing_and_the_applications_are_still_seen(
    aclient: aioredis.Redis, sync_client: redis.Redis, ns: str
) -> None:
    prefix = f"{ns}:q:"
    keys = seed(sync_client, prefix)
    sync_client.execute_command(
        "FT.CREATE", f"{ns}_q", "ON", "HASH", "PREFIX", "1", prefix, "SCHEMA", "v", "TAG"
    )
    user_setting = flags(sync_client)
    capture = await ChangeCapture(aclient, [prefix]).start()
    wire = Wire(aclient)
    try:
        assert capture.complete and capture.quiet is not None, capture.problem
        during = flags(sync_client)
        assert "h" in during
        with listening(sync_client, prefix) as heard:
            sync_client.hset(keys[5], "v", b"app")  # the application's write
            await capture.sync()
            outcome = await guarded.reencode(
                wire,
                keys,
                [b"v"],
                [[b"old"] * COUNT],
                [[b"new"] * COUNT],
                touch=False,
                capture=capture,
                unwritten=lambda key: not capture.written_by_application(key),
            )
            sync_client.hset(keys[7], "v", b"later")  # and one after the migrator's
            await capture.sync()
        assert outcome.written == COUNT - 1 and outcome.skipped == [keys[5]]
        # the migrator's 199 writes published nothing; both application writes did
        assert heard == [(keys[5], b"hset"), (keys[7], b"hset")]
        assert capture.drain() == {keys[5], keys[7]}
        assert capture.foreign_events == 2
        assert flags(sync_client) == during  # switched back on inside each transaction
        assert sync_client.hget(keys[5], "v") == b"app"
        assert sync_client.hget(keys[7], "v") == b"later"
        # the search module saw every write regardless of the setting
        found = sync_client.ft(f"{ns}_q").search(Query("@v:{new}").paging(0, 0))
        assert found.total == COUNT - 2
    finally:
        await wire.close()
        await capture.stop()
    assert flags(sync_client) == user_setting


async def test_no_quiet_where_the_user_has_hash_events_on(
    aclient: aioredis.Redis, sync_client: redis.Redis, ns: str
) -> None:
    prefix = f"{ns}:u:"
    keys = seed(sync_client, prefix)
    user_setting = sync_client.config_get("notify-keyspace-events")["notify-keyspace-events"]
    sync_client.config_set("notify-keyspace-events", "Kh")
    try:
        capture = await ChangeCapture(aclient, [prefix]).start()
        wire = Wire(aclient)
        try:
            assert capture.complete and capture.quiet is None
            with listening(sync_client, prefix) as heard:
                outcome = await guarded.reencode(
                    wire,
                    keys,
                    [b"v"],
                    [[b"old"] * COUNT],
                    [[b"new"] * COUNT],
                    touch=False,
                    capture=capture,
                )
                await capture.sync()
            assert outcome.written == COUNT
            # the user's own listeners keep hearing every write, the migrator's too
            assert sorted(heard) == sorted((key, b"hset") for key in keys)
            assert capture.drain() == set() and capture.foreign_events == 0
        finally:
            await wire.close()
            await capture.stop()
        assert flags(sync_client) == set("Kh")
    finally:
        sync_client.config_set("notify-keyspace-events", user_setting)


async def test_a_second_capture_ends_the_firsts_quiet(
    aclient: aioredis.Redis, sync_client: redis.Redis, ns: str
) -> None:
    first = await ChangeCapture(aclient, [f"{ns}:a:"]).start()
    try:
        assert first.quiet is not None
        second = await ChangeCapture(aclient, [f"{ns}:b:"]).start()
        try:
            await first.sync()  # the hello was published before this marker
            assert first.quiet is None and "another migration" in str(first.quiet_problem)
            assert second.quiet is None  # it found the first one live
            assert first.complete and second.complete
        finally:
            await second.stop()
    finally:
        await first.stop()


async def test_a_refused_switch_falls_back_to_announced_writes(
    aclient: aioredis.Redis, sync_client: redis.Redis, redis_url: str, ns: str
) -> None:
    prefix = f"{ns}:r:"
    keys = seed(sync_client, prefix)
    user = f"{ns}_noconfig"
    sync_client.acl_setuser(
        user,
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-config"],
    )
    capture = await ChangeCapture(aclient, [prefix]).start()
    limited = aioredis.Redis.from_url(redis_url, username=user, password="pw")
    wire = Wire(limited)
    try:
        assert capture.quiet is not None
        with listening(sync_client, prefix) as heard:
            outcome = await guarded.reencode(
                wire,
                keys,
                [b"v"],
                [[b"old"] * COUNT],
                [[b"new"] * COUNT],
                touch=False,
                capture=capture,
            )
            await capture.sync()
        assert outcome.written == COUNT and not outcome.skipped
        assert capture.quiet is None and "refused" in str(capture.quiet_problem)
        assert capture.complete  # the writes were announced instead: still exact
        assert capture.drain() == set() and capture.foreign_events == 0
        assert len(heard) == COUNT
        assert all(sync_client.hget(key, "v") == b"new" for key in keys)
    finally:
        await wire.close()
        await limited.aclose()
        await capture.stop()
        sync_client.acl_deluser(user)
    await asyncio.sleep(0)
