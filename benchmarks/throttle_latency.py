"""Query latency with and without a throttled online re-encoding.

    python benchmarks/throttle_latency.py [--docs 100000] [--dims 768] [--max-rate 5000]
        [--baseline-seconds 10] [--interval-ms 5] [--out results.json]

Loads ``--docs`` hash documents (a text and a tag field, a ``--dims``-dim float32
vector, FLAT, COSINE) into a throwaway embedded Redis Stack. A query loop in its own
process (so the migrator's CPU does not delay its clock) sends a KNN query and a filter
query in turn, sleeping ``--interval-ms`` after each, and records every latency. It
runs ``--baseline-seconds`` with no migration, then during an online float32 ->
float16 apply (library call, ``max_rate=--max-rate``). Prints p50/p99/max of both
windows and their ratio, failed queries, the apply's total time against N / max rate,
and the report's throttle.

The query loop follows the switch of encodings as an application does: a KNN query
refused with a blob size error is sent again once in the other encoding (counted). The
script plays the operator where the run waits for the application after the cut-over:
it asks for the cut-over (``request_cut_over``) every second once the name switched.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import tempfile
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import anyio
import msgspec
import numpy as np
import redis

from redismigrate.aio.executor import AsyncMigrationExecutor
from redismigrate.aio.planner import AsyncMigrationPlanner
from redismigrate.patch import SchemaPatch
from redismigrate.render import ft_create_args
from redismigrate.report import MigrationReport
from redismigrate.schema import IndexSchema
from redismigrate.server import EmbeddedRedis

INDEX = "thr_idx"
PREFIX = "thr:"
PATCH = {"changes": {"update_fields": [{"name": "embedding", "attrs": {"datatype": "float16"}}]}}
# (kind, monotonic start, latency in ms, ok)
Record = tuple[str, float, float, bool]


def load(url: str, docs: int, dims: int) -> float:
    """``docs`` hash documents and their FLAT index, fully built; returns the seconds."""
    schema = IndexSchema.from_dict(
        {
            "index": {"name": INDEX, "prefix": PREFIX},
            "fields": [
                {"name": "title", "type": "text"},
                {"name": "category", "type": "tag"},
                {
                    "name": "embedding",
                    "type": "vector",
                    "attrs": {"dims": dims, "algorithm": "flat", "distance_metric": "cosine"},
                },
            ],
        }
    )
    client = redis.Redis.from_url(url)
    started = time.perf_counter()
    rng = np.random.default_rng(1)
    chunk = 2000
    for first in range(0, docs, chunk):
        count = min(chunk, docs - first)
        vectors = rng.standard_normal((count, dims), dtype=np.float32)
        pipe = client.pipeline(transaction=False)
        for offset in range(count):
            n = first + offset
            pipe.hset(
                f"{PREFIX}{n}",
                mapping={
                    "title": f"doc {n}",
                    "category": f"c{n % 10}",
                    "embedding": vectors[offset].tobytes(),
                },
            )
        pipe.execute()
    client.execute_command(*ft_create_args(schema))
    while True:
        info = client.ft(INDEX).info()
        if float(info["percent_indexed"]) >= 1.0 and not int(info["indexing"]):
            break
        time.sleep(0.2)
    client.close()
    return time.perf_counter() - started


def query_loop(url: str, dims: int, interval: float, stop: Event, out: Connection) -> None:
    """KNN and filter queries in turn until ``stop``; sends the records through ``out``."""
    client = redis.Redis.from_url(url, protocol=2)
    probe = np.random.default_rng(3).standard_normal(dims).astype(np.float32)
    encoding: Any = np.float32
    records: list[Record] = []
    resent = 0
    errors: list[str] = []
    turn = 0
    while not stop.is_set():
        turn += 1
        kind = "knn" if turn % 2 else "filter"
        started = time.monotonic()
        ok = True
        try:
            if kind == "filter":
                client.execute_command(
                    "FT.SEARCH", INDEX, "@category:{c3} @title:doc", "LIMIT", "0", "3"
                )
            else:
                try:
                    knn(client, probe.astype(encoding).tobytes())
                except redis.ResponseError as exc:
                    if "blob size" not in str(exc):
                        raise
                    encoding = np.float16 if encoding is np.float32 else np.float32
                    resent += 1
                    knn(client, probe.astype(encoding).tobytes())
        except redis.RedisError as exc:
            ok = False
            if len(errors) < 5:
                errors.append(f"{kind}: {exc}")
        records.append((kind, started, (time.monotonic() - started) * 1000, ok))
        time.sleep(interval)
    client.close()
    out.send((records, resent, errors))
    out.close()


def knn(client: redis.Redis, vector: bytes) -> None:
    reply = client.execute_command(
        "FT.SEARCH", INDEX, "*=>[KNN 5 @embedding $v]", "PARAMS", "2", "v", vector,
        "NOCONTENT", "DIALECT", "2",
    )  # fmt: skip
    if int(reply[0]) != 5:
        raise redis.ResponseError(f"KNN answered {reply[0]} documents, not 5")


async def apply_throttled(url: str, max_rate: float) -> tuple[MigrationReport, float, float]:
    """Plan and apply float32 -> float16 online at ``max_rate``; returns the report and
    the apply's start and end (monotonic)."""
    plan = await AsyncMigrationPlanner().create_plan(
        INDEX, redis_url=url, schema_patch=SchemaPatch.from_dict(PATCH), mode="online"
    )
    executor = AsyncMigrationExecutor()
    switched = anyio.Event()

    def on_progress(step: str, done: int, total: int | None) -> None:
        if step == "cut_over" and total and done == total:
            switched.set()

    async def operator() -> None:
        await switched.wait()
        while True:
            await executor.request_cut_over(INDEX, redis_url=url)
            await anyio.sleep(1.0)

    with tempfile.TemporaryDirectory() as backup_dir:
        async with anyio.create_task_group() as group:
            group.start_soon(operator)
            started = time.monotonic()
            report = await executor.apply(
                plan,
                redis_url=url,
                backup_dir=backup_dir,
                max_rate=max_rate,
                progress_callback=on_progress,
            )
            ended = time.monotonic()
            group.cancel_scope.cancel()
    redis.Redis.from_url(url).delete(f"redismigrate:cut-over:{INDEX}")
    return report, started, ended


def percentiles(records: list[Record]) -> dict[str, Any]:
    latencies = np.array([r[2] for r in records if r[3]])
    if not len(latencies):
        return {"queries": len(records), "failed": len(records)}
    return {
        "queries": len(records),
        "failed": sum(1 for r in records if not r[3]),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "max_ms": round(float(latencies.max()), 2),
    }


def windows(records: list[Record], start: float, end: float) -> dict[str, Any]:
    inside = [r for r in records if start <= r[1] < end]
    return {
        "all": percentiles(inside),
        "knn": percentiles([r for r in inside if r[0] == "knn"]),
        "filter": percentiles([r for r in inside if r[0] == "filter"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--max-rate", type=float, default=5000.0)
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    parser.add_argument("--interval-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=None, help="Also write the figures as JSON.")
    args = parser.parse_args()

    with EmbeddedRedis() as server:
        assert server.info is not None
        url = server.info.url
        seconds = load(url, args.docs, args.dims)
        print(f"loaded {args.docs:,} x {args.dims} in {seconds:.1f} s")
        context = mp.get_context("spawn")
        stop = context.Event()
        receive, send = context.Pipe(duplex=False)
        loop = context.Process(
            target=query_loop, args=(url, args.dims, args.interval_ms / 1000, stop, send)
        )
        loop.start()
        time.sleep(1.0)  # the process starts and warms up
        baseline_start = time.monotonic()
        time.sleep(args.baseline_seconds)
        baseline_end = time.monotonic()
        report, apply_start, apply_end = anyio.run(apply_throttled, url, args.max_rate)
        stop.set()
        records, resent, errors = receive.recv()
        loop.join()

    floor = args.docs / args.max_rate
    throttle = report.throttle
    result: dict[str, Any] = {
        "docs": args.docs,
        "dims": args.dims,
        "max_rate": args.max_rate,
        "interval_ms": args.interval_ms,
        "apply": {
            "result": report.result,
            "total_seconds": report.total_seconds,
            "wall_seconds": round(apply_end - apply_start, 3),
            "n_over_max_rate_seconds": round(floor, 3),
            "at_least_n_over_max_rate": report.total_seconds >= floor,
            "downtime_seconds": report.downtime_seconds,
            "steps": {t.step: t.seconds for t in report.timings},
            "throttle": msgspec.to_builtins(throttle),
            "online_reencode": msgspec.to_builtins(report.online_reencode),
        },
        "baseline": windows(records, baseline_start, baseline_end),
        "during_apply": windows(records, apply_start, apply_end),
        "knn_resent_in_the_other_encoding": resent,
        "errors": errors,
        "machine": f"{platform.machine()}, Python {platform.python_version()}, {platform.system()}",
    }
    base, during = result["baseline"]["all"], result["during_apply"]["all"]
    if "p99_ms" in base and "p99_ms" in during:
        result["p99_ratio"] = round(during["p99_ms"] / base["p99_ms"], 2)
        result["p50_ratio"] = round(during["p50_ms"] / base["p50_ms"], 2)
    print(json.dumps(result, indent=2))
    applied = result["apply"]
    print(
        f"apply {applied['result']}: {applied['total_seconds']:.2f} s for {args.docs:,} "
        f"documents at max {args.max_rate:,g}/s (N / max rate = {floor:.2f} s): "
        f"{'at least' if applied['at_least_n_over_max_rate'] else 'LESS than'} N / max rate"
    )
    print(
        f"p99 {base.get('p99_ms')} ms without a migration, {during.get('p99_ms')} ms during "
        f"it (x{result.get('p99_ratio')}); failed queries: {base.get('failed', 0)} + "
        f"{during.get('failed', 0)}"
    )
    if throttle is None or throttle.throttled_seconds == 0:
        print(
            "note: the run never waited on its throttle (the report's throttle: "
            f"{throttle}): the max rate was above what the run reached"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
