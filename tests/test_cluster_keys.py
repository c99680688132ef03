"""The key-level steps on a real 3-primary OSS cluster (redismigrate/aio/steps/cluster.py).

tests/cluster.py starts the cluster once for this module (Redis Stack 7.4 binaries,
loopback). Each test loads its own 700 hash documents under a prefix of its own: plain
names, names that are not UTF-8 and hash-tagged names (7 tags: several documents per
slot), every 7th with a TTL, every 13th without a vector; plus a string key under the
prefix and a key of another prefix, which no step may touch. Every document is
counted before and after, byte for byte (HGETALL), TTLs within a second.

Steps run in this process, or (the SIGKILL tests) in ``python -m tests.cluster_run``,
killed at a crash point (REDISMIGRATE_CRASH_AT) and run again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from redismigrate.aio.capture import ClusterCapture
from redismigrate.aio.cluster import ClusterWire, connect_cluster
from redismigrate.aio.keys import KeyCollision
from redismigrate.aio.steps import cluster as cluster_step
from redismigrate.aio.steps import reencode as reencode_step
from redismigrate.aio.steps.state import Run
from redismigrate.backup import (
    MANIFEST_CHECKSUM,
    BackupError,
    ShardNode,
    VectorBackup,
    backup_paths,
    content_checksum,
    new_manifest,
    read_manifest,
    verify_backup,
    write_manifest,
)
from redismigrate.capabilities import ServerCapabilities
from redismigrate.cluster import ClusterChanged, key_slot
from redismigrate.errors import BadInputError
from redismigrate.ftinfo import IndexStats
from redismigrate.patch import SchemaPatch
from redismigrate.plan import MigrationPlan, build_plan
from redismigrate.schema import IndexSchema
from tests import cluster_run
from tests.cluster import Cluster, running_cluster

PLAIN, BINARY, TAGGED = 500, 100, 100
DOCS = PLAIN + BINARY + TAGGED
DIMS = 32  # 128-byte vectors: the hashes are stored as hash tables, not listpacks
BATCH = 50
TTL_SECONDS = 5000
STACK_74 = ServerCapabilities(redis_version="7.4.0", search_version=(2, 10, 0))


class State(dict[bytes, tuple[dict[bytes, bytes], int]]):
    """``{key: (HGETALL, PTTL)}``, and when it was read."""

    taken: float


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with running_cluster() as started:
        yield started


@dataclass
class Docs:
    cluster: Cluster
    prefix: str
    new_prefix: str
    keys: list[bytes]
    url: str

    def state(self, prefix: str | None = None) -> State:
        """Every hash under ``prefix`` (default: the documents' own) on every primary."""
        found = State()
        found.taken = time.monotonic()
        for i in range(len(self.cluster.nodes)):
            client = self.cluster.client(i)
            for key in client.scan_iter(
                match=(prefix or self.prefix) + "*", count=1000, _type="hash"
            ):
                assert key not in found
                found[key] = (client.hgetall(key), client.pttl(key))
        return found

    def moved(self, key: bytes) -> bytes:
        return self.new_prefix.encode() + key[len(self.prefix) :]

    def client_of(self, key: bytes) -> redis.Redis:
        return self.cluster.owner_client(key)


def load(cluster: Cluster) -> Docs:
    while True:
        tag = uuid.uuid4().hex[:8]
        prefix, new_prefix = f"t{tag}:doc:", f"t{tag}:moved:"
        base = prefix.encode()
        keys = [base + b"%d" % n for n in range(PLAIN)]
        keys += [base + bytes([0xFF, n % 251, 0xFE]) + b"-%d" % n for n in range(BINARY)]
        keys += [base + b"{user%d}:%d" % (n % 7, n) for n in range(TAGGED)]
        # a prefix change moves a key's slot by a fixed XOR (CRC16 is linear) that
        # depends on the names: take names that send many keys to another primary
        new_base = new_prefix.encode()
        elsewhere = sum(cluster.owner(k) != cluster.owner(new_base + k[len(base) :]) for k in keys)
        if elsewhere >= DOCS // 3:
            break
    rng = np.random.default_rng(7)
    pipes = [cluster.client(i).pipeline(transaction=False) for i in range(len(cluster.nodes))]
    for n, key in enumerate(keys):
        doc: dict[str, Any] = {"title": f"document {n}", "n": n}
        if n % 13:
            doc["embedding"] = rng.normal(size=DIMS).astype(np.float32).tobytes()
        pipe = pipes[cluster.owner(key)]
        pipe.hset(key, mapping=doc)
        if n % 7 == 0:
            pipe.expire(key, TTL_SECONDS)
    for name in (prefix + "a-string", f"t{tag}:other:1"):  # no step may touch these
        pipes[cluster.owner(name)].set(name, b"keep")
    for pipe in pipes:
        pipe.execute()
    return Docs(cluster, prefix, new_prefix, keys, cluster.nodes[1].url)


def make_plan(docs: Docs, *, move: bool = True, reencode: bool = True) -> MigrationPlan:
    schema = IndexSchema.from_dict(
        {
            "index": {"name": docs.prefix + "idx", "prefix": docs.prefix, "storage_type": "hash"},
            "fields": [
                {"name": "title", "type": "text"},
                {"name": "n", "type": "numeric"},
                {
                    "name": "embedding",
                    "type": "vector",
                    "attrs": {"dims": DIMS, "datatype": "float32", "distance_metric": "cosine"},
                },
            ],
        }
    )
    changes: dict[str, Any] = {}
    if move:
        changes["index"] = {"prefix": docs.new_prefix}
    if reencode:
        changes["update_fields"] = [{"name": "embedding", "attrs": {"datatype": "float16"}}]
    plan = build_plan(
        source_schema=schema,
        source_stats=IndexStats(num_docs=DOCS),
        key_sample=[docs.keys[0].decode()],
        capabilities=STACK_74,
        patch=SchemaPatch.from_dict({"changes": changes}),
    )
    assert plan.supported, plan.diff_classification.blocked_reasons
    return plan


def float16(doc: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """``doc`` with its vector as the plan's rule re-encodes it."""
    if b"embedding" not in doc:
        return doc
    vector = np.frombuffer(doc[b"embedding"], dtype=np.float32).astype(np.float16)
    return {**doc, b"embedding": vector.tobytes()}


def assert_same(before: State, after: State, rename: Any = None, change: Any = None) -> None:
    """Every document of ``before`` in ``after`` (under ``rename(key)``), its fields as
    ``change(fields)`` gives them, its TTL kept (what passed since, give or take 1 s)."""
    elapsed = after.taken - before.taken
    expected = {(rename(k) if rename else k): v for k, v in before.items()}
    assert after.keys() == expected.keys()
    for key, (fields, ttl) in expected.items():
        now, now_ttl = after[key]
        assert now == (change(fields) if change else fields), key
        if ttl < 0:
            assert now_ttl == -1, key
        else:
            assert ttl - elapsed * 1000 - 1000 <= now_ttl <= ttl + 100, (key, ttl, now_ttl)


def make_run(plan: MigrationPlan, backup_dir: Path, connections: Any) -> Run:
    run = Run(plan, connections.client(connections.pinned), backup_dir, BATCH, 1, None)
    run.wire = ClusterWire(connections)
    return run


def reset_stats(cluster: Cluster) -> None:
    for i in range(len(cluster.nodes)):
        cluster.client(i).config_resetstat()


def cluster_errors(cluster: Cluster) -> dict[str, Any]:
    """The redirections and refusals a cluster gives, as each primary counted them
    (redis-py's CLIENT SETINFO on a new connection counts an ERR: not looked at)."""
    codes = ("MOVED", "ASK", "CROSSSLOT", "TRYAGAIN", "CLUSTERDOWN", "EXECABORT", "BUSYKEY")
    found: dict[str, Any] = {}
    for i in range(len(cluster.nodes)):
        for name, count in cluster.client(i).info("errorstats").items():
            if name.removeprefix("errorstat_") in codes:
                found[f"node {i}: {name}"] = count
    return found


# ---------------------------------------------------------------------------- the manifest


def test_a_cluster_manifest_names_its_primaries_and_is_version_3(tmp_path: Path) -> None:
    plain = write_manifest(tmp_path, new_manifest("idx", "p", 2))
    data = json.loads(plain.read_text())
    assert data["version"] == 2 and "nodes" not in data  # as earlier releases write and read it
    nodes = [
        ShardNode(worker=0, node_id="a" * 40, address="127.0.0.1:7000", slots=[(0, 8191)]),
        ShardNode(worker=1, node_id="b" * 40, address="127.0.0.1:7001", slots=[(8192, 16383)]),
    ]
    path = write_manifest(tmp_path, new_manifest("idx2", "p", 2, nodes))
    assert json.loads(path.read_text())["version"] == 3
    assert read_manifest(path).nodes == nodes

    def rewrite(**changes: Any) -> None:
        body = json.loads(path.read_text())
        body.pop(MANIFEST_CHECKSUM)
        body.update(changes)
        body = {k: v for k, v in body.items() if v is not None}
        body[MANIFEST_CHECKSUM] = content_checksum(body)
        path.write_text(json.dumps(body))

    rewrite(version=4)
    with pytest.raises(
        BackupError, match=r"is format version 4; this redismigrate reads versions 2 and 3$"
    ):
        read_manifest(path)
    rewrite(version=3, nodes=None)
    with pytest.raises(BackupError, match="format version 3 lists no cluster nodes"):
        read_manifest(path)


# ---------------------------------------------------------------------------- backup


async def test_the_backup_has_a_shard_per_primary_holding_each_key_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    docs = load(cluster)
    before = docs.state()
    plan = make_plan(docs)
    async with connect_cluster(docs.url) as connections:
        # a run killed before it wrote its manifest: its files are set aside, begun anew
        run = make_run(plan, tmp_path, connections)
        assert await cluster_step.open_or_start(run, connections) == "dump"
        assert run.backups is not None
        run.backups.close()
        backup_paths(tmp_path, plan.source.index_name).manifest.unlink()
        run = make_run(plan, tmp_path, connections)
        assert await cluster_step.open_or_start(run, connections) == "dump"
        assert len(list(tmp_path.glob("*.restarted-*"))) == 8  # main and 3 shards: 2 files each
        await cluster_step.back_up(run, connections, 0.0)
        await run.wire.close()
        assert run.backups is not None
        run.backups.close()
    manifest = read_manifest(backup_paths(tmp_path, plan.source.index_name).manifest)
    assert manifest.version == 3 and manifest.workers == 3
    assert manifest.nodes == [
        ShardNode(
            worker=i, node_id=n.node_id, address=n.address, slots=[(n.first_slot, n.last_slot)]
        )
        for i, n in enumerate(cluster.nodes)
    ]
    seen: Counter[bytes] = Counter()
    for node in manifest.nodes:
        shard = VectorBackup.open(tmp_path, plan.source.index_name, worker=node.worker)
        assert shard is not None
        for frame in shard.iter_frames():
            assert 0 < len(frame.keys) <= BATCH
            for key, vector in zip(frame.keys, frame.vectors["embedding"], strict=True):
                assert cluster.nodes[cluster.owner(key)].node_id == node.node_id
                assert vector == before[key][0].get(b"embedding")  # None: no vector
            seen.update(frame.keys)
        shard.close()
    assert set(seen) == set(docs.keys) and set(seen.values()) == {1}  # each document once
    assert verify_backup(tmp_path, plan.source.index_name).keys == DOCS
    assert_same(before, docs.state())  # a backup writes nothing


# ---------------------------------------------------------------------------- re-encoding


async def test_reencoding_writes_compare_and_set_one_slot_per_transaction(
    cluster: Cluster, tmp_path: Path
) -> None:
    docs = load(cluster)
    plan = make_plan(docs, move=False)
    plain = [k for n, k in enumerate(docs.keys[:PLAIN]) if n % 13]  # with a vector
    hash_tagged = docs.keys[PLAIN + BINARY :]
    edited = next(k for k in plain if cluster.owner(k) == 0)
    deleted = next(k for k in plain if cluster.owner(k) == 1)
    tagged = next(k for k in hash_tagged if cluster.owner(k) == 2)  # its slot holds others
    async with connect_cluster(docs.url) as connections:
        run = make_run(plan, tmp_path, connections)
        await cluster_step.open_or_start(run, connections)
        capture = ClusterCapture(connections.clients, connections.topology, [docs.prefix])
        run.capture = await capture.start()
        try:
            assert run.capture.complete and len(capture.nodes) == 3
            assert all(c.quiet is not None for c in capture.nodes.values())
            await cluster_step.back_up(run, connections, 0.0)
            before = docs.state()
            # the application writes after the backup, on every primary: each is seen
            # by that primary's capture, and kept
            assert len({cluster.owner(k) for k in (edited, deleted, tagged)}) == 3
            theirs = np.ones(DIMS, np.float32).tobytes()
            for key in (edited, tagged):
                docs.client_of(key).hset(key, "embedding", theirs)
            docs.client_of(deleted).delete(deleted)
            await run.capture.sync()
            assert all(run.capture.written_by_application(k) for k in (edited, deleted, tagged))
            assert run.capture.foreign_events == 3
            run.set_phase("active")
            reset_stats(cluster)
            await reencode_step.reencode(run, touch=True, checkpoint_seconds=0.0)
        finally:
            await capture.stop()
            await run.wire.close()
            assert run.backups is not None
            run.backups.close()
    after = docs.state()
    assert set(run.skipped) == {edited, tagged, deleted}  # left to the reconcile step
    assert run.capture.foreign_events == 3  # none of the migrator's own writes
    for key in (edited, tagged):
        assert after.pop(key)[0][b"embedding"] == theirs  # as the application left it
        del before[key]
    del before[deleted]
    assert deleted not in after  # never recreated
    assert_same(before, after, change=float16)
    for i in range(len(cluster.nodes)):
        stats = cluster.client(i).info("commandstats")
        assert stats["cmdstat_exec"]["calls"] > 0 and stats["cmdstat_watch"]["calls"] > 0, stats
    assert cluster_errors(cluster) == {}  # no CROSSSLOT, no MOVED


# ---------------------------------------------------------------------------- prefix moves


async def test_prefix_moves_across_slots_keep_ttls_and_roll_back(
    cluster: Cluster, tmp_path: Path
) -> None:
    docs = load(cluster)
    plan = make_plan(docs, reencode=False)
    before = docs.state()
    reset_stats(cluster)
    result = await cluster_run.apply(docs.url, plan, tmp_path, BATCH)
    assert result["keys_renamed"] == DOCS and not result["skipped"]
    # capture on every primary, and the moves' own events were all expected
    assert result["capture"] and result["foreign_events"] == 0
    assert docs.state() == {}
    after = docs.state(docs.new_prefix)
    assert_same(before, after, rename=docs.moved)
    untagged, tagged = docs.keys[: PLAIN + BINARY], docs.keys[PLAIN + BINARY :]
    assert all(key_slot(k) != key_slot(docs.moved(k)) for k in untagged)
    assert sum(cluster.owner(k) != cluster.owner(docs.moved(k)) for k in untagged) >= DOCS // 3
    assert all(key_slot(k) == key_slot(docs.moved(k)) for k in tagged)  # the tag keeps the slot
    for i in range(len(cluster.nodes)):  # every primary's notification setting put back
        client = cluster.client(i)
        assert client.config_get("notify-keyspace-events") == {"notify-keyspace-events": ""}
        assert not list(client.scan_iter(match="redismigrate:notify-keyspace-events:*"))
    assert cluster_errors(cluster) == {}

    undone = await cluster_run.rollback(docs.url, plan, tmp_path)
    assert undone == {"restored": 0, "moved": DOCS, "finished": 0, "conflicts": []}
    assert docs.state(docs.new_prefix) == {}
    assert_same(before, docs.state())
    for name in (docs.prefix + "a-string", docs.prefix.replace(":doc:", ":other:1")):
        assert cluster.owner_client(name).get(name) == b"keep"


async def test_a_move_deletes_the_old_name_only_where_it_holds_what_was_dumped(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = load(cluster)
    before = docs.state()
    old, other = docs.keys[10], docs.keys[11]
    client, other_client = docs.client_of(old), docs.client_of(other)
    payload = client.dump(old)
    assert other_client.eval(cluster_step.DELETE_IF_DUMPED, 1, other, payload) == -1
    client.hset(old, "title", "written since the dump")
    assert client.eval(cluster_step.DELETE_IF_DUMPED, 1, old, payload) == -1
    assert client.exists(old)
    client.hset(old, "title", before[old][0][b"title"])

    # through the step, at the crash point between the RESTOREs and the DELs the
    # application writes one old name, deletes another, and writes a third under both
    # names: what it did wins (the written one moves as written, the deleted one is under
    # neither name); the third is left under both names and listed
    pairs = [(k, docs.moved(k)) for k in docs.keys[:40]]
    written = docs.keys[PLAIN + BINARY + 3]  # hash-tagged: its slot holds others too
    removed, both = docs.keys[41], docs.keys[42]
    pairs += [(k, docs.moved(k)) for k in (written, removed, both)]
    ttl_before = docs.client_of(written).pttl(written)

    def application(_: str) -> None:
        docs.client_of(written).hset(written, "title", "the application's")
        docs.client_of(removed).delete(removed)
        docs.client_of(both).hset(both, "title", "old name")
        docs.client_of(docs.moved(both)).hset(docs.moved(both), "title", "new name")

    monkeypatch.setattr(cluster_step, "crash_point", application)
    async with connect_cluster(docs.url) as connections:
        wire = ClusterWire(connections)
        moves = await cluster_step.move_pairs(wire, pairs, None)
        assert (moves.moved, moves.gone, moves.taken, moves.deleted) == (41, 0, [], 1), moves
        assert moves.rewritten == [(written, docs.moved(written))]
        assert moves.changed == [(both, docs.moved(both))]
        new_name = docs.moved(written)
        assert not docs.client_of(written).exists(written)
        moved = docs.client_of(new_name).hgetall(new_name)
        assert moved == {**before[written][0], b"title": b"the application's"}
        if ttl_before > 0:  # its TTL went with it
            assert 0 < docs.client_of(new_name).pttl(new_name) <= ttl_before
        else:
            assert docs.client_of(new_name).pttl(new_name) == -1
        assert not docs.client_of(removed).exists(removed)
        assert not docs.client_of(docs.moved(removed)).exists(docs.moved(removed))
        assert docs.client_of(both).hget(both, "title") == b"old name"
        assert docs.client_of(docs.moved(both)).hget(docs.moved(both), "title") == b"new name"
        # moved already: again finds them gone; back, and the names are as they were
        monkeypatch.setattr(cluster_step, "crash_point", lambda _: None)
        assert (await cluster_step.move_pairs(wire, pairs[:40], None)).gone == 40
        back = [(n, o) for o, n in [*pairs[:40], (written, new_name)]]
        assert (await cluster_step.move_pairs(wire, back, None)).moved == 41
        await wire.close()
    docs.client_of(docs.moved(both)).delete(docs.moved(both))
    after = docs.state()
    assert after.pop(written)[0][b"title"] == b"the application's"
    assert after.pop(both)[0][b"title"] == b"old name"
    for key in (written, removed, both):
        del before[key]
    assert_same(before, after)


async def test_collisions_are_refused_before_anything_moves(
    cluster: Cluster, tmp_path: Path
) -> None:
    docs = load(cluster)
    plan = make_plan(docs, reencode=False)
    before = docs.state()
    victim = docs.keys[42]
    planted = docs.moved(victim)
    async with connect_cluster(docs.url) as connections:
        # a key under the new prefix: refused before the backup
        docs.client_of(planted).hset(planted, "title", "someone else's")
        run = make_run(plan, tmp_path / "a", connections)
        (tmp_path / "a").mkdir()
        with pytest.raises(BadInputError, match="keys already exist under the new prefix"):
            await cluster_step.open_or_start(run, connections)
        docs.client_of(planted).delete(planted)

        (tmp_path / "b").mkdir()
        run = make_run(plan, tmp_path / "b", connections)
        await cluster_step.open_or_start(run, connections)
        await cluster_step.back_up(run, connections, 0.0)
        # a new name taken after the backup: refused before the drop, nothing moved
        docs.client_of(planted).hset(planted, "title", "someone else's")
        with pytest.raises(BadInputError, match=r"^1 document\(s\) cannot move .*nothing was"):
            await cluster_step.check_before_drop(run, connections)
        assert_same(before, docs.state())
        assert docs.state(docs.new_prefix) == {planted: ({b"title": b"someone else's"}, -1)}
        # taken during the move: nothing is overwritten
        docs.client_of(planted).delete(planted)
        await cluster_step.check_before_drop(run, connections)
        docs.client_of(planted).hset(planted, "title", "someone else's")
        with pytest.raises(KeyCollision, match="appeared during the run; nothing was overwritten"):
            await cluster_step.move_keys(run)
        # the step stops at the batch it met the collision in, its other keys moved
        at_old, at_new = docs.state(), docs.state(docs.new_prefix)
        assert victim in at_old and len(at_old) + len(at_new) == DOCS + 1
        assert all((k in at_old) != (docs.moved(k) in at_new) for k in docs.keys if k != victim)
        assert docs.client_of(planted).hgetall(planted) == {b"title": b"someone else's"}
        await run.wire.close()
        assert run.backups is not None
        run.backups.close()
    # the rollback leaves the planted key alone and names it
    undone = await cluster_run.rollback(docs.url, plan, tmp_path / "b")
    assert undone["conflicts"] == [planted.decode("latin-1")]
    assert_same(before, docs.state())


async def test_a_migrating_slot_is_refused_before_the_drop(
    cluster: Cluster, tmp_path: Path
) -> None:
    docs = load(cluster)
    plan = make_plan(docs)
    before = docs.state()
    key = docs.keys[0]
    source = cluster.owner(key)
    target = (source + 1) % len(cluster.nodes)
    slot = key_slot(key)
    async with connect_cluster(docs.url) as connections:
        run = make_run(plan, tmp_path, connections)
        await cluster_step.open_or_start(run, connections)
        await cluster_step.back_up(run, connections, 0.0)
        cluster.client(source).execute_command(
            "CLUSTER", "SETSLOT", slot, "MIGRATING", cluster.nodes[target].node_id
        )
        try:
            with pytest.raises(
                ClusterChanged, match=rf"not stable before the drop: .*migrating slot {slot} to"
            ):
                await cluster_step.check_before_drop(run, connections)
        finally:
            cluster.client(source).execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        assert_same(before, docs.state())
        assert docs.state(docs.new_prefix) == {}
        await cluster_step.check_before_drop(run, connections)  # settled: on it goes
        await run.wire.close()
        assert run.backups is not None
        run.backups.close()


# ---------------------------------------------------------------------------- SIGKILL


def run_steps(
    command: str, docs: Docs, plan: Path, backup: Path, crash_at: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDISMIGRATE_CRASH_AT"}
    if crash_at:
        env["REDISMIGRATE_CRASH_AT"] = crash_at
    return subprocess.run(
        [
            sys.executable, "-m", "tests.cluster_run", command, "--url", docs.url,
            "--plan", str(plan), "--backup-dir", str(backup), "--batch-size", str(BATCH),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("crash_at", "rollback_crash_at"),
    [
        ("during_backup:4", None),
        ("during_key_moves:3", "during_key_moves:2"),
        ("during_reencode:5", None),
    ],
)
def test_a_killed_step_resumes(
    cluster: Cluster, tmp_path: Path, crash_at: str, rollback_crash_at: str | None
) -> None:
    docs = load(cluster)
    plan = make_plan(docs)
    plan_path = tmp_path / "plan.yaml"
    plan.dump(plan_path)
    backup = tmp_path / "backup"
    before = docs.state()

    killed = run_steps("apply", docs, plan_path, backup, crash_at)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    resumed = run_steps("apply", docs, plan_path, backup)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["phase"] == "completed" and not result["skipped"]
    assert result["capture"] and result["quiet"] and result["foreign_events"] == 0
    if "key_moves" in crash_at:  # the batch cut short between its RESTOREs and DELs
        assert 0 < result["finished"] <= BATCH
    resumed_in = {"during_backup": "dump", "during_key_moves": "index_dropped"}
    assert result["started_in"] == resumed_in.get(crash_at.split(":")[0], "active")
    assert docs.state() == {}
    assert_same(
        before,
        docs.state(docs.new_prefix),
        rename=docs.moved,
        change=float16,
    )
    if rollback_crash_at:
        killed = run_steps("rollback", docs, plan_path, backup, rollback_crash_at)
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
        # cut short between the RESTOREs and the DELs of a batch: some documents are
        # back, some not yet, that batch's under both names
        back, left = docs.state(), docs.state(docs.new_prefix)
        assert all(k in back or docs.moved(k) in left for k in docs.keys)
        assert DOCS < len(back) + len(left) <= DOCS + BATCH
    rolled = run_steps("rollback", docs, plan_path, backup)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    undone = json.loads(rolled.stdout)
    assert undone["conflicts"] == []
    vectors = DOCS - DOCS // 13 - 1
    if rollback_crash_at:  # the first batch was put back before the kill
        assert 0 < undone["finished"] <= BATCH
        assert vectors - BATCH <= undone["restored"] < vectors
    else:
        assert undone["restored"] == vectors
    assert docs.state(docs.new_prefix) == {}
    assert_same(before, docs.state())
