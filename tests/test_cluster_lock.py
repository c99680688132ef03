"""redismigrate's own keys on a real 3-primary OSS cluster: each index lock and the ledger
live on the primary owning their slot, reached through ``ledger.cluster_route``.

tests/cluster.py starts the cluster once for this module (Redis Stack 7.4 binaries,
loopback). Each test picks index names whose lock keys land on primaries other than the
ledger's and each other's, so every key of a run is on a different primary; what is
stored where is read back with a plain client of each node (MOVED on any other).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis.exceptions as rexc

from redismigrate.aio.cluster import ClusterConnections, connect_cluster
from redismigrate.aio.ledger import cluster_route, read_events, read_history
from redismigrate.aio.lock import RunGuard
from redismigrate.cluster import key_slot, owner_table
from redismigrate.errors import MigrationLocked
from redismigrate.ledger import (
    DIRECTORY_LOCK_FILE,
    LEDGER_KEY,
    LedgerEvent,
    LockHolder,
    decode_event,
    lock_key,
)
from tests.cluster import Cluster, running_cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with running_cluster() as started:
        yield started


def names_apart(connections: ClusterConnections, count: int) -> list[str]:
    """``count`` index names whose lock keys land on different primaries, none on the
    ledger's."""
    owners = owner_table(connections.topology)
    taken = {owners[key_slot(LEDGER_KEY)]}
    prefix = f"t{uuid.uuid4().hex[:10]}"
    names: list[str] = []
    for n in itertools.count():
        name = f"{prefix}_{n}"
        owner = owners[key_slot(lock_key(name))]
        if owner not in taken:
            taken.add(owner)
            names.append(name)
            if len(names) == count:
                return names
    raise AssertionError("unreachable")  # pragma: no cover


def owner_index(cluster: Cluster, connections: ClusterConnections, key: str) -> int:
    """The tests' index of the node the topology says owns ``key`` (and it agrees)."""
    node_id = owner_table(connections.topology)[key_slot(key)]
    found = next(i for i, node in enumerate(cluster.nodes) if node.node_id == node_id)
    assert found == cluster.owner(key)
    return found


def assert_moved(exc: BaseException, key: str, address: str) -> None:
    """``exc`` is a MOVED reply sending ``key`` to ``address``."""
    assert isinstance(exc, rexc.MovedError)
    assert (exc.slot_id, f"{exc.host}:{exc.port}") == (key_slot(key), address)


def stored_on_owner_only(cluster: Cluster, connections: ClusterConnections, key: str) -> bytes:
    """The value of ``key`` on its owner; every other node answers MOVED to it."""
    owner = owner_index(cluster, connections, key)
    for i in range(len(cluster.nodes)):
        if i != owner:
            with pytest.raises(rexc.MovedError) as moved:
                cluster.client(i).get(key)
            assert_moved(moved.value, key, cluster.nodes[owner].address)
    value = cluster.client(owner).get(key)
    assert isinstance(value, bytes)
    return value


def ledger_on_owner(cluster: Cluster, connections: ClusterConnections) -> list[LedgerEvent]:
    """The ledger's events, read with a plain client of its owner."""
    owner = cluster.client(owner_index(cluster, connections, LEDGER_KEY))
    events = [decode_event(fields[b"event"]) for _, fields in owner.xrange(LEDGER_KEY)]
    return [e for e in events if e is not None]


def guard(
    connections: ClusterConnections, name: str, directory: Path, **options: object
) -> RunGuard:
    directory.mkdir(parents=True, exist_ok=True)
    return RunGuard(
        connections.client(connections.pinned),
        command="apply",
        index_name=name,
        backup_dir=directory,
        route=cluster_route(connections),
        **options,  # type: ignore[arg-type]
    )


async def test_each_lock_is_on_the_primary_owning_it_and_refuses_a_second_run(
    cluster: Cluster, tmp_path: Path
) -> None:
    async with connect_cluster(redis_url=cluster.nodes[0].url) as connections:
        source, target = names_apart(connections, 2)
        owners = {owner_index(cluster, connections, lock_key(n)) for n in (source, target)}
        assert len(owners) == 2
        refusals: list[MigrationLocked] = []

        async def second_run(name: str, directory: Path) -> None:
            try:
                async with guard(connections, name, directory):
                    pytest.fail("entered a held lock")
            except MigrationLocked as exc:
                refusals.append(exc)

        async with guard(connections, source, tmp_path / "one", target_index=target) as run:
            holders = [
                LockHolder.decode(stored_on_owner_only(cluster, connections, lock_key(name)))
                for name in (source, target)
            ]
            async with anyio.create_task_group() as group:
                # another task and another backup directory: only the lock refuses
                group.start_soon(second_run, target, tmp_path / "two")
        assert run.lost is None
        holder = holders[0]
        assert holder is not None and holders == [holder, holder]
        assert holder.pid == os.getpid()
        (started,) = [
            e
            for e in ledger_on_owner(cluster, connections)
            if e.index_name == source and e.event == "started"
        ]
        assert started.run_id == holder.run_id
        (refused,) = refusals
        assert f"index {target!r} is being migrated by {holder.describe()}" in str(refused)
        for name in (source, target):
            key = lock_key(name)
            assert cluster.client(owner_index(cluster, connections, key)).get(key) is None


async def test_the_ledger_is_on_the_primary_owning_it_and_read_through_the_route(
    cluster: Cluster, tmp_path: Path
) -> None:
    async with connect_cluster(redis_url=cluster.nodes[1].url) as connections:
        route = cluster_route(connections)
        (name,) = names_apart(connections, 1)
        async with guard(connections, name, tmp_path):
            holder = LockHolder.decode(stored_on_owner_only(cluster, connections, lock_key(name)))
            assert holder is not None
            (entry,) = await read_history(route, index_name=name)
            # the lock, read on its own primary, shows the run as alive
            assert (entry.status, entry.run_id, entry.finished_at) == (
                "running",
                holder.run_id,
                None,
            )
        mine = [e for e in ledger_on_owner(cluster, connections) if e.index_name == name]
        assert [(e.event, e.run_id, e.result) for e in mine] == [
            ("started", holder.run_id, None),
            ("finished", holder.run_id, "succeeded"),
        ]
        assert [e for e in await read_events(route) if e.index_name == name] == mine
        (entry,) = await read_history(route, index_name=name)
        assert (entry.command, entry.status, entry.run_id) == ("apply", "succeeded", holder.run_id)
        assert entry.backup_dir == str(tmp_path.resolve())
        # the ledger is on one primary only
        for node in connections.primaries:
            client = connections.client(node.node_id)
            if client is not route(LEDGER_KEY):
                with pytest.raises(rexc.MovedError):
                    await read_events(client)


async def test_renewal_keeps_each_lock_alive_on_its_owner(cluster: Cluster, tmp_path: Path) -> None:
    async with connect_cluster(redis_url=cluster.nodes[2].url) as connections:
        names = names_apart(connections, 2)
        async with guard(connections, names[0], tmp_path, target_index=names[1], ttl=0.6) as run:
            taken = [stored_on_owner_only(cluster, connections, lock_key(name)) for name in names]
            await anyio.sleep(2.0)  # more than three times the ttl
            for name, value in zip(names, taken, strict=True):
                key = lock_key(name)
                assert stored_on_owner_only(cluster, connections, key) == value
                assert 0 < cluster.client(owner_index(cluster, connections, key)).pttl(key) <= 600
        assert run.lost is None
        finished = [
            e
            for e in ledger_on_owner(cluster, connections)
            if e.index_name == names[0] and e.event == "finished"
        ]
        assert [(e.result, e.error) for e in finished] == [("succeeded", None)]


async def test_without_the_route_a_primary_not_owning_the_lock_answers_moved(
    cluster: Cluster, tmp_path: Path
) -> None:
    async with connect_cluster(redis_url=cluster.nodes[0].url) as connections:
        (name,) = names_apart(connections, 1)
        key = lock_key(name)
        owner = owner_index(cluster, connections, key)
        elsewhere = next(
            p.node_id for p in connections.primaries if p.node_id != cluster.nodes[owner].node_id
        )
        with pytest.raises(rexc.MovedError) as moved:
            async with RunGuard(
                connections.client(elsewhere),
                command="apply",
                index_name=name,
                backup_dir=tmp_path,
            ):
                pytest.fail("took a lock on a primary not owning it")
        assert_moved(moved.value, key, cluster.nodes[owner].address)
        assert cluster.client(owner).get(key) is None
        assert not (tmp_path / DIRECTORY_LOCK_FILE).read_bytes()  # released


# ---------------------------------------------------------------------------- CROSSSLOT


async def test_a_server_refusing_transactions_across_slots_takes_the_per_slot_path(
    cluster: Cluster, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy in front of several shards that says it is no cluster node answers
    CROSSSLOT to a transaction over two slots; so does an OSS cluster node for two keys it
    serves. ``refuses_cross_slot`` tells it (read only), and a single server does not."""
    import redis.asyncio as aioredis

    from redismigrate.aio.deployment import OneServer, primaries_of, refuses_cross_slot

    keys = [f"probe:{{{n}}}" for n in range(200) if cluster.owner(f"probe:{{{n}}}") == 0][:2]
    assert len(keys) == 2 and key_slot(keys[0]) != key_slot(keys[1])
    node = aioredis.Redis(host="127.0.0.1", port=cluster.nodes[0].port)
    single = aioredis.Redis.from_url(redis_url)
    try:
        assert await refuses_cross_slot(node, keys)
        assert not await refuses_cross_slot(single)
        # the WATCH left no state behind: a transaction on the same pool still commits
        pipe = node.pipeline(transaction=True)
        pipe.set(keys[0], "x")
        assert await pipe.execute() == [True]
        monkeypatch.delenv("REDISMIGRATE_PER_PRIMARY", raising=False)
        async with primaries_of(single) as found:
            assert found is None  # a single server keeps its own path
        async with primaries_of(node) as found:
            assert found is not None and not isinstance(found, OneServer)
            assert len(found.primaries) == 3
    finally:
        await node.delete(keys[0])
        await node.aclose()
        await single.aclose()
