"""Online migrations: queries and writes go on while the index changes underneath."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from redismigrate.patch import SchemaPatch
from redismigrate.render import ft_create_args
from redismigrate.schema import IndexSchema
from redismigrate.server import EmbeddedRedis
from redismigrate.sync import MigrationExecutor, MigrationPlanner
from tests.test_cli import assert_one_line_error, cli

DOCS = 100_000
DIMS = 8
CHANGES = {
    "add_fields": [{"name": "brand", "type": "tag"}],
    "update_fields": [
        {"name": "price", "attrs": {"sortable": True}},
        {"name": "embedding", "attrs": {"algorithm": "hnsw", "m": 8, "ef_construction": 50}},
    ],
}


def schema_for(name: str, prefix: str) -> IndexSchema:
    return IndexSchema.from_dict(
        {
            "index": {"name": name, "prefix": prefix},
            "fields": [
                {"name": "title", "type": "text"},
                {"name": "price", "type": "numeric"},
                {
                    "name": "embedding",
                    "type": "vector",
                    "attrs": {"dims": DIMS, "algorithm": "flat", "distance_metric": "l2"},
                },
            ],
        }
    )


def load(client: redis.Redis, prefix: str, docs: int) -> None:
    rng = np.random.default_rng(2)
    for start in range(0, docs, 5000):
        vectors = rng.standard_normal((5000, DIMS), dtype=np.float32)
        pipe = client.pipeline(transaction=False)
        for i in range(min(5000, docs - start)):
            pipe.hset(
                f"{prefix}{start + i}",
                mapping={"title": "item", "price": i, "embedding": vectors[i].tobytes()},
            )
        pipe.execute()


def wait_indexed(client: redis.Redis, name: str) -> None:
    while True:
        info = client.ft(name).info()
        if str(info["indexing"]) == "0" and float(info["percent_indexed"]) >= 1.0:
            return
        time.sleep(0.05)


class Traffic:
    """A steady query loop and a writer adding documents, each in its own thread."""

    def __init__(self, url: str, name: str, prefix: str, *, write: bool = True) -> None:
        self.url, self.name, self.prefix = url, name, prefix
        self.stop = threading.Event()
        self.queries = self.failed = self.incomplete = 0
        self.errors: list[str] = []
        self.written: list[str] = []
        self.threads = [threading.Thread(target=self._query, daemon=True)]
        if write:
            self.threads.append(threading.Thread(target=self._write, daemon=True))

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def _query(self) -> None:
        client = redis.Redis.from_url(self.url, protocol=2)
        while not self.stop.is_set():
            self.queries += 1
            try:
                reply = client.execute_command(
                    "FT.SEARCH", self.name, "@title:item", "LIMIT", "0", "1"
                )
                if int(reply[0]) < DOCS:  # answered from a half-built index
                    self.incomplete += 1
            except redis.RedisError as exc:
                self.failed += 1
                if len(self.errors) < 5:
                    self.errors.append(str(exc))
            time.sleep(0.003)

    def _write(self) -> None:
        client = redis.Redis.from_url(self.url)
        number = 0
        while not self.stop.is_set():
            key = f"{self.prefix}new:{number}"
            client.hset(
                key,
                mapping={
                    "title": "fresh",
                    "price": number,
                    "embedding": np.ones(DIMS, dtype=np.float32).tobytes(),
                },
            )
            self.written.append(key)
            number += 1
            time.sleep(0.005)


def found_written(client: redis.Redis, name: str) -> set[str]:
    reply = client.execute_command(
        "FT.SEARCH", name, "@title:fresh", "NOCONTENT", "LIMIT", "0", "100000"
    )
    return {k.decode() for k in reply[1:]}


@pytest.fixture(scope="module")
def server() -> Any:
    with EmbeddedRedis() as own:
        assert own.info is not None
        yield own.info.url


def test_an_online_migration_under_load_has_no_failed_query_and_loses_no_write(
    server: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(server, protocol=2)
    client.flushall()
    schema = schema_for("live_idx", "live:")
    load(client, "live:", DOCS)
    client.execute_command(*ft_create_args(schema))
    wait_indexed(client, "live_idx")

    plan = MigrationPlanner().create_plan(
        "live_idx", redis_url=server, schema_patch=SchemaPatch.from_dict({"changes": CHANGES})
    )
    assert plan.mode.__struct_config__.tag == "online" and plan.supported
    with Traffic(server, "live_idx", "live:") as traffic:
        report = MigrationExecutor().apply(plan, redis_url=server, backup_dir=tmp_path / "b")
        time.sleep(0.3)  # traffic goes on against the new index too
    assert report.succeeded, (report.error, report.validation)
    assert report.downtime_seconds == 0
    assert traffic.queries > 100 and traffic.failed == 0, traffic.errors
    assert traffic.incomplete == 0  # never answered from a half-built index
    assert traffic.written and set(traffic.written) <= found_written(client, "live_idx")
    info = client.ft("live_idx").info()
    assert int(info["num_docs"]) == DOCS + len(traffic.written)
    assert [n.decode() for n in client.execute_command("FT._LIST")] == [plan.mode.shadow_index]  # type: ignore[union-attr]
    print(f"online: {traffic.queries} queries, 0 failed, {len(traffic.written)} writes")
    # the name is an alias now, and the tools say so
    listed = json.loads(cli("index", "list", "--url", server, "--json").stdout)
    assert listed == [
        {
            "name": plan.mode.shadow_index,  # type: ignore[union-attr]
            "aliases": ["live_idx"],
            "num_docs": DOCS + len(traffic.written),
            "storage_type": "hash",
        }
    ]
    info = json.loads(cli("index", "info", "--index", "live_idx", "--url", server, "--json").stdout)
    assert info["aliases"] == ["live_idx"]
    assert info["schema"]["index"]["name"] == plan.mode.shadow_index  # type: ignore[union-attr]

    # a second online migration on the same name (now an alias) leaves one physical index
    second = MigrationPlanner().create_plan(
        "live_idx",
        redis_url=server,
        schema_patch=SchemaPatch.from_dict(
            {
                "changes": {
                    "update_fields": [{"name": "embedding", "attrs": {"distance_metric": "cosine"}}]
                }
            }
        ),
    )
    assert second.source.physical_index == plan.mode.shadow_index  # type: ignore[union-attr]
    assert second.mode.shadow_index == "live_idx__rm2"  # type: ignore[union-attr]
    report2 = MigrationExecutor().apply(second, redis_url=server, backup_dir=tmp_path / "b2")
    assert report2.succeeded, report2.error
    assert [n.decode() for n in client.execute_command("FT._LIST")] == ["live_idx__rm2"]
    described = MigrationPlanner().create_plan(
        "live_idx", redis_url=server, schema_patch=SchemaPatch.from_dict({"changes": {}})
    )
    vector = described.source.schema_snapshot.field("embedding")
    assert vector is not None and vector.attrs.distance_metric == "cosine"  # type: ignore[union-attr]

    # and rollback swaps back to the previous schema under the same name
    rolled = cli("rollback", "--backup-dir", str(tmp_path / "b2"), "--url", server)
    assert rolled.returncode == 0, rolled.stderr
    back = MigrationPlanner().create_plan(
        "live_idx", redis_url=server, schema_patch=SchemaPatch.from_dict({"changes": {}})
    )
    vector = back.source.schema_snapshot.field("embedding")
    assert vector is not None and vector.attrs.distance_metric == "l2"  # type: ignore[union-attr]
    assert len(client.execute_command("FT._LIST")) == 1


def test_the_same_load_during_drop_recreate_counts_failed_queries(
    server: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(server, protocol=2)
    client.flushall()
    schema = schema_for("offline_idx", "off:")
    load(client, "off:", DOCS)
    client.execute_command(*ft_create_args(schema))
    wait_indexed(client, "offline_idx")
    plan = MigrationPlanner().create_plan(
        "offline_idx",
        redis_url=server,
        schema_patch=SchemaPatch.from_dict({"changes": CHANGES}),
        mode="drop_recreate",
    )
    # queries only: with writes going on, drop_recreate would (rightly) fail validation
    with Traffic(server, "offline_idx", "off:", write=False) as traffic:
        report = MigrationExecutor().apply(plan, redis_url=server, backup_dir=tmp_path / "b")
    assert report.succeeded, (report.error, report.validation)
    assert report.downtime_seconds > 0
    # the index was gone for a moment (queries failed), then half-built for longer
    # (queries answered with only part of the documents)
    assert traffic.failed + traffic.incomplete > 0
    print(
        f"drop_recreate: {traffic.queries} queries, {traffic.failed} failed, "
        f"{traffic.incomplete} incomplete, downtime {report.downtime_seconds:.2f} s"
    )


def test_online_refuses_when_the_shadow_will_not_fit_in_maxmemory(tmp_path: Path) -> None:
    with EmbeddedRedis(extra_args=["--maxmemory", "60mb"]) as small:
        assert small.info is not None
        url = small.info.url
        client = redis.Redis.from_url(url, protocol=2)
        load(client, "m:", 60_000)
        client.execute_command(*ft_create_args(schema_for("mem_idx", "m:")))
        wait_indexed(client, "mem_idx")
        patch = tmp_path / "patch.yaml"
        patch.write_text(
            "version: 1\nchanges:\n  update_fields:\n"
            "    - {name: embedding, attrs: {algorithm: hnsw, m: 64}}\n"
        )
        made = cli(
            "plan", "--index", "mem_idx", "--schema-patch", str(patch), "--url", url,
            "--plan-out", str(tmp_path / "plan.yaml"),
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        refused = cli(
            "apply", "--plan", str(tmp_path / "plan.yaml"), "--backup-dir",
            str(tmp_path / "b"), "--url", url,
        )  # fmt: skip
        # the preflight's memory check: the shadow index is the run's growth
        assert_one_line_error(refused, 5, "memory: the run needs about", "maxmemory")
        assert [n.decode() for n in client.execute_command("FT._LIST")] == ["mem_idx"]
