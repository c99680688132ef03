"""The online cut-over one command at a time (no MULTI/EXEC, as on a coordinator cluster):
queries never fail or see part of the documents, and a run killed between two commands
completes when called again. Against a real server (the embedded Redis Stack)."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from redismigrate.aio.online import CutOverSteps, cut_over_in_steps
from redismigrate.cutover import (
    ALIAS_THEN_DROP,
    DROP_THEN_ALIAS,
    alias_already_there,
    alias_name_taken,
    cut_over_window_sentence,
)
from redismigrate.errors import IndexNotFound, RedisMigrateError
from redismigrate.server import EmbeddedRedis

DOCS = 5000
PREFIX = "cut:"
MARKER = "marker:cutover"  # a plain string key outside the indexed prefix
ALSO = [["SET", MARKER, "done"]]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with EmbeddedRedis() as own:
        assert own.info is not None
        yield own.info.url


@pytest.fixture
def client(server: str) -> Iterator[redis.Redis]:
    """A RESP2 client on an emptied server holding DOCS hashes under PREFIX."""
    own = redis.Redis.from_url(server, protocol=2)
    own.flushall()
    for start in range(0, DOCS, 1000):
        pipe = own.pipeline(transaction=False)
        for i in range(start, min(start + 1000, DOCS)):
            pipe.hset(f"{PREFIX}{i}", mapping={"title": "item", "price": i, "brand": f"b{i % 7}"})
        pipe.execute()
    yield own
    own.close()


@pytest.fixture
async def aio(server: str) -> AsyncIterator[aioredis.Redis]:
    own = aioredis.Redis.from_url(server)
    yield own
    await own.aclose()


def create(client: redis.Redis, name: str, *fields: str) -> None:
    """An index over PREFIX with ``title`` TEXT and ``fields`` (raw FT.CREATE words);
    returns once it has indexed every document."""
    client.execute_command(
        "FT.CREATE", name, "ON", "HASH", "PREFIX", "1", PREFIX, "SCHEMA", "title", "TEXT", *fields
    )
    deadline = time.monotonic() + 30
    while True:
        info = client.ft(name).info()
        if str(info["indexing"]) == "0" and int(info["num_docs"]) == DOCS:
            return
        assert time.monotonic() < deadline, f"{name} did not finish indexing"
        time.sleep(0.02)


def behind(client: redis.Redis, name: str) -> str | None:
    """The index ``name`` resolves to (itself or an alias's target), None if neither."""
    try:
        value = client.ft(name).info()["index_name"]
    except redis.ResponseError:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def indexes(client: redis.Redis) -> list[str]:
    return sorted(n.decode() for n in client.execute_command("FT._LIST"))


def count(client: redis.Redis, name: str, query: str = "*") -> int:
    return int(client.execute_command("FT.SEARCH", name, query, "LIMIT", "0", "0")[0])


class Queries:
    """``FT.SEARCH <name> * LIMIT 0 0`` about every millisecond, rotating over ``names``,
    in a thread: counts errors and answers that are not the full DOCS."""

    def __init__(self, url: str, names: Sequence[str]) -> None:
        self.url, self.names = url, list(names)
        self.stop = threading.Event()
        self.queries = self.failed = self.partial = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Queries:
        self.thread.start()
        time.sleep(0.1)
        return self

    def __exit__(self, *exc: Any) -> None:
        time.sleep(0.1)  # queries go on against the new index too
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        own = redis.Redis.from_url(self.url, protocol=2)
        turn = 0
        while not self.stop.is_set():
            name = self.names[turn % len(self.names)]
            turn += 1
            self.queries += 1
            try:
                total = int(own.execute_command("FT.SEARCH", name, "*", "LIMIT", "0", "0")[0])
                if total != DOCS:
                    self.partial += 1
                    self.errors.append(f"{name}: {total} documents")
            except redis.RedisError as exc:
                self.failed += 1
                if len(self.errors) < 5:
                    self.errors.append(f"{name}: {exc}")
            time.sleep(0.001)
        own.close()

    def assert_clean(self) -> None:
        assert self.queries > 50, self.queries
        assert self.failed == 0 and self.partial == 0, (self.failed, self.partial, self.errors)


def assert_switched(
    client: redis.Redis, *, name: str, shadow: str, aliases: Sequence[str] = ()
) -> None:
    """The end state of a cut-over of ``name`` to ``shadow``: the name and the user
    aliases resolve to it, it is the only index left, the new schema answers through
    the name, and the ``also`` command ran."""
    assert behind(client, name) == shadow
    assert indexes(client) == [shadow]
    for alias in aliases:
        assert behind(client, alias) == shadow, alias
    assert count(client, name) == DOCS
    assert count(client, name, "@price:[0 99]") == 100  # the shadow's numeric field
    assert client.get(MARKER) == b"done"


def plain_with_shadow(client: redis.Redis) -> None:
    """``idx`` a plain index with the user aliases ua1 and ua2; ``idx__rm1`` a fully
    indexed shadow over the same keys with a numeric field added."""
    create(client, "idx")
    create(client, "idx__rm1", "price", "NUMERIC")
    client.execute_command("FT.ALIASADD", "ua1", "idx")
    client.execute_command("FT.ALIASADD", "ua2", "idx")
    assert count(client, "idx", "@price:[0 99]") == 0  # the old schema has no numeric field


def alias_with_shadow(client: redis.Redis) -> None:
    """``idx`` an alias of ``idx__rm1`` (an earlier online migration), with the user
    alias ua1; ``idx__rm2`` a fully indexed shadow with another schema."""
    create(client, "idx__rm1", "price", "NUMERIC")
    create(client, "idx__rm2", "price", "NUMERIC", "SORTABLE", "brand", "TAG")
    client.execute_command("FT.ALIASADD", "idx", "idx__rm1")
    client.execute_command("FT.ALIASADD", "ua1", "idx__rm1")


def test_this_server_lets_an_alias_take_the_name_of_an_existing_index(
    client: redis.Redis,
) -> None:
    """What the alias-first order relies on, checked on the server the tests run on."""
    plain_with_shadow(client)
    client.execute_command("FT.ALIASADD", "idx", "idx__rm1")  # accepted here (search 2.10)
    assert behind(client, "idx") == "idx"  # the index of that name still answers
    assert count(client, "idx") == DOCS
    with pytest.raises(redis.ResponseError) as again:
        client.execute_command("FT.ALIASADD", "idx", "idx__rm1")
    assert alias_already_there(str(again.value)) and alias_name_taken(str(again.value))
    client.execute_command("FT.DROPINDEX", "idx")  # drops the index, not the alias's target
    assert indexes(client) == ["idx__rm1"]
    assert behind(client, "idx") == "idx__rm1"
    assert count(client, "idx", "@price:[0 99]") == 100


async def test_a_plain_index_is_cut_over_with_no_failed_or_partial_query(
    server: str, client: redis.Redis, aio: aioredis.Redis
) -> None:
    plain_with_shadow(client)
    with Queries(server, ["idx", "ua1"]) as queries:
        done = await cut_over_in_steps(
            aio, name="idx", new_name="idx", shadow="idx__rm1", aliases=["ua1", "ua2"], also=ALSO
        )
    queries.assert_clean()
    assert done == CutOverSteps(
        dropped="idx", order=ALIAS_THEN_DROP, window_seconds=done.window_seconds
    )
    assert 0.0 < done.window_seconds < 5.0
    assert_switched(client, name="idx", shadow="idx__rm1", aliases=["ua1", "ua2"])
    sentence = cut_over_window_sentence(done.order, done.window_seconds)
    assert "window" in sentence and "old index" in sentence
    shown = (
        "under a millisecond"
        if done.window_seconds < 0.001
        else f"{done.window_seconds * 1000:,.1f} ms"
    )
    assert shown in sentence, sentence


async def test_a_name_that_is_an_alias_moves_to_the_next_shadow(
    server: str, client: redis.Redis, aio: aioredis.Redis
) -> None:
    alias_with_shadow(client)
    with Queries(server, ["idx", "ua1"]) as queries:
        done = await cut_over_in_steps(
            aio, name="idx", new_name="idx", shadow="idx__rm2", aliases=["ua1"], also=ALSO
        )
    queries.assert_clean()
    assert (done.dropped, done.order, done.resumed) == ("idx__rm1", ALIAS_THEN_DROP, False)
    assert 0.0 < done.window_seconds < 5.0
    assert_switched(client, name="idx", shadow="idx__rm2", aliases=["ua1"])
    assert count(client, "idx", "@brand:{b3}") == len(range(3, DOCS, 7))  # the new TAG field


async def test_a_run_killed_after_the_alias_add_completes_when_called_again(
    server: str, client: redis.Redis, aio: aioredis.Redis
) -> None:
    plain_with_shadow(client)
    # what the first run sent before it was killed: the user aliases, then the ALIASADD
    client.execute_command("FT.ALIASUPDATE", "ua1", "idx__rm1")
    client.execute_command("FT.ALIASUPDATE", "ua2", "idx__rm1")
    client.execute_command("FT.ALIASADD", "idx", "idx__rm1")
    assert behind(client, "idx") == "idx" and count(client, "idx") == DOCS  # still answers
    with Queries(server, ["idx", "ua2"]) as queries:
        done = await cut_over_in_steps(
            aio, name="idx", new_name="idx", shadow="idx__rm1", aliases=["ua1", "ua2"], also=ALSO
        )
    queries.assert_clean()
    assert (done.dropped, done.order, done.resumed) == ("idx", ALIAS_THEN_DROP, True)
    assert_switched(client, name="idx", shadow="idx__rm1", aliases=["ua1", "ua2"])


async def test_a_run_killed_after_the_drop_does_not_drop_the_shadow_on_a_rerun(
    client: redis.Redis, aio: aioredis.Redis
) -> None:
    plain_with_shadow(client)
    for command in (
        ("FT.ALIASUPDATE", "ua1", "idx__rm1"),
        ("FT.ALIASUPDATE", "ua2", "idx__rm1"),
        ("FT.ALIASADD", "idx", "idx__rm1"),
        ("FT.DROPINDEX", "idx"),  # killed before the ``also`` commands
    ):
        client.execute_command(*command)
    assert behind(client, "idx") == "idx__rm1"  # FT.DROPINDEX idx now would drop the shadow
    for _ in range(2):
        done = await cut_over_in_steps(
            aio, name="idx", new_name="idx", shadow="idx__rm1", aliases=["ua1", "ua2"], also=ALSO
        )
        assert done == CutOverSteps(
            dropped=None, order=ALIAS_THEN_DROP, window_seconds=0.0, resumed=True
        )
        assert_switched(client, name="idx", shadow="idx__rm1", aliases=["ua1", "ua2"])


async def test_an_alias_moved_before_the_kill_needs_previous_to_drop_the_old_index(
    client: redis.Redis, aio: aioredis.Redis
) -> None:
    alias_with_shadow(client)
    client.execute_command("FT.ALIASUPDATE", "ua1", "idx__rm2")
    client.execute_command("FT.ALIASUPDATE", "idx", "idx__rm2")  # killed before the drop
    args: dict[str, Any] = {"name": "idx", "new_name": "idx", "shadow": "idx__rm2"}
    blind = await cut_over_in_steps(aio, **args, aliases=["ua1"])
    assert (blind.dropped, blind.resumed) == (None, True)  # nothing says which index it was
    assert indexes(client) == ["idx__rm1", "idx__rm2"]
    done = await cut_over_in_steps(aio, **args, aliases=["ua1"], also=ALSO, previous="idx__rm1")
    assert (done.dropped, done.order, done.resumed) == ("idx__rm1", ALIAS_THEN_DROP, True)
    assert_switched(client, name="idx", shadow="idx__rm2", aliases=["ua1"])


async def test_drop_first_leaves_the_name_unresolvable_and_a_rerun_finishes_it(
    server: str, client: redis.Redis, aio: aioredis.Redis
) -> None:
    """The order a server that refuses an alias named like an index gets (search 8),
    forced here with alias_first=False; and its resume after a kill between the two."""
    plain_with_shadow(client)
    with Queries(server, ["ua1"]) as queries:  # the user alias moves before the drop
        done = await cut_over_in_steps(
            aio,
            name="idx",
            new_name="idx",
            shadow="idx__rm1",
            aliases=["ua1", "ua2"],
            also=ALSO,
            alias_first=False,
        )
    queries.assert_clean()
    assert (done.dropped, done.order, done.resumed) == ("idx", DROP_THEN_ALIAS, False)
    assert 0.0 < done.window_seconds < 5.0
    assert_switched(client, name="idx", shadow="idx__rm1", aliases=["ua1", "ua2"])
    sentence = cut_over_window_sentence(done.order, done.window_seconds)
    assert "window" in sentence and "resolved to no index" in sentence

    client.delete(MARKER)
    client.execute_command("FT.DROPINDEX", "idx__rm1")
    plain_with_shadow(client)
    client.execute_command("FT.ALIASUPDATE", "ua1", "idx__rm1")
    client.execute_command("FT.ALIASUPDATE", "ua2", "idx__rm1")
    client.execute_command("FT.DROPINDEX", "idx")  # killed before the ALIASADD
    assert behind(client, "idx") is None  # the window this order has
    resumed = await cut_over_in_steps(
        aio, name="idx", new_name="idx", shadow="idx__rm1", aliases=["ua1", "ua2"], also=ALSO
    )
    assert (resumed.dropped, resumed.order, resumed.resumed) == (None, DROP_THEN_ALIAS, True)
    assert_switched(client, name="idx", shadow="idx__rm1", aliases=["ua1", "ua2"])


async def test_a_cut_over_that_cannot_happen_sends_nothing(
    client: redis.Redis, aio: aioredis.Redis
) -> None:
    plain_with_shadow(client)
    with pytest.raises(IndexNotFound, match="idx__rm9"):
        await cut_over_in_steps(aio, name="idx", new_name="idx", shadow="idx__rm9", aliases=["ua1"])
    create(client, "other")
    with pytest.raises(RedisMigrateError, match="'idx' now serves index 'idx', not 'other'"):
        await cut_over_in_steps(
            aio, name="idx", new_name="idx", shadow="idx__rm1", aliases=["ua1"], previous="other"
        )
    assert indexes(client) == ["idx", "idx__rm1", "other"]
    assert behind(client, "idx") == "idx" and behind(client, "ua1") == "idx"


def test_alias_refusals_are_told_apart_from_other_errors() -> None:
    assert alias_name_taken("Alias already exists")
    assert alias_name_taken("Alias conflicts with an existing index name")  # search 8
    assert alias_name_taken("SEARCH_ALIAS_CONFLICT Alias conflicts with an existing index name")
    assert not alias_already_there("Alias conflicts with an existing index name")
    for other in (
        "Unknown index name (or name is an alias itself)",
        "NOPERM User u has no permissions to run the 'ft.aliasadd' command",
        "Cannot perform `FT.ALIASADD`: Cannot block",
        "MOVED 3999 127.0.0.1:7001",
    ):
        assert not alias_name_taken(other), other


def test_the_window_sentence_names_the_order_and_the_window() -> None:
    planned = cut_over_window_sentence(ALIAS_THEN_DROP, None)
    assert planned.startswith("The cut-over is not atomic") and "not measured yet" in planned
    assert "indexed by both" in planned and "shard" in planned
    measured = cut_over_window_sentence(ALIAS_THEN_DROP, 0.0123)
    assert "12.3 ms" in measured and measured.startswith("The cut-over was not atomic")
    assert "2.50 s" in cut_over_window_sentence(DROP_THEN_ALIAS, 2.5)
    assert "under a millisecond" in cut_over_window_sentence(DROP_THEN_ALIAS, 0.0002)
    for order in (ALIAS_THEN_DROP, DROP_THEN_ALIAS):
        for window in (None, 0.004):
            sentence = cut_over_window_sentence(order, window)
            assert "window" in sentence and sentence.count(". ") == 0 and sentence.endswith(".")
    assert "no index" in cut_over_window_sentence(DROP_THEN_ALIAS, None)
    assert "no index" not in cut_over_window_sentence(ALIAS_THEN_DROP, None)
    with pytest.raises(ValueError, match="unknown cut-over order"):
        cut_over_window_sentence("atomic", 0.1)
