"""Benchmark harness entry point.

Starts a throwaway embedded Redis Stack server, loads a sample vector index and
times the steps redismigrate has so far: loading documents and reading a live
index schema back. Prints a summary and writes the figures as JSON.

    python benchmarks/run.py [--docs N] [--dims D] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path
from typing import Any

import anyio

from redismigrate.aio.connection import connect
from redismigrate.aio.indexes import read_schema_and_stats
from redismigrate.demo import load_sample_index
from redismigrate.server import EmbeddedRedis


async def measure(url: str, docs: int, dims: int, rounds: int) -> dict[str, Any]:
    async with connect(url) as client:
        start = time.perf_counter()
        await load_sample_index(client, name="bench_idx", docs=docs, dims=dims, prefix="bench:")
        load_seconds = time.perf_counter() - start
        reads = []
        for _ in range(rounds):
            start = time.perf_counter()
            described = await read_schema_and_stats(client, "bench_idx")
            reads.append(time.perf_counter() - start)
        reads.sort()
        return {
            "docs": docs,
            "dims": dims,
            "load_seconds": round(load_seconds, 3),
            "load_docs_per_second": round(docs / load_seconds),
            "read_schema_median_ms": round(reads[len(reads) // 2] * 1000, 2),
            "num_docs_seen": described.stats.num_docs,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--dims", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latest.json"))
    args = parser.parse_args()
    with EmbeddedRedis() as server:
        assert server.info is not None
        url = server.info.url
        result = anyio.run(measure, url, args.docs, args.dims, args.rounds)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["machine"] = f"{platform.machine()}, {platform.python_implementation()} "
    result["machine"] += f"{platform.python_version()}, {platform.system()}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key:>24}: {value}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
