"""Online re-encoding, the ``finish`` variant (issue #15): after the cut-over the run
waits for the application's new encoding, rewrites every original in place (backed up
first), builds the final index on the original field, switches the name to it and
removes the shadow fields, all while a query loop and a writer run.

At the end every document holds float16 of its latest value in its original field
(float16 of what the application wrote in float32 before the cut-over, or the float16
it wrote after), no shadow field is left, and the index behind the name reads the
original field; zero failed queries, none answered from a half-built index.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

from redismigrate.aio.executor import report_path
from redismigrate.backup import VectorBackup
from redismigrate.patch import SchemaPatch
from redismigrate.plan import MigrationPlan, Online
from redismigrate.report import MigrationReport
from redismigrate.shadow import progress_path, read_progress
from redismigrate.sync import MigrationExecutor, MigrationPlanner
from tests.test_cli import cli
from tests.test_online_reencode import (
    DIMS,
    DOCS,
    SHADOW,
    SMALL,
    TO_FLOAT16,
    Application,
    apply_cli,
    finished,
    float16_of,
    index_info,
    server,  # noqa: F401 - the module's own server (a fixture)
    start,
    wait_for_stage,
    write_patch,
)

OLD_SIZE = 4 * DIMS
NEW_SIZE = 2 * DIMS


class SwitchingApplication(Application):
    """The application of tests/test_online_reencode.py, which writes float16 vectors
    into the original field from the moment ``switch_writes`` is called."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.new_encoding = False

    def switch_writes(self) -> None:
        self.new_encoding = True

    def _write(self) -> None:
        client = redis.Redis.from_url(self.url)
        rng = np.random.default_rng(13)
        keys = list(self.latest)
        number = 0
        turn = 0
        fresh = f"{self.prefix}n{os.urandom(3).hex()}:"  # keys no earlier writer used
        while not self.stop_writes.is_set():
            turn += 1
            value32 = rng.standard_normal(DIMS).astype(np.float32)
            value = value32.astype(np.float16).tobytes() if self.new_encoding else value32.tobytes()
            if turn % 3:
                key = keys[(turn * 7919) % len(keys)]
                client.hset(key, "embedding", value)
                self.latest[key] = value
                self.updates += 1
            else:
                key = f"{fresh}{number}".encode()
                number += 1
                client.hset(key, mapping={"title": "new", "price": 5, "embedding": value})
                self.latest[key] = value
                keys.append(key)
                self.inserted += 1
            time.sleep(0.002)
        client.close()


def make_finish_plan(url: str, index: str, path: Path | None = None) -> MigrationPlan:
    if path is not None:
        made = cli(
            "plan", "--index", index, "--mode", "online", "--url", url, "--plan-out", str(path),
            "--schema-patch", str(write_patch(path.parent)),
        )  # fmt: skip
        assert made.returncode == 0, made.stdout + made.stderr
        assert "Online re-encoding (finish)" in made.stdout
        plan = MigrationPlan.load(path)
    else:
        plan = MigrationPlanner().create_plan(
            index,
            redis_url=url,
            schema_patch=SchemaPatch.from_dict({"changes": TO_FLOAT16}),
            mode="online",
        )
    assert plan.supported, [str(b) for b in plan.diff_classification.blocked_reasons]
    assert isinstance(plan.mode, Online) and plan.mode.reencode is not None
    assert plan.mode.reencode.variant == "finish"
    return plan


def assert_finished(
    client: redis.Redis, name: str, prefix: str, latest: dict[bytes, bytes]
) -> None:
    """Every document holds the float16 of its latest value in ``embedding``, byte for
    byte, and no shadow field; no other key exists; the index behind ``name`` reads
    ``embedding`` as FLOAT16, indexes every document, and counted no failure."""
    found = set(client.scan_iter(match=f"{prefix}*", count=5000))
    assert found == set(latest), (len(found), len(latest))
    keys = sorted(latest)
    for first in range(0, len(keys), 5000):
        batch = keys[first : first + 5000]
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.hmget(key, "embedding", SHADOW)
        for key, (original, shadow) in zip(batch, pipe.execute(), strict=True):
            wanted = latest[key]
            if len(wanted) == OLD_SIZE:
                wanted = float16_of(wanted)
            assert original == wanted, key
            assert shadow is None, key
    info = index_info(client, name)
    assert int(info["hash_indexing_failures"]) == 0
    assert int(info["num_docs"]) == len(latest)
    attributes = str(info["attributes"])
    assert "FLOAT16" in attributes and "embedding__rm" not in attributes


def test_finish_under_queries_and_writes(server: str, tmp_path: Path) -> None:  # noqa: F811
    client = redis.Redis.from_url(server, protocol=2)
    latest = start(client, "f_idx", "f:", DOCS)
    plan = make_finish_plan(server, "f_idx")
    app = SwitchingApplication(server, "f_idx", "f:", latest, deletes=False)
    stages: list[str] = []

    def progress(step: str, done: int, total: int | None) -> None:
        if step == "cut_over" and done == 1:
            app.switch_writes()  # the application writes float16 from the switch on
        if not stages or stages[-1] != step:
            stages.append(step)

    with app:
        report = MigrationExecutor().apply(
            plan, redis_url=server, backup_dir=tmp_path / "b", progress_callback=progress
        )
        time.sleep(0.5)  # the application goes on querying and writing
        app.stop_writer()
    assert report.succeeded, (report.error, report.validation)
    assert report.mode == "online" and report.downtime_seconds == 0
    assert app.failed == 0, app.errors
    assert app.incomplete == 0  # never answered from a half-built index
    assert app.queries > 300 and app.updates > 0 and app.inserted > 0
    assert app.encoding_retries <= 2  # only the queries that met the first switch
    assert_finished(client, "f_idx", "f:", latest)
    assert info_name(client, "f_idx") == "f_idx__rm2"  # the final index, behind the name
    done = report.online_reencode
    assert done is not None and done.stage == "done" and done.variant == "finish"
    assert done.finish_started_by == "the application wrote the new encoding"
    assert done.counts.rewritten >= DOCS // 2  # most originals were rewritten in place
    assert done.counts.shadows_removed >= DOCS
    assert "rewrite" in stages and "unshadow" in stages
    # every original the rewrite replaced is in the backup, for rollback
    backup = VectorBackup.load(tmp_path / "b")
    assert backup.header.keys_backed_up >= done.counts.rewritten
    print(
        f"\nonline finish of {DOCS:,} docs: apply {report.total_seconds:.1f} s, downtime "
        f"{report.downtime_seconds} s; {app.summary()}; rewritten {done.counts.rewritten:,}, "
        f"shadows removed {done.counts.shadows_removed:,}; steps "
        + ", ".join(f"{t.step} {t.seconds:.2f}" for t in report.timings)
    )


def info_name(client: redis.Redis, name: str) -> str:
    value = index_info(client, name)["index_name"]
    return value.decode() if isinstance(value, bytes) else str(value)


def test_finish_killed_at_three_stages_ends_the_same(server: str, tmp_path: Path) -> None:  # noqa: F811
    client = redis.Redis.from_url(server, protocol=2)
    latest = start(client, "k_idx", "k:", DOCS)
    plan_path = tmp_path / "plan.yaml"
    make_finish_plan(server, "k_idx", plan_path)
    backup = tmp_path / "backup"
    with SwitchingApplication(server, "k_idx", "k:", latest, deletes=False) as app:
        # 1. killed in the backfill
        code, output = finished(
            apply_cli(
                server, plan_path, backup, "--postpone-cut-over", crash_at="during_backfill:8"
            )
        )
        assert code == -9, output
        time.sleep(0.3)
        # 2. killed while waiting for the operator's cut-over
        code, output = finished(
            apply_cli(
                server, plan_path, backup, "--postpone-cut-over", crash_at="awaiting_cut_over:4"
            )
        )
        assert code == -9, output
        header = read_progress(progress_path(backup, "k_idx"))
        assert header is not None and header.stage == "awaiting_cut_over"
        # 3. released, switched, the application writes float16; killed in the final build
        third = apply_cli(
            server, plan_path, backup, "--postpone-cut-over", crash_at="final_index:2"
        )
        wait_for_stage(backup, "k_idx", runs=3)
        released = cli("cut-over", "--index", "k_idx", "--url", server)
        assert released.returncode == 0, released.stderr
        deadline = time.monotonic() + 60
        while info_name(client, "k_idx") != "k_idx__rm1" and time.monotonic() < deadline:
            time.sleep(0.01)
        app.switch_writes()
        code, output = finished(third)
        assert code == -9, output
        header = read_progress(progress_path(backup, "k_idx"))
        assert header is not None and header.stage == "final_index" and header.switched
        assert header.final_index == "k_idx__rm2"
        time.sleep(0.3)  # writes while nobody mirrors
        code, output = finished(apply_cli(server, plan_path, backup))
        assert code == 0, output
        time.sleep(0.3)
        app.stop_writer()
    assert app.failed == 0, app.errors
    assert app.incomplete == 0
    assert_finished(client, "k_idx", "k:", latest)
    assert info_name(client, "k_idx") == "k_idx__rm2"
    report = MigrationReport.load(report_path(backup, "k_idx"))
    done = report.online_reencode
    assert report.succeeded and report.resumed and report.downtime_seconds == 0
    assert done is not None and done.stage == "done"
    assert "Online re-encoding (finish), stage done" in output
    checked = cli("validate", "--plan", str(plan_path), "--url", server)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_finish_goes_on_when_told_without_a_new_write(server: str, tmp_path: Path) -> None:  # noqa: F811
    """No application write after the switch: a second `cut-over` tells it to finish."""
    client = redis.Redis.from_url(server, protocol=2)
    latest = start(client, "n_idx", "n:", 2000)
    plan_path = tmp_path / "plan.yaml"
    make_finish_plan(server, "n_idx", plan_path)
    backup = tmp_path / "backup"
    run = apply_cli(server, plan_path, backup)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        header = read_progress(progress_path(backup, "n_idx"))
        if header is not None and header.stage == "awaiting_new_encoding":
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the run never waited for the new encoding")
    time.sleep(0.5)
    assert run.poll() is None  # it waits
    told = cli("cut-over", "--index", "n_idx", "--url", server)
    assert told.returncode == 0, told.stderr
    code, output = finished(run)
    assert code == 0, output
    assert "redismigrate cut-over" in output
    assert_finished(client, "n_idx", "n:", latest)


def test_same_width_encodings_need_keep_shadow_field(server: str) -> None:  # noqa: F811
    client = redis.Redis.from_url(server, protocol=2)
    rng = np.random.default_rng(1)
    for i in range(100):
        vector = rng.standard_normal(DIMS).astype(np.float16).tobytes()
        client.hset(f"w:{i}", mapping={"title": "t", "embedding": vector})
    client.execute_command(
        "FT.CREATE", "w_idx", "ON", "HASH", "PREFIX", "1", "w:", "SCHEMA", "title", "TEXT",
        "embedding", "VECTOR", "FLAT", "6", "TYPE", "FLOAT16", "DIM", str(DIMS),
        "DISTANCE_METRIC", "L2",
    )  # fmt: skip
    to_bf16 = {"update_fields": [{"name": "embedding", "attrs": {"datatype": "bfloat16"}}]}
    blocked = MigrationPlanner().create_plan(
        "w_idx", redis_url=server, schema_patch=SchemaPatch.from_dict({"changes": to_bf16}),
        mode="online",
    )  # fmt: skip
    assert not blocked.supported
    reason = str(blocked.diff_classification.blocked_reasons[0])
    assert "same byte length" in reason and "--keep-shadow-field" in reason
    kept = MigrationPlanner().create_plan(
        "w_idx", redis_url=server, schema_patch=SchemaPatch.from_dict({"changes": to_bf16}),
        mode="online", keep_shadow_field=True,
    )  # fmt: skip
    assert kept.supported
    assert isinstance(kept.mode, Online) and kept.mode.reencode is not None
    assert kept.mode.reencode.variant == "keep_shadow_field"


def float32_of(value: bytes) -> bytes:
    return np.frombuffer(value, dtype=np.float16).astype(np.float32).tobytes()


def assert_rolled_back(
    client: redis.Redis, name: str, prefix: str, latest: dict[bytes, bytes], source: Any
) -> None:
    """Every document holds its float32 again: the bytes the application last wrote in
    float32, byte for byte, or the float32 of the float16 it wrote after the cut-over;
    no shadow field; the name serves the source schema with no failure."""
    found = set(client.scan_iter(match=f"{prefix}*", count=5000))
    assert found == set(latest), (len(found), len(latest))
    keys = sorted(latest)
    for first in range(0, len(keys), 5000):
        batch = keys[first : first + 5000]
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.hmget(key, "embedding", SHADOW)
        for key, (original, shadow) in zip(batch, pipe.execute(), strict=True):
            wanted = latest[key]
            if len(wanted) == NEW_SIZE:
                wanted = float32_of(wanted)
            assert original == wanted, key
            assert shadow is None, key
    info = index_info(client, name)
    assert info["attributes"] == source
    assert int(info["hash_indexing_failures"]) == 0
    assert int(info["num_docs"]) == len(latest)


def test_rollback_of_a_finished_run_and_of_one_killed_after_the_second_switch(
    server: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    client = redis.Redis.from_url(server, protocol=2)
    latest = start(client, "r_idx", "r:", SMALL)
    source = index_info(client, "r_idx")["attributes"]
    plan = make_finish_plan(server, "r_idx")
    runs = (
        (None, tmp_path / "done"),
        ("during_unshadow:3", tmp_path / "unshadow"),
        ("final_index:2", tmp_path / "final"),
    )
    for crash_at, backup in runs:
        app = SwitchingApplication(server, "r_idx", "r:", latest, deletes=False)
        with app:
            if crash_at is None:

                def progress(
                    step: str, done: int, total: int | None, app: SwitchingApplication = app
                ) -> None:
                    if step == "cut_over" and done == 1:
                        app.switch_writes()

                report = MigrationExecutor().apply(
                    plan, redis_url=server, backup_dir=backup, progress_callback=progress
                )
                assert report.succeeded, (report.error, report.validation)
            else:
                plan_path = backup.with_suffix(".yaml")
                plan = make_finish_plan(server, "r_idx", plan_path)
                assert isinstance(plan.mode, Online)
                shadow = plan.mode.shadow_index
                run = apply_cli(server, plan_path, backup, crash_at=crash_at)
                deadline = time.monotonic() + 60
                while info_name(client, "r_idx") != shadow and time.monotonic() < deadline:
                    time.sleep(0.01)
                app.switch_writes()
                code, output = finished(run)
                assert code == -9, output
                header = read_progress(progress_path(backup, "r_idx"))
                stage = "removing_shadows" if crash_at.startswith("during") else "final_index"
                assert header is not None and header.stage == stage
            time.sleep(0.3)
            app.stop_writer()  # the application goes back to float32 with the rollback
            rolled = cli("rollback", "--backup-dir", str(backup), "--url", server)
            assert rolled.returncode == 0, rolled.stdout + rolled.stderr
            assert "put back from the backup" in rolled.stdout
            time.sleep(0.3)
        assert app.failed == 0, app.errors
        assert app.incomplete == 0
        assert app.encoding_retries >= 1  # KNN queries followed the switch back
        assert_rolled_back(client, "r_idx", "r:", latest, source)
        # the next migration starts from the source as it is now
        latest = {k: (v if len(v) == OLD_SIZE else float32_of(v)) for k, v in latest.items()}
        plan = make_finish_plan(server, "r_idx")


def test_finish_without_waiting_for_writes(server: str, tmp_path: Path) -> None:  # noqa: F811
    """An index nobody writes to: `apply --no-wait-for-writes` finishes right after the
    switch."""
    client = redis.Redis.from_url(server, protocol=2)
    latest = start(client, "q_idx", "q:", 2000)
    plan_path = tmp_path / "plan.yaml"
    make_finish_plan(server, "q_idx", plan_path)
    code, output = finished(
        apply_cli(server, plan_path, tmp_path / "backup", "--no-wait-for-writes"), timeout=120
    )
    assert code == 0, output
    assert "apply --no-wait-for-writes" in output
    assert_finished(client, "q_idx", "q:", latest)


def test_a_throttled_online_run_takes_at_least_n_over_the_rate(
    server: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    client = redis.Redis.from_url(server, protocol=2)
    count, rate = 10_000, 5000
    latest = start(client, "t_idx", "t:", count)
    plan = make_finish_plan(server, "t_idx")
    report = MigrationExecutor().apply(
        plan, redis_url=server, backup_dir=tmp_path / "b", max_rate=rate, wait_for_writes=False
    )
    assert report.succeeded, (report.error, report.validation)
    steps = {t.step: t.seconds for t in report.timings}
    # every pass over the documents (backfill, rewrite, shadow removal) is held to the
    # rate; the bucket lends at most a tenth of a second's worth
    for step in ("backfill", "rewrite", "unshadow"):
        assert steps[step] >= count / rate - 0.1, (step, steps[step])
    assert report.total_seconds >= 3 * count / rate - 0.3
    throttle = report.throttle
    assert throttle is not None and throttle.max_rate == rate
    assert throttle.throttled_seconds > count / rate
    assert_finished(client, "t_idx", "t:", latest)
