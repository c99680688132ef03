"""Cluster I/O (redismigrate/aio/cluster.py) against a real 3-primary OSS cluster.

tests/cluster.py starts the cluster once for this module (Redis Stack 7.4 binaries,
loopback, about 2 s). It holds 3,000 hash documents under one prefix, spread over every
slot range: plain names, hash-tagged names and names that are not UTF-8; plus keys of
another prefix and a string key under the documents' prefix. The tests read the
topology from every node, enumerate and group the keys per primary, put a slot into
MIGRATING / IMPORTING (and really move one) and probe for the search coordinator, which
Redis Stack 7.4 does not have. ``REDIS_CLUSTER_URL`` (a Redis 8 cluster with the
coordinator) runs the coordinator's side of the probe.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import pytest
import redis
import redis.asyncio as aioredis

from redismigrate.aio.cluster import NotACluster, connect_cluster, read_topology
from redismigrate.cluster import (
    ClusterChanged,
    group_by_primary,
    key_slot,
    owner_table,
    parse_cluster_slots,
)
from redismigrate.errors import ConnectionFailed
from tests.cluster import Cluster, running_cluster

PLAIN, TAGGED, BINARY = 2000, 500, 500
DOCS = PLAIN + TAGGED + BINARY


@dataclass
class Loaded:
    cluster: Cluster
    prefix: str
    keys: list[bytes]  # the 3,000 documents
    by_id: dict[str, redis.Redis]  # plain (non-cluster) client of each primary, by node id


def _document_keys(prefix: str) -> list[bytes]:
    base = prefix.encode()
    keys = [base + b"%d" % n for n in range(PLAIN)]
    keys += [base + b"{user%d}:%d" % (n % 17, n) for n in range(TAGGED)]  # 17 slots only
    keys += [base + "é-".encode() + bytes([0xFF, n % 256, 0xFE]) + b"%d" % n for n in range(BINARY)]
    return keys


@pytest.fixture(scope="module")
def loaded() -> Iterator[Loaded]:
    with running_cluster() as cluster:
        prefix = f"t{uuid.uuid4().hex[:8]}:doc:"
        keys = _document_keys(prefix)
        pipes = [cluster.client(i).pipeline(transaction=False) for i in range(len(cluster.nodes))]
        for key in keys:
            pipes[cluster.owner(key)].hset(key, "title", b"x")
        for n in range(100):
            other = f"{prefix[:-4]}other:{n}"
            pipes[cluster.owner(other)].hset(other, "title", b"x")
        pipes[cluster.owner(prefix + "string")].set(prefix + "string", b"not a hash")
        for pipe in pipes:
            pipe.execute()
        by_id = {node.node_id: cluster.client(i) for i, node in enumerate(cluster.nodes)}
        yield Loaded(cluster, prefix, keys, by_id)


# ---------------------------------------------------------------------------- topology


async def test_topology_read_from_each_node_agrees(loaded: Loaded) -> None:
    cluster = loaded.cluster
    expected = {
        node.node_id: (node.port, node.first_slot, node.last_slot) for node in cluster.nodes
    }
    tables = set()
    for node in cluster.nodes:
        for protocol in (2, 3):
            for decode in (False, True):
                client = aioredis.Redis(
                    host="127.0.0.1", port=node.port, protocol=protocol, decode_responses=decode
                )
                try:
                    topology = await read_topology(client)
                    slots = parse_cluster_slots(await client.execute_command("CLUSTER", "SLOTS"))
                finally:
                    await client.aclose()
                assert topology.source == "CLUSTER SHARDS"
                found = {
                    s.primary.node_id: (s.primary.port, s.slots[0].first, s.slots[-1].last)
                    for s in topology.shards
                }
                assert found == expected
                assert owner_table(slots) == owner_table(topology)
                tables.add(owner_table(topology))
        async with connect_cluster(node.url) as connections:
            assert connections.pinned == node.node_id  # FT.* go to the node given
            assert connections.first is not None
            assert connections.first.migrations == () and connections.first.problems == ()
            assert {p.node_id for p in connections.primaries} == set(expected)
            assert "127.0.0.1" in repr(connections)
    assert len(tables) == 1  # 3 nodes x 4 reply shapes, one slot map
    # a caller's own client (str replies, RESP3) works too, and is left open
    own = aioredis.Redis(port=cluster.nodes[2].port, protocol=3, decode_responses=True)
    try:
        async with connect_cluster(redis_client=own) as connections:
            assert connections.pinned == cluster.nodes[2].node_id
            async with connections.scan_per_primary(
                [loaded.prefix], 5000, storage_type="hash"
            ) as b:
                assert sum([len(keys) async for _, keys in b]) == DOCS
        assert await own.ping()
    finally:
        await own.aclose()


async def test_a_single_server_is_no_cluster(redis_url: str) -> None:
    with pytest.raises(NotACluster, match="not a Redis Cluster node") as caught:
        async with connect_cluster(redis_url):
            pass
    assert caught.value.exit_code == 2


async def test_credentials_reach_every_primary(loaded: Loaded) -> None:
    cluster = loaded.cluster
    secret = "s3cr3t-" + uuid.uuid4().hex[:6]
    for i in range(len(cluster.nodes)):  # ACL users are per node
        cluster.client(i).execute_command(
            "ACL", "SETUSER", "rm_cluster", "on", f">{secret}", "~*", "&*", "+@all"
        )
    try:
        node = cluster.nodes[1]
        url = f"redis://rm_cluster:{secret}@127.0.0.1:{node.port}"
        async with connect_cluster(url) as connections:
            for primary in connections.primaries:
                client = connections.client(primary.node_id)
                assert await client.acl_whoami() in (b"rm_cluster", "rm_cluster")
            assert secret not in repr(connections)
            assert connections.topology.source == "CLUSTER SHARDS"
        # a user denied CLUSTER SHARDS: the topology comes from CLUSTER SLOTS, the same
        for i in range(len(cluster.nodes)):
            cluster.client(i).execute_command("ACL", "SETUSER", "rm_cluster", "-cluster|shards")
        async with connect_cluster(url) as fallback:
            assert fallback.topology.source == "CLUSTER SLOTS"
            assert owner_table(fallback.topology) == owner_table(connections.topology)
            assert fallback.first is not None and fallback.first.problems == ()
        with pytest.raises(ConnectionFailed) as caught:
            async with connect_cluster(f"redis://rm_cluster:wrong-{secret}@127.0.0.1:{node.port}"):
                pass
        assert secret not in str(caught.value) and "credentials" in str(caught.value)
    finally:
        for i in range(len(cluster.nodes)):
            cluster.client(i).execute_command("ACL", "DELUSER", "rm_cluster")


# ---------------------------------------------------------------------------- keys


async def test_scan_per_primary_finds_every_key_once(loaded: Loaded) -> None:
    prefix = loaded.prefix
    async with connect_cluster(loaded.cluster.nodes[2].url) as connections:
        seen: Counter[bytes] = Counter()
        sources: dict[str, int] = Counter()
        async with connections.scan_per_primary([prefix], 250, storage_type="hash") as batches:
            async for node_id, keys in batches:
                assert 0 < len(keys) <= 250
                sources[node_id] += len(keys)
                for key in keys:
                    assert owner_table(connections.topology)[key_slot(key)] == node_id
                seen.update(keys)
        assert len(seen) == DOCS and set(seen.values()) == {1}
        assert set(seen) == set(loaded.keys)
        assert set(sources) == set(loaded.by_id)  # every primary contributed
        assert all(count > DOCS // 5 for count in sources.values())

        # a prefix inside another: each key still once; any type: the string key too
        tagged = prefix + "{"
        again: Counter[bytes] = Counter()
        async with connections.scan_per_primary([prefix, tagged], 1000) as batches:
            async for _, keys in batches:
                again.update(keys)
        assert len(again) == DOCS + 1 and set(again.values()) == {1}
        assert (prefix + "string").encode() in again

        # a consumer that stops after one batch leaves no task behind
        with anyio.fail_after(10):
            async with connections.scan_per_primary([prefix], 10) as batches:
                async for _ in batches:
                    break


async def test_grouping_matches_the_real_owner(loaded: Loaded) -> None:
    async with connect_cluster(loaded.cluster.nodes[0].url) as connections:
        groups = connections.group(loaded.keys)
    assert group_by_primary(connections.topology, loaded.keys) == groups
    assert sum(len(g) for g in groups.values()) == DOCS
    for node_id, keys in groups.items():
        # a plain client of that node: any key elsewhere would be answered MOVED
        pipe = loaded.by_id[node_id].pipeline(transaction=False)
        for key in keys:
            pipe.exists(key)
        assert pipe.execute() == [1] * len(keys)
    sample = loaded.keys[::15]
    pipe = loaded.cluster.client(0).pipeline(transaction=False)
    for key in sample:
        pipe.execute_command("CLUSTER", "KEYSLOT", key)
    assert pipe.execute() == [key_slot(k) for k in sample]


# ---------------------------------------------------------------------------- stability


async def test_a_migrating_slot_is_reported_and_then_stable(loaded: Loaded) -> None:
    cluster = loaded.cluster
    source, target = cluster.nodes[0], cluster.nodes[1]
    slot = next(key_slot(k) for k in loaded.keys if cluster.owner(k) == 0)
    async with connect_cluster(source.url) as connections:
        before = connections.first
        assert before is not None and (await connections.check_stable()).stable
        cluster.client(0).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        cluster.client(1).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        try:
            verdict = await connections.check_stable()
            assert verdict.reasons == (
                f"{source.node_id[:8]} (127.0.0.1:{source.port}) is migrating slot {slot} to "
                f"{target.node_id[:8]} (127.0.0.1:{target.port}) (a resharding is going on)",
                f"{target.node_id[:8]} (127.0.0.1:{target.port}) is importing slot {slot} from "
                f"{source.node_id[:8]} (127.0.0.1:{source.port}) (a resharding is going on)",
            )
            with pytest.raises(ClusterChanged, match=f"not stable before the drop: .*slot {slot}"):
                await connections.ensure_stable("before the drop")
        finally:
            for i in (0, 1):
                cluster.client(i).execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        after = await connections.ensure_stable("at the end")
        assert after == before


def _slot_owner_port(client: redis.Redis, slot: int) -> int | None:
    for first, last, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
        if first <= slot <= last:
            return int(primary[1])
    return None


def _move_slot(cluster: Cluster, slot: int, source: int, target: int) -> None:
    """A resharding of one slot, as redis-cli --cluster reshard does it; returns once
    every node says ``target`` serves it."""
    src, dst = cluster.client(source), cluster.client(target)
    dst_node, src_node = cluster.nodes[target], cluster.nodes[source]
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_node.node_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_node.node_id)
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", "127.0.0.1", dst_node.port, "", 0, 5000, "KEYS", *keys)
    clients = [cluster.client(i) for i in range(len(cluster.nodes))]
    # a config epoch no other node has (right after the cluster formed, two may share
    # one): the new owner's claim then wins everywhere
    dst.execute_command("CLUSTER", "BUMPEPOCH")
    for client in (dst, src, *(c for c in clients if c not in (dst, src))):
        client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_node.node_id)
    # gossip spreads it; on a busy machine a node may lag: told again every second
    deadline = time.monotonic() + 30
    told = time.monotonic()
    while lagging := [c for c in clients if _slot_owner_port(c, slot) != dst_node.port]:
        assert time.monotonic() < deadline, f"slot {slot} did not settle on {dst_node.address}"
        if time.monotonic() - told > 1.0:
            for client in lagging:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_node.node_id)
            told = time.monotonic()
        time.sleep(0.05)


async def test_a_moved_slot_stops_a_scan_and_is_named(loaded: Loaded) -> None:
    cluster = loaded.cluster
    slot = next(key_slot(k) for k in loaded.keys if cluster.owner(k) == 0)
    source, target = cluster.nodes[0], cluster.nodes[1]
    async with connect_cluster(source.url) as connections:
        _move_slot(cluster, slot, 0, 1)
        try:
            verdict = await connections.check_stable()
            assert verdict.reasons == (
                f"slot {slot} moved from {source.node_id[:8]} (127.0.0.1:{source.port}) to "
                f"{target.node_id[:8]} (127.0.0.1:{target.port})",
            )
            with pytest.raises(ClusterChanged, match=f"of slot {slot}, which .* serves"):
                async with connections.scan_per_primary([loaded.prefix], 500) as batches:
                    async for _ in batches:
                        pass
        finally:
            _move_slot(cluster, slot, 1, 0)
        assert (await connections.check_stable()).stable


# ---------------------------------------------------------------------------- search


async def test_stack_74_has_no_search_coordinator(loaded: Loaded) -> None:
    cluster = loaded.cluster
    name = next(
        f"{loaded.prefix}idx{n}" for n in range(100) if cluster.owner(f"{loaded.prefix}idx{n}") == 0
    )
    cluster.client(0).execute_command(
        "FT.CREATE", name, "ON", "HASH", "PREFIX", "1", loaded.prefix, "SCHEMA", "title", "TEXT"
    )
    try:
        async with connect_cluster(cluster.nodes[0].url) as connections:
            verdict = await connections.probe_search()
    finally:
        cluster.client(0).execute_command("FT.DROPINDEX", name)
    assert not verdict.coordinator
    assert verdict.search_everywhere  # the module is there, on every primary, alone
    assert {n.search_version[:2] for n in verdict.nodes if n.search_version} == {(2, 10)}
    assert all(n.redirected and n.redirected.startswith("MOVED ") for n in verdict.nodes)
    assert all(n.partitions is None for n in verdict.nodes)  # no SEARCH.CLUSTERINFO
    assert "no search coordinator" in verdict.reasons[0]
    assert verdict.reasons[1].startswith("the primaries list different indexes (FT._LIST)")
    assert len(verdict.reasons) == 2


@pytest.mark.skipif(not os.environ.get("REDIS_CLUSTER_URL"), reason="needs REDIS_CLUSTER_URL")
async def test_a_redis_8_cluster_has_the_search_coordinator() -> None:
    url = os.environ["REDIS_CLUSTER_URL"]
    async with connect_cluster(url) as connections:
        assert connections.first is not None
        assert (await connections.check_stable()).stable, connections.first
        verdict = await connections.probe_search()
        assert verdict.coordinator, verdict.reasons
        assert verdict.search_everywhere and len(verdict.nodes) == len(connections.primaries)
        assert all(n.probed and n.redirected is None for n in verdict.nodes)
        assert all(n.search_version and n.search_version >= (8, 0, 0) for n in verdict.nodes)
        lists = {n.indexes for n in verdict.nodes}
        assert lists == {verdict.indexes}
