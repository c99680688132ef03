"""Rollback of the online re-encoding's ``finish`` variant, SIGKILLed part way and run
again (issue #15, item 4).

Each scenario applies the finish variant to done (the application switches its writes
to float16 at the cut-over), then runs ``redismigrate rollback`` with
``REDISMIGRATE_CRASH_AT`` at one of the rollback's stages, checks where the kill left
things, and runs rollback again. A query loop runs through both rollback runs.

At the end the name serves the source schema (FLOAT32) and no other index exists;
every document holds its pre-migration float32 bytes (or, for a vector the application
wrote in float16, the float32 of it), no shadow field is left, nothing failed to
index; no query failed, none was answered from a half-built index, and the KNN
queries met exactly two encoding changes (the final index's float16 at the start,
float32 when the name came back): a rerun never moves the name away from the source
once it serves it again. Where the kill left the name on the source, the application
writes float32 vectors (updates and inserts) before the rerun: the rerun keeps them
byte for byte and still removes every shadow. A second rollback after a successful one
changes nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis

from redismigrate.plan import Online
from redismigrate.shadow import progress_path, read_progress
from tests.test_cli import assert_one_line_error, cli
from tests.test_online_finish import (
    NEW_SIZE,
    OLD_SIZE,
    SwitchingApplication,
    assert_rolled_back,
    float32_of,
    info_name,
    make_finish_plan,
)
from tests.test_online_reencode import (
    SHADOW,
    Application,
    apply_cli,
    finished,
    index_info,
    server,  # noqa: F401 - the module's own server (a fixture)
    start,
)

INDEX = "rk_idx"
PREFIX = "rk:"
COUNT = 10_000
CRASH_ENV = "REDISMIGRATE_CRASH_AT"
# per scenario, the crash points of the killed rollback runs, in order
SCENARIOS = (
    ("rollback_shadows_written",),
    ("rollback_name_back",),
    ("rollback_restoring:3", "rollback_unshadowing:2"),  # killed twice
    ("rollback_source_built",),  # inside online.reverse: the rerun must use that index
    ("rollback_reversed",),
    ("rollback_unshadowing:4",),
)


def rows(client: redis.Redis, keys: list[bytes]) -> list[tuple[bytes | None, bytes | None]]:
    """Each key's (original, shadow)."""
    out: list[tuple[bytes | None, bytes | None]] = []
    for first in range(0, len(keys), 5000):
        pipe = client.pipeline(transaction=False)
        for key in keys[first : first + 5000]:
            pipe.hmget(key, "embedding", SHADOW)
        out += [(original, shadow) for original, shadow in pipe.execute()]
    return out


def everything(client: redis.Redis) -> dict[bytes, dict[bytes, bytes]]:
    """Every key under the prefix with all its fields, byte for byte."""
    keys = sorted(client.scan_iter(match=f"{PREFIX}*", count=5000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    return dict(zip(keys, pipe.execute(), strict=True))


def indexes(client: redis.Redis) -> set[str]:
    return {
        n.decode() if isinstance(n, bytes) else str(n) for n in client.execute_command("FT._LIST")
    }


def apply_to_done(
    client: redis.Redis, url: str, latest: dict[bytes, bytes], plan_path: Path, backup: Path
) -> None:
    """The finish variant applied with the CLI while the application writes: float32
    until the first switch, float16 from then on (which lets the run finish)."""
    plan = make_finish_plan(url, INDEX, plan_path)
    assert isinstance(plan.mode, Online)
    with SwitchingApplication(url, INDEX, PREFIX, latest, deletes=False) as app:
        run = apply_cli(url, plan_path, backup)
        deadline = time.monotonic() + 60
        while info_name(client, INDEX) != plan.mode.shadow_index and time.monotonic() < deadline:
            time.sleep(0.01)
        app.switch_writes()
        code, output = finished(run)
        assert code == 0, output
        time.sleep(0.2)
        app.stop_writer()  # the application goes back to float32 with the rollback
    assert app.failed == 0, app.errors
    header = read_progress(progress_path(backup, INDEX))
    assert header is not None and header.stage == "done" and header.final_index is not None
    assert info_name(client, INDEX) == header.final_index
    assert app.inserted > 0 and app.updates > 0


def check_killed(
    client: redis.Redis, point: str, backup: Path, keys: list[bytes], source: Any
) -> None:
    """Where a rollback killed at ``point`` left things (the kill was where it says)."""
    header = read_progress(progress_path(backup, INDEX))
    assert header is not None and header.switched, point
    rollback_index, final = header.rollback_index, header.final_index
    assert rollback_index is not None and final is not None, point
    found = rows(client, keys)
    behind = info_name(client, INDEX)
    old = sum(1 for original, _ in found if original is not None and len(original) == OLD_SIZE)
    shadows = sum(1 for _, shadow in found if shadow is not None)
    name = point.partition(":")[0]
    if name == "rollback_shadows_written":
        # every shadow is a copy of its original again; the name still on the final index
        assert behind == final
        assert rollback_index not in indexes(client)
        assert all(original is not None and len(original) == NEW_SIZE for original, _ in found)
        assert all(shadow == original for original, shadow in found)
    elif name == "rollback_name_back":
        # the shadow-reading index took the name, the final index is gone; no original
        # put back yet
        assert behind == rollback_index
        assert final not in indexes(client)
        assert old == 0 and shadows == len(keys)
    elif name == "rollback_restoring":
        # some originals put back, not all
        assert behind == rollback_index
        assert 0 < old < len(keys), old
        assert shadows == len(keys)
    elif name == "rollback_source_built":
        # the source schema is built beside the shadow-reading index, which still serves
        assert behind == rollback_index
        built = indexes(client) - {rollback_index}
        assert len(built) == 1, indexes(client)
        assert index_info(client, built.pop())["attributes"] == source
        assert old == len(keys) and shadows == len(keys)
    elif name == "rollback_reversed":
        # the source schema serves again; every original is float32, the shadows remain
        assert index_info(client, INDEX)["attributes"] == source
        assert behind not in (final, rollback_index)
        assert old == len(keys) and shadows == len(keys)
    else:
        assert name == "rollback_unshadowing", point
        assert index_info(client, INDEX)["attributes"] == source
        assert old == len(keys)
        assert 0 < shadows < len(keys), shadows


def test_rollback_killed_at_each_stage_ends_on_the_source(
    server: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    client = redis.Redis.from_url(server, protocol=2)
    latest = start(client, INDEX, PREFIX, COUNT)
    source = index_info(client, INDEX)["attributes"]
    notifications = client.config_get("notify-keyspace-events")
    for number, points in enumerate(SCENARIOS):
        backup = tmp_path / f"b{number}"
        apply_to_done(client, server, latest, tmp_path / f"plan{number}.yaml", backup)
        keys = sorted(latest)
        # the application queries only (it writes float32 again once rolled back)
        app = Application(server, INDEX, PREFIX, latest, deletes=False)
        app.stop_writes.set()
        with app:
            # KNN in float32 met the final index's float16 once
            assert app.encoding_retries == 1, app.summary()
            for point in points:
                killed = cli(
                    "rollback", "--backup-dir", str(backup), "--url", server,
                    env={CRASH_ENV: point}, timeout=180,
                )  # fmt: skip
                assert killed.returncode == -9, (point, killed.stdout, killed.stderr)
                check_killed(client, point, backup, keys, source)
            if points[-1].startswith(("rollback_reversed", "rollback_unshadowing")):
                # the name serves the source again: the application writes float32 again
                with Application(server, INDEX, PREFIX, latest, deletes=False) as writer:
                    time.sleep(0.5)
                assert writer.failed == 0 and writer.encoding_retries == 0, writer.summary()
                assert writer.updates > 0 and writer.inserted > 0, writer.summary()
            time.sleep(0.2)  # queries against what the kill left
            rolled = cli("rollback", "--backup-dir", str(backup), "--url", server, timeout=180)
            assert rolled.returncode == 0, (points, rolled.stdout, rolled.stderr)
            assert f"Rolled back {INDEX!r}" in rolled.stdout, rolled.stdout
            time.sleep(0.2)
        assert app.failed == 0, (points, app.errors)
        assert app.incomplete == 0, points  # never answered from a half-built index
        assert app.queries > 100, app.summary()
        # float16 (the final index, then the shadow-reading one), then float32 for good
        assert app.encoding_retries == 2, (points, app.summary())
        assert_rolled_back(client, INDEX, PREFIX, latest, source)
        assert indexes(client) == {info_name(client, INDEX)}  # no index left behind
        assert not progress_path(backup, INDEX).exists()  # kept as .rolled-back-<time>
        assert client.config_get("notify-keyspace-events") == notifications
        # the next migration starts from the source as it is now
        latest = {k: (v if len(v) == OLD_SIZE else float32_of(v)) for k, v in latest.items()}

    # a second rollback of the last backup: refused, nothing touched
    before = everything(client)
    assert set(before) == set(latest)
    served, info = info_name(client, INDEX), index_info(client, INDEX)
    for extra in ((), ("--index", INDEX)):
        again = cli("rollback", "--backup-dir", str(backup), "--url", server, *extra)
        assert_one_line_error(again, 2, "no backup")
        assert everything(client) == before
        assert indexes(client) == {served}
        now = index_info(client, INDEX)
        for field in ("attributes", "num_docs", "hash_indexing_failures"):
            assert now[field] == info[field], field
