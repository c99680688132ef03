"""The mode the planner picks when none is asked for (issue #15, What to build item 1):
online for re-encoding hash vectors where the shadow vectors and the shadow index fit
in the server's free memory, else drop_recreate, with a sentence in the plan saying
why. A plan where the planner chose online does not wait after its cut-over for the
application to write the new encoding (an idle application would hold it forever).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import redis
import yaml

from redismigrate.ftinfo import IndexStats
from redismigrate.integrity import plan_problems
from redismigrate.memory import MemoryRoom
from redismigrate.patch import SchemaPatch
from redismigrate.plan import DropRecreate, MigrationPlan, Online, build_plan
from redismigrate.schema import IndexSchema
from redismigrate.sync import MigrationExecutor
from tests.test_cli import cli
from tests.test_online_finish import assert_finished, info_name
from tests.test_online_reencode import (
    Application,
    float16_of,
    index_info,
    server,  # noqa: F401 - the module's own server (a fixture)
    start,
    write_patch,
)
from tests.test_plan_rules import REDIS_8_0, sample, source

GIB = 1 << 30
ROOMY = MemoryRoom(used=10 << 20, maxmemory=0, system=24 * GIB)


def default_plan(
    datatype: str = "float16",
    *,
    room: MemoryRoom | None = ROOMY,
    schema: IndexSchema | None = None,
    docs: int = 100_000,
    **kwargs: Any,
) -> MigrationPlan:
    patch = SchemaPatch.from_dict(
        {"changes": {"update_fields": [{"name": "embedding", "attrs": {"datatype": datatype}}]}}
    )
    return build_plan(
        source_schema=schema or source(),
        source_stats=IndexStats(num_docs=docs),
        key_sample=["doc:1"],
        capabilities=REDIS_8_0,
        patch=patch,
        vector_samples={"embedding": sample()},
        memory_room=room,
        **kwargs,
    )


def test_online_is_the_default_for_hash_reencoding_where_the_memory_fits() -> None:
    plan = default_plan()
    assert plan.supported
    assert isinstance(plan.mode, Online) and plan.mode.reencode is not None
    assert plan.mode.reencode.variant == "finish"
    assert plan.mode.reencode.wait_for_new_encoding is False
    assert plan.warnings[0].startswith("Mode online (chosen by the planner): zero downtime")
    assert "free under the machine's memory" in plan.warnings[0]
    assert any("does not wait for such a write" in w for w in plan.warnings)
    assert plan_problems(plan) == []
    # the file says so, for the reviewer
    assert "wait_for_new_encoding: false" in plan.to_yaml()


def test_an_explicit_online_plan_waits_for_the_application() -> None:
    plan = default_plan(mode="online")
    assert isinstance(plan.mode, Online) and plan.mode.reencode is not None
    assert plan.mode.reencode.wait_for_new_encoding is True
    assert "wait_for_new_encoding" not in plan.to_yaml()  # the default, as before
    assert not plan.warnings[0].startswith("Mode online (chosen")
    assert plan_problems(plan) == []


def test_drop_recreate_where_the_shadow_does_not_fit_under_maxmemory() -> None:
    tight = MemoryRoom(used=100 << 20, maxmemory=101 << 20)
    plan = default_plan(room=tight)
    assert isinstance(plan.mode, DropRecreate) and plan.supported
    note = plan.warnings[0]
    assert note.startswith("Mode drop_recreate (chosen by the planner): online re-encoding")
    assert "1.0 MB free under maxmemory, at most 80% of it used" in note
    # the same index with room enough goes online; a small one fits the tight room
    assert isinstance(default_plan(room=MemoryRoom(used=100 << 20, maxmemory=4 * GIB)).mode, Online)
    assert isinstance(default_plan(room=tight, docs=10).mode, Online)


def test_drop_recreate_where_the_memory_is_not_known_or_online_cannot_be_had() -> None:
    unknown = default_plan(room=None)
    assert isinstance(unknown.mode, DropRecreate)
    assert "free memory was not read" in unknown.warnings[0]
    # float16 -> bfloat16 keeps the byte length: the finish variant cannot tell a new
    # write from an old one, so the default falls back instead of blocking
    same_width = default_plan("bfloat16", schema=source(datatype="float16"))
    assert isinstance(same_width.mode, DropRecreate) and same_width.supported
    assert "same byte length" in same_width.warnings[0]
    # ... while asking for it keeps the block, and --keep-shadow-field allows it
    assert not default_plan("bfloat16", schema=source(datatype="float16"), mode="online").supported
    kept = default_plan("bfloat16", schema=source(datatype="float16"), keep_shadow_field=True)
    assert isinstance(kept.mode, Online) and kept.mode.reencode is not None
    assert kept.mode.reencode.variant == "keep_shadow_field"
    # a re-encoding with a field rename is drop_recreate, as before, with no note
    patch = SchemaPatch.from_dict(
        {
            "changes": {
                "update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}],
                "rename_fields": [{"old_name": "title", "new_name": "name"}],
            }
        }
    )
    renamed = build_plan(
        source_schema=source(),
        source_stats=IndexStats(num_docs=10),
        key_sample=["doc:1"],
        capabilities=REDIS_8_0,
        patch=patch,
        memory_room=ROOMY,
    )
    assert isinstance(renamed.mode, DropRecreate)
    assert not any(w.startswith("Mode ") for w in renamed.warnings)
    # JSON vectors are not rewritten: online, index-only, as before
    json_plan = default_plan(schema=source(storage="json"))
    assert isinstance(json_plan.mode, Online) and json_plan.mode.reencode is None


def test_turning_the_wait_on_after_review_is_caught() -> None:
    plan = default_plan()
    assert isinstance(plan.mode, Online) and plan.mode.reencode is not None
    edited = msgspec.structs.replace(
        plan,
        mode=msgspec.structs.replace(
            plan.mode,
            reencode=msgspec.structs.replace(plan.mode.reencode, wait_for_new_encoding=True),
        ),
    )
    assert any("content_hash" in p for p in plan_problems(edited))


# ------------------------------------------------------------------ on a live server


def test_a_default_plan_reencodes_online_and_an_idle_application_does_not_hold_it(
    server: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The operator plans with no --mode and applies with no flag: the run goes online,
    the application writes float32 until the cut-over and nothing after it, and the run
    finishes on its own, with zero failed queries and every document in float16."""
    client = redis.Redis.from_url(server, protocol=2)
    latest = start(client, "d_idx", "d:", 20_000)
    plan_path = tmp_path / "plan.yaml"
    made = cli(
        "plan", "--index", "d_idx", "--url", server, "--plan-out", str(plan_path),
        "--schema-patch", str(write_patch(tmp_path)),
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    assert "Mode online (chosen by the planner)" in made.stdout
    written = yaml.safe_load(plan_path.read_text())
    assert written["mode"]["name"] == "online"
    assert written["mode"]["reencode"]["wait_for_new_encoding"] is False
    plan = MigrationPlan.load(plan_path)
    app = Application(server, "d_idx", "d:", latest, deletes=True)
    switched = threading.Event()

    def progress(step: str, done: int, total: int | None) -> None:
        if step == "cut_over" and done == 1 and not switched.is_set():
            switched.set()
            app.stop_writer()  # the application goes quiet at the cut-over

    started = time.monotonic()
    with app:
        report = MigrationExecutor().apply(
            plan, redis_url=server, backup_dir=tmp_path / "b", progress_callback=progress
        )
    assert switched.is_set()
    assert time.monotonic() - started < 120
    assert report.succeeded, (report.error, report.validation)
    assert report.mode == "online" and report.downtime_seconds == 0
    assert app.failed == 0, app.errors
    assert app.incomplete == 0
    assert app.updates > 0 and app.inserted > 0 and app.deleted > 0
    done = report.online_reencode
    assert done is not None and done.stage == "done"
    assert done.finish_started_by == "the plan (online chosen by the planner: no wait)"
    assert_finished(client, "d_idx", "d:", latest)
    assert info_name(client, "d_idx") == "d_idx__rm2"


def test_a_tight_maxmemory_makes_the_default_drop_recreate(
    server: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    client = redis.Redis.from_url(server, protocol=2)
    start(client, "t_idx", "t:", 20_000)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", str(used + (1 << 20)))
    try:
        plan_path = tmp_path / "plan.yaml"
        made = cli(
            "plan", "--index", "t_idx", "--url", server, "--plan-out", str(plan_path),
            "--schema-patch", str(write_patch(tmp_path)),
        )  # fmt: skip
    finally:
        client.config_set("maxmemory", "0")
    assert made.returncode == 0, made.stdout + made.stderr
    assert "Mode drop_recreate (chosen by the planner)" in made.stdout
    assert "free under maxmemory" in made.stdout
    plan = MigrationPlan.load(plan_path)
    assert isinstance(plan.mode, DropRecreate) and plan.supported
    # with the limit lifted, the same patch plans online
    again = cli(
        "plan", "--index", "t_idx", "--url", server, "--plan-out", str(tmp_path / "p2.yaml"),
        "--schema-patch", str(write_patch(tmp_path)),
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert isinstance(MigrationPlan.load(tmp_path / "p2.yaml").mode, Online)


def test_a_default_online_run_finishes_while_the_application_keeps_the_old_encoding(
    server: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The application never switches: it writes float32 vectors (updates, inserts and
    deletes) through both switches. The run does not wait for it, rewrites every old-
    encoding write it sees, and ends with every document in float16; the final index's
    failure count, which the server never lowers, does not hold the switch or fail the
    validation."""
    client = redis.Redis.from_url(server, protocol=2)
    latest = start(client, "n_idx", "n:", 20_000)
    made = cli(
        "plan", "--index", "n_idx", "--url", server, "--plan-out", str(tmp_path / "p.yaml"),
        "--schema-patch", str(write_patch(tmp_path)),
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    plan = MigrationPlan.load(tmp_path / "p.yaml")
    assert isinstance(plan.mode, Online)
    app = Application(server, "n_idx", "n:", latest, deletes=True)
    stopped_at: list[str] = []

    def progress(step: str, done: int, total: int | None) -> None:
        if step == "unshadow" and not stopped_at:
            stopped_at.append(step)
            app.stop_writer()  # writes after the run's end are the application's own

    with app:
        report = MigrationExecutor().apply(
            plan, redis_url=server, backup_dir=tmp_path / "b", progress_callback=progress
        )
    assert stopped_at == ["unshadow"]
    assert report.succeeded, (report.error, report.validation)
    assert report.downtime_seconds == 0
    assert app.failed == 0, app.errors
    assert app.updates > 0 and app.inserted > 0 and app.deleted > 0
    found = set(client.scan_iter(match="n:*", count=5000))
    assert found == set(latest)
    keys = sorted(latest)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(key, "embedding", "embedding__rm")
    for key, (original, shadow) in zip(keys, pipe.execute(), strict=True):
        assert original == float16_of(latest[key]), key
        assert shadow is None, key
    info = index_info(client, "n_idx")
    assert int(info["num_docs"]) == len(latest)
    assert "FLOAT16" in str(info["attributes"])
    assert report.validation is not None and report.validation.passed
