"""Apply benchmark: load hash documents into a throwaway server and time `apply`.

    python benchmarks/run.py [--docs 100000] [--dims 768] [--target float16] [--workers 1]

Loads ``--docs`` hash documents with ``--dims``-dim float32 vectors (FLAT, COSINE) into
a fresh embedded Redis Stack, plans a float32 -> ``--target`` re-encoding, runs
``redismigrate apply`` as its own process, and prints total time, downtime, per-step
timings and the apply process's peak memory. The figures are also written as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
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

INDEX = "bench_idx"
PREFIX = "bench:"


def load(url: str, docs: int, dims: int, algorithm: str) -> float:
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
    client = redis.Redis.from_url(url)
    started = time.perf_counter()
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
    while True:  # let the source index finish, as a live one would have
        info = client.ft(INDEX).info()
        if float(info["percent_indexed"]) >= 1.0 and not int(info["indexing"]):
            break
        time.sleep(0.2)
    client.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--algorithm", default="flat", choices=["flat", "hnsw"])
    parser.add_argument("--target", default="float16")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/apply.json"))
    args = parser.parse_args()

    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as work:
        assert server.info is not None
        url = server.info.url
        load_seconds = load(url, args.docs, args.dims, args.algorithm)
        print(f"loaded {args.docs:,} x {args.dims} in {load_seconds:.1f} s")
        plan = MigrationPlanner().create_plan(
            INDEX,
            redis_url=url,
            schema_patch=SchemaPatch.from_dict(
                {
                    "changes": {
                        "update_fields": [{"name": "embedding", "attrs": {"datatype": args.target}}]
                    }
                }
            ),
        )
        plan_path = Path(work) / "plan.yaml"
        plan.dump(plan_path)
        report_path = Path(work) / "report.yaml"
        command = [
            sys.executable, "-m", "redismigrate", "apply", "--plan", str(plan_path),
            "--backup-dir", str(Path(work) / "backup"), "--url", url,
            "--workers", str(args.workers), "--batch-size", str(args.batch_size),
            "--report-out", str(report_path),
        ]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"apply failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        report = MigrationReport.load(report_path)

    result: dict[str, Any] = {
        "docs": args.docs,
        "dims": args.dims,
        "algorithm": args.algorithm,
        "target": args.target,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "apply_wall_seconds": round(wall, 3),
        "total_seconds": report.total_seconds,
        "downtime_seconds": report.downtime_seconds,
        "steps": {t.step: t.seconds for t in report.timings},
        "peak_memory_mb": round(peak_mb, 1),
        "validated": bool(report.validation and report.validation.passed),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
        f"Python {platform.python_version()}, {platform.system()}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key:>20}: {value}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
