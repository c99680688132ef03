"""Online re-encoding of hash vectors (issue #15, first milestone: keep_shadow_field).

float32 -> float16 while the index serves: a query loop (a KNN query, a filter query
and a `*` count, every few ms) and a writer (updates and inserts of float32 vectors)
run the whole time, against a server of the module's own. Every document is counted
and compared byte for byte: its original untouched (what the application last wrote),
its shadow the float16 of that. A SIGKILL at the backfill and while waiting for a
postponed cut-over, and rollback before and after the cut-over, end the same way.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from redismigrate.aio.executor import report_path
from redismigrate.aio.fastwire import Wire
from redismigrate.aio.planner import AsyncMigrationPlanner
from redismigrate.aio.shadow import (
    ShadowSpec,
    read_rows,
    remove_shadows,
    sync_shadows,
    write_shadows,
)
from redismigrate.commands import index_commands
from redismigrate.errors import BadInputError
from redismigrate.integrity import plan_problems
from redismigrate.patch import SchemaPatch
from redismigrate.plan import MigrationPlan, Online, seal_plan
from redismigrate.render import ft_create_args
from redismigrate.report import MigrationReport
from redismigrate.schema import IndexSchema
from redismigrate.server import EmbeddedRedis
from redismigrate.shadow import OnlineProgress, progress_path, read_progress, write_progress
from redismigrate.sync import MigrationExecutor, MigrationPlanner
from tests.test_cli import cli

DIMS = 16
DOCS = 100_000
SMALL = 20_000
TO_FLOAT16 = {"update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]}
SHADOW = b"embedding__rm"


@pytest.fixture(scope="module")
def server() -> Any:
    with EmbeddedRedis() as own:
        assert own.info is not None
        yield own.info.url


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
                    "attrs": {
                        "dims": DIMS,
                        "algorithm": "flat",
                        "datatype": "float32",
                        "distance_metric": "l2",
                    },
                },
            ],
        }
    )


def start(client: redis.Redis, name: str, prefix: str, count: int) -> dict[bytes, bytes]:
    """A fresh server holding ``count`` documents and their index; returns each key's
    float32 vector bytes."""
    client.flushall()
    rng = np.random.default_rng(7)
    latest: dict[bytes, bytes] = {}
    for first in range(0, count, 5000):
        vectors = rng.standard_normal((5000, DIMS), dtype=np.float32)
        pipe = client.pipeline(transaction=False)
        for i in range(first, min(first + 5000, count)):
            key = f"{prefix}{i}".encode()
            latest[key] = vectors[i - first].tobytes()
            pipe.hset(key, mapping={"title": "item", "price": i % 1000, "embedding": latest[key]})
        pipe.execute()
    client.execute_command(*ft_create_args(schema_for(name, prefix)))
    wait_indexed(client, name)
    return latest


def wait_indexed(client: redis.Redis, name: str) -> None:
    while True:
        info = client.ft(name).info()
        if str(info["indexing"]) == "0" and float(info["percent_indexed"]) >= 1.0:
            return
        time.sleep(0.05)


def float16_of(value: bytes) -> bytes:
    return np.frombuffer(value, dtype=np.float32).astype(np.float16).tobytes()


class Application:
    """What the application does while the index migrates: a query loop (KNN, filter,
    and a `*` count checked against the documents it knows exist) and a writer
    (updates and inserts of float32 vectors; with ``deletes``, deletions too), each in
    its own thread. The writer remembers what every key should hold."""

    def __init__(
        self, url: str, name: str, prefix: str, latest: dict[bytes, bytes], *, deletes: bool
    ) -> None:
        self.url, self.name, self.prefix, self.latest = url, name, prefix, latest
        self.deletes = deletes
        self.initial = len(latest)
        self.inserted = 0  # inserts completed
        self.deleting = 0  # deletes started
        self.updates = self.deleted = 0
        self.queries = self.failed = self.incomplete = 0
        self.encoding_retries = 0  # KNN queries re-sent in the other encoding at a switch
        self.errors: list[str] = []
        self.stop_queries = threading.Event()
        self.stop_writes = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._query, daemon=True),
            threading.Thread(target=self._write, daemon=True),
        ]

    def __enter__(self) -> Application:
        for thread in self.threads:
            thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_writer()
        self.stop_queries.set()
        self.threads[0].join(timeout=30)

    def stop_writer(self) -> None:
        """The application stops writing float32 vectors (it switches at the cut-over)."""
        self.stop_writes.set()
        self.threads[1].join(timeout=30)

    def _query(self) -> None:
        client = redis.Redis.from_url(self.url, protocol=2)
        probe = np.random.default_rng(3).standard_normal(DIMS).astype(np.float32)
        encoding: Any = np.float32
        turn = 0
        while not self.stop_queries.is_set():
            turn += 1
            self.queries += 1
            try:
                if turn % 3 == 0:
                    known = self.initial + self.inserted
                    reply = client.execute_command("FT.SEARCH", self.name, "*", "LIMIT", "0", "0")
                    if int(reply[0]) < known - self.deleting:  # a half-built index
                        self.incomplete += 1
                elif turn % 3 == 1:
                    client.execute_command(
                        "FT.SEARCH", self.name, "@price:[10 20]", "LIMIT", "0", "3"
                    )
                else:
                    try:
                        self._knn(client, probe, encoding)
                    except redis.ResponseError as exc:
                        if "blob size" not in str(exc):
                            raise
                        # the index behind the name switched encodings: so does the query
                        encoding = np.float16 if encoding is np.float32 else np.float32
                        self.encoding_retries += 1
                        self._knn(client, probe, encoding)
            except redis.RedisError as exc:
                self.failed += 1
                if len(self.errors) < 5:
                    self.errors.append(str(exc))
            time.sleep(0.003)
        client.close()

    def _knn(self, client: redis.Redis, probe: np.ndarray, encoding: Any) -> None:
        reply = client.execute_command(
            "FT.SEARCH", self.name, "*=>[KNN 5 @embedding $v]", "PARAMS", "2", "v",
            probe.astype(encoding).tobytes(), "NOCONTENT", "DIALECT", "2",
        )  # fmt: skip
        assert int(reply[0]) == 5, reply

    def _write(self) -> None:
        client = redis.Redis.from_url(self.url)
        rng = np.random.default_rng(11)
        pick = random.Random(5)
        keys = list(self.latest)
        number = 0
        fresh = f"{self.prefix}w{os.urandom(3).hex()}:"  # keys no earlier writer used
        while not self.stop_writes.is_set():
            roll = pick.random()
            value = rng.standard_normal(DIMS).astype(np.float32).tobytes()
            if roll < 0.6:
                key = pick.choice(keys)
                if key in self.latest:
                    client.hset(key, "embedding", value)
                    self.latest[key] = value
                    self.updates += 1
            elif roll < 0.9 or not self.deletes:
                key = f"{fresh}{number}".encode()
                number += 1
                client.hset(key, mapping={"title": "new", "price": 5, "embedding": value})
                self.latest[key] = value
                keys.append(key)
                self.inserted += 1
            else:
                key = pick.choice(keys)
                if key in self.latest:
                    self.deleting += 1
                    del self.latest[key]
                    client.delete(key)
                    self.deleted += 1
            time.sleep(0.002)
        client.close()

    def summary(self) -> str:
        return (
            f"{self.queries:,} queries, {self.failed} failed, {self.incomplete} from a "
            f"half-built index, {self.encoding_retries} KNN re-sent in the new encoding; "
            f"writes: {self.updates:,} updates, {self.inserted:,} inserts, {self.deleted:,} "
            "deletes"
        )


def assert_documents(
    client: redis.Redis, prefix: str, latest: dict[bytes, bytes], *, shadows: bool
) -> None:
    """Every document holds the float32 the application last wrote, byte for byte, and
    (``shadows``) its float16 in the shadow field, or (not) no shadow field at all;
    deleted documents stayed deleted, and no other key exists."""
    found = set(client.scan_iter(match=f"{prefix}*", count=5000))
    assert found == set(latest), (len(found), len(latest))
    keys = sorted(latest)
    for first in range(0, len(keys), 5000):
        batch = keys[first : first + 5000]
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.hmget(key, "embedding", SHADOW)
        for key, (original, shadow) in zip(batch, pipe.execute(), strict=True):
            assert original == latest[key], key
            if shadows:
                assert shadow == float16_of(original), key
            else:
                assert shadow is None, key


def index_info(client: redis.Redis, name: str) -> dict[str, Any]:
    reply = client.execute_command("FT.INFO", name)
    return {
        (k.decode() if isinstance(k, bytes) else k): v
        for k, v in zip(reply[::2], reply[1::2], strict=True)
    }


def apply_cli(
    url: str, plan: Path, backup: Path, *extra: str, crash_at: str | None = None
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDISMIGRATE_CRASH_AT"}
    if crash_at:
        env["REDISMIGRATE_CRASH_AT"] = crash_at
    return subprocess.Popen(
        [
            sys.executable, "-m", "redismigrate", "apply", "--plan", str(plan),
            "--backup-dir", str(backup), "--url", url, *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip


def finished(process: subprocess.Popen[str], timeout: float = 180) -> tuple[int, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out + err


def wait_for_stage(backup: Path, index: str, runs: int, timeout: float = 120) -> None:
    """Until the ``runs``-th run of the migration waits for the operator's cut-over."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        header = read_progress(progress_path(backup, index))
        if header is not None and header.runs == runs and header.awaiting_since is not None:
            return
        time.sleep(0.05)
    raise AssertionError(f"run {runs} never waited for the cut-over")


def make_plan(url: str, index: str, path: Path | None = None) -> MigrationPlan:
    if path is not None:  # as an operator does
        made = cli(
            "plan", "--index", index, "--mode", "online", "--url", url, "--plan-out", str(path),
            "--schema-patch", str(write_patch(path.parent)), "--keep-shadow-field",
        )  # fmt: skip
        assert made.returncode == 0, made.stdout + made.stderr
        assert "Online re-encoding (keep_shadow_field)" in made.stdout
        plan = MigrationPlan.load(path)
    else:
        plan = MigrationPlanner().create_plan(
            index,
            redis_url=url,
            schema_patch=SchemaPatch.from_dict({"changes": TO_FLOAT16}),
            mode="online",
            keep_shadow_field=True,
        )
    assert plan.supported, [str(b) for b in plan.diff_classification.blocked_reasons]
    assert isinstance(plan.mode, Online) and plan.mode.reencode is not None
    assert plan.mode.reencode.variant == "keep_shadow_field"
    return plan


def write_patch(directory: Path) -> Path:
    patch = directory / "to_float16.yaml"
    patch.write_text(
        "version: 1\nchanges:\n  update_fields:\n"
        "    - {name: embedding, attrs: {datatype: float16}}\n"
    )
    return patch


# --------------------------------------------------------------------------- (a)


def test_float32_to_float16_online_under_queries_and_writes(server: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(server, protocol=2)
    latest = start(client, "a_idx", "a:", DOCS)
    plan = make_plan(server, "a_idx")
    app = Application(server, "a_idx", "a:", latest, deletes=False)
    switched: list[float] = []

    def progress(step: str, done: int, total: int | None) -> None:
        if step == "cut_over" and done == 0:
            app.stop_writer()  # the application switches its writes at the cut-over
        if step == "cut_over" and done == 1:
            switched.append(time.monotonic())

    began = time.monotonic()
    with app:
        report = MigrationExecutor().apply(
            plan, redis_url=server, backup_dir=tmp_path / "b", progress_callback=progress
        )
        time.sleep(0.5)  # the application goes on querying the new index
    took = time.monotonic() - began
    assert report.succeeded, (report.error, report.validation)
    assert report.mode == "online" and report.downtime_seconds == 0
    assert app.failed == 0, app.errors
    assert app.incomplete == 0  # never answered from a half-built index
    assert app.queries > 300 and app.updates > 0 and app.inserted > 0
    assert app.encoding_retries <= 2  # only the queries that met the switch
    assert_documents(client, "a:", latest, shadows=True)
    # the name is an alias of the shadow index, which reads the shadow field
    info = index_info(client, "a_idx")
    assert info["index_name"] == b"a_idx__rm1"
    assert int(info["hash_indexing_failures"]) == 0
    assert int(info["num_docs"]) == len(latest)
    assert b"embedding__rm" in str(info["attributes"]).encode()
    done = report.online_reencode
    assert done is not None and done.stage == "done" and done.capture == "notifications"
    assert done.counts.backfilled >= DOCS and done.counts.mirrored > 0
    assert done.counts.missing == 0 and done.counts.malformed == 0
    assert 0 < done.writes_seen <= app.updates + app.inserted  # some came before capture
    print(
        f"\nonline re-encode of {DOCS:,} docs: apply {report.total_seconds:.1f} s "
        f"({took:.1f} s with the traffic), downtime {report.downtime_seconds} s; "
        f"{app.summary()}; backfilled "
        f"{done.counts.backfilled:,}, mirrored {done.counts.mirrored:,} "
        f"({done.mirrored_after_switch} after the switch), skipped {done.counts.skipped}, "
        f"lag at the switch {done.lag_at_cut_over}; steps "
        + ", ".join(f"{t.step} {t.seconds:.2f}" for t in report.timings)
    )


# --------------------------------------------------------------------------- (b)


def test_killed_at_the_backfill_and_while_waiting_for_the_cut_over(
    server: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(server, protocol=2)
    latest = start(client, "b_idx", "b:", SMALL)
    plan_path = tmp_path / "plan.yaml"
    make_plan(server, "b_idx", plan_path)
    backup = tmp_path / "backup"
    with Application(server, "b_idx", "b:", latest, deletes=True) as app:
        code, output = finished(
            apply_cli(
                server, plan_path, backup, "--postpone-cut-over", crash_at="during_backfill:8"
            )
        )
        assert code == -9, output
        header = read_progress(progress_path(backup, "b_idx"))
        assert header is not None and header.stage == "backfill" and not header.switched
        time.sleep(0.5)  # the application writes while no run mirrors
        code, output = finished(
            apply_cli(
                server, plan_path, backup, "--postpone-cut-over", crash_at="awaiting_cut_over:4"
            )
        )
        assert code == -9, output
        header = read_progress(progress_path(backup, "b_idx"))
        assert header is not None and header.stage == "awaiting_cut_over" and header.runs == 2
        assert index_info(client, "b_idx")["index_name"] == b"b_idx"  # not switched
        time.sleep(0.5)
        final = apply_cli(server, plan_path, backup, "--postpone-cut-over")
        wait_for_stage(backup, "b_idx", runs=3)
        time.sleep(0.5)  # it mirrors while it waits
        assert index_info(client, "b_idx")["index_name"] == b"b_idx"
        app.stop_writer()  # the application switches its writes at the cut-over
        released = cli("cut-over", "--index", "b_idx", "--url", server)
        assert released.returncode == 0, released.stderr
        assert "cut-over of 'b_idx' requested" in released.stdout
        code, output = finished(final)
        assert code == 0, output
        time.sleep(0.3)
    assert app.failed == 0, app.errors
    assert app.incomplete == 0
    assert app.deleted > 0 and app.inserted > 0 and app.updates > 0
    assert_documents(client, "b:", latest, shadows=True)
    info = index_info(client, "b_idx")
    assert info["index_name"] == b"b_idx__rm1"
    assert int(info["hash_indexing_failures"]) == 0 and int(info["num_docs"]) == len(latest)
    report = MigrationReport.load(report_path(backup, "b_idx"))
    done = report.online_reencode
    assert report.succeeded and report.resumed and report.downtime_seconds == 0
    assert done is not None and done.cut_over == "postponed: redismigrate cut-over"
    assert done.gaps_swept >= 1 and done.counts.swept > 0  # the gap was closed by a sweep
    assert "Online re-encoding (keep_shadow_field), stage done" in output
    header = read_progress(progress_path(backup, "b_idx"))
    assert header is not None and header.stage == "done" and header.runs == 3
    checked = cli("validate", "--plan", str(plan_path), "--url", server)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    print(
        f"\nkilled twice, resumed: {app.summary()}; swept {done.counts.swept:,}, "
        f"mirrored {done.counts.mirrored:,}, waited {done.waited_for_cut_over_seconds} s"
    )


# --------------------------------------------------------------------------- (c)


def test_rollback_before_and_after_the_cut_over(server: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(server, protocol=2)
    latest = start(client, "c_idx", "c:", SMALL)
    source = index_info(client, "c_idx")["attributes"]
    plan_path = tmp_path / "plan.yaml"
    make_plan(server, "c_idx", plan_path)
    before = tmp_path / "before"
    # before the cut-over: a run killed while it waits, rolled back while the
    # application queries and writes
    with Application(server, "c_idx", "c:", latest, deletes=True) as app:
        code, output = finished(
            apply_cli(
                server, plan_path, before, "--postpone-cut-over", crash_at="awaiting_cut_over:3"
            )
        )
        assert code == -9, output
        assert client.hexists(next(iter(latest)), SHADOW)
        assert len(client.execute_command("FT._LIST")) == 2
        rolled = cli("rollback", "--backup-dir", str(before), "--url", server)
        assert rolled.returncode == 0, rolled.stdout + rolled.stderr
        assert "shadow field value(s) removed" in rolled.stdout
        app.stop_writer()
    assert app.failed == 0 and app.incomplete == 0, app.errors
    assert [n.decode() for n in client.execute_command("FT._LIST")] == ["c_idx"]
    assert index_info(client, "c_idx")["attributes"] == source
    assert_documents(client, "c:", latest, shadows=False)
    print(f"\nrolled back before the cut-over: {app.summary()}")

    # after the cut-over: a finished run rolled back while the application queries
    after = tmp_path / "after"
    plan = make_plan(server, "c_idx")
    app = Application(server, "c_idx", "c:", latest, deletes=True)

    def progress(step: str, done: int, total: int | None) -> None:
        if step == "cut_over" and done == 0:
            app.stop_writer()

    with app:
        report = MigrationExecutor().apply(
            plan, redis_url=server, backup_dir=after, progress_callback=progress
        )
        assert report.succeeded, (report.error, report.validation)
        assert index_info(client, "c_idx")["index_name"] == b"c_idx__rm1"
        rolled = cli("rollback", "--backup-dir", str(after), "--url", server)
        assert rolled.returncode == 0, rolled.stdout + rolled.stderr
        time.sleep(0.3)
    assert app.failed == 0 and app.incomplete == 0, app.errors
    assert app.encoding_retries >= 1  # the KNN queries followed both switches
    info = index_info(client, "c_idx")
    assert info["index_name"] == b"c_idx__rm2"  # the source schema under a new name
    assert info["attributes"] == source
    assert int(info["num_docs"]) == len(latest)
    assert [n.decode() for n in client.execute_command("FT._LIST")] == ["c_idx__rm2"]
    assert_documents(client, "c:", latest, shadows=False)
    print(f"rolled back after the cut-over: {app.summary()}")


# --------------------------------------------------------------------------- guarded


async def test_a_shadow_is_written_only_over_the_bytes_that_were_read(server: str) -> None:
    sync = redis.Redis.from_url(server)
    latest = start(sync, "g_idx", "g:", 300)
    plan = await AsyncMigrationPlanner().create_plan(
        "g_idx",
        redis_client=(client := aioredis.Redis.from_url(server)),
        schema_patch=SchemaPatch.from_dict({"changes": TO_FLOAT16}),
        mode="online",
    )
    specs = ShadowSpec.for_plan(plan)
    wire = Wire(client)
    keys = sorted(latest)[:3]
    try:
        rows = await read_rows(wire, keys, specs)
        # the application, between the read and the write: updates one, deletes one
        new = np.full(DIMS, 0.5, dtype=np.float32).tobytes()
        sync.hset(keys[0], "embedding", new)
        sync.delete(keys[1])
        found = await write_shadows(wire, keys, rows, specs, None)
        assert (found.written, found.missing, found.skipped) == (1, 1, [keys[0]])
        assert sync.hget(keys[0], SHADOW) is None  # not the encoding of a replaced value
        assert not sync.exists(keys[1])  # a deleted document is not recreated
        assert sync.hget(keys[2], SHADOW) == float16_of(latest[keys[2]])
        # read again, the updated one gets the encoding of its new value
        found = await sync_shadows(wire, keys, specs, None)
        assert (found.written, found.already, found.missing) == (1, 1, 1)
        assert sync.hget(keys[0], SHADOW) == float16_of(new)
        # after a cut-over a rollback removes only what the migrator would write; a
        # shadow the application wrote itself is left and named
        sync.hset(keys[2], SHADOW, b"\x01" * (2 * DIMS))
        out = await remove_shadows(wire, keys, specs, only_our_encoding=True)
        assert (out.removed, out.left) == (1, [keys[2]])
        out = await remove_shadows(wire, keys, specs, only_our_encoding=False)
        assert out.removed == 1 and not sync.hexists(keys[2], SHADOW)
    finally:
        await wire.close()
        await client.aclose()


# --------------------------------------------------------------------------- plans


def test_online_mode_takes_hash_reencoding_only(server: str) -> None:
    client = redis.Redis.from_url(server, protocol=2)
    start(client, "p_idx", "p:", 200)
    plan = make_plan(server, "p_idx")
    assert plan_problems(plan) == []
    # the shadow index reads the shadow field under the public name
    create = index_commands(plan)[0]
    assert create[:2] == ["FT.CREATE", "p_idx__rm1"]
    assert "embedding__rm" in create and create[create.index("embedding__rm") + 1] == "AS"
    # an edit of the shadow field after review is refused
    assert isinstance(plan.mode, Online) and plan.mode.reencode is not None
    field = _replace(plan.mode.reencode.fields[0], shadow_field="title")
    edited = _replace(plan.mode.reencode, fields=[field])
    tampered = seal_plan(_replace(plan, mode=_replace(plan.mode, reencode=edited)))
    assert any("mode.reencode" in p for p in plan_problems(tampered))
    # renames and prefix changes still need drop_recreate; the default is online (the
    # memory fits), finishing without waiting for the application (tests/test_default_mode.py)
    for changes in (
        {**TO_FLOAT16, "rename_fields": [{"old_name": "title", "new_name": "name"}]},
        {**TO_FLOAT16, "index": {"prefix": "p2:"}},
    ):
        blocked = MigrationPlanner().create_plan(
            "p_idx",
            redis_url=server,
            schema_patch=SchemaPatch.from_dict({"changes": changes}),
            mode="online",
        )
        assert not blocked.supported
        assert "online mode" in str(blocked.diff_classification.blocked_reasons[0])
    default = MigrationPlanner().create_plan(
        "p_idx", redis_url=server, schema_patch=SchemaPatch.from_dict({"changes": TO_FLOAT16})
    )
    assert isinstance(default.mode, Online) and default.mode.reencode is not None
    assert default.mode.reencode.wait_for_new_encoding is False


def test_the_progress_header_refuses_an_edit(tmp_path: Path) -> None:
    path = tmp_path / "h.online.json"
    header = OnlineProgress(
        index_name="i",
        plan_hash="sha256:x",
        shadow_index="i__rm1",
        stage="mirroring",
        started_at="t",
        updated_at="t",
    )
    write_progress(path, header)
    assert read_progress(path) == header
    path.write_text(path.read_text().replace('"mirroring"', '"switched"'))
    with pytest.raises(BadInputError, match="checksum"):
        read_progress(path)


def _replace(struct: Any, **changes: Any) -> Any:
    return msgspec.structs.replace(struct, **changes)
