"""The preflight: refused before anything is written, against the real server.

Each drill counts every document before and after and compares them byte for byte.
The memory and eviction drills change maxmemory, so they run on a server of their own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from redismigrate.ftinfo import stats_from_ft_info
from redismigrate.preflight import (
    DISK_RESERVE_BYTES,
    data_check,
    disk_check,
    eviction_check,
    memory_check,
)
from redismigrate.report import MigrationReport
from redismigrate.server import EmbeddedRedis

DIMS = 64


# ----------------------------------------------------------------------------- pure rules


def test_memory_rule_blocks_growth_beyond_the_margin() -> None:
    mb = 1 << 20
    fits = memory_check(
        growth_bytes=7 * mb, used_bytes=90 * mb, maxmemory=100 * mb, writes_documents=True
    )
    assert fits.status == "pass"
    over = memory_check(
        growth_bytes=9 * mb, used_bytes=90 * mb, maxmemory=100 * mb, writes_documents=True
    )
    assert over.status == "block" and "maxmemory" in over.detail
    frees = memory_check(
        growth_bytes=-5 * mb, used_bytes=99 * mb, maxmemory=100 * mb, writes_documents=True
    )
    assert frees.status == "pass"
    unlimited = memory_check(growth_bytes=5 * mb, used_bytes=0, maxmemory=0, writes_documents=True)
    assert unlimited.status == "warn"


def test_eviction_rule() -> None:
    assert (
        eviction_check(policy="noeviction", writes_documents=True, allow_eviction=False).status
        == "pass"
    )
    assert (
        eviction_check(policy="allkeys-lru", writes_documents=True, allow_eviction=False).status
        == "block"
    )
    assert (
        eviction_check(policy="volatile-ttl", writes_documents=True, allow_eviction=True).status
        == "warn"
    )
    assert (
        eviction_check(policy="allkeys-lfu", writes_documents=False, allow_eviction=False).status
        == "pass"
    )


def test_disk_rule() -> None:
    assert (
        disk_check(needed_bytes=10, free_bytes=DISK_RESERVE_BYTES + 100, path="/x").status == "pass"
    )
    assert (
        disk_check(needed_bytes=10, free_bytes=DISK_RESERVE_BYTES - 1, path="/x").status == "block"
    )
    assert disk_check(needed_bytes=10, free_bytes=None, path="/x").status == "warn"


def test_data_rule() -> None:
    assert data_check(malformed=0, missing=0, sample=[], vector_fields=1).status == "pass"
    found = data_check(malformed=3, missing=0, sample=["d:1", "d:\\xff"], vector_fields=1)
    assert found.status == "warn" and "3 document" in found.detail and "d:1" in found.detail


# ----------------------------------------------------------------------------- helpers


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redismigrate", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def make_index(
    client: redis.Redis,
    name: str,
    prefix: str,
    count: int,
    *,
    datatype: str = "float32",
    dims: int = DIMS,
    bad: int = 0,
) -> None:
    rng = np.random.default_rng(5)
    dtype = {"float32": np.float32, "float16": np.float16}[datatype]
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        blob = rng.normal(size=dims).astype(dtype).tobytes()
        if i < bad:
            blob = blob[: 10 + i % 3]  # no vector of this field
        pipe.hset(f"{prefix}{i}", mapping={"title": f"doc {i}", "embedding": blob})
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    client.execute_command(
        "FT.CREATE", name, "ON", "HASH", "PREFIX", "1", prefix, "SCHEMA",
        "title", "TEXT",
        "embedding", "VECTOR", "FLAT", "6", "TYPE", datatype.upper(), "DIM", str(dims),
        "DISTANCE_METRIC", "L2",
    )  # fmt: skip
    wait_indexed(client, name)


def wait_indexed(client: redis.Redis, name: str) -> None:
    for _ in range(400):
        stats = stats_from_ft_info(client.execute_command("FT.INFO", name))
        if not stats.indexing:
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"{name} never finished indexing")


def snapshot(client: redis.Redis, prefix: str) -> dict[bytes, dict[bytes, bytes]]:
    keys = sorted(client.scan_iter(match=f"{prefix}*", count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    return dict(zip(keys, pipe.execute(), strict=True))


def write_patch(path: Path, changes: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"version": 1, "changes": changes}))
    return path


def plan_file(url: str, index: str, tmp: Path, changes: dict[str, Any]) -> Path:
    patch = write_patch(tmp / f"{index}.patch.yaml", changes)
    out = tmp / f"{index}.plan.yaml"
    proc = cli(
        "plan", "--index", index, "--schema-patch", str(patch), "--plan-out", str(out),
        "--url", url, "--mode", "drop_recreate",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def with_user(url: str, user: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    rest = rest.split("@", 1)[-1]
    return f"{scheme}://{user}:{password}@{rest}"


# ----------------------------------------------------------------------------- permissions


def test_user_without_dropindex_is_refused_before_any_rename(
    redis_url: str, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    name, prefix = f"{ns}_acl", f"{ns}:acl:"
    make_index(sync_client, name, prefix, 500)
    plan = plan_file(
        redis_url,
        name,
        tmp_path,
        {"rename_fields": [{"old_name": "title", "new_name": "headline"}]},
    )
    user, password = f"{ns}_nodrop", "pw-" + uuid.uuid4().hex
    sync_client.execute_command(
        "ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-ft.dropindex"
    )
    try:
        before = snapshot(sync_client, prefix)
        proc = cli(
            "apply", "--plan", str(plan), "--backup-dir", str(tmp_path / "b"),
            "--url", with_user(redis_url, user, password),
        )  # fmt: skip
        line = one_error_line(proc)
        assert proc.returncode == 5, proc.stderr
        assert "FT.DROPINDEX" in line and "permissions" in line
        assert password not in proc.stdout + proc.stderr
        assert snapshot(sync_client, prefix) == before  # no field renamed, nothing written
        assert len(before) == 500
        assert sync_client.execute_command("FT.INFO", name)  # the source still serves
        assert not list((tmp_path / "b").glob("*.data"))  # no backup written either
    finally:
        sync_client.execute_command("ACL", "DELUSER", user)


def test_plan_and_estimate_show_the_checklist(
    redis_url: str, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    name, prefix = f"{ns}_list", f"{ns}:list:"
    make_index(sync_client, name, prefix, 300, bad=4)
    patch = write_patch(
        tmp_path / "p.yaml",
        {"update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]},
    )
    out = tmp_path / "plan.yaml"
    proc = cli(
        "plan",
        "--index",
        name,
        "--schema-patch",
        str(patch),
        "--plan-out",
        str(out),
        "--url",
        redis_url,
        "--mode",
        "drop_recreate",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Preflight:" in proc.stdout
    for check in ("topology", "permissions", "memory", "eviction"):
        assert f"pass  {check}:" in proc.stdout, proc.stdout
    # the malformed vectors are counted over every key and named in the plan
    assert "4 document(s) hold a vector of the wrong byte length" in out.read_text()
    proc = cli("estimate", "--plan", str(out), "--url", redis_url, "--backup-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "Preflight:" in proc.stdout and "disk:" in proc.stdout
    assert "warn  data: 4 document(s)" in proc.stdout


# ----------------------------------------------------------------------------- data


def test_malformed_vectors_are_left_as_they_were_and_listed(
    redis_url: str, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    name, prefix = f"{ns}_bad", f"{ns}:bad:"
    make_index(sync_client, name, prefix, 5000, bad=20)
    before = snapshot(sync_client, prefix)
    plan = plan_file(
        redis_url,
        name,
        tmp_path,
        {"update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]},
    )
    report = tmp_path / "report.yaml"
    proc = cli(
        "apply", "--plan", str(plan), "--backup-dir", str(tmp_path / "b"), "--url", redis_url,
        "--report-out", str(report),
    )  # fmt: skip
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = snapshot(sync_client, prefix)
    assert set(after) == set(before)
    bad = {k for k, v in before.items() if len(v[b"embedding"]) != DIMS * 4}
    assert len(bad) == 20
    for key, fields in after.items():
        if key in bad:
            assert fields == before[key]  # byte for byte
        else:
            expected = np.frombuffer(before[key][b"embedding"], np.float32).astype(np.float16)
            assert fields[b"embedding"] == expected.tobytes()
    loaded = MigrationReport.load(report)
    assert loaded.malformed_vectors == 20
    assert {k.encode() for k in loaded.malformed_vector_keys} == bad
    assert "20 document(s) whose vector has another byte length" in proc.stdout


# ----------------------------------------------------------------------------- memory


@pytest.fixture(scope="module")
def own_server() -> Iterator[str]:
    with EmbeddedRedis() as server:
        assert server.info is not None
        yield server.info.url


def test_growth_under_an_evicting_policy_is_refused_and_nothing_is_evicted(
    own_server: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(own_server)
    client.flushall()
    name, prefix = "grow", "grow:"
    make_index(client, name, prefix, 5000, datatype="float16", dims=256)
    plan = plan_file(
        own_server, name, tmp_path,
        {"update_fields": [{"name": "embedding", "attrs": {"datatype": "float32"}}]},
    )  # fmt: skip
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + (3 << 20))  # a few MB of headroom
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        before = snapshot(client, prefix)
        evicted = int(client.info("stats")["evicted_keys"])
        proc = cli(
            "apply", "--plan", str(plan), "--backup-dir", str(tmp_path / "b"), "--url", own_server
        )
        line = one_error_line(proc)
        assert proc.returncode == 5
        assert "memory:" in line and "eviction:" in line and "allkeys-lru" in line
        assert int(client.info("stats")["evicted_keys"]) == evicted
        assert snapshot(client, prefix) == before
        # --allow-eviction lifts the policy's block, not the memory one
        proc = cli(
            "apply", "--plan", str(plan), "--backup-dir", str(tmp_path / "b"), "--url", own_server,
            "--allow-eviction",
        )  # fmt: skip
        line = one_error_line(proc)
        assert proc.returncode == 5 and "memory:" in line and "eviction:" not in line
        assert snapshot(client, prefix) == before
    finally:
        client.config_set("maxmemory", 0)
        client.config_set("maxmemory-policy", "noeviction")
        client.close()


def _fill_until_evicting(url: str, stop: threading.Event | None = None) -> None:
    """Write expiring junk until the server has evicted some (volatile-lru takes only
    those), then, with ``stop``, go on until it is set."""
    filler = redis.Redis.from_url(url)
    start = int(filler.info("stats")["evicted_keys"])
    junk = b"x" * (64 << 10)
    n = 0
    while True:
        pipe = filler.pipeline(transaction=False)
        for _ in range(16):
            pipe.set(f"junk:{uuid.uuid4().hex}", junk, ex=600)
            n += 1
        with contextlib.suppress(redis.RedisError):
            pipe.execute()
        evicted = int(filler.info("stats")["evicted_keys"]) > start
        if evicted and (stop is None or stop.is_set()):
            break
    filler.close()


@pytest.mark.parametrize("when", ["backup", "after_drop"])
def test_an_eviction_during_the_run_stops_it_and_undoes_it(
    when: str, own_server: str, tmp_path: Path
) -> None:
    import anyio

    from redismigrate.aio.executor import AsyncMigrationExecutor
    from redismigrate.plan import MigrationPlan

    client = redis.Redis.from_url(own_server)
    client.flushall()
    name, prefix = "evict", "evict:"
    make_index(client, name, prefix, 20_000, dims=128)
    plan = plan_file(
        own_server, name, tmp_path,
        {"update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]},
    )  # fmt: skip
    before = snapshot(client, prefix)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + (8 << 20))
    client.config_set("maxmemory-policy", "volatile-lru")  # only the filler's keys go
    stop = threading.Event()
    thread = threading.Thread(target=_fill_until_evicting, args=(own_server, stop), daemon=True)
    try:
        if when == "backup":  # memory is full, and evicting, before the run starts
            thread.start()
            report_path = tmp_path / "report.yaml"
            proc = cli(
                "apply", "--plan", str(plan), "--backup-dir", str(tmp_path / "b"),
                "--url", own_server, "--allow-eviction", "--report-out", str(report_path),
            )  # fmt: skip
            assert "Traceback" not in proc.stdout + proc.stderr
            assert proc.returncode == 1, proc.stdout + proc.stderr
            report = MigrationReport.load(report_path)
        else:  # the first batch re-encoded (after the drop) fills memory until it evicts
            filled = threading.Event()

            def progress(step: str, done: int, total: int | None) -> None:
                if step == "reencode" and done > 0 and not filled.is_set():
                    filled.set()
                    _fill_until_evicting(own_server)

            async def run() -> MigrationReport:
                return await AsyncMigrationExecutor().apply(
                    MigrationPlan.load(plan),
                    redis_url=own_server,
                    backup_dir=tmp_path / "b",
                    allow_eviction=True,
                    progress_callback=progress,
                )

            report = anyio.run(run)
            assert filled.is_set()
        assert report.error is not None and "evicted" in report.error, report.error
        # stopped in the backup (nothing written yet), or after the drop and undone
        assert report.undone == (when == "after_drop"), report
        assert any(c.check == "eviction" and c.status == "warn" for c in report.preflight)
        stop.set()
        if thread.is_alive():
            thread.join()
        assert snapshot(client, prefix) == before  # every original byte back
        assert client.execute_command("FT.INFO", name)
    finally:
        stop.set()
        client.config_set("maxmemory", 0)
        client.config_set("maxmemory-policy", "noeviction")
        client.close()


# ----------------------------------------------------------------------------- disk


def _in_mount_namespace(mount: str, command: list[str]) -> list[str]:
    """``command`` run where ``mount`` (a shell mount line) is in force, for it alone."""
    script = f"{mount} && exec " + " ".join(f"'{c}'" for c in command)
    return ["unshare", "-rm", "sh", "-c", script]


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.parametrize("case", ["full", "read-only"])
def test_backup_dir_on_a_full_or_read_only_file_system_is_refused(
    case: str, redis_url: str, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    assert _can_unshare(), "unshare -rm is needed to mount a small tmpfs for this test"
    name, prefix = f"{ns}_disk", f"{ns}:disk:"
    make_index(sync_client, name, prefix, 2000)
    plan = plan_file(
        redis_url, name, tmp_path,
        {"update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]},
    )  # fmt: skip
    target = tmp_path / "mnt"
    target.mkdir()
    options = "size=1m" if case == "full" else "size=1m,ro"
    before = snapshot(sync_client, prefix)
    command = [
        sys.executable, "-m", "redismigrate", "apply", "--plan", str(plan),
        "--backup-dir", str(target / "backups" if case == "full" else target), "--url", redis_url,
    ]  # fmt: skip
    proc = subprocess.run(
        _in_mount_namespace(f"mount -t tmpfs -o {options} tmpfs '{target}'", command),
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    line = one_error_line(proc)
    if case == "full":
        assert proc.returncode == 5 and "disk:" in line and "free at" in line
    else:
        assert proc.returncode == 2 and "not writable" in line
    assert snapshot(sync_client, prefix) == before
    assert sync_client.execute_command("FT.INFO", name)


# ----------------------------------------------------------------------------- batch, rollback


def test_batch_apply_and_rollback_run_the_preflight_before_anything(
    redis_url: str, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    to_float16 = {"update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]}
    for n in (1, 2):
        make_index(sync_client, f"{ns}_b{n}", f"{ns}:b{n}:", 300)
    patch = write_patch(tmp_path / "patch.yaml", to_float16)
    planned = cli(
        "batch-plan", "--pattern", f"{ns}_b*", "--schema-patch", str(patch),
        "--plan-out", str(tmp_path / "batch.yaml"), "--url", redis_url,
    )  # fmt: skip
    assert planned.returncode == 0, planned.stdout + planned.stderr
    user, password = f"{ns}_nohset", "pw-" + uuid.uuid4().hex
    sync_client.execute_command(
        "ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-hset"
    )
    try:
        before = {n: snapshot(sync_client, f"{ns}:b{n}:") for n in (1, 2)}
        state = tmp_path / "state.yaml"
        refused = cli(
            "batch-apply", "--plan", str(tmp_path / "batch.yaml"), "--backup-dir",
            str(tmp_path / "bb"), "--state", str(state), "--accept-data-loss",
            "--url", with_user(redis_url, user, password),
        )  # fmt: skip
        line = one_error_line(refused)
        assert refused.returncode == 5 and "HSET" in line and f"{ns}_b1" in line
        assert not state.exists()  # the batch never started
        assert {n: snapshot(sync_client, f"{ns}:b{n}:") for n in (1, 2)} == before

        # a migration made by a user who may, then a rollback by one who may not
        plan = plan_file(redis_url, f"{ns}_b1", tmp_path, to_float16)
        backup = tmp_path / "b1"
        applied = cli("apply", "--plan", str(plan), "--backup-dir", str(backup), "--url", redis_url)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        migrated = snapshot(sync_client, f"{ns}:b1:")
        refused = cli(
            "rollback", "--backup-dir", str(backup), "--recreate-index",
            "--url", with_user(redis_url, user, password),
        )  # fmt: skip
        line = one_error_line(refused)
        assert refused.returncode == 5 and "HSET" in line
        assert snapshot(sync_client, f"{ns}:b1:") == migrated
        assert sync_client.execute_command("FT.INFO", f"{ns}_b1")  # the target still serves
        rolled = cli(
            "rollback", "--backup-dir", str(backup), "--recreate-index", "--url", redis_url
        )
        assert rolled.returncode == 0, rolled.stdout + rolled.stderr
        assert snapshot(sync_client, f"{ns}:b1:") == before[1]
    finally:
        sync_client.execute_command("ACL", "DELUSER", user)
