"""What a user is told around an apply: the index commands it will send (checked against
what the server saw), and where the backup and report are and how to undo."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import redis
import yaml

from redismigrate.commands import index_commands
from redismigrate.plan import MigrationPlan
from redismigrate.report import MigrationReport

DIMS = 8


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redismigrate", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "400"},
    )


def make_index(client: redis.Redis, name: str, prefix: str, count: int) -> dict[bytes, bytes]:
    rng = np.random.default_rng(1)
    values = {}
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        key = f"{prefix}{i}".encode()
        values[key] = rng.normal(size=DIMS).astype(np.float32).tobytes()
        pipe.hset(key, mapping={"title": f"t{i}", "embedding": values[key]})
    pipe.execute()
    client.execute_command(
        "FT.CREATE", name, "ON", "HASH", "PREFIX", "1", prefix, "SCHEMA", "title", "TEXT",
        "embedding", "VECTOR", "HNSW", "6", "TYPE", "FLOAT32", "DIM", str(DIMS),
        "DISTANCE_METRIC", "COSINE",
    )  # fmt: skip
    return values


def plan_for(
    url: str, name: str, tmp: Path, *extra: str
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    patch = tmp / "patch.yaml"
    patch.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "changes": {
                    "update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]
                },
            }
        )
    )
    out = tmp / "plan.yaml"
    made = cli(
        "plan",
        "-i",
        name,
        "--schema-patch",
        str(patch),
        "--plan-out",
        str(out),
        "--url",
        url,
        "--mode",
        "drop_recreate",
        *extra,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    return out, made


def test_show_commands_lists_exactly_what_apply_sends(
    redis_url: str, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    name, prefix = f"{ns}_cmd", f"{ns}:cmd:"
    make_index(sync_client, name, prefix, 200)
    sync_client.execute_command("FT.ALIASADD", f"{ns}_alias", name)
    plan_path, made = plan_for(
        redis_url, name, tmp_path, "--show-commands", "--alias", f"{ns}_alias"
    )
    plan = MigrationPlan.load(plan_path)
    expected = index_commands(plan)
    shown = made.stdout.split("Index commands apply will send, in order:")[1].strip().splitlines()
    assert [shlex.split(line, comments=True) for line in shown] == expected
    assert expected[0] == ["FT.DROPINDEX", name]
    assert expected[1][:2] == ["FT.CREATE", name] and "FLOAT16" in expected[1]
    assert expected[-1] == ["FT.ALIASUPDATE", f"{ns}_alias", name]

    seen: list[list[str]] = []
    ready = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        watcher = redis.Redis.from_url(redis_url)
        with watcher.monitor() as monitor:
            ready.set()
            for event in monitor.listen():
                wanted = ("FT.DROPINDEX", "FT.CREATE", "FT.ALIAS")
                if not event["command"].upper().startswith(wanted):
                    if stop.is_set():
                        return
                    continue  # document writes carry binary vectors: not for shlex
                parts = shlex.split(event["command"])
                if parts and name in parts[1:3]:
                    seen.append(parts)
                if stop.is_set():
                    return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ready.wait(10)
    applied = cli(
        "apply", "--plan", str(plan_path), "--backup-dir", str(tmp_path / "b"), "--url", redis_url
    )
    assert applied.returncode == 0, applied.stdout + applied.stderr
    stop.set()
    sync_client.ping()  # one more command, so that the monitor loop sees stop
    thread.join(10)
    sent = [[p.upper() if i == 0 else p for i, p in enumerate(c)] for c in seen]
    # the alias is moved only where the drop took it away (search 2.10 keeps it)
    alias_still_there = sync_client.execute_command("FT.INFO", f"{ns}_alias") is not None
    assert alias_still_there
    assert sent in (expected, expected[:-1])
    assert sent[:2] == expected[:2]


def test_apply_keeps_its_report_beside_the_backup_and_says_how_to_undo(
    redis_url: str, sync_client: redis.Redis, ns: str, tmp_path: Path
) -> None:
    name, prefix = f"{ns}_where", f"{ns}:where:"
    before = make_index(sync_client, name, prefix, 300)
    plan_path, _ = plan_for(redis_url, name, tmp_path)
    backup = tmp_path / "backups"
    applied = cli(
        "apply", "--plan", str(plan_path), "--backup-dir", str(backup), "--url", redis_url
    )
    assert applied.returncode == 0, applied.stdout + applied.stderr
    lines = applied.stdout.strip().splitlines()
    report_line = next(line for line in lines if line.startswith("Report: "))
    report = MigrationReport.load(report_line.removeprefix("Report: "))
    assert report.succeeded and Path(report.report_file or "").parent == backup
    assert (Path(report.report_file or "").stat().st_mode & 0o777) == 0o600
    assert any(line.startswith(f"Backup: {backup}") for line in lines)
    undo = lines[-1]
    assert undo.startswith("Undo with: redismigrate rollback")
    # the printed command, run as it is, undoes the run
    args: list[Any] = shlex.split(undo.removeprefix("Undo with: "))
    assert args[0] == "redismigrate"
    undone = cli(*args[1:])
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert "Report: " in undone.stdout
    for key, value in before.items():
        assert sync_client.hget(key, "embedding") == value
    info = sync_client.execute_command("FT.INFO", name)
    assert b"FLOAT32" in repr(info).encode()
