"""Apply, rollback and online mode on a Redis Cluster with the search coordinator.

These run only where ``REDIS_CLUSTER_URL`` names a node of such a cluster (Redis 8 on
an OSS cluster: the search module answers on every primary and forwards FT.CREATE,
FT.DROPINDEX and FT.ALIAS* to every shard). Redis Stack 7.4, the embedded server, has no
coordinator; there tests/test_per_primary_path.py runs the same code path on a single
server taken as a cluster of one primary, and tests/test_cluster_keys.py the key-level
steps on a 3-primary Stack 7.4 cluster.

Every document is read back through a cluster client and compared byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from redis.cluster import RedisCluster

from redismigrate.backup import read_manifest
from redismigrate.plan import MigrationPlan
from redismigrate.report import MigrationReport

CLUSTER_URL = os.environ.get("REDIS_CLUSTER_URL", "")
pytestmark = pytest.mark.skipif(not CLUSTER_URL, reason="needs REDIS_CLUSTER_URL")

DOCS = 3000
DIMS = 16


def cluster_url() -> str:
    """The URL as a user names a cluster: redis+cluster:// (rediss+cluster:// for TLS)."""
    scheme, _, rest = CLUSTER_URL.partition("://")
    return f"{scheme.split('+')[0]}+cluster://{rest}"


@pytest.fixture
def cluster() -> Iterator[RedisCluster]:
    client = RedisCluster.from_url(CLUSTER_URL.replace("+cluster", ""), protocol=2)
    yield client
    client.close()


@pytest.fixture
def node() -> Iterator[redis.Redis]:
    """A plain RESP2 client of the named node, for FT.* (the coordinator forwards them)."""
    client = redis.Redis.from_url(CLUSTER_URL.replace("+cluster", ""), protocol=2)
    yield client
    client.close()


@pytest.fixture
def ns(cluster: RedisCluster, node: redis.Redis) -> Iterator[str]:
    """A fresh name; its keys and indexes are removed afterwards."""
    name = f"rmc{uuid.uuid4().hex[:8]}"
    yield name
    for index in node.execute_command("FT._LIST"):
        text = index.decode() if isinstance(index, bytes) else str(index)
        if text.startswith(name):
            node.execute_command("FT.DROPINDEX", text)
    for key in cluster.scan_iter(match=f"{name}*", count=1000, target_nodes=RedisCluster.PRIMARIES):
        cluster.delete(key)


def create_index(node: redis.Redis, name: str, prefix: str, datatype: str = "FLOAT32") -> None:
    node.execute_command(
        "FT.CREATE", name, "ON", "HASH", "PREFIX", "1", prefix, "SCHEMA",
        "title", "TEXT", "category", "TAG", "price", "NUMERIC",
        "embedding", "VECTOR", "FLAT", "6", "TYPE", datatype, "DIM", str(DIMS),
        "DISTANCE_METRIC", "COSINE",
    )  # fmt: skip


def load(cluster: RedisCluster, prefix: str) -> dict[bytes, dict[bytes, bytes]]:
    rng = np.random.default_rng(5)
    pipe = cluster.pipeline()
    for i in range(DOCS):
        key = f"{prefix}{i}"
        pipe.hset(
            key,
            mapping={
                "title": f"doc {i}",
                "category": "ab"[i % 2],
                "price": i,
                "embedding": rng.normal(size=DIMS).astype(np.float32).tobytes(),
            },
        )
        if i % 50 == 0:
            pipe.expire(key, 10_000)
    pipe.execute()
    return documents(cluster, prefix)


def documents(cluster: RedisCluster, prefix: str) -> dict[bytes, dict[bytes, bytes]]:
    keys = list(cluster.scan_iter(match=f"{prefix}*", count=1000, target_nodes=cluster.PRIMARIES))
    return {key: cluster.hgetall(key) for key in keys}


def with_ttl(cluster: RedisCluster, prefix: str) -> set[bytes]:
    return {
        key[len(prefix) :]
        for key in cluster.scan_iter(match=f"{prefix}*", count=1000, target_nodes=cluster.PRIMARIES)
        if cluster.ttl(key) > 0
    }


def num_docs(node: redis.Redis, name: str) -> int:
    info = node.execute_command("FT.INFO", name)
    return int(info[info.index(b"num_docs") + 1])


def cli(*args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDISMIGRATE_CRASH_AT"}
    if crash_at:
        env["REDISMIGRATE_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "redismigrate", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def plan(tmp_path: Path, index: str, changes: dict[str, Any], *extra: str) -> Path:
    patch = tmp_path / "patch.json"
    patch.write_text(json.dumps({"version": 1, "changes": changes}))
    out = tmp_path / "plan.yaml"
    made = cli(
        "plan", "--url", cluster_url(), "--index", index, "--schema-patch", str(patch),
        "--plan-out", str(out), *extra,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    return out


def expected_after(
    before: dict[bytes, dict[bytes, bytes]], old: str, new: str
) -> dict[bytes, dict[bytes, bytes]]:
    out = {}
    for key, doc in before.items():
        moved = {(b"headline" if k == b"title" else k): v for k, v in doc.items()}
        moved[b"embedding"] = (
            np.frombuffer(doc[b"embedding"], np.float32).astype(np.float16).tobytes()
        )
        out[new.encode() + key[len(old) :]] = moved
    return out


MOVE_RENAME_REENCODE = {
    "rename_fields": [{"old_name": "title", "new_name": "headline"}],
    "update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}],
}


@pytest.mark.parametrize(
    "crash_at", [None, "during_backup:2", "during_key_moves:3", "during_reencode:3"]
)
def test_apply_resume_and_rollback_on_a_coordinator_cluster(
    cluster: RedisCluster, node: redis.Redis, ns: str, tmp_path: Path, crash_at: str | None
) -> None:
    old, new = f"{ns}:d:", f"{ns}:e:"
    create_index(node, ns, old)
    before = load(cluster, old)
    ttl = with_ttl(cluster, old)
    assert len(before) == DOCS and ttl
    path = plan(tmp_path, ns, {**MOVE_RENAME_REENCODE, "index": {"prefix": new}})
    backup = tmp_path / "backup"
    report_file = tmp_path / "report.yaml"
    apply = ("apply", "--plan", str(path), "--backup-dir", str(backup), "--url", cluster_url(),
             "--batch-size", "100", "--report-out", str(report_file))  # fmt: skip
    if crash_at is not None:
        killed = cli(*apply, crash_at=crash_at)
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    done = cli(*apply)
    assert done.returncode == 0, done.stdout + done.stderr
    report = MigrationReport.load(report_file)
    assert report.result == "succeeded"
    primaries = len(cluster.get_primaries())
    manifest = read_manifest(backup / f"migration_backup_{ns}.manifest.json")
    assert manifest.nodes is not None and len(manifest.nodes) == primaries
    assert report.validation is not None
    assert len(report.validation.shards) == primaries
    assert sum(s.documents for s in report.validation.shards) == DOCS
    assert all(s.documents > 0 for s in report.validation.shards)  # the keys spread

    assert documents(cluster, old) == {}
    assert documents(cluster, new) == expected_after(before, old, new)
    assert with_ttl(cluster, new) == ttl
    assert num_docs(node, ns) == DOCS  # the coordinator's aggregate

    back = cli("rollback", "--backup-dir", str(backup), "--url", cluster_url(), "--recreate-index")
    assert back.returncode == 0, back.stdout + back.stderr
    assert documents(cluster, new) == {}
    assert documents(cluster, old) == before
    assert with_ttl(cluster, old) == ttl
    assert num_docs(node, ns) == DOCS


def test_online_index_change_cuts_over_in_steps_on_a_coordinator_cluster(
    cluster: RedisCluster, node: redis.Redis, ns: str, tmp_path: Path
) -> None:
    prefix = f"{ns}:o:"
    create_index(node, ns, prefix)
    before = load(cluster, prefix)
    path = plan(tmp_path, ns, {"add_fields": [{"name": "shelf", "type": "tag"}]})
    # search 8 refuses an alias named like an index: the plan says the name goes missing
    said = MigrationPlan.load(path).warnings
    assert any("the name resolves to no index" in w for w in said), said
    report_file = tmp_path / "report.yaml"
    done = cli("apply", "--plan", str(path), "--backup-dir", str(tmp_path / "b"), "--url",
               cluster_url(), "--report-out", str(report_file))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = MigrationReport.load(report_file)
    assert report.result == "succeeded" and report.downtime_seconds == 0
    assert any(w.startswith("The cut-over was not atomic") for w in report.warnings)
    info = node.execute_command("FT.INFO", ns)
    attributes = info[info.index(b"attributes") + 1]
    assert any(b"shelf" in attribute for attribute in attributes)
    assert num_docs(node, ns) == DOCS
    assert documents(cluster, prefix) == before  # an index-only change touches no document

    back = cli("rollback", "--backup-dir", str(tmp_path / "b"), "--url", cluster_url())
    assert back.returncode == 0, back.stdout + back.stderr
    info = node.execute_command("FT.INFO", ns)
    attributes = info[info.index(b"attributes") + 1]
    assert not any(b"shelf" in attribute for attribute in attributes)
    assert num_docs(node, ns) == DOCS


def test_online_reencoding_is_refused_on_a_coordinator_cluster(
    node: redis.Redis, cluster: RedisCluster, ns: str, tmp_path: Path
) -> None:
    create_index(node, ns, f"{ns}:r:")
    load(cluster, f"{ns}:r:")
    patch = tmp_path / "patch.json"
    patch.write_text(json.dumps({"version": 1, "changes": {"update_fields": [
        {"name": "embedding", "attrs": {"datatype": "float16"}}]}}))  # fmt: skip
    made = cli("plan", "--url", cluster_url(), "--index", ns, "--schema-patch", str(patch),
               "--plan-out", str(tmp_path / "p.yaml"), "--mode", "online")  # fmt: skip
    assert made.returncode == 3, made.stdout + made.stderr  # written, but blocked
    assert "Redis Cluster" in (tmp_path / "p.yaml").read_text()
    chosen = cli("plan", "--url", cluster_url(), "--index", ns, "--schema-patch", str(patch),
                 "--plan-out", str(tmp_path / "q.yaml"))  # fmt: skip
    assert chosen.returncode == 0, chosen.stdout + chosen.stderr
    chosen_plan = MigrationPlan.load(tmp_path / "q.yaml")
    assert chosen_plan.mode.__struct_config__.tag == "drop_recreate"
    assert "Redis Cluster" in chosen_plan.warnings[0]
