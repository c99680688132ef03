"""The pure cluster model (redismigrate/cluster.py): slots, replies, grouping, stability,
the search coordinator verdict. No server: the replies are those a 3-primary Redis 7.4
cluster gives (recorded from tests/cluster.py's cluster), in every shape redis-py hands
them over."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.cluster import parse_cluster_shards as redis_py_shards
from redis.cluster import parse_cluster_slots as redis_py_slots
from redis.crc import key_slot as redis_key_slot

from redismigrate.cluster import (
    SLOTS,
    ClusterChanged,
    ClusterSnapshot,
    ClusterTopology,
    NodeInfo,
    NodeSearch,
    Shard,
    SlotMigration,
    SlotRange,
    TopologyError,
    check_snapshot,
    cluster_partitions,
    compare,
    disagreements,
    group_by_primary,
    group_positions,
    hash_tag,
    judge_search,
    key_slot,
    migrations_of,
    owner_of,
    owner_table,
    parse_cluster_nodes,
    parse_cluster_shards,
    parse_cluster_slots,
    search_version,
    tagged_key,
)
from redismigrate.ledger import lock_key
from redismigrate.plan import OtherIndex, shadow_name

A = "a1" * 20  # primary of 0-5460
B = "b2" * 20  # primary of 5461-10921
C = "c3" * 20  # primary of 10922-16383
R = "d4" * 20  # replica of A
HOST = "127.0.0.1"


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=8), st.integers(0, 5))
def test_a_shadow_index_keeps_the_hash_tag_of_its_source(head: str, tag: str, taken: int) -> None:
    """Issue #16 item 5: the shadow and final index names (``<name>__rm<n>``) keep any
    hash tag of the source name, so they hash to the source name's slot."""
    name = f"{head}{{{tag}}}"
    others = [
        OtherIndex(name=f"{name}__rm{n}", storage_type="hash", prefixes=[])
        for n in range(1, taken + 1)
    ]
    shadow = shadow_name(name, others, name)
    assert shadow == f"{name}__rm{taken + 1}"
    if hash_tag(name.encode()) is not None:
        assert key_slot(shadow) == key_slot(name)
        assert hash_tag(shadow.encode()) == hash_tag(name.encode())


# ---------------------------------------------------------------------------- replies


def _shards_resp2(text: Callable[[str], Any]) -> list[Any]:
    def node(node_id: str, port: int, role: str) -> list[Any]:
        return [
            text("id"), text(node_id), text("port"), port, text("ip"), text(HOST),
            text("endpoint"), text(HOST), text("role"), text(role),
            text("replication-offset"), 0, text("health"), text("online"),
        ]  # fmt: skip

    return [
        [text("slots"), [10922, 16383], text("nodes"), [node(C, 7002, "master")]],
        [text("slots"), [5461, 10921], text("nodes"), [node(B, 7001, "master")]],
        [
            text("slots"), [0, 5460], text("nodes"),
            [node(A, 7000, "master"), node(R, 7003, "replica")],
        ],
    ]  # fmt: skip


def _as_maps(reply: Any) -> Any:
    """A RESP2 CLUSTER SHARDS reply as RESP3 gives it (maps for shards and nodes)."""
    shards = []
    for shard in reply:
        entry = dict(zip(shard[::2], shard[1::2], strict=True))
        (nodes_key,) = [k for k in entry if k in ("nodes", b"nodes")]
        entry[nodes_key] = [dict(zip(n[::2], n[1::2], strict=True)) for n in entry[nodes_key]]
        shards.append(entry)
    return shards


def _slots_reply(text: Callable[[str], Any], resp3: bool) -> list[Any]:
    meta: Any = {} if resp3 else []
    return [
        [0, 5460, [text(HOST), 7000, text(A), meta], [text(HOST), 7003, text(R), meta]],
        [5461, 10921, [text(HOST), 7001, text(B), meta]],
        [10922, 16383, [text(HOST), 7002, text(C), meta]],
    ]


def _encode(s: str) -> bytes:
    return s.encode()


def _keep(s: str) -> str:
    return s


SHARD_REPLIES = {
    "resp2 bytes": _shards_resp2(_encode),
    "resp2 str": _shards_resp2(_keep),
    "resp3 bytes": _as_maps(_shards_resp2(_encode)),
    "resp3 str": _as_maps(_shards_resp2(_keep)),
    "redis-py parsed resp2": redis_py_shards(_shards_resp2(_encode)),
    "redis-py parsed resp3": redis_py_shards(_as_maps(_shards_resp2(_encode))),
}
SLOT_REPLIES = {
    "resp2 bytes": _slots_reply(_encode, False),
    "resp2 str": _slots_reply(_keep, False),
    "resp3 bytes": _slots_reply(_encode, True),
    "resp3 str": _slots_reply(_keep, True),
}


def _topology() -> ClusterTopology:
    return parse_cluster_shards(SHARD_REPLIES["resp2 bytes"])


# ---------------------------------------------------------------------------- slots


def test_key_slot_matches_the_cluster_specification() -> None:
    assert key_slot(b"foo") == 12182  # CLUSTER KEYSLOT foo
    assert key_slot(b"") == 0
    # hash tags: the first { and the first } after it
    assert key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers")
    assert key_slot(b"{user1000}.following") == key_slot(b"user1000")
    assert key_slot(b"foo{}{bar}") == redis_key_slot(b"foo{}{bar}")  # {} hashes all
    assert hash_tag(b"foo{}{bar}") is None
    assert hash_tag(b"foo{{bar}}zap") == b"{bar"
    assert hash_tag(b"foo{bar}{zap}") == b"bar"
    assert hash_tag(b"no tag}{") is None
    assert key_slot("doc:é") == key_slot("doc:é".encode())


_brace_soup = st.lists(
    st.sampled_from([b"{", b"}", b"a", b"xyz", b"\xff", b"\x00", b"{}", b"\xc3\xa9"]),
    max_size=12,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=64), _brace_soup))
def test_key_slot_is_redis_pys_key_slot(key: bytes) -> None:
    slot = key_slot(key)
    assert slot == redis_key_slot(key)
    assert 0 <= slot < SLOTS
    tag = hash_tag(key)
    if tag is not None:  # a tag holds no "}", so it hashes as a whole: to the key's slot
        assert tag and b"}" not in tag and key_slot(tag) == slot


def test_tagged_keys_name_one_slot() -> None:
    assert tagged_key("docs", "lock") == "redismigrate:{docs}:lock"
    assert tagged_key("docs", "ledger", "7") == "redismigrate:{docs}:ledger:7"
    assert tagged_key("docs") == "redismigrate:{docs}"
    assert key_slot(tagged_key("docs", "lock")) == key_slot(b"docs")
    with pytest.raises(ValueError):
        tagged_key("")
    odd = tagged_key("}docs", "lock")
    assert hash_tag(odd.encode()) is not None
    assert key_slot(odd) == key_slot(tagged_key("}docs", "ledger"))


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=30), st.text(max_size=10), st.text(max_size=10))
def test_tagged_keys_of_an_index_share_a_slot(index: str, one: str, two: str) -> None:
    slots = {key_slot(tagged_key(index, one)), key_slot(tagged_key(index, two, "x"))}
    if not index.startswith("}"):
        slots.add(key_slot(lock_key(index)))  # the lock key of redismigrate.ledger too
    assert len(slots) == 1


# ---------------------------------------------------------------------------- replies


@pytest.mark.parametrize("shape", sorted(SHARD_REPLIES))
def test_cluster_shards_in_every_shape(shape: str) -> None:
    topology = parse_cluster_shards(SHARD_REPLIES[shape])
    assert topology == _topology()
    assert topology.source == "CLUSTER SHARDS"
    assert [p.node_id for p in topology.primaries] == [A, B, C]  # sorted by first slot
    first = topology.shards[0]
    assert first.slots == (SlotRange(first=0, last=5460),)
    assert first.primary == NodeInfo(node_id=A, host=HOST, port=7000, health="online")
    assert [r.node_id for r in first.replicas] == [R]
    assert first.replicas[0].role == "replica"
    assert sum(s.slot_count for s in topology.shards) == SLOTS
    assert topology.unassigned() == ()


@pytest.mark.parametrize("shape", sorted(SLOT_REPLIES))
def test_cluster_slots_gives_the_same_map(shape: str) -> None:
    topology = parse_cluster_slots(SLOT_REPLIES[shape])
    assert topology.source == "CLUSTER SLOTS"
    assert owner_table(topology) == owner_table(_topology())
    shards = {s.primary.node_id: s for s in _topology().shards}
    for shard in topology.shards:
        same = shards[shard.primary.node_id]
        assert shard.primary.address == same.primary.address
        assert shard.primary.health is None  # CLUSTER SLOTS does not say
        assert [r.node_id for r in shard.replicas] == [r.node_id for r in same.replicas]


def test_cluster_slots_merges_split_ranges_and_refuses_redis_pys_parsed_form() -> None:
    split = [
        [0, 99, [b"", 7000, A.encode(), []]],  # unknown endpoint: the default host
        [100, 5460, [b"10.0.0.1", 7000, A.encode(), []]],
        [5461, 16383, [b"10.0.0.2", 7001, B.encode(), []]],
    ]
    topology = parse_cluster_slots(split, default_host="seed.example")
    assert topology.shards[0].slots == (SlotRange(first=0, last=5460),)
    assert topology.shards[0].primary.host == "seed.example"  # the first range said
    with pytest.raises(TopologyError, match="no node ids"):
        parse_cluster_slots(redis_py_slots(SLOT_REPLIES["resp2 bytes"]))


def test_cluster_shards_unknown_endpoint_tls_and_gaps() -> None:
    reply = [
        {
            "slots": [0, 100, 200, 300],
            "nodes": [
                {
                    "id": A,
                    "tls-port": 7443,
                    "ip": "",
                    "endpoint": "?",
                    "role": "master",
                    "health": "loading",
                },
            ],
        },
        {"slots": [], "nodes": [{"id": B, "port": 7001, "ip": HOST, "role": "master"}]},
        {"slots": [], "nodes": [{"id": R, "port": 7003, "ip": HOST, "role": "replica"}]},
    ]
    topology = parse_cluster_shards(reply, default_host="seed.example")
    node = topology.primaries[0]
    assert (node.host, node.port, node.tls_port) == ("seed.example", 7443, 7443)
    assert [p.node_id for p in topology.primaries] == [A]  # B serves no slot; R is orphaned
    assert topology.unassigned() == (
        SlotRange(first=101, last=199),
        SlotRange(first=301, last=SLOTS - 1),
    )
    reasons = check_snapshot(ClusterSnapshot(topology=topology)).reasons
    assert reasons == (
        "no node serves slots 101-199, 301-16383",
        f"primary {A[:8]} (seed.example:7443) is loading",
    )


def test_bad_replies_are_named() -> None:
    overlap = [
        {"slots": [0, 10], "nodes": [{"id": A, "port": 1, "ip": HOST, "role": "master"}]},
        {"slots": [5, 20], "nodes": [{"id": B, "port": 2, "ip": HOST, "role": "master"}]},
    ]
    with pytest.raises(TopologyError, match="slot 5 is claimed by both"):
        parse_cluster_shards(overlap)
    with pytest.raises(TopologyError, match="no primary"):
        parse_cluster_shards([{"slots": [0, 1], "nodes": []}])
    with pytest.raises(TopologyError, match="outside"):
        parse_cluster_shards(
            [{"slots": [0, SLOTS], "nodes": [{"id": A, "port": 1, "ip": HOST, "role": "master"}]}]
        )
    with pytest.raises(TopologyError):
        parse_cluster_shards(b"nonsense")


NODES_TEXT = (
    f"{B} 127.0.0.1:7001@17001 master - 0 1795865678530 2 connected 5461-10921\n"
    f"{A} 127.0.0.1:7000@17000,host-a myself,master - 0 0 1 connected 0-5460 "
    f"[5->-{B}] [6->-{B}] [9000-<-{B}]\n"
    f"{C} 127.0.0.1:7002@17002 master,fail? - 0 1795865677520 0 disconnected 10922-16383\n"
    f"{R} 127.0.0.1:7003@17003 slave {A} 0 1795865677520 1 connected\n"
)


def test_cluster_nodes_text_and_redis_pys_parsed_form() -> None:
    lines = parse_cluster_nodes(NODES_TEXT.encode())
    assert parse_cluster_nodes(NODES_TEXT) == lines
    by_id = {line.node_id: line for line in lines}
    me = by_id[A]
    assert me.myself and me.is_primary and (me.host, me.port) == (HOST, 7000)
    assert me.slots == (SlotRange(first=0, last=5460),)
    assert migrations_of(lines) == (
        SlotMigration(slot=5, state="migrating", node_id=A, peer_id=B),
        SlotMigration(slot=6, state="migrating", node_id=A, peer_id=B),
        SlotMigration(slot=9000, state="importing", node_id=A, peer_id=B),
    )
    assert by_id[C].failing == "fail?" and not by_id[C].connected
    assert by_id[R].primary_id == A and not by_id[R].is_primary and by_id[R].slots == ()
    # redis-py's own parse (execute_command("CLUSTER NODES") as one string)
    redis_py_nodes = redis.Redis().response_callbacks["CLUSTER NODES"]
    parsed = parse_cluster_nodes(redis_py_nodes(NODES_TEXT))
    assert {(n.node_id, n.slots, n.migrations, n.primary_id) for n in parsed} == {
        (n.node_id, n.slots, n.migrations, n.primary_id) for n in lines
    }


# ---------------------------------------------------------------------------- grouping


_keys = st.lists(st.one_of(st.binary(max_size=24), _brace_soup), max_size=200)


@settings(max_examples=150, deadline=None)
@given(_keys)
def test_grouping_puts_each_key_once_with_its_owner(keys: list[bytes]) -> None:
    topology = _topology()
    groups = group_by_primary(topology, keys)
    assert sorted(k for group in groups.values() for k in group) == sorted(keys)
    assert set(groups) <= {A, B, C}
    for owner, group in groups.items():
        assert all(owner_of(topology, k).node_id == owner for k in group)
        assert group == [k for k in keys if owner_of(topology, k).node_id == owner]  # in order
    positions = group_positions(topology, keys)
    assert sorted(p for ps in positions.values() for p in ps) == list(range(len(keys)))
    assert {o: [keys[p] for p in ps] for o, ps in positions.items()} == groups


def test_grouping_a_key_of_an_unserved_slot_is_refused() -> None:
    half = ClusterTopology(
        shards=(
            Shard(
                primary=NodeInfo(node_id=A, host=HOST, port=7000),
                slots=(SlotRange(first=0, last=8191),),
            ),
        )
    )
    served = next(k for k in (b"k%d" % n for n in range(100)) if key_slot(k) <= 8191)
    unserved = next(k for k in (b"k%d" % n for n in range(100)) if key_slot(k) > 8191)
    assert group_by_primary(half, [served]) == {A: [served]}
    with pytest.raises(TopologyError, match=f"slot {key_slot(unserved)} is served by no node"):
        group_by_primary(half, [served, unserved])


# ---------------------------------------------------------------------------- stability


def _with_primary(topology: ClusterTopology, index: int, node: NodeInfo) -> ClusterTopology:
    shards = list(topology.shards)
    shards[index] = Shard(primary=node, replicas=(), slots=shards[index].slots)
    return ClusterTopology(shards=tuple(shards))


def test_a_quiet_cluster_is_stable() -> None:
    snapshot = ClusterSnapshot(topology=_topology())
    assert check_snapshot(snapshot).stable
    assert compare(snapshot, ClusterSnapshot(topology=_topology())).stable
    compare(snapshot, snapshot).raise_if_unstable("before the drop")


def test_migrating_and_importing_slots_are_reasons() -> None:
    moving = ClusterSnapshot(
        topology=_topology(),
        migrations=migrations_of(parse_cluster_nodes(NODES_TEXT)),
    )
    verdict = check_snapshot(moving)
    assert not verdict.stable
    assert verdict.reasons == (
        f"{A[:8]} (127.0.0.1:7000) is migrating slots 5-6 to {B[:8]} (127.0.0.1:7001) "
        "(a resharding is going on)",
        f"{A[:8]} (127.0.0.1:7000) is importing slot 9000 from {B[:8]} (127.0.0.1:7001) "
        "(a resharding is going on)",
    )
    with pytest.raises(ClusterChanged) as caught:
        compare(ClusterSnapshot(topology=_topology()), moving).raise_if_unstable("before the drop")
    message = str(caught.value)
    assert message.startswith("the Redis Cluster is not stable before the drop: ")
    assert "migrating slots 5-6" in message and "\n" not in message
    assert caught.value.exit_code == 1


def test_a_failover_is_named() -> None:
    before = ClusterSnapshot(topology=_topology())
    promoted = NodeInfo(node_id=R, host=HOST, port=7003, health="online")
    after = ClusterSnapshot(topology=_with_primary(_topology(), 0, promoted))
    assert compare(before, after).reasons == (
        f"failover: primary {A[:8]} (127.0.0.1:7000) was replaced by its replica "
        f"{R[:8]} (127.0.0.1:7003) for slots 0-5460",
    )


def test_moved_slots_a_replaced_primary_and_a_moved_node_are_named() -> None:
    before = ClusterSnapshot(topology=_topology())
    stranger = NodeInfo(node_id="e5" * 20, host=HOST, port=7009)
    replaced = _with_primary(_topology(), 2, stranger)
    reasons = compare(before, ClusterSnapshot(topology=replaced)).reasons
    assert reasons == (
        f"slots 10922-16383 moved from {C[:8]} (127.0.0.1:7002) to {'e5' * 4} (127.0.0.1:7009)",
    )
    # one slot handed from A to B (a finished resharding step)
    shards = list(_topology().shards)
    shards[0] = Shard(primary=shards[0].primary, slots=(SlotRange(first=0, last=5459),))
    shards[1] = Shard(primary=shards[1].primary, slots=(SlotRange(first=5460, last=10921),))
    resharded = ClusterSnapshot(topology=ClusterTopology(shards=tuple(shards)))
    assert compare(before, resharded).reasons == (
        f"slot 5460 moved from {A[:8]} (127.0.0.1:7000) to {B[:8]} (127.0.0.1:7001)",
    )
    moved = _with_primary(_topology(), 1, NodeInfo(node_id=B, host="10.1.1.1", port=7001))
    assert compare(before, ClusterSnapshot(topology=moved)).reasons == (
        f"node {B[:8]} (127.0.0.1:7001) now answers at 10.1.1.1:7001",
    )


def test_problems_and_disagreements_are_reasons() -> None:
    views = {A: _topology(), B: _topology(), C: parse_cluster_shards(SHARD_REPLIES["resp3 str"])}
    assert disagreements(A, views) == ()
    views[C] = _with_primary(_topology(), 0, NodeInfo(node_id=R, host=HOST, port=7003))
    (line,) = disagreements(A, views)
    assert line == (
        f"{C[:8]} (127.0.0.1:7002) and {A[:8]} (127.0.0.1:7000) disagree on the primary of "
        "slots 0-5460"
    )
    snapshot = ClusterSnapshot(topology=_topology(), problems=(line,))
    assert check_snapshot(snapshot).reasons == (line,)


# ---------------------------------------------------------------------------- search


def _facts(node_id: str, **changes: Any) -> NodeSearch:
    values: dict[str, Any] = {
        "node_id": node_id,
        "address": f"{HOST}:7000",
        "search_version": (8, 2, 1),
        "indexes": ("docs",),
        "probed": True,
    }
    values.update(changes)
    return NodeSearch(**values)


def test_a_coordinator_cluster_is_recognised() -> None:
    verdict = judge_search([_facts(A, partitions=3), _facts(B), _facts(C)], 3)
    assert verdict.coordinator and verdict.search_everywhere
    assert verdict.indexes == ("docs",) and verdict.reasons == ()
    assert "coordinator" in verdict.summary


def test_stack_74_without_the_coordinator_is_refused() -> None:
    stack = {"search_version": (2, 10, 5), "indexes": (), "partitions": None}
    nodes = [
        _facts(A, redirected="MOVED 10499 127.0.0.1:7001", **stack),
        _facts(B, redirected="MOVED 14626 127.0.0.1:7002", **stack),
        _facts(C, redirected="MOVED 10499 127.0.0.1:7001", **stack),
    ]
    verdict = judge_search(nodes, 3)
    assert not verdict.coordinator and verdict.search_everywhere
    assert verdict.reasons == (
        "FT.INFO of an index name in another shard's slot was answered MOVED 10499 "
        f"127.0.0.1:7001 on {A[:8]} (127.0.0.1:7000) (and 2 more primaries): index names "
        "are keys of one shard and each shard's search module works alone (no search "
        "coordinator, as in Redis Stack 7.4)",
    )
    assert verdict.summary == verdict.reasons[0]


def test_other_reasons_against_a_coordinator() -> None:
    missing = judge_search([_facts(A), _facts(B, search_version=None, indexes=None)], 2)
    assert not missing.coordinator and not missing.search_everywhere
    assert missing.reasons == (
        f"the search module is not loaded on primary {B[:8]} (127.0.0.1:7000)",
    )
    differ = judge_search([_facts(A), _facts(B, indexes=("docs", "old"))], 2)
    assert differ.reasons == (
        f"the primaries list different indexes (FT._LIST): {A[:8]} (127.0.0.1:7000) lists "
        f"docs; {B[:8]} (127.0.0.1:7000) lists docs, old",
    )
    assert differ.indexes == ()
    counted = judge_search([_facts(A, partitions=2), _facts(B)], 3)
    assert [r for r in counted.reasons if "counts 2 shards" in r]
    unsure = judge_search(
        [_facts(A, probed=False, partitions=None, errors=("FT.INFO: NOPERM",))], 1
    )
    assert unsure.reasons == (
        "the search coordinator could not be confirmed on any primary (FT.INFO: NOPERM)",
    )
    nothing = judge_search([_facts(A, search_version=None, indexes=None)], 1)
    assert nothing.reasons == ("no primary of the cluster has the search module",)


def test_module_list_and_clusterinfo_replies() -> None:
    resp2 = [[b"name", b"search", b"ver", 21005, b"path", b"/x", b"args", []]]
    resp3 = [{"name": "ReJSON", "ver": 20803}, {"name": "search", "ver": 80201}]
    assert search_version(resp2) == (2, 10, 5)
    assert search_version(resp3) == (8, 2, 1)
    assert search_version([{"name": "ReJSON", "ver": 20803}]) is None
    assert cluster_partitions([b"num_partitions", 3, b"cluster_type", b"redis_oss"]) == 3
    assert cluster_partitions({"num_partitions": 3}) == 3
    assert cluster_partitions([b"odd"]) is None
